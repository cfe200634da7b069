"""Asynchronous jobs: a SQLite store under the data dir, and the runner threads that work through it."""

from __future__ import annotations

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
from typing import Any

from app.errors import ServiceError
from app.formats import segments_json, transcript_text
from app.options import TranscribeOptions
from app.outputs import now_iso, reserve_output, write_reserved
from app.pipeline import Pipeline

log = logging.getLogger(__name__)

# A job that was running when the process died this many times is failed instead of run again.
MAX_ATTEMPTS = 3
# States a job never leaves (only retention or DELETE removes it).
FINISHED = ("completed", "failed", "cancelled")

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
    error TEXT
);
CREATE INDEX IF NOT EXISTS jobs_status_created ON jobs (status, created_at);
"""


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

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        """Build from a SELECT * row."""
        data = dict(row)
        data["options"] = TranscribeOptions.from_dict(json.loads(data["options"]))
        data["result"] = json.loads(data["result"]) if data["result"] else None
        return cls(**data)


class JobStore:
    """Jobs in SQLite: every state change is one transaction, so a crash leaves no half-written row."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        db_path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # A connection per operation: request threads and runner threads never share one.
        db = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            yield db
        finally:
            db.close()

    def create(self, job_id: str, options: TranscribeOptions, audio_path: Path) -> None:
        """Record a queued job whose audio is already saved at audio_path."""
        with self._connect() as db:
            db.execute(
                "INSERT INTO jobs (id, status, options, audio_path, created_at) VALUES (?, 'queued', ?, ?, ?)",
                (job_id, json.dumps(options.to_dict()), str(audio_path), now_iso()),
            )

    def get(self, job_id: str) -> Job | None:
        """The job, or None."""
        with self._connect() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return Job.from_row(row) if row else None

    def claim_next(self) -> Job | None:
        """Atomically move the oldest queued job to processing and return it."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute(
                "SELECT id FROM jobs WHERE status = 'queued' ORDER BY created_at, rowid LIMIT 1"
            ).fetchone()
            if row is None:
                db.execute("COMMIT")
                return None
            db.execute(
                "UPDATE jobs SET status = 'processing', started_at = ?, attempts = attempts + 1,"
                " segments_done = 0 WHERE id = ?",
                (now_iso(), row["id"]),
            )
            db.execute("COMMIT")
        return self.get(row["id"])

    def set_progress(self, job_id: str, done: int, total: int) -> None:
        """Record how many segments are finished."""
        with self._connect() as db:
            db.execute(
                "UPDATE jobs SET segments_done = ?, segments_total = ? WHERE id = ? AND status = 'processing'",
                (done, total, job_id),
            )

    def set_output_file(self, job_id: str, output_file: str) -> None:
        """Record the output name reserved for a running job, so a rerun after a crash reuses it."""
        with self._connect() as db:
            db.execute("UPDATE jobs SET output_file = ? WHERE id = ?", (output_file, job_id))

    def complete(self, job_id: str, result: dict[str, Any], output_file: str) -> bool:
        """Mark a running job done with its result; False if it is no longer running (cancelled meanwhile)."""
        with self._connect() as db:
            cursor = db.execute(
                "UPDATE jobs SET status = 'completed', completed_at = ?, result = ?, output_file = ?,"
                " segments_done = segments_total WHERE id = ? AND status = 'processing'",
                (now_iso(), json.dumps(result), output_file, job_id),
            )
        return cursor.rowcount == 1

    def fail(self, job_id: str, error: str) -> None:
        """Mark a running job failed with the reason (a cancelled one stays cancelled)."""
        with self._connect() as db:
            db.execute(
                "UPDATE jobs SET status = 'failed', completed_at = ?, error = ? WHERE id = ? AND status = 'processing'",
                (now_iso(), error, job_id),
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
                "UPDATE jobs SET status = 'cancelled', completed_at = ?, error = ? WHERE id = ?",
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
                "SELECT id FROM jobs WHERE status IN ('completed', 'failed', 'cancelled') AND completed_at < ?",
                (cutoff,),
            ).fetchall()
        return [str(row["id"]) for row in rows]

    def recover(self) -> list[str]:
        """At start-up: requeue jobs that were running when the process died (or fail them after MAX_ATTEMPTS)."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            rows = db.execute("SELECT id, attempts FROM jobs WHERE status = 'processing'").fetchall()
            requeued = []
            for row in rows:
                if row["attempts"] >= MAX_ATTEMPTS:
                    db.execute(
                        "UPDATE jobs SET status = 'failed', completed_at = ?, error = ? WHERE id = ?",
                        (now_iso(), f"the service stopped while running this job {row['attempts']} times", row["id"]),
                    )
                else:
                    db.execute("UPDATE jobs SET status = 'queued', segments_done = 0 WHERE id = ?", (row["id"],))
                    requeued.append(row["id"])
            db.execute("COMMIT")
        return requeued

    def counts(self) -> dict[str, int]:
        """Number of jobs per status."""
        with self._connect() as db:
            rows = db.execute("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status").fetchall()
        counts = {"queued": 0, "processing": 0, "completed": 0, "failed": 0, "cancelled": 0}
        counts.update({row["status"]: row["n"] for row in rows})
        return counts


