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

from app.words import text_words
from tests.support import AISHELL, JFK, LIBRISPEECH, RECORDINGS, Server, assert_error, make_audio, post, wait_for

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
    """JSON result: duration of the real audio, one segment around its speech, output file written."""
    response = post(server, "/transcribe/json", recording, **FAST)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "success"
    assert body["duration"] == pytest.approx(DURATIONS[recording], abs=0.05)
    assert re.fullmatch(r"\d{14}(_\d+)?\.txt", body["output_file"])
    segments = body["segments"]
    # VAD on (the default): the segment spans the speech, which these recordings have from end to end.
    assert len(segments) == 1 and 0 <= segments[0]["start"] < 0.5
    assert body["duration"] - 0.5 < segments[0]["end"] <= body["duration"]
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
    """vad=false, segment_duration=3 on an 11 s file: several segments, none over 3 s, contiguous to the end."""
    body = post(server, "/transcribe/json", JFK, segment_duration="3", vad="false", **FAST).json()
    segments = body["segments"]
    assert len(segments) >= 4
    assert [s["index"] for s in segments] == list(range(len(segments)))
    assert segments[0]["start"] == 0 and segments[-1]["end"] == body["duration"]
    for a, b in itertools.pairwise(segments):
        assert a["end"] == b["start"]
    assert all(0 < s["end"] - s["start"] <= 3.0 + 1e-6 for s in segments)


def test_srt_parses_and_cues_sit_at_segment_positions(server: Server) -> None:
    """A valid SubRip attachment whose cues follow the segments' real positions (fixed cuts, vad=false)."""
    response = post(server, "/transcribe/srt", LIBRISPEECH, segment_duration="2", vad="false", **FAST)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Disposition"] == "attachment; filename=librispeech_1995-1837-0001.srt"
    cues = list(srt.parse(response.text))
    assert len(cues) >= 4 and [c.index for c in cues] == list(range(1, len(cues) + 1))
    assert cues[0].start.total_seconds() == 0
    assert cues[-1].end.total_seconds() == pytest.approx(DURATIONS[LIBRISPEECH], abs=0.01)
    for a, b in itertools.pairwise(cues):
        assert a.end <= b.start and b.end - b.start <= srt.timedelta(seconds=2)


def _with_a_pause(tmp_path: Path) -> Path:
    """jfk.flac (11 s), 6 s of quiet noise, then the LibriSpeech recording (8.73 s)."""
    out = tmp_path / "pause.wav"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", str(JFK), "-f", "lavfi", "-i",
         "anoisesrc=color=pink:amplitude=0.002:duration=6:sample_rate=16000", "-i", str(LIBRISPEECH),
         "-filter_complex", "[0:a]aresample=16000,aformat=channel_layouts=mono[a];"
         "[1:a]aformat=channel_layouts=mono[b];[2:a]aresample=16000,aformat=channel_layouts=mono[c];"
         "[a][b][c]concat=n=3:v=0:a=1", str(out)],
        check=True,
    )  # fmt: skip
    return out


def test_vad_cuts_in_the_pause_and_skips_it(server: Server, tmp_path: Path) -> None:
    """With VAD (the default), no segment reaches into the 6 s pause; times stay positions in the file."""
    program = _with_a_pause(tmp_path)
    body = post(server, "/transcribe/json", program, segment_duration="12", **FAST).json()
    assert body["duration"] == pytest.approx(11.0 + 6 + 8.73, abs=0.1)
    segments = body["segments"]
    assert len(segments) == 2, segments
    first, second = segments
    assert 10.0 < first["end"] <= 11.6 and 16.4 <= second["start"] < 17.5, segments
    assert second["end"] <= body["duration"]
    # Random weights may write no word in either segment (then there are no cues): what cues there are stay
    # out of the pause.
    cues = list(srt.parse(post(server, "/transcribe/srt", program, **FAST).text))
    assert not any(c.start.total_seconds() < 14 < c.end.total_seconds() for c in cues), cues


