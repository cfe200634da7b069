"""Asynchronous jobs: a SQLite store under the data dir, and the runner threads that work through it."""

from __future__ import annotations

import functools
import json
import logging
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from app.errors import (
    DecodeInterrupted,
    ModelUnavailable,
    QueueFull,
    ServiceError,
    ShuttingDown,
    storage_error,
)
from app.outputs import now_iso, reserve_output, write_reserved
from app.pipeline import Pipeline
from app.protocol.native import FINISHED, JobState, TranscribeOptions, TranscriptResult
from app.storage import DiskGuard
from app.tracing import working_for

log = logging.getLogger(__name__)

# A job that was running when the process died this many times is failed instead of run again.
MAX_ATTEMPTS = 3
# The SQL below names states through these, so a state is spelled in one place (JobState).
_QUEUED, _PROCESSING, _COMPLETED, _FAILED, _CANCELLED = (state.value for state in JobState)
_FINISHED_SQL = ", ".join(f"'{state.value}'" for state in FINISHED)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    options TEXT NOT NULL,
    audio_path TEXT NOT NULL,
    created_at TEXT NOT NULL,
    started_at TEXT,
    completed_at TEXT,
    segments_done INTEGER NOT NULL DEFAULT 0,
    segments_total INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    result TEXT,
    output_file TEXT,
    error TEXT,
    owner TEXT,
    name TEXT,
    request_id TEXT
);
CREATE INDEX IF NOT EXISTS jobs_status_created ON jobs (status, created_at);
"""
# Columns added since the first schema, with their definitions: a database from an older version gains them.
_ADDED_COLUMNS = {"owner": "TEXT", "name": "TEXT", "request_id": "TEXT"}


@dataclass(frozen=True)
class Job:
    """One row of the jobs table."""

    id: str
    status: str
    options: TranscribeOptions
    audio_path: str
    created_at: str
    started_at: str | None
    completed_at: str | None
    segments_done: int
    segments_total: int
    attempts: int
    result: dict[str, Any] | None
    output_file: str | None
    error: str | None
    # Who submitted it: the digest of the API key it came with, or None when the server had no keys.
    owner: str | None = None
    # The upload's name without its extension, which the result's downloads are named after.
    name: str | None = None
    # The X-Request-ID of the request that submitted it: its run logs under the same id.
    request_id: str | None = None
    # A shared store's token for this run (cluster mode): only writes naming it reach the job. None in SQLite.
    claim: str | None = None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        """Build from a SELECT * row."""
        data = dict(row)
        data["options"] = TranscribeOptions.from_dict(json.loads(data["options"]))
        data["result"] = json.loads(data["result"]) if data["result"] else None
        return cls(**data)


class Store(Protocol):
    """What the runner and the routes need of a job store: SQLite here, Redis in cluster mode (app/redis_jobs.py)."""

    # Seconds a claim holds without renew() (0: claims are this process's alone, recovered at start only).
    lease_seconds: float

    def create(
        self,
        job_id: str,
        options: TranscribeOptions,
        audio_path: Path,
        *,
        owner: str | None = None,
        max_queued: int | None = None,
        name: str | None = None,
        request_id: str | None = None,
    ) -> None: ...
    def get(self, job_id: str) -> Job | None: ...
    def queue_position(self, job_id: str) -> int | None: ...
    def claim_next(self) -> Job | None: ...
    def renew(self, job_id: str, claim: str | None = None) -> bool: ...
    def reclaim(self) -> list[str]: ...
    def set_progress(self, job_id: str, done: int, total: int, claim: str | None = None) -> None: ...
    def set_output_file(self, job_id: str, output_file: str, claim: str | None = None) -> None: ...
    def complete(self, job_id: str, result: dict[str, Any], output_file: str, claim: str | None = None) -> bool: ...
    def fail(self, job_id: str, error: str, claim: str | None = None) -> None: ...
    def requeue(self, job_id: str, *, count_attempt: bool = True, claim: str | None = None) -> None: ...
    def cancel(self, job_id: str) -> str | None: ...
    def delete(self, job_id: str) -> Job | None: ...
    def finished_before(self, cutoff: str) -> list[str]: ...
    def recover(self) -> list[str]: ...
    def counts(self) -> dict[str, int]: ...
    def fetch_audio(self, job_id: str, target: Path) -> bool: ...


class JobStore:
    """Jobs in SQLite: every state change is one transaction, so a crash leaves no half-written row."""

    # One process owns the database: its claims need no lease, and recover() at start takes them all back.
    lease_seconds = 0.0

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        db_path.parent.mkdir(parents=True, exist_ok=True)
        # Held open for the store's lifetime: SQLite removes the WAL and its index when the last connection
        # closes, and recreating them takes disk space, so without this one even reads fail on a full disk.
        # It only holds them once it has used the WAL itself, so the schema is set up through it.
        self._keeper = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None)
        self._keeper.row_factory = sqlite3.Row
        self._keeper.execute("PRAGMA journal_mode=WAL")
        self._keeper.executescript(_SCHEMA)
        present = {row["name"] for row in self._keeper.execute("PRAGMA table_info(jobs)")}
        for column, definition in _ADDED_COLUMNS.items():
            if column not in present:
                self._keeper.execute(f"ALTER TABLE jobs ADD COLUMN {column} {definition}")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # A connection per operation: request threads and runner threads never share one.
        db = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            yield db
        finally:
            db.close()

    def create(
        self,
        job_id: str,
        options: TranscribeOptions,
        audio_path: Path,
        *,
        owner: str | None = None,
        max_queued: int | None = None,
        name: str | None = None,
        request_id: str | None = None,
    ) -> None:
        """Record a queued job whose audio is already saved at audio_path; QueueFull if max_queued are waiting.

        The count and the insert are one transaction, so simultaneous submits cannot all pass the check.
        """
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                if max_queued is not None:
                    waiting = db.execute(f"SELECT COUNT(*) FROM jobs WHERE status = '{_QUEUED}'").fetchone()[0]
                    if waiting >= max_queued:
                        raise QueueFull(f"{max_queued} jobs are already queued; try again later", retry_after=60)
                db.execute(
                    "INSERT INTO jobs (id, status, options, audio_path, created_at, owner, name, request_id)"
                    f" VALUES (?, '{_QUEUED}', ?, ?, ?, ?, ?, ?)",
                    (job_id, json.dumps(options.to_dict()), str(audio_path), now_iso(), owner, name, request_id),
                )
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def get(self, job_id: str) -> Job | None:
        """The job, or None."""
        with self._connect() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return Job.from_row(row) if row else None

    def queue_position(self, job_id: str) -> int | None:
        """Where a queued job stands: 1 for the next one to start; None when it is not queued."""
        with self._connect() as db:
            row = db.execute(
                "SELECT COUNT(*) AS ahead FROM jobs AS other, jobs AS job WHERE job.id = ?"
                f" AND job.status = '{_QUEUED}' AND other.status = '{_QUEUED}'"
                " AND (other.created_at, other.rowid) <= (job.created_at, job.rowid)",
                (job_id,),
            ).fetchone()
        return int(row["ahead"]) or None

    def claim_next(self) -> Job | None:
        """Atomically move the oldest queued job to processing and return it."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute(
                f"SELECT id FROM jobs WHERE status = '{_QUEUED}' ORDER BY created_at, rowid LIMIT 1"
            ).fetchone()
            if row is None:
                db.execute("COMMIT")
                return None
            db.execute(
                f"UPDATE jobs SET status = '{_PROCESSING}', started_at = ?, attempts = attempts + 1,"
                " segments_done = 0 WHERE id = ?",
                (now_iso(), row["id"]),
            )
            db.execute("COMMIT")
        return self.get(row["id"])

    def renew(self, job_id: str, claim: str | None = None) -> bool:
        """Claims here hold without a lease (see lease_seconds)."""
        return True

    def reclaim(self) -> list[str]:
        """No other process holds claims here: nothing to take back."""
        return []

    def fetch_audio(self, job_id: str, target: Path) -> bool:
        """A job's audio is only ever where its upload was kept: nothing is stored elsewhere."""
        return False

    def set_progress(self, job_id: str, done: int, total: int, claim: str | None = None) -> None:
        """Record how many segments are finished (one process: no claim to check)."""
        with self._connect() as db:
            db.execute(
                f"UPDATE jobs SET segments_done = ?, segments_total = ? WHERE id = ? AND status = '{_PROCESSING}'",
                (done, total, job_id),
            )

    def set_output_file(self, job_id: str, output_file: str, claim: str | None = None) -> None:
        """Record the output name reserved for a running job, so a rerun after a crash reuses it."""
        with self._connect() as db:
            db.execute("UPDATE jobs SET output_file = ? WHERE id = ?", (output_file, job_id))

    def complete(self, job_id: str, result: dict[str, Any], output_file: str, claim: str | None = None) -> bool:
        """Mark a running job done with its result; False if it is no longer running (cancelled meanwhile)."""
        with self._connect() as db:
            cursor = db.execute(
                f"UPDATE jobs SET status = '{_COMPLETED}', completed_at = ?, result = ?, output_file = ?,"
                f" segments_done = segments_total WHERE id = ? AND status = '{_PROCESSING}'",
                (now_iso(), json.dumps(result), output_file, job_id),
            )
        return cursor.rowcount == 1

    def fail(self, job_id: str, error: str, claim: str | None = None) -> None:
        """Mark a running job failed with the reason (a cancelled one stays cancelled)."""
        with self._connect() as db:
            db.execute(
                f"UPDATE jobs SET status = '{_FAILED}', completed_at = ?, error = ?"
                f" WHERE id = ? AND status = '{_PROCESSING}'",
                (now_iso(), error, job_id),
            )

    def requeue(self, job_id: str, *, count_attempt: bool = True, claim: str | None = None) -> None:
        """Put a running job back in the queue (its run was interrupted, not failed); the attempt may be uncounted."""
        with self._connect() as db:
            db.execute(
                f"UPDATE jobs SET status = '{_QUEUED}', segments_done = 0, attempts = attempts - ?"
                f" WHERE id = ? AND status = '{_PROCESSING}'",
                (0 if count_attempt else 1, job_id),
            )

    def cancel(self, job_id: str) -> str | None:
        """Cancel a queued or running job; returns the status it had, or None if it had already finished."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or row["status"] in FINISHED:
                db.execute("COMMIT")
                return None
            db.execute(
                f"UPDATE jobs SET status = '{_CANCELLED}', completed_at = ?, error = ? WHERE id = ?",
                (now_iso(), "cancelled by the client", job_id),
            )
            db.execute("COMMIT")
        return str(row["status"])

    def delete(self, job_id: str) -> Job | None:
        """Remove a finished job's row; returns it, or None when there is none or it has not finished."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or row["status"] not in FINISHED:
                db.execute("COMMIT")
                return None
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            db.execute("COMMIT")
        return Job.from_row(row)

    def finished_before(self, cutoff: str) -> list[str]:
        """Ids of jobs that finished before the ISO time cutoff."""
        with self._connect() as db:
            rows = db.execute(
                f"SELECT id FROM jobs WHERE status IN ({_FINISHED_SQL}) AND completed_at < ?",
                (cutoff,),
            ).fetchall()
        return [str(row["id"]) for row in rows]

    def recover(self) -> list[str]:
        """At start-up: requeue jobs that were running when the process died (or fail them after MAX_ATTEMPTS)."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            rows = db.execute(f"SELECT id, attempts FROM jobs WHERE status = '{_PROCESSING}'").fetchall()
            requeued = []
            for row in rows:
                if row["attempts"] >= MAX_ATTEMPTS:
                    db.execute(
                        f"UPDATE jobs SET status = '{_FAILED}', completed_at = ?, error = ? WHERE id = ?",
                        (now_iso(), f"the service stopped while running this job {row['attempts']} times", row["id"]),
                    )
                else:
                    db.execute(f"UPDATE jobs SET status = '{_QUEUED}', segments_done = 0 WHERE id = ?", (row["id"],))
                    requeued.append(row["id"])
            db.execute("COMMIT")
        return requeued

    def counts(self) -> dict[str, int]:
        """Number of jobs per status."""
        with self._connect() as db:
            rows = db.execute("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status").fetchall()
        counts = {state.value: 0 for state in JobState}
        counts.update({row["status"]: row["n"] for row in rows})
        return counts


def new_job_id() -> str:
    """A random, URL-safe job id."""
    return uuid.uuid4().hex


class JobCancelled(Exception):
    """Raised inside a running job's pipeline once the client cancelled it."""


