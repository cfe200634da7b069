"""What a hostile client and a newcomer tried on the real server, class by class (see the hardening issue).

One server with two client keys and an admin key, a 60 s audio cap and short generations. Every request
sends a key; what a key may see is part of what is tested.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support import AISHELL, JFK, ROOT, Server, assert_error, make_audio

pytestmark = pytest.mark.e2e

ALICE, BOB, ADMIN = "alice-key-0123456789", "bob-key-0123456789", "admin-key-0123456789"
CAP_SECONDS = 60


def as_(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def hardened(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("hardened") / "data"
    args = [
        *("--api-key", f"{ALICE},{BOB}", "--admin-api-key", ADMIN),
        *("--max-audio-duration", str(CAP_SECONDS), "--max-new-tokens", "8"),
    ]
    server = Server(tiny_checkpoint, data, args).start()
    yield server
    server.stop()


def upload(server: Server, route: str, name: str, data: bytes, key: str = ALICE, **fields: str) -> requests.Response:
    return requests.post(server.url + route, files={"file": (name, data)}, data=fields, headers=as_(key), timeout=120)


def hls(target: str) -> bytes:
    return f"#EXTM3U\n#EXT-X-TARGETDURATION:11\n#EXTINF:11,\n{target}\n#EXT-X-ENDLIST\n".encode()


HOSTILE = {
    "hls-path.m3u8": hls(str(JFK)),
    "hls-url.m3u8": hls(f"file://{JFK}"),
    "concat.txt": f"ffconcat version 1.0\nfile '{JFK}'\n".encode(),
    "script.sbg": b"-SE\n00:00 white\n\nwhite: 440/0\n",
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_files_that_read_other_files_are_refused_on_every_route(hardened: Server, name: str) -> None:
    """A playlist naming a file on the server, or a script of hours of tone: 415 (400 on /v1), never read."""
    data = HOSTILE[name]
    for route in ("/transcribe/json", "/transcribe/async"):
        message = assert_error(upload(hardened, route, name, data), 415, "unsupported_audio")
        assert "not an audio or video format this server reads" in message and str(JFK) not in message
    refused = upload(hardened, "/v1/audio/transcriptions", name, data, model="whisper-1")
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "unsupported_audio"
    assert not any((hardened.data_dir / "jobs").iterdir())


def test_audio_over_the_duration_cap_is_refused(hardened: Server, tmp_path: Path) -> None:
    """Audio stating more than --max-audio-duration is a 413 naming the limit, sync, async and on /v1."""
    long = make_audio(tmp_path, CAP_SECONDS + 30, "long.flac").read_bytes()
    for route in ("/transcribe/json", "/transcribe/async"):
        message = assert_error(upload(hardened, route, "long.flac", long), 413, "audio_too_long")
        assert f"limit of {CAP_SECONDS} s" in message
    refused = upload(hardened, "/v1/audio/transcriptions", "long.flac", long, model="whisper-1")
    assert refused.status_code == 413 and refused.json()["error"]["code"] == "audio_too_long"
    assert upload(hardened, "/transcribe/json", "jfk.flac", JFK.read_bytes()).status_code == 200


def test_jobs_belong_to_the_key_that_made_them(hardened: Server) -> None:
    """Bob cannot see or delete Alice's job (404, as if it did not exist); the admin key can; Alice can."""
    job = upload(hardened, "/transcribe/async", "a.wav", AISHELL.read_bytes()).json()["job_id"]
    url = f"{hardened.url}/status/{job}"
    assert_error(requests.get(url, headers=as_(BOB), timeout=10), 404, "job_not_found")
    assert_error(requests.delete(url, headers=as_(BOB), timeout=10), 404, "job_not_found")
    assert requests.get(url, headers=as_(ADMIN), timeout=10).json()["job_id"] == job
    deadline = time.monotonic() + 60
    while requests.get(url, headers=as_(ALICE), timeout=10).json()["status"] != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert_error(requests.delete(url, headers=as_(BOB), timeout=10), 404, "job_not_found")
    assert requests.delete(url, headers=as_(ADMIN), timeout=10).json() == {"job_id": job, "status": "deleted"}


def test_errors_never_echo_unbounded_input(hardened: Server) -> None:
    """A 2 MB model name, 200,000 numbers, a 200 KB option: each error quotes a clipped value."""
    chat = {"model": "m" * 2_000_000, "messages": [{"role": "user", "content": "hi"}]}
    cases = [
        requests.post(f"{hardened.url}/v1/chat/completions", json=chat, headers=as_(ALICE), timeout=60),
        requests.post(
            f"{hardened.url}/v1/chat/completions",
            json={"max_tokens": list(range(200_000)), "messages": [{"role": "user", "content": "hi"}]},
            headers=as_(ALICE),
            timeout=60,
        ),
        upload(hardened, "/v1/audio/transcriptions", "a.wav", AISHELL.read_bytes(), model="w" * 200_000),
        upload(hardened, "/transcribe/json", "a.wav", AISHELL.read_bytes(), temperature="9" * 200_000),
        upload(hardened, "/transcribe/json", "a.wav", AISHELL.read_bytes(), language="x" * 200_000),
    ]
    for response in cases:
        assert 400 <= response.status_code < 500, response.text[:300]
        assert len(response.content) < 2000, response.text[:300]


