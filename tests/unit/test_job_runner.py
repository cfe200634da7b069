"""app.jobs under faults: a database that fails, a model that cannot load yet, a decode stopped by a signal,
a shutdown mid-job, a retried DELETE and simultaneous submits. Real SQLite; the pipeline is a fake that
injects the fault."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app.errors import DecodeInterrupted, ModelUnavailable, QueueFull
from app.jobs import MAX_ATTEMPTS, Job, JobRunner, JobStore
from app.protocol.native import TranscribeOptions
from app.transcript import Transcript, TranscriptSegment
from tests.support import wait_for

OPTIONS = TranscribeOptions(segment_duration=30.0, max_new_tokens=8)


class FakePipeline:
    """Runs each transcription through `behaviour`, a list consumed one call at a time (the last repeats)."""

    def __init__(self, *behaviour: Callable[..., Transcript]) -> None:
        self.behaviour = list(behaviour)
        self.calls = 0

    def transcribe(
        self,
        path: str,
        options: TranscribeOptions,
        on_progress: Any = None,
        check: Any = None,
        *,
        probed: bool = False,
        align: bool = False,
    ) -> Any:
        step = self.behaviour[min(self.calls, len(self.behaviour) - 1)]
        self.calls += 1
        return step(on_progress=on_progress, check=check)


def ok(**_: Any) -> Transcript:
    return Transcript([TranscriptSegment(0, 0.0, 1.0, "hello")], 1.0, None, 0.1)


def raising(exc: BaseException) -> Callable[..., Transcript]:
    def run(**_: Any) -> Transcript:
        raise exc

    return run


class FlakyStore(JobStore):
    """A real store whose chosen methods raise a database error the first `times` calls."""

    def __init__(self, db_path: Path, **failures: int) -> None:
        super().__init__(db_path)
        self.failures = dict(failures)

    def _maybe_fail(self, name: str) -> None:
        if self.failures.get(name, 0) > 0:
            self.failures[name] -= 1
            raise sqlite3.OperationalError("database or disk is full")

    def claim_next(self) -> Job | None:
        self._maybe_fail("claim_next")
        return super().claim_next()

    def fail(self, job_id: str, error: str, claim: str | None = None) -> None:
        self._maybe_fail("fail")
        super().fail(job_id, error)

    def complete(self, job_id: str, result: dict[str, Any], output_file: str, claim: str | None = None) -> bool:
        self._maybe_fail("complete")
        return super().complete(job_id, result, output_file)


def runner_for(tmp_path: Path, store: JobStore, pipeline: FakePipeline, workers: int = 1) -> JobRunner:
    runner = JobRunner(store, pipeline, tmp_path / "jobs", tmp_path / "outputs", workers)  # type: ignore[arg-type]
    (tmp_path / "jobs").mkdir(exist_ok=True)
    (tmp_path / "outputs").mkdir(exist_ok=True)
    return runner


def submit(store: JobStore, runner: JobRunner, job_id: str) -> None:
    audio = runner.audio_path(job_id)
    audio.parent.mkdir(parents=True)
    audio.write_bytes(b"x")
    store.create(job_id, OPTIONS, audio)
    runner.notify()


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("app.jobs.STORE_RETRY_SECONDS", (0.01, 0.05))


def test_database_errors_never_kill_a_runner(tmp_path: Path) -> None:
    """claim_next and the final write fail for a while; the runner waits, then records the outcome."""
    store = FlakyStore(tmp_path / "db.sqlite3", claim_next=3, fail=2)
    runner = runner_for(tmp_path, store, FakePipeline(raising(RuntimeError("boom")), ok))
    submit(store, runner, "a")
    runner.start()
    try:
        failed = wait_for(lambda: (job := store.get("a")) is not None and job.status == "failed" and job)
        assert failed.error == "RuntimeError: boom"
        assert store.failures == {"claim_next": 0, "fail": 0}
        # The same runner thread goes on with the next job.
        submit(store, runner, "b")
        wait_for(lambda: store.get("b").status == "completed")  # type: ignore[union-attr]
        assert runner.storage_error is None
    finally:
        runner.stop(timeout=5)


def test_a_storage_error_is_reported_until_the_write_lands(tmp_path: Path) -> None:
    """While the database refuses the write, storage_error says why (for /health); the job is not lost."""
    store = FlakyStore(tmp_path / "db.sqlite3", complete=10**9)
    runner = runner_for(tmp_path, store, FakePipeline(ok))
    submit(store, runner, "a")
    runner.start()
    try:
        wait_for(lambda: runner.storage_error)
        assert "disk is full" in runner.storage_error  # type: ignore[operator]
        assert store.get("a").status == "processing"  # type: ignore[union-attr]
        store.failures["complete"] = 0  # space is back
        wait_for(lambda: store.get("a").status == "completed")  # type: ignore[union-attr]
        assert runner.storage_error is None
    finally:
        runner.stop(timeout=5)


def test_jobs_wait_for_a_model_that_cannot_load_yet(tmp_path: Path) -> None:
    """ModelUnavailable requeues the job without counting an attempt; it runs once the model loads."""
    store = JobStore(tmp_path / "db.sqlite3")
    unavailable = ModelUnavailable("model could not be loaded: not downloaded yet", retry_after=1)
    pipeline = FakePipeline(raising(unavailable), raising(unavailable), ok)
    runner = runner_for(tmp_path, store, pipeline)
    submit(store, runner, "a")
    runner.start()
    try:
        done = wait_for(lambda: (job := store.get("a")) is not None and job.status == "completed" and job)
        assert pipeline.calls == 3 and done.attempts == 1
        assert runner.audio_path("a").parent.exists() is False
    finally:
        runner.stop(timeout=5)


def test_an_interrupted_decode_reruns_then_fails_after_max_attempts(tmp_path: Path) -> None:
    """DecodeInterrupted is not the file's fault: requeued (attempt counted), failed only after MAX_ATTEMPTS."""
    store = JobStore(tmp_path / "db.sqlite3")
    pipeline = FakePipeline(raising(DecodeInterrupted("decoding was interrupted")))
    runner = runner_for(tmp_path, store, pipeline)
    submit(store, runner, "a")
    runner.start()
    try:
        failed = wait_for(lambda: (job := store.get("a")) is not None and job.status == "failed" and job)
        assert pipeline.calls == MAX_ATTEMPTS and "interrupted" in (failed.error or "")
        assert "not decodable" not in (failed.error or "")
    finally:
        runner.stop(timeout=5)