class JobInterrupted(Exception):
    """Raised inside a running job's pipeline when the service is stopping: the job runs again after the restart."""


# With a shared store (cluster mode), how often a node removes the local copies of audio of jobs that ended.
LOCAL_SWEEP_SECONDS = 60.0
# A runner that cannot reach the job database waits this long before trying again, doubling up to the second.
STORE_RETRY_SECONDS = (0.5, 30.0)


class JobRunner:
    """Threads that take queued jobs from the store and run them through the pipeline.

    A runner thread never dies of a job or of the database: a failed job fails, a database error (a full
    disk, a read-only file) is retried with a backoff until it clears, and a job whose run was interrupted
    (the model cannot load yet, the service is stopping) goes back to the queue rather than failing.
    """

    def __init__(
        self,
        store: Store,
        pipeline: Pipeline,
        jobs_dir: Path,
        outputs_dir: Path,
        workers: int,
        retention_seconds: float = 0,
        clock: Callable[[], float] = time.time,
        disk: DiskGuard | None = None,
    ) -> None:
        self.store = store
        # No job is started while the data directory's disk is below its reserve: it would fail for want of
        # room to write its result. Queued jobs wait until space comes back.
        self.disk = disk
        self.pipeline = pipeline
        self.jobs_dir = jobs_dir
        self.outputs_dir = outputs_dir
        self.workers = workers
        self.retention_seconds = retention_seconds
        self._clock = clock
        self._wake = threading.Condition()
        self._stopping = False
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []
        self._cancelled: set[str] = set()
        # Jobs a runner thread is working on now (a cancelled one stays here until its run has stopped).
        self._running: dict[str, str | None] = {}
        # No claims before this time (time.monotonic()): the model is in a load backoff.
        self._paused_until = 0.0
        # The last storage failure a runner met (message), cleared by the next successful write; for /health.
        self.storage_error: str | None = None

    def audio_path(self, job_id: str) -> Path:
        """Where a job's uploaded audio is kept until the job ends."""
        return self.jobs_dir / job_id / "audio"

    def start(self) -> None:
        """Requeue interrupted jobs and start the runner threads and the retention sweeper."""
        try:
            requeued = self.store.recover()
            if requeued:
                log.info("requeued %d interrupted job(s)", len(requeued))
            self._sweep()
            self.expire()
        except ServiceError:
            # A shared store that cannot be reached yet (cluster mode): the service comes up and says so in
            # /health; jobs whose leases run out meanwhile are taken back by the lease keeper.
            log.exception("the job store cannot be reached at start; interrupted jobs are taken back later")
        for n in range(self.workers):
            thread = threading.Thread(target=self._run, name=f"job-runner-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)
        if self.retention_seconds > 0:
            thread = threading.Thread(target=self._expire_periodically, name="job-retention", daemon=True)
            thread.start()
            self._threads.append(thread)
        if self.store.lease_seconds > 0:
            thread = threading.Thread(target=self._keep_leases, name="job-leases", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _keep_leases(self) -> None:
        """Renew the leases of the jobs running here, take back those of nodes that stopped, sweep old audio.

        A lease this node no longer holds (the job was cancelled on another node, or taken back after this
        node stalled) stops the job's run here, as a cancellation does.
        """
        interval = self.store.lease_seconds / 10
        swept = time.monotonic()
        while not self._stopped.wait(interval):
            with self._wake:
                running = [(job_id, claim) for job_id, claim in self._running.items() if job_id not in self._cancelled]
            try:
                for job_id, claim in running:
                    if not self.store.renew(job_id, claim):
                        log.info("job %s is no longer this node's to run (cancelled or taken back)", job_id)
                        with self._wake:
                            self._cancelled.add(job_id)
                if self.store.reclaim():
                    self.notify()
                if time.monotonic() - swept > LOCAL_SWEEP_SECONDS:
                    swept = time.monotonic()
                    self._sweep()
            except Exception:  # the store is unreachable for now: the next round tries again
                log.warning("keeping the job leases failed; retrying", exc_info=True)

    def _sweep(self) -> None:
        """Remove audio left behind by jobs that ended (or never got a row) and half-written outputs."""
        if self.jobs_dir.is_dir():
            for entry in self.jobs_dir.iterdir():
                job = self.store.get(entry.name)
                if job is None or job.status in FINISHED:
                    shutil.rmtree(entry, ignore_errors=True)
        if self.outputs_dir.is_dir():
            for tmp in self.outputs_dir.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)

    def is_running(self, job_id: str) -> bool:
        """Whether a runner thread is still working on the job (a cancelled one, until it has stopped)."""
        with self._wake:
            return job_id in self._running

    def cancel(self, job_id: str) -> str | None:
        """Cancel a queued or running job; returns the status it had, or None if it had already finished.

        A queued job's audio goes at once; a running one stops when its next segment finishes.
        """
        previous = self.store.cancel(job_id)
        if previous == JobState.PROCESSING:
            with self._wake:
                # Running here: it stops at its next segment. Running on another node (cluster mode), that node
                # finds out when it renews its lease.
                if job_id in self._running:
                    self._cancelled.add(job_id)
        elif previous == JobState.QUEUED:
            shutil.rmtree(self.jobs_dir / job_id, ignore_errors=True)
        return previous

    def delete(self, job_id: str) -> bool:
        """Delete a finished job with its files; False when there is none, it has not finished or is still stopping."""
        if self.is_running(job_id):
            return False
        job = self.store.delete(job_id)
        if job is None:
            return False
        self._remove_files(job.id, job.output_file)
        return True

    def _remove_files(self, job_id: str, output_file: str | None) -> None:
        shutil.rmtree(self.jobs_dir / job_id, ignore_errors=True)
        if output_file:
            (self.outputs_dir / output_file).unlink(missing_ok=True)

    def expire(self) -> int:
        """Delete finished jobs, their files and output files older than the retention; returns jobs deleted."""
        if self.retention_seconds <= 0:
            return 0
        cutoff = self._clock() - self.retention_seconds
        stamp = datetime.fromtimestamp(cutoff, UTC).isoformat(timespec="seconds")
        deleted = 0
        for job_id in self.store.finished_before(stamp):
            deleted += self.delete(job_id)
        # Outputs of synchronous requests have no job row: their age is their file's.
        if self.outputs_dir.is_dir():
            for path in self.outputs_dir.glob("*.txt"):
                try:
                    if path.stat().st_mtime < cutoff:
                        path.unlink(missing_ok=True)
                except FileNotFoundError:
                    pass
        if deleted:
            log.info("retention: deleted %d finished job(s)", deleted)
        return deleted

    def _expire_periodically(self) -> None:
        interval = min(3600.0, max(1.0, self.retention_seconds / 10))
        while self._sleep(interval):
            try:
                self.expire()
            except Exception:  # a failed sweep is retried at the next interval, never fatal
                log.exception("retention sweep failed")

    def notify(self) -> None:
        """Wake a runner: a job was queued."""
        with self._wake:
            self._wake.notify()

    def stop(self, timeout: float = 0) -> None:
        """Stop the runners: running jobs are interrupted and requeued; waits up to timeout for them to stop."""
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        self._stopped.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _sleep(self, seconds: float) -> bool:
        """Wait up to seconds, or until stop() or notify(); False once the runners are stopping."""
        with self._wake:
            if not self._stopping:
                self._wake.wait(timeout=seconds)
            return not self._stopping

    def _run(self) -> None:
        failures = 0
        while True:
            with self._wake:
                if self._stopping:
                    return
                paused = self._paused_until - time.monotonic()
            if paused > 0:
                self._sleep(paused)
                continue
            if self.disk is not None and self.disk.low():
                # /health reports the low disk itself; jobs simply wait for room.
                self._sleep(2.0)
                continue
            try:
                job = self.store.claim_next()
            except Exception as exc:  # the database is unwritable for now: wait, never die
                log.warning("claiming a job failed; retrying", exc_info=True)
                failures += 1
                self._note_storage(exc)
                self._sleep(_backoff(failures))
                continue
            failures = 0
            self.storage_error = None  # the database took a write again
            if job is None:
                # The timeout also picks up jobs queued by another process sharing the data dir.
                self._sleep(2.0)
                continue
            self._execute(job)

    def _note_storage(self, exc: BaseException) -> None:
        error = storage_error(exc)
        self.storage_error = error.message if error is not None else f"{type(exc).__name__}: {exc}"

    def _check(self, job_id: str) -> None:
        """Raise if the running job must stop: cancelled by its client, or the service is stopping."""
        with self._wake:
            if job_id in self._cancelled:
                raise JobCancelled(job_id)
            if self._stopping:
                raise JobInterrupted(job_id)

    def _progress(self, job: Job, done: int, total: int) -> None:
        self._check(job.id)
        self.store.set_progress(job.id, done, total, job.claim)

    def _execute(self, job: Job) -> None:
        with self._wake:
            busy = job.id in self._running
            if not busy:
                self._running[job.id] = job.claim
        if busy:
            # Cluster mode: this node let a lease lapse, the job was taken back, and it came back here while its
            # old run is still ending. The new claim goes back to the queue (its attempt uncounted) meanwhile.
            self._record(job, functools.partial(self._requeue, job, count_attempt=False))
            self._sleep(1.0)
            return
        try:
            # The run's log lines (and the audio it decodes) belong to the request that submitted the job.
            with working_for(job.request_id):
                finished = self._record(job, self._attempt(job))
        finally:
            with self._wake:
                self._cancelled.discard(job.id)
                self._running.pop(job.id, None)
        if finished:
            # Once the job has ended its audio is no longer needed (a requeued job keeps it for its next run).
            shutil.rmtree(self.jobs_dir / job.id, ignore_errors=True)

    def _attempt(self, job: Job) -> Callable[[], bool]:
        """Run the job once; returns the write that records how it went (True when that ends the job)."""
        try:
            audio = Path(job.audio_path)
            if not audio.exists():
                # Queued on another node (cluster mode): its audio comes from the shared store.
                audio = self.audio_path(job.id)
                if not self.store.fetch_audio(job.id, audio):
                    return functools.partial(self._fail, job, "its audio is no longer stored")
            transcript = self.pipeline.transcribe(
                audio,
                job.options,
                on_progress=lambda done, total: self._progress(job, done, total),
                check=lambda: self._check(job.id),
                # The upload route probed the file before queuing it.
                probed=True,
                # Its result can be fetched later in every format, subtitles included.
                align=True,
            )
            text = transcript.text
            # A rerun after a crash rewrites the name its first attempt reserved: one output per job, ever.
            output_file = job.output_file or reserve_output(self.outputs_dir)
            if job.output_file is None:
                self.store.set_output_file(job.id, output_file, job.claim)
            write_reserved(self.outputs_dir, output_file, text + "\n")
        except JobCancelled:
            log.info("job %s cancelled while running", job.id)
            return lambda: True
        except (JobInterrupted, ShuttingDown):
            log.info("job %s interrupted by the shutdown; it runs again after the restart", job.id)
            return functools.partial(self._requeue, job, count_attempt=False)
        except ModelUnavailable as exc:
            # The model cannot load yet (a backoff, a download to come): wait for it rather than fail the job.
            with self._wake:
                self._paused_until = time.monotonic() + (exc.retry_after or 2)
            log.info("job %s waits for the model: %s", job.id, exc.message)
            return functools.partial(self._requeue, job, count_attempt=False)
        except DecodeInterrupted as exc:
            log.warning("job %s: %s; it is queued again", job.id, exc.message)
            return functools.partial(self._requeue, job, count_attempt=True, reason=exc.message)
        except ServiceError as exc:
            return functools.partial(self._fail, job, exc.message)
        except Exception as exc:  # one job's crash must not stop the runner
            if storage_error(exc) is not None:
                # The disk filled (or went read-only) under the job: not its fault. It runs again once the
                # runners can write (claims wait while the disk is low), and fails only after MAX_ATTEMPTS.
                log.error("job %s could not be saved (%s); it is queued again", job.id, exc)
                reason = f"its results could not be saved: {exc}"
                return functools.partial(self._requeue, job, count_attempt=True, reason=reason)
            log.exception("job %s failed", job.id)
            return functools.partial(self._fail, job, f"{type(exc).__name__}: {exc}")
        # Every segment's words are kept, so that each format can be fetched later with its timing.
        result = TranscriptResult.of(transcript, words=True).body()

        def complete() -> bool:
            if not self.store.complete(job.id, result, output_file, job.claim):
                # Cancelled in the moment between its last segment and now: it leaves nothing behind.
                (self.outputs_dir / output_file).unlink(missing_ok=True)
            return True

        return complete

    def _fail(self, job: Job, message: str) -> bool:
        self.store.fail(job.id, message, job.claim)
        return True

    def _requeue(self, job: Job, *, count_attempt: bool, reason: str = "") -> bool:
        """Back to the queue; a job interrupted MAX_ATTEMPTS times by faults is failed instead (True)."""
        if count_attempt and job.attempts >= MAX_ATTEMPTS:
            self.store.fail(job.id, f"it was interrupted {job.attempts} times; the last time {reason}", job.claim)
            return True
        self.store.requeue(job.id, count_attempt=count_attempt, claim=job.claim)
        self.notify()
        return False

    def _record(self, job: Job, write: Callable[[], bool]) -> bool:
        """Apply a job's final write, retrying while the database cannot take it; whether the job ended.

        Should the runners stop first, the job is left as it is: processing, requeued at the next start.
        """
        failures = 0
        while True:
            try:
                finished = write()
            except Exception as exc:  # the database is unwritable for now: retry, never die
                log.warning("recording job %s's outcome failed; retrying", job.id, exc_info=True)
                failures += 1
                self._note_storage(exc)
                if not self._sleep(_backoff(failures)):
                    return False
                continue
            self.storage_error = None
            return finished


def _backoff(failures: int) -> float:
    first, most = STORE_RETRY_SECONDS
    return float(min(most, first * 2 ** (failures - 1)))