def test_deeply_nested_json_is_a_400(hardened: Server) -> None:
    """100,000 nested arrays: OpenAI's 400 envelope, not a 500 from the parser's recursion."""
    body = "[" * 100_000 + "]" * 100_000
    response = requests.post(
        f"{hardened.url}/v1/chat/completions",
        data=body,
        headers={**as_(ALICE), "Content-Type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and "nested too deeply" in error["message"]


def test_form_limits_name_the_limit_that_was_hit(hardened: Server) -> None:
    """Too many fields, or one text field too large: a 413 naming those limits, not the 4 GiB upload limit."""
    many = {f"f{i}": "x" for i in range(2000)}
    too_many = upload(hardened, "/transcribe/json", "a.wav", AISHELL.read_bytes(), **many)
    big = upload(hardened, "/transcribe/json", "a.wav", AISHELL.read_bytes(), prompt="p" * 300_000)
    for response in (too_many, big):
        message = assert_error(response, 413, "upload_too_large")
        assert "form is over its limits" in message and "4294967296" not in message


def test_subtitles_carry_one_charset(hardened: Server) -> None:
    """text/vtt and text/plain answers name their charset once, natively and on /v1."""
    vtt = upload(hardened, "/transcribe/vtt", "a.wav", AISHELL.read_bytes())
    assert vtt.headers["Content-Type"] == "text/vtt; charset=utf-8"
    for fmt, expected in (("vtt", "text/vtt; charset=utf-8"), ("text", "text/plain; charset=utf-8")):
        response = upload(
            hardened, "/v1/audio/transcriptions", "a.wav", AISHELL.read_bytes(), model="whisper-1", response_format=fmt
        )
        assert response.headers["Content-Type"] == expected


def test_unknown_v1_routes_answer_in_openai_s_envelope(hardened: Server) -> None:
    """POST /v1/audio/speech (text to speech: not served) is a 404 in OpenAI's error envelope naming the route."""
    response = requests.post(f"{hardened.url}/v1/audio/speech", headers=as_(ALICE), timeout=10)
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and "POST /v1/audio/speech" in error["message"]


def _wav(seconds: float) -> str:
    tone = f"sine=f=300:d={seconds}:sample_rate=16000"
    out = subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", tone, "-f", "wav", "pipe:1"],
        capture_output=True,
        check=True,
    ).stdout
    return base64.b64encode(out).decode()


def test_a_chat_prompt_is_bounded_as_a_whole(hardened: Server) -> None:
    """Twelve 60 s audio parts (720 s) or 10,000 messages: a clear 400 at once, nothing generated."""
    part = {"type": "input_audio", "input_audio": {"data": _wav(60), "format": "wav"}}
    twelve = {"max_tokens": 4, "messages": [{"role": "user", "content": [part] * 12}]}
    response = requests.post(f"{hardened.url}/v1/chat/completions", json=twelve, headers=as_(ALICE), timeout=120)
    assert response.status_code == 400, response.text[:300]
    assert "at most 300 s" in response.json()["error"]["message"]
    many = {"max_tokens": 4, "messages": [{"role": "user", "content": "word " * 2}] * 10_000}
    started = time.monotonic()
    response = requests.post(f"{hardened.url}/v1/chat/completions", json=many, headers=as_(ALICE), timeout=120)
    assert response.status_code == 400 and time.monotonic() - started < 10
    error = response.json()["error"]
    assert error["param"] == "messages" and "context of" in error["message"]
    # Within the bounds, several parts still work.
    fine = {"max_tokens": 4, "messages": [{"role": "user", "content": [part, part]}]}
    assert requests.post(f"{hardened.url}/v1/chat/completions", json=fine, headers=as_(ALICE), timeout=120).ok


def test_the_cli_help_shows_real_defaults() -> None:
    """--help names each flag's default (and its environment variable), not '(default: None)'."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "serve" / "qwen2_5_omni_awq.py"), "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    ).stdout
    assert "None" not in out
    for expected in ("(default: 127.0.0.1; env ASR_HOST)", "(default: 300.0; env ASR_IDLE_TIMEOUT)", "(default: 4G"):
        assert expected in out


def test_control_characters_never_reach_a_transcript(hardened: Server) -> None:
    """Whatever the model emits, the JSON, SRT and VTT hold no control characters (random weights emit many)."""
    bodies = [
        upload(hardened, route, "a.wav", AISHELL.read_bytes(), max_new_tokens="64", temperature="1.5").text
        for route in ("/transcribe/json", "/transcribe/srt", "/transcribe/vtt")
    ]
    decoded = json.loads(bodies[0])["transcription"] + bodies[1] + bodies[2]
    assert not [c for c in decoded if (ord(c) < 32 and c not in "\t\n") or 0x7F <= ord(c) < 0xA0]
    assert io.StringIO(bodies[2]).readline().startswith("WEBVTT")
