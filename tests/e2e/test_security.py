"""API keys and rate limits on the real server: every route but /health is closed without a right key."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import requests

from tests.support import AISHELL, Server, assert_error

pytestmark = pytest.mark.e2e

KEYS = ("alpha-key-0123456789", "beta-key-9876543210")
FAST = {"max_new_tokens": "8"}


@pytest.fixture(scope="module")
def keyed(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with two API keys, given in the environment as a deployment would."""
    data = tmp_path_factory.mktemp("keyed") / "data"
    server = Server(tiny_checkpoint, data, ["--api-key", ",".join(KEYS), "--max-new-tokens", "8"]).start()
    yield server
    server.stop()


def _audio() -> dict[str, Any]:
    return {"file": ("a.wav", AISHELL.read_bytes())}


def _chat() -> dict[str, Any]:
    audio = base64.b64encode(AISHELL.read_bytes()).decode()
    content = [{"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}}]
    return {"model": "whisper-1", "max_tokens": 4, "messages": [{"role": "user", "content": content}]}


# (method, path, request kwargs, status with a right key)
ROUTES: list[tuple[str, str, dict[str, Any], int]] = [
    ("POST", "/transcribe", {"files": "audio", "data": FAST}, 200),
    ("POST", "/transcribe/json", {"files": "audio", "data": FAST}, 200),
    ("POST", "/transcribe/srt", {"files": "audio", "data": FAST}, 200),
    ("POST", "/transcribe/vtt", {"files": "audio", "data": FAST}, 200),
    ("POST", "/transcribe/async", {"files": "audio", "data": FAST}, 202),
    ("GET", "/status/0123456789abcdef0123456789abcdef", {}, 404),
    ("DELETE", "/status/0123456789abcdef0123456789abcdef", {}, 404),
    ("GET", "/openapi.json", {}, 200),
    ("GET", "/metrics", {}, 200),
    ("GET", "/no-such-route", {}, 404),
    ("GET", "/v1/models", {}, 200),
    ("POST", "/v1/audio/transcriptions", {"files": "audio", "data": {"model": "whisper-1", **FAST}}, 200),
    ("POST", "/v1/chat/completions", {"json": "chat"}, 200),
    ("POST", "/v1/audio/translations", {"files": "audio", "data": {"model": "whisper-1", **FAST}}, 200),
    ("POST", "/asr", {"files": "audio_file", "params": {"output": "json"}}, 200),
    ("POST", "/detect-language", {"files": "audio_file"}, 200),
]


def _send(server: Server, method: str, path: str, kwargs: dict[str, Any], headers: dict[str, str]) -> requests.Response:
    real = dict(kwargs)
    if real.get("files") == "audio":
        real["files"] = _audio()
    if real.get("files") == "audio_file":
        real["files"] = {"audio_file": _audio()["file"]}
    if real.get("json") == "chat":
        real["json"] = _chat()
    return requests.request(method, server.url + path, headers=headers, timeout=120, **real)


@pytest.mark.parametrize(("method", "path", "kwargs", "status"), ROUTES, ids=[f"{m} {p}" for m, p, _, _ in ROUTES])
def test_every_route_needs_a_right_key(
    keyed: Server, method: str, path: str, kwargs: dict[str, Any], status: int
) -> None:
    """No key or a wrong one: 401 in the route's own error body; either right key, in either header: served."""
    wrong = [
        {},
        {"Authorization": "Bearer wrong"},
        {"X-API-Key": KEYS[0][:-1]},
        {"Authorization": "Basic " + KEYS[0]},
        {"Authorization": "Bearer"},
    ]
    for headers in wrong:
        response = _send(keyed, method, path, kwargs, headers)
        assert response.status_code == 401, (headers, response.text)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        body = response.json()
        error = body["error"]
        assert error["code"] == "unauthorized"
        assert ("status" not in body) == path.startswith("/v1/")  # OpenAI's envelope under /v1
    right = [{"Authorization": f"Bearer {KEYS[0]}"}, {"X-API-Key": KEYS[1]}]
    for headers in right:
        response = _send(keyed, method, path, kwargs, headers)
        assert response.status_code == status, (headers, response.text)


def test_health_stays_open(keyed: Server) -> None:
    """Monitors need no key."""
    assert requests.get(keyed.url + "/health", timeout=10).status_code == 200


def test_openai_sdk_with_keys(keyed: Server) -> None:
    """The SDK's api_key is sent as a Bearer token: a right one works, a wrong one is AuthenticationError."""
    good = openai.OpenAI(base_url=keyed.url + "/v1", api_key=KEYS[1], max_retries=0)
    assert [m.id for m in good.models.list()] == [keyed.checkpoint.name]
    bad = openai.OpenAI(base_url=keyed.url + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        bad.models.list()
    assert caught.value.code == "unauthorized"


def test_keys_never_reach_health_or_the_log(keyed: Server) -> None:
    """Neither /health nor the server's log shows a key."""
    health = requests.get(keyed.url + "/health", timeout=10).text
    for key in KEYS:
        assert key not in health
        assert key not in keyed.log()


@pytest.fixture(scope="module")
def limited(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server allowing 3 requests a minute per client."""
    data = tmp_path_factory.mktemp("limited") / "data"
    server = Server(tiny_checkpoint, data, ["--rate-limit", "3/minute"]).start()
    yield server
    server.stop()


def test_rate_limit_answers_429_with_retry_after(limited: Server) -> None:
    """Past the limit: 429 rate_limited with Retry-After, in the native and the OpenAI body; /health exempt."""
    statuses = [requests.get(limited.url + "/status/abc", timeout=10).status_code for _ in range(3)]
    assert statuses == [404, 404, 404]
    native = requests.get(limited.url + "/status/abc", timeout=10)
    assert "rate limit exceeded" in assert_error(native, 429, "rate_limited")
    assert 0 < int(native.headers["Retry-After"]) <= 60
    client = openai.OpenAI(base_url=limited.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.RateLimitError) as caught:
        client.models.list()
    assert caught.value.code == "rate_limited"
    for _ in range(10):
        assert requests.get(limited.url + "/health", timeout=10).status_code == 200
