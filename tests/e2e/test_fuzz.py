"""Fuzzing the real server with schemathesis from the document it serves: never a 5xx, only documented answers."""

from __future__ import annotations

import subprocess
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.config import SchemathesisConfig

from app.openapi import openapi_spec
from app.settings import Settings
from tests.support import JFK, Server

pytestmark = pytest.mark.e2e

# The fuzzed server generates at most 16 tokens per segment unless a request asks for more: some uploads are
# real speech, and random weights rarely stop on their own.
FUZZ_ARGS = ["--max-new-tokens", "16", "--idle-timeout", "30"]
FUZZ_SETTINGS = Settings(max_new_tokens=16, idle_timeout=30)
# What every response must satisfy. Left out on purpose: ignored_auth (this server has no keys, so the
# documented security is rightly not enforced) and positive_data_acceptance (a schema-valid upload is
# still not audio, so 415 is the right answer to most of them).
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Examples per operation in the fuzzing phase (the coverage phase adds its boundary cases on top): enough
# to reach every field in both modes, few enough to keep the whole module near a minute and a half on CPU.
MAX_EXAMPLES = 30
# The longest chat answer a fuzzed request may ask for (see test_both_apis).
MAX_CHAT_TOKENS = 16
# One upload in this many carries real speech, so the model, the formats and the 2xx bodies are fuzzed too.
REAL_AUDIO_EVERY = 6
CONFIG = SchemathesisConfig.from_dict(
    {
        # Valid and invalid inputs alike; no example database left behind in the working tree.
        "generation": {"mode": "all", "database": "none"},
        # One operation at a time; the job fixtures below stand in for chains of requests.
        "phases": {"stateful": {"enabled": False}},
    }
)

# The document fuzz_server serves, built here from the same settings rather than fetched: schemathesis
# 4.32.5's fixture-based loader (schemathesis.pytest.from_fixture) reads pytest's private Node._nodeid,
# which pytest 9.2 no longer has, and a module-level schema must exist before any server does.
# test_the_fuzzed_document_is_the_served_one checks that the two are the same document.
schema = schemathesis.openapi.from_dict(openapi_spec(FUZZ_SETTINGS), config=CONFIG)


@pytest.fixture(scope="module")
def fuzz_server(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server of its own, so fuzzed jobs and outputs never meet the other end-to-end tests."""
    data = tmp_path_factory.mktemp("fuzz") / "data"
    server = Server(tiny_checkpoint, data, FUZZ_ARGS).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """Two seconds of real speech in a few KB of MP3 (small, so a failure report stays readable)."""
    out = tmp_path_factory.mktemp("clip") / "clip.mp3"
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-i", str(JFK), "-t", "2", "-ac", "1", "-ar", "16000", "-b:a", "24k"]
    subprocess.run([*cmd, str(out)], check=True)
    return out.read_bytes()


@pytest.fixture(scope="module")
def job_ids(fuzz_server: Server, clip: bytes) -> list[str]:
    """Real jobs for the /status operations, the first one completed; fuzzed ids alone only ever get 404."""
    ids = []
    for _ in range(4):
        response = requests.post(fuzz_server.url + "/transcribe/async", files={"file": ("clip.mp3", clip)}, timeout=60)
        assert response.status_code == 202, response.text
        ids.append(response.json()["job_id"])
    deadline = time.monotonic() + 60
    while requests.get(f"{fuzz_server.url}/status/{ids[0]}", timeout=10).json()["status"] != "completed":
        assert time.monotonic() < deadline, "the first job did not complete"
        time.sleep(0.1)
    return ids


def test_the_fuzzed_document_is_the_served_one(fuzz_server: Server) -> None:
    """GET /openapi.json on the running server is exactly the document fuzzed below."""
    response = requests.get(fuzz_server.url + "/openapi.json", timeout=10)
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/json"
    assert response.json() == schema.raw_schema


def pick(seed: Any, choices: int) -> int:
    """A choice in range(choices) fixed by the generated input, so a replayed or shrunk case makes the same one."""
    return zlib.crc32(repr(seed).encode("utf-8", "surrogatepass")) % choices


# No @schema.given: with it schemathesis skips its coverage phase (boundary values, missing fields), so the
# swaps below are decided by the generated input itself rather than by a drawn value.
@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    # Requests wait on ffmpeg and the model: slow examples are expected, not a sign of a bad strategy.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
def test_both_apis(case: Case, fuzz_server: Server, clip: bytes, job_ids: list[str]) -> None:
    """No 5xx on any operation of either API; every status, content type, header and body is the documented one."""
    path = case.operation.path
    webservice = path in ("/asr", "/detect-language")
    uploads = path.startswith("/transcribe") or path in ("/v1/audio/transcriptions", "/v1/audio/translations")
    field = "audio_file" if webservice else "file"
    if (uploads or webservice) and isinstance(case.body, dict) and field in case.body:
        # Mostly the fuzzer's own bytes (not audio: 415), sometimes real speech, to reach the model.
        options = {name: value for name, value in case.body.items() if name != field} | dict(case.query or {})
        if pick(options, REAL_AUDIO_EVERY) == 0:
            case.body[field] = clip
    if path == "/status/{job_id}" and case.path_parameters:
        # Half the time a real job, in whatever state it has reached (a DELETE may have cancelled or removed it).
        choice = pick(case.path_parameters, 2 * len(job_ids))
        if choice < len(job_ids):
            case.path_parameters = {**case.path_parameters, "job_id": job_ids[choice]}
    if path == "/v1/chat/completions" and isinstance(case.body, dict):
        # A valid but long answer asked of random weights takes minutes on a CPU: valid lengths are kept short,
        # out-of-range ones stay as generated, to be refused.
        for name in ("max_tokens", "max_completion_tokens"):
            value = case.body.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and MAX_CHAT_TOKENS < value <= 32768:
                case.body[name] = MAX_CHAT_TOKENS
    case.call_and_validate(base_url=fuzz_server.url, checks=CHECKS, timeout=120)
