"""The real server, started through the CLI on loopback with the tiny checkpoint, driven like a user would."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import threading
import time
from pathlib import Path

import opencc
import pytest
import requests
import srt

from tests.support import AISHELL, JFK, LIBRISPEECH, RECORDINGS, Server, assert_error, make_audio, post

pytestmark = pytest.mark.e2e

DURATIONS = {JFK: 11.0, LIBRISPEECH: 8.73, AISHELL: 4.33}
FAST = {"max_new_tokens": "48"}  # random weights rarely stop on their own; keep generations short


def test_health_contract(server: Server) -> None:
    """Every promised field, with its type."""
    body = requests.get(server.url + "/health", timeout=10).json()
    assert body["status"] == "ok"
    assert isinstance(body["model_loaded"], bool) and body["gpu_available"] is False
    assert body["gpu_memory_allocated_gb"] == 0 and body["gpu_memory_reserved_gb"] == 0
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", body["timestamp"])
    assert body["model"]["state"] in ("unloaded", "loading", "loaded", "error")
    assert body["model"]["checkpoint"] == str(server.checkpoint)
    assert body["model"]["idle_timeout"] == 5.0
    assert body["jobs"] == {"queued": 0, "running": 0}


@pytest.mark.parametrize("recording", RECORDINGS, ids=lambda p: p.name)
def test_transcribe_json_every_recording(server: Server, recording: Path) -> None:
    """JSON result: duration of the real audio, contiguous segments, output file written."""
    response = post(server, "/transcribe/json", recording, **FAST)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "success"
    assert body["duration"] == pytest.approx(DURATIONS[recording], abs=0.05)
    assert re.fullmatch(r"\d{14}(_\d+)?\.txt", body["output_file"])
    segments = body["segments"]
    assert len(segments) == 1 and segments[0]["start"] == 0 and segments[0]["end"] == body["duration"]
    assert isinstance(body["transcription"], str) and body["transcription"]
    saved = server.data_dir / "outputs" / body["output_file"]
    assert saved.read_bytes().decode("utf-8") == body["transcription"] + "\n"


def test_transcribe_text_is_an_attachment_named_after_the_upload(server: Server) -> None:
    """text/plain, meeting.mp3 -> meeting.txt."""
    mp3 = server.data_dir.parent / "meeting.mp3"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(JFK), str(mp3)], check=True)
    response = post(server, "/transcribe", mp3, **FAST)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain")
    assert response.headers["Content-Disposition"] == "attachment; filename=meeting.txt"
    saved = server.data_dir / "outputs" / response.headers["X-Output-File"]
    assert response.text == saved.read_bytes().decode("utf-8") and response.text.strip()


def test_short_segments_cover_the_audio_at_quiet_cuts(server: Server) -> None:
    """segment_duration=3 on an 11 s file: several segments, none over 3 s, contiguous to the end."""
    body = post(server, "/transcribe/json", JFK, segment_duration="3", **FAST).json()
    segments = body["segments"]
    assert len(segments) >= 4
    assert [s["index"] for s in segments] == list(range(len(segments)))
    assert segments[0]["start"] == 0 and segments[-1]["end"] == body["duration"]
    for a, b in itertools.pairwise(segments):
        assert a["end"] == b["start"]
    assert all(0 < s["end"] - s["start"] <= 3.0 + 1e-6 for s in segments)


def test_srt_parses_and_cues_sit_at_segment_positions(server: Server) -> None:
    """A valid SubRip attachment whose cues follow the segments' real positions."""
    response = post(server, "/transcribe/srt", LIBRISPEECH, segment_duration="2", **FAST)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Disposition"] == "attachment; filename=librispeech_1995-1837-0001.srt"
    cues = list(srt.parse(response.text))
    assert len(cues) >= 4 and [c.index for c in cues] == list(range(1, len(cues) + 1))
    assert cues[0].start.total_seconds() == 0
    assert cues[-1].end.total_seconds() == pytest.approx(DURATIONS[LIBRISPEECH], abs=0.01)
    for a, b in itertools.pairwise(cues):
        assert a.end <= b.start and b.end - b.start <= srt.timedelta(seconds=2)


def test_options_language_prompt_and_s2t(server: Server) -> None:
    """language, prompt and enable_s2t are accepted; s2t output has nothing left for OpenCC to convert."""
    response = post(server, "/transcribe/json", AISHELL, language="zh", enable_s2t="true", temperature="0", **FAST)
    assert response.status_code == 200, response.text
    text = response.json()["transcription"]
    assert opencc.OpenCC("s2t").convert(text) == text
    response = post(server, "/transcribe/json", JFK, language="English", prompt="Write down what is said.", **FAST)
    assert response.status_code == 200, response.text


