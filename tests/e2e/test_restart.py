"""A restart loses nothing: jobs queued or running when the server stops run after it starts again."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
import requests

from tests.support import AISHELL, JFK, Server, assert_error, make_audio, post

pytestmark = pytest.mark.e2e


def job_status(server: Server, job_id: str) -> dict:  # type: ignore[type-arg]
    """GET /status/<id>."""
    return dict(requests.get(f"{server.url}/status/{job_id}", timeout=10).json())


def wait_until(predicate, timeout: float = 120):  # type: ignore[no-untyped-def]
    """Poll predicate() until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_jobs_survive_a_restart(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """Stop the server with one job running and two queued; after a restart all three complete once."""
    data = tmp_path / "data"
    # One job at a time and one segment per generate call, so the first job is still running when we stop.
    args = ["--idle-timeout", "0", "--job-workers", "1", "--batch-size", "1"]
    server = Server(tiny_checkpoint, data, args).start()
    try:
        long = make_audio(tmp_path, 30)
        # Sampling keeps random weights from stopping early, so each segment costs a steady 64 tokens.
        slow = {"segment_duration": "1", "max_new_tokens": "64", "temperature": "1"}
        running = post(server, "/transcribe/async", long, **slow).json()["job_id"]
        queued = [post(server, "/transcribe/async", f, max_new_tokens="32").json()["job_id"] for f in (JFK, AISHELL)]
        wait_until(lambda: job_status(server, running)["progress"]["segments_done"] > 0)
        assert [job_status(server, j)["status"] for j in queued] == ["queued", "queued"], job_status(server, running)
        assert job_status(server, running)["status"] == "processing"
    finally:
        server.stop()

    with sqlite3.connect(data / "jobs.sqlite3") as db:
        states = {row[0]: row[1:] for row in db.execute("SELECT id, status, attempts FROM jobs")}
    # A clean stop puts the running job back in the queue without counting the interrupted attempt.
    assert states[running] == ("queued", 0) and all(states[j] == ("queued", 0) for j in queued)

    restarted = Server(tiny_checkpoint, data, args, port=server.port).start()
    try:
        for job_id in [running, *queued]:
            final = wait_until(
                lambda j=job_id: (s := job_status(restarted, j))["status"] in ("completed", "failed") and s
            )
            assert final["status"] == "completed", final
            output = data / "outputs" / final["output_file"]
            assert output.read_bytes().decode("utf-8") == final["transcription"] + "\n"
        assert job_status(restarted, running)["progress"]["segments_total"] >= 30
        outputs = sorted(p.name for p in (data / "outputs").iterdir())
        assert len(outputs) == 3, f"a job ran twice or not at all: {outputs}"
        assert not any((data / "jobs").iterdir()) and not any((data / "uploads").iterdir())
        health = requests.get(restarted.url + "/health", timeout=5).json()
        assert health["jobs"] == {"queued": 0, "running": 0}
    finally:
        restarted.stop()


def test_upload_over_the_limit_is_413(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """--max-upload-size is enforced with the JSON error body, and nothing is left on disk."""
    server = Server(tiny_checkpoint, tmp_path / "data", ["--max-upload-size", "64K"]).start()
    try:
        message = assert_error(post(server, "/transcribe/json", JFK), 413, "upload_too_large")
        assert str(64 * 1024) in message
        assert post(server, "/transcribe/json", AISHELL.parent / "aishell_BAC009S0724W0121.wav").status_code == 413
        assert not any((tmp_path / "data" / "uploads").iterdir())
        assert requests.get(server.url + "/health", timeout=5).json()["model"]["state"] == "unloaded"
    finally:
        server.stop()


def test_health_before_any_request_reports_unloaded(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """The model is never loaded at start-up."""
    server = Server(tiny_checkpoint, tmp_path / "data").start()
    try:
        time.sleep(1)
        health = requests.get(server.url + "/health", timeout=5).json()
        assert health["model_loaded"] is False and health["model"]["state"] == "unloaded"
        assert health["model"]["loads"] == 0 and health["model"]["idle_timeout"] == 300
    finally:
        server.stop()
