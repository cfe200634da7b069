"""Job control on the real server: cancel, delete, a bounded queue, retention, and a model that fails to load."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support import AISHELL, Server, assert_error, make_audio, post, wait_for

pytestmark = pytest.mark.e2e


def status(server: Server, job_id: str) -> dict[str, Any]:
    """GET /status/<id> as JSON."""
    body: dict[str, Any] = requests.get(f"{server.url}/status/{job_id}", timeout=10).json()
    return body


def submit(server: Server, path: Path, **fields: str) -> requests.Response:
    """POST /transcribe/async."""
    return post(server, "/transcribe/async", path, **fields)


@pytest.fixture(scope="module")
def one_worker(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One job at a time, at most two waiting."""
    data = tmp_path_factory.mktemp("job-control") / "data"
    args = ["--job-workers", "1", "--max-queued-jobs", "2", "--max-new-tokens", "16"]
    server = Server(tiny_checkpoint, data, args).start()
    yield server
    server.stop()


def test_cancel_delete_and_a_bounded_queue(one_worker: Server, tmp_path: Path) -> None:
    """A full queue refuses with 503 + Retry-After; cancelling frees a place; a running job stops midway."""
    server = one_worker
    # 1800 one-second segments: long enough to still be running when it is cancelled.
    long = make_audio(tmp_path, 1800, "long.mp3")
    running = submit(server, long, segment_duration="1").json()["job_id"]
    wait_for(lambda: status(server, running)["status"] == "processing")
    queued = [submit(server, AISHELL).json()["job_id"] for _ in range(2)]
    full = submit(server, AISHELL)
    assert "already queued" in assert_error(full, 503, "queue_full")
    assert int(full.headers["Retry-After"]) > 0
    assert len(list((server.data_dir / "jobs").iterdir())) == 3  # the refused upload was not kept

    # Cancel a queued job: its audio goes at once and its place in the queue is free again.
    cancelled = requests.delete(f"{server.url}/status/{queued[0]}", timeout=10)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert not (server.data_dir / "jobs" / queued[0]).exists()
    replacement = submit(server, AISHELL)
    assert replacement.status_code == 202

    # Cancel the running job: it stops at its next segment and the next job runs.
    body = requests.delete(f"{server.url}/status/{running}", timeout=10).json()
    assert body["status"] == "cancelled" and body["error"] == "cancelled by the client"
    wait_for(lambda: not (server.data_dir / "jobs" / running).exists())
    after = status(server, running)
    assert after["status"] == "cancelled" and after["progress"]["segments_done"] < 1800
    for job_id in (queued[1], replacement.json()["job_id"]):
        wait_for(lambda job_id=job_id: status(server, job_id)["status"] == "completed")
    assert status(server, running)["status"] == "cancelled"  # the runner finishing late did not overwrite it

    # Delete a finished job: the row, its audio and its output file go; then it is unknown.
    done = status(server, queued[1])
    output = server.data_dir / "outputs" / done["output_file"]
    assert output.exists()
    deleted = requests.delete(f"{server.url}/status/{queued[1]}", timeout=10)
    assert deleted.json() == {"job_id": queued[1], "status": "deleted"}
    assert not output.exists()
    assert_error(requests.get(f"{server.url}/status/{queued[1]}", timeout=10), 404, "job_not_found")
    assert_error(requests.delete(f"{server.url}/status/{queued[1]}", timeout=10), 404, "job_not_found")
    assert_error(requests.delete(f"{server.url}/status/{'x' * 3000}", timeout=10), 404, "job_not_found")