def test_async_job_runs_to_completion(server: Server) -> None:
    """202 with a job id, then queued/processing/completed with progress, transcription and output file."""
    response = post(server, "/transcribe/async", JFK, segment_duration="4", **FAST)
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] == "queued" and re.fullmatch(r"[0-9a-f]{32}", job["job_id"])
    seen = set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = requests.get(f"{server.url}/status/{job['job_id']}", timeout=10).json()
        seen.add(status["status"])
        assert set(status["progress"]) == {"segments_done", "segments_total"}
        if status["status"] in ("completed", "failed"):
            break
        time.sleep(0.1)
    assert status["status"] == "completed", status
    total = len(status["segments"])
    assert total >= 3 and status["progress"] == {"segments_done": total, "segments_total": total}
    assert status["completed_at"] and status["segments"][-1]["end"] == pytest.approx(11.0, abs=0.05)
    saved = server.data_dir / "outputs" / status["output_file"]
    assert saved.read_bytes().decode("utf-8") == status["transcription"] + "\n"
    assert not any((server.data_dir / "jobs").iterdir()), "job audio left behind"


def test_health_answers_during_a_long_transcription(server: Server, tmp_path: Path) -> None:
    """/health keeps answering while the inference worker is busy with a 60 s file."""
    long = make_audio(tmp_path, 60)
    result: dict[str, requests.Response] = {}
    worker = threading.Thread(
        target=lambda: result.update(r=post(server, "/transcribe/json", long, segment_duration="1",
                                            max_new_tokens="64", temperature="0"))
    )  # fmt: skip
    worker.start()
    answered_while_busy = 0
    while worker.is_alive():
        health = requests.get(server.url + "/health", timeout=5)
        assert health.status_code == 200
        if worker.is_alive() and health.json()["model"]["pending_segments"] > 0:
            answered_while_busy += 1
        time.sleep(0.05)
    worker.join()
    assert result["r"].status_code == 200 and len(result["r"].json()["segments"]) >= 60
    assert answered_while_busy > 0


def test_model_unloads_when_idle_and_reloads(server: Server) -> None:
    """With --idle-timeout 5 the model leaves memory and comes back on the next request."""
    assert post(server, "/transcribe/json", AISHELL, **FAST).status_code == 200
    before = requests.get(server.url + "/health", timeout=5).json()["model"]
    assert before["state"] == "loaded"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        health = requests.get(server.url + "/health", timeout=5).json()
        if health["model"]["state"] == "unloaded":
            break
        time.sleep(0.25)
    assert health["model_loaded"] is False and health["model"]["state"] == "unloaded"
    assert post(server, "/transcribe/json", AISHELL, **FAST).status_code == 200
    after = requests.get(server.url + "/health", timeout=5).json()["model"]
    assert after["state"] == "loaded" and after["loads"] == before["loads"] + 1


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"segment_duration": "0"}, "segment_duration"),
        ({"segment_duration": "301"}, "segment_duration"),
        ({"segment_duration": "nan"}, "segment_duration"),
        ({"max_new_tokens": "-1"}, "max_new_tokens"),
        ({"max_new_tokens": "ten"}, "max_new_tokens"),
        ({"temperature": "abc"}, "temperature"),
        ({"temperature": "5"}, "temperature"),
        ({"repetition_penalty": "inf"}, "repetition_penalty"),
        ({"enable_s2t": "maybe"}, "enable_s2t"),
        ({"language": "klingon"}, "language"),
    ],
)
def test_invalid_options_are_400_naming_the_field(server: Server, fields: dict[str, str], field: str) -> None:
    """400 invalid_option; the message names the field and what is allowed."""
    message = assert_error(post(server, "/transcribe/json", AISHELL, **fields), 400, "invalid_option")
    assert message.startswith(field)


@pytest.mark.parametrize("route", ["/transcribe", "/transcribe/json", "/transcribe/srt", "/transcribe/async"])
def test_missing_or_misnamed_file_is_400(server: Server, route: str) -> None:
    """No 'file' field: 400 missing_file, naming the field that was sent instead."""
    assert_error(requests.post(server.url + route, data={"language": "en"}, timeout=10), 400, "missing_file")
    with open(AISHELL, "rb") as f:
        response = requests.post(server.url + route, files={"audio": ("a.wav", f)}, timeout=10)
    assert "audio" in assert_error(response, 400, "missing_file")


def test_undecodable_upload_is_415(server: Server, tmp_path: Path) -> None:
    """Text renamed .mp3 and an empty file: 415, and no temp file left."""
    fake = tmp_path / "notes.mp3"
    fake.write_text("this is not audio\n" * 100)
    assert_error(post(server, "/transcribe/json", fake), 415, "unsupported_audio")
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    assert_error(post(server, "/transcribe/async", empty), 415, "unsupported_audio")
    assert not any((server.data_dir / "uploads").iterdir())


def test_unknown_job_404_and_wrong_method_405(server: Server) -> None:
    """JSON errors from routing too."""
    assert_error(requests.get(server.url + "/status/nope", timeout=10), 404, "job_not_found")
    assert_error(requests.get(server.url + "/transcribe/json", timeout=10), 405, "method_not_allowed")
    assert_error(requests.get(server.url + "/no/such/route", timeout=10), 404, "not_found")


def test_no_temp_files_left(server: Server) -> None:
    """After everything above, uploads in flight and job audio are all gone."""
    assert not any((server.data_dir / "uploads").iterdir())
    assert not any((server.data_dir / "jobs").iterdir())
    assert json.loads(requests.get(server.url + "/health", timeout=5).text)["jobs"]["queued"] == 0