def new_job_id() -> str:
    """A random, URL-safe job id."""
    return uuid.uuid4().hex


class JobCancelled(Exception):
    """Raised inside a running job's pipeline once the client cancelled it."""


class JobRunner:
    """Threads that take queued jobs from the store and run them through the pipeline."""

    def __init__(
        self,
        store: JobStore,
        pipeline: Pipeline,
        jobs_dir: Path,
        outputs_dir: Path,
        workers: int,
        retention_seconds: float = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.pipeline = pipeline
        self.jobs_dir = jobs_dir
        self.outputs_dir = outputs_dir
        self.workers = workers
        self.retention_seconds = retention_seconds
        self._clock = clock
        self._wake = threading.Condition()
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._cancelled: set[str] = set()

    def audio_path(self, job_id: str) -> Path:
        """Where a job's uploaded audio is kept until the job ends."""
        return self.jobs_dir / job_id / "audio"

    def start(self) -> None:
        """Requeue interrupted jobs and start the runner threads and the retention sweeper."""
        requeued = self.store.recover()
        if requeued:
            log.info("requeued %d interrupted job(s)", len(requeued))
        self._sweep()
        self.expire()
        for n in range(self.workers):
            thread = threading.Thread(target=self._run, name=f"job-runner-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)
        if self.retention_seconds > 0:
            thread = threading.Thread(target=self._expire_periodically, name="job-retention", daemon=True)
            thread.start()
            self._threads.append(thread)

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

    def cancel(self, job_id: str) -> str | None:
        """Cancel a queued or running job; returns the status it had, or None if it had already finished.

        A queued job's audio goes at once; a running one stops when its next segment finishes.
        """
        previous = self.store.cancel(job_id)
        if previous == "processing":
            with self._wake:
                self._cancelled.add(job_id)
        elif previous == "queued":
            shutil.rmtree(self.jobs_dir / job_id, ignore_errors=True)
        return previous

    def delete(self, job_id: str) -> bool:
        """Delete a finished job with its files; False when there is none or it has not finished."""
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
        while True:
            with self._wake:
                if self._stopping:
                    return
                self._wake.wait(timeout=interval)
                if self._stopping:
                    return
            try:
                self.expire()
            except Exception:  # a failed sweep is retried at the next interval, never fatal
                log.exception("retention sweep failed")

    def notify(self) -> None:
        """Wake a runner: a job was queued."""
        with self._wake:
            self._wake.notify()

    def stop(self) -> None:
        """Ask the runners to stop after their current job."""
        with self._wake:
            self._stopping = True
            self._wake.notify_all()

    def _run(self) -> None:
        while True:
            with self._wake:
                if self._stopping:
                    return
            job = self.store.claim_next()
            if job is None:
                with self._wake:
                    # The timeout also picks up jobs queued by another process sharing the data dir.
                    self._wake.wait(timeout=2.0)
                continue
            self._execute(job)

    def _progress(self, job_id: str, done: int, total: int) -> None:
        with self._wake:
            if job_id in self._cancelled:
                raise JobCancelled(job_id)
        self.store.set_progress(job_id, done, total)

    def _execute(self, job: Job) -> None:
        try:
            transcript = self.pipeline.transcribe(
                job.audio_path, job.options, on_progress=lambda done, total: self._progress(job.id, done, total)
            )
            text = transcript_text(transcript)
            # A rerun after a crash rewrites the name its first attempt reserved: one output per job, ever.
            output_file = job.output_file or reserve_output(self.outputs_dir)
            if job.output_file is None:
                self.store.set_output_file(job.id, output_file)
            write_reserved(self.outputs_dir, output_file, text + "\n")
            result = {
                "transcription": text,
                "duration": transcript.duration,
                "language": transcript.language,
                "segments": segments_json(transcript),
            }
            if not self.store.complete(job.id, result, output_file):
                # Cancelled in the moment between its last segment and now: it leaves nothing behind.
                (self.outputs_dir / output_file).unlink(missing_ok=True)
        except JobCancelled:
            log.info("job %s cancelled while running", job.id)
        except ServiceError as exc:
            self.store.fail(job.id, exc.message)
        except Exception as exc:  # one job's crash must not stop the runner
            log.exception("job %s failed", job.id)
            self.store.fail(job.id, f"{type(exc).__name__}: {exc}")
        finally:
            with self._wake:
                self._cancelled.discard(job.id)
        # Once the job has ended its audio is no longer needed.
        shutil.rmtree(self.jobs_dir / job.id, ignore_errors=True)
