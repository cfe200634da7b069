"""Faults of the machine under the real server: a full disk, a read-only job database, Ctrl-C.

The data directory is a real small filesystem (a tmpfs mounted for the test), filled and remounted
read-only under a running server. Mounting needs root (or CAP_SYS_ADMIN); where it is refused the
disk tests skip and say so.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from app.pipeline import MAX_IN_FLIGHT
from tests.support import AISHELL, JFK, Server, make_audio, post, wait_for

pytestmark = pytest.mark.e2e

DISK_MB = 96
RESERVE_MB = 8


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A DISK_MB tmpfs mounted under tmp_path, unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(disk: Path, name: str = "filler", leave: int = 0) -> Path:
    """Fill the disk with one file until `leave` bytes are free (ENOSPC stops it at 0)."""
    path = disk / name
    with contextlib.suppress(OSError), open(path, "ab") as out:
        block = b"\0" * (1 << 20)
        while True:
            free = _free(disk)
            if free <= leave:
                break
            out.write(block[: max(1, min(len(block), free - leave))])
            out.flush()
    return path


def _free(disk: Path) -> int:
    import shutil

    return shutil.disk_usage(disk).free


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[None]:
    """The directory read-only for the duration, as a read-only bind mount of itself (what is open stays open)."""
    subprocess.run(["mount", "--bind", str(directory), str(directory)], check=True)
    try:
        # Refused (busy) in the instant a file is open for writing through the new mount: try again.
        _retry(["mount", "-o", "remount,ro,bind", str(directory)])
        yield
    finally:
        _retry(["umount", str(directory)])


def _retry(cmd: list[str]) -> None:
    for _ in range(100):
        if subprocess.run(cmd, capture_output=True).returncode == 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"{' '.join(cmd)} kept failing")


def health(server: Server) -> dict[str, Any]:
    response = requests.get(server.url + "/health", timeout=5)
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def job(server: Server, job_id: str) -> dict[str, Any]:
    body: dict[str, Any] = requests.get(f"{server.url}/status/{job_id}", timeout=10).json()
    return body


def test_a_full_disk_is_reported_refused_and_recovered_from(tiny_checkpoint: Path, small_disk: Path) -> None:
    """Fill the data directory's disk under a running job and queued ones: /health says so (200), uploads get
    507, the runner survives; free the space and every job finishes, nothing stuck."""
    server = Server(
        tiny_checkpoint,
        small_disk / "data",
        ["--min-free-space", f"{RESERVE_MB}M", "--job-workers", "1", "--max-new-tokens", "4"],
    ).start()
    try:
        long = make_audio(small_disk.parent, 900, "long.mp3")
        running = post(server, "/transcribe/async", long, segment_duration="1").json()["job_id"]
        wait_for(lambda: job(server, running)["status"] == "processing", what="the long job to start")
        queued = [post(server, "/transcribe/async", AISHELL).json()["job_id"] for _ in range(2)]

        filler = fill(small_disk)
        degraded = wait_for(lambda: (h := health(server))["status"] == "degraded" and h, what="degraded health")
        assert degraded["storage"]["low"] is True and degraded["storage"]["free_bytes"] < RESERVE_MB << 20
        assert any("disk" in problem for problem in degraded["problems"])
        for route in ("/transcribe/json", "/transcribe/async"):
            refused = post(server, route, JFK)
            assert refused.status_code == 507, refused.text
            assert refused.json()["error"]["code"] == "insufficient_storage"
            assert "disk" in refused.json()["error"]["message"]
        # While the disk is full nothing new starts, and nothing fails for it: the running job either waits for
        # room to record its progress, or (if its result cannot be saved) goes back to the queue.
        time.sleep(3)
        assert job(server, running)["status"] in ("processing", "queued")
        assert all(job(server, j)["status"] == "queued" for j in queued)

        filler.unlink()
        wait_for(lambda: health(server)["status"] == "ok", what="health to recover")
        for job_id in [*queued, running]:
            done = wait_for(lambda j=job_id: (b := job(server, j))["status"] in ("completed", "failed") and b,
                            timeout=300, what=f"job {job_id}")  # fmt: skip
            assert done["status"] == "completed", done
        assert post(server, "/transcribe/json", JFK).status_code == 200
        assert health(server)["jobs"] == {"queued": 0, "running": 0}
        assert "Exception in thread" not in server.log()
    finally:
        server.stop()


def test_a_read_only_job_database_for_a_while_stops_nothing_for_good(tiny_checkpoint: Path, small_disk: Path) -> None:
    """The data directory goes read-only for 4 s while jobs run and wait: no runner dies, every job completes."""
    # One segment per generate call, so the jobs take seconds each.
    args = ["--job-workers", "2", "--max-new-tokens", "4", "--min-free-space", f"{RESERVE_MB}M", "--batch-size", "1"]
    server = Server(tiny_checkpoint, small_disk / "data", args).start()
    try:
        # Long enough (120 one-second segments each) to be running or waiting when the directory goes read-only.
        audio = make_audio(small_disk.parent, 120, "two-minutes.mp3")
        jobs = [post(server, "/transcribe/async", audio, segment_duration="1").json()["job_id"] for _ in range(4)]
        # The model loaded too: a load (seconds on a busy CPU) could otherwise outlast the whole read-only window,
        # and the runners would meet no fault at all.
        wait_for(
            lambda: (h := health(server))["jobs"] == {"queued": 2, "running": 2} and h["model_loaded"],
            what="two jobs running on the loaded model, two waiting",
        )
        with read_only(small_disk / "data"):
            time.sleep(4)
            refused = post(server, "/transcribe/async", JFK)
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "storage_unavailable"
            assert health(server)["status"] in ("ok", "degraded")
        for job_id in jobs:
            done = wait_for(lambda j=job_id: (b := job(server, j))["status"] in ("completed", "failed") and b,
                            timeout=180, what=f"job {job_id}")  # fmt: skip
            assert done["status"] == "completed", done
        assert post(server, "/transcribe/async", JFK).status_code == 202
        log = server.log()
        assert "failed; retrying" in log and "Exception in thread" not in log  # the runners met the fault
    finally:
        server.stop()


def test_ctrl_c_requeues_the_running_job_and_answers_503(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """SIGINT to the whole process group, as a terminal sends it: the running job reruns after the restart
    (not failed as undecodable), a waiting sync request gets 503 shutting_down, nothing aborts."""
    data = tmp_path / "data"
    args = ["--max-new-tokens", "8", "--job-workers", "1"]
    server = Server(tiny_checkpoint, data, args).start()
    long = make_audio(tmp_path, 600, "long.mp3")
    running = post(server, "/transcribe/async", long, segment_duration="1").json()["job_id"]
    wait_for(lambda: job(server, running)["status"] == "processing", what="the job to start")
    answer: dict[str, requests.Response | BaseException] = {}

    def sync() -> None:
        try:
            answer["sync"] = post(server, "/transcribe/json", long, segment_duration="1")
        except requests.RequestException as exc:
            answer["sync"] = exc

    waiting = threading.Thread(target=sync)
    waiting.start()
    # The job holds at most MAX_IN_FLIGHT segments in the engine, and the count may include a finished batch
    # for a moment: past both, more than a batch of the sync request's waits too, so it cannot complete.
    batch = health(server)["model"]["batch_size"]
    wait_for(lambda: health(server)["model"]["pending_segments"] > MAX_IN_FLIGHT + 2 * batch,
             what="both requests in the engine")  # fmt: skip
    server.stop(signal.SIGINT)
    waiting.join(60)
    first_log = server.log()
    sync_answer = answer["sync"]
    assert isinstance(sync_answer, requests.Response), sync_answer
    assert sync_answer.status_code == 503 and sync_answer.json()["error"]["code"] == "shutting_down"
    assert "SIGABRT" not in first_log and "not decodable" not in first_log
    assert "interrupted by the shutdown" in first_log

    restarted = Server(tiny_checkpoint, data, args).start()
    try:
        done = wait_for(lambda: (b := job(restarted, running))["status"] in ("completed", "failed") and b,
                        timeout=300, what="the rerun")  # fmt: skip
        assert done["status"] == "completed", done
    finally:
        restarted.stop()
