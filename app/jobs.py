"""Asynchronous jobs: a SQLite store under the data dir, and the runner threads that work through it."""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.errors import ServiceError
from app.formats import segments_json
from app.options import TranscribeOptions
from app.outputs import now_iso, save_transcript
from app.pipeline import Pipeline

log = logging.getLogger(__name__)

# A job that was running when the process died this many times is failed instead of run again.
MAX_ATTEMPTS = 3

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

    def complete(self, job_id: str, result: dict[str, Any], output_file: str) -> None:
        """Mark done with its result."""
        with self._connect() as db:
            db.execute(
                "UPDATE jobs SET status = 'completed', completed_at = ?, result = ?, output_file = ?,"
                " segments_done = segments_total WHERE id = ?",
                (now_iso(), json.dumps(result), output_file, job_id),
            )

    def fail(self, job_id: str, error: str) -> None:
        """Mark failed with the reason."""
        with self._connect() as db:
            db.execute(
                "UPDATE jobs SET status = 'failed', completed_at = ?, error = ? WHERE id = ?",
                (now_iso(), error, job_id),
            )

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
        counts = {"queued": 0, "processing": 0, "completed": 0, "failed": 0}
        counts.update({row["status"]: row["n"] for row in rows})
        return counts


def new_job_id() -> str:
    """A random, URL-safe job id."""
    return uuid.uuid4().hex


class JobRunner:
    """Threads that take queued jobs from the store and run them through the pipeline."""

    def __init__(self, store: JobStore, pipeline: Pipeline, jobs_dir: Path, outputs_dir: Path, workers: int) -> None:
        self.store = store
        self.pipeline = pipeline
        self.jobs_dir = jobs_dir
        self.outputs_dir = outputs_dir
        self.workers = workers
        self._wake = threading.Condition()
        self._stopping = False
        self._threads: list[threading.Thread] = []

    def audio_path(self, job_id: str) -> Path:
        """Where a job's uploaded audio is kept until the job ends."""
        return self.jobs_dir / job_id / "audio"

    def start(self) -> None:
        """Requeue interrupted jobs and start the runner threads."""
        requeued = self.store.recover()
        if requeued:
            log.info("requeued %d interrupted job(s)", len(requeued))
        self._sweep()
        for n in range(self.workers):
            thread = threading.Thread(target=self._run, name=f"job-runner-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _sweep(self) -> None:
        """Remove audio left behind by jobs that ended (or never got a row) before a crash."""
        if not self.jobs_dir.is_dir():
            return
        for entry in self.jobs_dir.iterdir():
            job = self.store.get(entry.name)
            if job is None or job.status in ("completed", "failed"):
                shutil.rmtree(entry, ignore_errors=True)

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

    def _execute(self, job: Job) -> None:
        try:
            transcript = self.pipeline.transcribe(
                job.audio_path,
                job.options,
                on_progress=lambda done, total: self.store.set_progress(job.id, done, total),
            )
            text, output_file = save_transcript(self.outputs_dir, transcript)
            result = {
                "transcription": text,
                "duration": transcript.duration,
                "language": transcript.language,
                "segments": segments_json(transcript),
            }
            self.store.complete(job.id, result, output_file)
        except ServiceError as exc:
            self.store.fail(job.id, exc.message)
        except Exception as exc:  # one job's crash must not stop the runner
            log.exception("job %s failed", job.id)
            self.store.fail(job.id, f"{type(exc).__name__}: {exc}")
        # Once the job has ended its audio is no longer needed.
        shutil.rmtree(self.jobs_dir / job.id, ignore_errors=True)