def test_a_shutdown_requeues_the_running_job_without_counting_it(tmp_path: Path) -> None:
    """stop() interrupts the running job (its check raises); it is queued again with its audio kept."""
    store = JobStore(tmp_path / "db.sqlite3")
    started = threading.Event()

    def long_run(check: Callable[[], None], **_: Any) -> Transcript:
        started.set()
        while True:
            check()
            time.sleep(0.01)

    runner = runner_for(tmp_path, store, FakePipeline(long_run))
    submit(store, runner, "a")
    runner.start()
    assert started.wait(10)
    runner.stop(timeout=10)
    job = store.get("a")
    assert job is not None and (job.status, job.attempts) == ("queued", 0)
    assert runner.audio_path("a").exists()


def test_delete_waits_until_a_cancelled_job_has_stopped(tmp_path: Path) -> None:
    """A cancelled job still running cannot be deleted (a retried DELETE only cancels); once stopped, it can."""
    store = JobStore(tmp_path / "db.sqlite3")
    started, release = threading.Event(), threading.Event()

    def stuck(**_: Any) -> Transcript:
        started.set()
        release.wait(30)  # a segment in progress: the check is not reached until it ends
        return ok()

    runner = runner_for(tmp_path, store, FakePipeline(stuck))
    submit(store, runner, "a")
    runner.start()
    try:
        assert started.wait(10)
        assert runner.cancel("a") == "processing"
        assert runner.cancel("a") is None and runner.is_running("a")
        assert runner.delete("a") is False and store.get("a").status == "cancelled"  # type: ignore[union-attr]
        release.set()
        wait_for(lambda: not runner.is_running("a"))
        assert store.get("a").status == "cancelled"  # type: ignore[union-attr]
        assert runner.delete("a") is True and store.get("a") is None
    finally:
        release.set()
        runner.stop(timeout=5)


def test_the_queue_limit_holds_under_simultaneous_submits(tmp_path: Path) -> None:
    """32 threads submit at once against a limit of 5: exactly 5 are queued, the rest get QueueFull."""
    store = JobStore(tmp_path / "db.sqlite3")
    barrier = threading.Barrier(32)
    accepted: list[str] = []
    refused: list[str] = []

    def submit_one(n: int) -> None:
        own = JobStore(store.db_path)
        barrier.wait()
        try:
            own.create(f"j{n}", OPTIONS, tmp_path / f"{n}", max_queued=5)
            accepted.append(f"j{n}")
        except QueueFull:
            refused.append(f"j{n}")

    threads = [threading.Thread(target=submit_one, args=(n,)) for n in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert (len(accepted), len(refused)) == (5, 27)
    assert store.counts()["queued"] == 5


def test_an_older_database_gains_the_owner_column(tmp_path: Path) -> None:
    """A job database from before ownership opens, keeps its jobs (no owner), and records owners from now on."""
    db_path = tmp_path / "old.sqlite3"
    with sqlite3.connect(db_path) as db:
        db.execute(
            "CREATE TABLE jobs (id TEXT PRIMARY KEY, status TEXT NOT NULL, options TEXT NOT NULL, audio_path TEXT "
            "NOT NULL, created_at TEXT NOT NULL, started_at TEXT, completed_at TEXT, segments_done INTEGER NOT NULL "
            "DEFAULT 0, segments_total INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0, result TEXT, "
            "output_file TEXT, error TEXT)"
        )
        db.execute(
            "INSERT INTO jobs (id, status, options, audio_path, created_at) VALUES ('old', 'queued', ?, 'a', 'now')",
            ('{"segment_duration": 30.0}',),
        )
    store = JobStore(db_path)
    assert store.get("old").owner is None  # type: ignore[union-attr]
    store.create("new", OPTIONS, tmp_path / "n", owner="key-digest")
    assert store.get("new").owner == "key-digest"  # type: ignore[union-attr]