def test_silence_only_is_an_empty_transcript_in_every_format(server: Server, tmp_path: Path) -> None:
    """No speech: 200 with no segments and empty text; the subtitles are valid and empty; nothing generated."""
    quiet = tmp_path / "quiet.flac"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i",
         "anoisesrc=color=brown:amplitude=0.003:duration=8:sample_rate=16000", str(quiet)],
        check=True,
    )  # fmt: skip
    body = post(server, "/transcribe/json", quiet).json()
    assert body["status"] == "success" and body["segments"] == [] and body["transcription"] == ""
    assert body["duration"] == pytest.approx(8.0, abs=0.05)
    srt_response = post(server, "/transcribe/srt", quiet)
    assert srt_response.status_code == 200 and list(srt.parse(srt_response.text)) == []
    vtt = requests.post(
        server.url + "/v1/audio/transcriptions",
        files={"file": ("quiet.flac", quiet.read_bytes())},
        data={"model": "whisper-1", "response_format": "vtt"},
        timeout=60,
    )
    assert vtt.status_code == 200 and vtt.text.strip() == "WEBVTT", vtt.text
    plain = post(server, "/transcribe", quiet)
    assert plain.status_code == 200 and plain.text.strip() == ""
    streamed = requests.post(
        server.url + "/v1/audio/transcriptions",
        files={"file": ("quiet.flac", quiet.read_bytes())},
        data={"model": "whisper-1", "stream": "true"},
        timeout=60,
    )
    events = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")]
    assert streamed.status_code == 200 and [e["type"] for e in events] == ["transcript.text.done"], streamed.text
    assert events[0]["text"] == "" and events[0]["usage"]["seconds"] == 8


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
    assert status["completed_at"] and 10.0 < status["segments"][-1]["end"] <= 11.05
    saved = server.data_dir / "outputs" / status["output_file"]
    assert saved.read_bytes().decode("utf-8") == status["transcription"] + "\n"
    assert not any((server.data_dir / "jobs").iterdir()), "job audio left behind"


def test_word_timestamps_on_the_json_route(server: Server) -> None:
    """word_timestamps=true: each segment's words, in order and inside it; without it, no words key."""
    body = post(server, "/transcribe/json", JFK, word_timestamps="true", segment_duration="4", **FAST).json()
    assert len(body["segments"]) >= 2
    for segment in body["segments"]:
        floor = segment["start"]
        if not text_words(segment["text"]):  # random weights also write runs of "/": no word to time
            assert segment["words"] == []
            continue
        assert segment["words"] and set(segment["words"][0]) == {"word", "start", "end"}
        for word in segment["words"]:
            assert floor <= word["start"] <= word["end"] <= segment["end"], (word, segment)
            floor = word["end"]
        # Every character but spaces is in a word (a lone dash joins the word before it, with a space).
        written = "".join("".join(w["word"].split()) for w in segment["words"])
        assert written == "".join(segment["text"].split())
    plain = post(server, "/transcribe/json", JFK, **FAST).json()
    assert all("words" not in s for s in plain["segments"])


def test_a_completed_jobs_result_in_every_format(server: Server) -> None:
    """404 result_not_ready until the job completes; then txt, json, srt and vtt, named after the upload."""
    job_id = post(server, "/transcribe/async", JFK, segment_duration="4", **FAST).json()["job_id"]
    url = f"{server.url}/status/{job_id}/result"
    early = requests.get(url, timeout=10)
    if early.status_code != 200:  # a very fast machine may have finished already
        assert_error(early, 404, "result_not_ready")
    status = wait_for(
        lambda: (s := requests.get(f"{server.url}/status/{job_id}", timeout=10).json())["status"] == "completed" and s,
        what="the job to complete",
    )
    assert all("words" not in s for s in status["segments"])

    text = requests.get(url, params={"format": "txt"}, timeout=10)
    assert text.status_code == 200 and text.headers["Content-Type"].startswith("text/plain")
    assert text.headers["Content-Disposition"] == "attachment; filename=jfk.txt"
    assert text.text == status["transcription"] + "\n"
    assert requests.get(url, timeout=10).text == text.text  # txt is the default

    as_json = requests.get(url, params={"format": "json"}, timeout=10)
    assert as_json.headers["Content-Disposition"] == "attachment; filename=jfk.json"
    assert as_json.headers["Content-Type"].startswith("application/json")
    body = as_json.json()
    assert body["transcription"] == status["transcription"] and body["segments"] == status["segments"]
    with_words = requests.get(url, params={"format": "json", "word_timestamps": "true"}, timeout=10).json()
    assert all(bool(s["words"]) == bool(text_words(s["text"])) for s in with_words["segments"])

    subrip = requests.get(url, params={"format": "srt"}, timeout=10)
    assert subrip.headers["Content-Disposition"] == "attachment; filename=jfk.srt"
    cues = list(srt.parse(subrip.text))
    assert cues and cues[-1].end.total_seconds() <= status["segments"][-1]["end"] + 1e-3
    vtt = requests.get(url, params={"format": "vtt"}, timeout=10)
    assert vtt.text.startswith("WEBVTT") and vtt.headers["Content-Type"].startswith("text/vtt")
    assert vtt.text.count("-->") == len(cues)

    assert_error(requests.get(url, params={"format": "pdf"}, timeout=10), 400, "invalid_option")
    assert_error(requests.get(f"{server.url}/status/{'0' * 32}/result", timeout=10), 404, "job_not_found")


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