def test_simultaneous_submits_never_overfill_the_queue(one_worker: Server, tmp_path: Path) -> None:
    """With one job running and a limit of 2 waiting, 32 submits at once: exactly 2 are queued, 30 refused."""
    server = one_worker
    long = make_audio(tmp_path, 1800, "long.mp3")
    running = submit(server, long, segment_duration="1").json()["job_id"]
    wait_for(lambda: status(server, running)["status"] == "processing")
    data = AISHELL.read_bytes()
    barrier = threading.Barrier(32)

    def one(_: int) -> requests.Response:
        barrier.wait()
        return requests.post(f"{server.url}/transcribe/async", files={"file": ("a.wav", data)}, timeout=120)

    with ThreadPoolExecutor(32) as pool:
        responses = list(pool.map(one, range(32)))
    codes = [r.status_code for r in responses]
    assert (codes.count(202), codes.count(503)) == (2, 30), codes
    for job_id in [running, *(r.json()["job_id"] for r in responses if r.status_code == 202)]:
        requests.delete(f"{server.url}/status/{job_id}", timeout=10)
    wait_for(lambda: requests.get(server.url + "/health", timeout=5).json()["jobs"] == {"queued": 0, "running": 0})


def test_retention_expires_finished_jobs_and_outputs(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """With a retention of about 2 s, a finished job, its output and a sync output disappear on their own."""
    server = Server(tiny_checkpoint, tmp_path / "data", ["--retention-hours", "0.0005", "--max-new-tokens", "8"])
    server.start()
    try:
        job_id = submit(server, AISHELL).json()["job_id"]
        done = wait_for(lambda: (body := status(server, job_id))["status"] == "completed" and body)
        sync_output = post(server, "/transcribe/json", AISHELL).json()["output_file"]
        outputs = server.data_dir / "outputs"
        assert (outputs / done["output_file"]).exists() and (outputs / sync_output).exists()
        wait_for(lambda: requests.get(f"{server.url}/status/{job_id}", timeout=10).status_code == 404, timeout=30)
        wait_for(lambda: not any(outputs.iterdir()), timeout=30)
        assert not (server.data_dir / "jobs" / job_id).exists()
    finally:
        server.stop()


def test_load_failure_is_503_with_retry_after_and_the_service_stays_up(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """A checkpoint that cannot load: 503 naming the reason and when to retry; /health degraded; no crash;
    an async job waits for the model rather than fail."""
    broken = tmp_path / "broken-checkpoint"
    shutil.copytree(tiny_checkpoint, broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    server = Server(broken, tmp_path / "data", []).start()
    try:
        first = post(server, "/transcribe/json", AISHELL)
        message = assert_error(first, 503, "model_unavailable")
        assert "next attempt in" in message and int(first.headers["Retry-After"]) >= 1
        health = requests.get(server.url + "/health", timeout=10).json()
        assert health["status"] == "degraded" and health["model"]["state"] == "error" and health["model"]["error"]
        assert health["model"]["retry_load_in"] is not None
        assert health["problems"] == [f"the model cannot be loaded: {health['model']['error']}"]
        # Within the backoff the answer is immediate: no second load attempt is made for it.
        started = time.monotonic()
        assert_error(post(server, "/transcribe/json", AISHELL), 503, "model_unavailable")
        assert time.monotonic() - started < 5
        # Once a stream has begun its status is sent: the failure arrives as OpenAI's error event, then the end.
        with open(AISHELL, "rb") as f:
            streamed = requests.post(
                server.url + "/v1/audio/transcriptions",
                files={"file": ("a.wav", f)},
                data={"model": "whisper-1", "stream": "true"},
                timeout=60,
            )
        assert streamed.status_code == 200 and streamed.headers["Content-Type"].startswith("text/event-stream")
        events = [json.loads(line[len("data: ") :]) for line in streamed.text.splitlines() if line]
        assert [e["error"]["code"] for e in events] == ["model_unavailable"]
        assert events[0]["error"]["type"] == "server_error"
        chat = {"model": "whisper-1", "stream": True, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
        lines = requests.post(server.url + "/v1/chat/completions", json=chat, timeout=60).text.splitlines()
        chunks = [json.loads(line[len("data: ") :]) for line in lines if line]
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert chunks[-1]["error"]["code"] == "model_unavailable"
        job = submit(server, AISHELL).json()["job_id"]
        time.sleep(5)  # longer than the first backoffs: the job has met the failing load and waits again
        assert status(server, job)["status"] in ("queued", "processing")
        assert "could not be loaded" in server.log()
    finally:
        server.stop()
