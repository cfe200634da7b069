"""Metrics and request logs on the real server: /metrics parsed by prometheus_client's own parser, counters
moving by exactly the requests made, one JSON log line per request carrying its X-Request-ID.

One keyed server with JSON logs serves the module (the scrapes and the log lines are read around each test's
own requests); a second, with --metrics-public, shows /metrics opened without opening anything else.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.support import JFK, Server, wait_for

pytestmark = pytest.mark.e2e

KEY = "observability-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
FAST = {"max_new_tokens": "8"}
SECONDS = 11.0  # jfk.flac


@pytest.fixture(scope="module")
def observed(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("observed") / "data"
    args = ["--api-key", KEY, "--log-format", "json", "--max-new-tokens", "8", "--aligner", "none"]
    server = Server(tiny_checkpoint, data, args).start()
    yield server
    server.stop()


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(server: Server, headers: dict[str, str] | None = None) -> Samples:
    """Every sample of /metrics, by name and labels, as prometheus_client's parser reads the text."""
    response = requests.get(server.url + "/metrics", headers=AUTH if headers is None else headers, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def log_lines(server: Server) -> list[dict[str, Any]]:
    """The server's JSON log lines (what the worker writes before it logs, such as library warnings, is not JSON)."""
    lines = []
    for line in server.log().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def request_lines(server: Server, request_id: str) -> list[dict[str, Any]]:
    return [line for line in log_lines(server) if line.get("event") == "request" and line["request_id"] == request_id]


def test_counters_move_by_exactly_the_requests_made(observed: Server) -> None:
    before = scrape(observed)
    for _ in range(2):
        with open(JFK, "rb") as f:
            r = requests.post(
                observed.url + "/transcribe/json", files={"file": f}, data=FAST, headers=AUTH, timeout=300
            )
        assert r.status_code == 200, r.text
    r = requests.post(observed.url + "/transcribe/json", files={"wrong": ("a", b"x")}, headers=AUTH, timeout=60)
    assert r.status_code == 400
    with open(JFK, "rb") as f:
        r = requests.post(observed.url + "/asr", params={"output": "json"}, files={"audio_file": f}, headers=AUTH)
    assert r.status_code == 200, r.text
    r = requests.get(observed.url + "/status/no-such-job", headers=AUTH, timeout=10)
    assert r.status_code == 404
    # Attachments (send_file's bodies) are counted and logged like the rest.
    with open(JFK, "rb") as f:
        r = requests.post(observed.url + "/transcribe/srt", files={"file": f}, data=FAST, headers=AUTH, timeout=300)
    assert r.status_code == 200 and r.headers["X-Request-ID"]
    [line] = wait_for(lambda: request_lines(observed, r.headers["X-Request-ID"]), 10, "the SRT request's log line")
    assert line["route"] == "/transcribe/srt" and line["audio_seconds"] == pytest.approx(SECONDS, abs=0.01)
    assert requests.get(observed.url + "/metrics", timeout=10).status_code == 401
    after = scrape(observed)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    requests_total = "qwen_asr_http_requests_total"
    assert moved(requests_total, route="/transcribe/json", method="POST", status="200") == 2
    assert moved(requests_total, route="/transcribe/json", method="POST", status="400") == 1
    assert moved(requests_total, route="/asr", method="POST", status="200") == 1
    assert moved(requests_total, route="/status/<job_id>", method="GET", status="404") == 1
    assert moved(requests_total, route="/transcribe/srt", method="POST", status="200") == 1
    assert moved(requests_total, route="/metrics", method="GET", status="401") == 1
    # The first scrape is counted once its response has gone: the second scrape sees it, not itself.
    assert moved(requests_total, route="/metrics", method="GET", status="200") == 1
    total = sum(v for (name, _), v in after.items() if name == requests_total)
    assert total - sum(v for (name, _), v in before.items() if name == requests_total) == 8
    duration = "qwen_asr_http_request_duration_seconds_count"
    assert moved(duration, route="/transcribe/json", method="POST") == 3
    # Four files of 11 s decoded, each once; decode and VAD timed once per file.
    assert moved("qwen_asr_audio_seconds_total") == pytest.approx(4 * SECONDS, abs=0.01)
    assert moved("qwen_asr_decode_seconds_count") == 4 and moved("qwen_asr_vad_seconds_count") == 4
    assert moved("qwen_asr_decode_seconds_sum") > 0
    # Every segment waited in the queue once and was generated in some batch; tokens were written.
    waited = moved("qwen_asr_queue_wait_seconds_count", kind="generate")
    assert waited >= 4 and moved("qwen_asr_batch_size_sum", kind="generate") == waited
    assert moved("qwen_asr_generation_seconds_count", kind="generate") == moved(
        "qwen_asr_batch_size_count", kind="generate"
    )
    assert 0 < moved("qwen_asr_generated_tokens_total", kind="transcribe") <= waited * 8
    assert moved("qwen_asr_prompt_tokens_total", kind="transcribe") > 0
    assert value(after, "qwen_asr_model_state", state="loaded") == 1
    assert sum(value(after, "qwen_asr_model_state", state=s) for s in ("unloaded", "loading", "loaded", "error")) == 1
    assert value(after, "qwen_asr_model_loads_total") >= 1
    for state in ("queued", "processing", "completed", "failed", "cancelled"):
        assert ("qwen_asr_jobs", (("state", state),)) in after


def test_one_json_line_per_request_with_its_id(observed: Server) -> None:
    """The client's X-Request-ID is echoed, logged once with the request's figures, and never the key itself."""
    with open(JFK, "rb") as f:
        r = requests.post(
            observed.url + "/transcribe/json",
            files={"file": f},
            data=FAST,
            headers={**AUTH, "X-Request-ID": "trace-0001:a.b"},
            timeout=300,
        )
    assert r.status_code == 200 and r.headers["X-Request-ID"] == "trace-0001:a.b"
    [line] = wait_for(lambda: request_lines(observed, "trace-0001:a.b"), 10, "the request's log line")
    assert (line["method"], line["route"], line["status"], line["level"]) == ("POST", "/transcribe/json", 200, "INFO")
    assert line["audio_seconds"] == pytest.approx(SECONDS, abs=0.01) and line["processing_seconds"] > 0
    assert re.fullmatch(r"key:[0-9a-f]{12}", line["client"])
    assert KEY not in observed.log()


def test_an_error_carries_the_id_of_its_request(observed: Server) -> None:
    """Refused before the route (no key) or by it (no file): the body, the header and the log name one id; an id
    that is not a safe token is replaced."""
    r = requests.get(observed.url + "/v1/models", headers={"X-Request-ID": "abc-1"}, timeout=10)
    assert r.status_code == 401 and r.json()["error"]["request_id"] == "abc-1" == r.headers["X-Request-ID"]
    r = requests.post(
        observed.url + "/transcribe", files={"x": ("a", b"1")}, headers={**AUTH, "X-Request-ID": "bad id <x>"}
    )
    assert r.status_code == 400
    given = r.json()["error"]["request_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", given) and r.headers["X-Request-ID"] == given
    [line] = wait_for(lambda: request_lines(observed, given), 10, "the refused request's log line")
    assert (line["status"], line["route"]) == (400, "/transcribe")
    assert "bad id" not in observed.log()


def test_a_job_keeps_the_id_of_the_request_that_submitted_it(observed: Server) -> None:
    with open(JFK, "rb") as f:
        r = requests.post(
            observed.url + "/transcribe/async",
            files={"file": f},
            data=FAST,
            headers={**AUTH, "X-Request-ID": "job-submit-7"},
            timeout=60,
        )
    assert r.status_code == 202
    status_url = observed.url + r.json()["status_url"]

    def done() -> dict[str, Any] | None:
        body: dict[str, Any] = requests.get(status_url, headers=AUTH, timeout=10).json()
        return body if body["status"] == "completed" else None

    body = wait_for(done, 120, "the job")
    assert body["request_id"] == "job-submit-7"


def test_metrics_public_opens_metrics_and_nothing_else(tiny_checkpoint: Path, tmp_path: Path) -> None:
    server = Server(tiny_checkpoint, tmp_path / "data", ["--api-key", KEY, "--metrics-public"]).start()
    try:
        samples = scrape(server, headers={})
        assert value(samples, "qwen_asr_model_state", state="unloaded") == 1
        assert requests.get(server.url + "/v1/models", timeout=10).status_code == 401
    finally:
        server.stop()
