"""app.jobs.JobStore on a real SQLite file."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from app.jobs import MAX_ATTEMPTS, JobStore, new_job_id
from app.protocol.native import TranscribeOptions

OPTIONS = TranscribeOptions(segment_duration=30.0, max_new_tokens=100, language="en", prompt="p")


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    """A fresh store in a nested directory (created on demand)."""
    return JobStore(tmp_path / "data" / "jobs.db")


def test_create_and_get(store: JobStore, tmp_path: Path) -> None:
    """A created job is queued with its options and audio path."""
    store.create("job-1", OPTIONS, tmp_path / "a.wav")
    job = store.get("job-1")
    assert job is not None
    assert job.id == "job-1"
    assert job.status == "queued"
    assert job.options == OPTIONS
    assert job.audio_path == str(tmp_path / "a.wav")
    assert (job.attempts, job.segments_done, job.segments_total) == (0, 0, 0)
    assert job.started_at is None
    assert job.result is None
    assert job.error is None
    assert job.created_at.endswith("+00:00")


def test_get_unknown(store: JobStore) -> None:
    """An unknown id is None."""
    assert store.get("nope") is None


def test_new_job_id() -> None:
    """Job ids are 32 hex chars and unique."""
    ids = {new_job_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_claim_next_oldest_first(store: JobStore, tmp_path: Path) -> None:
    """Jobs are claimed in creation order, move to processing, count an attempt; None when empty."""
    for n in range(3):
        store.create(f"j{n}", OPTIONS, tmp_path / f"{n}.wav")
    claimed = [store.claim_next() for _ in range(3)]
    assert [j.id for j in claimed if j] == ["j0", "j1", "j2"]
    for job in claimed:
        assert job is not None
        assert job.status == "processing"
        assert job.attempts == 1
        assert job.started_at is not None
    assert store.claim_next() is None
    assert store.counts() == {"queued": 0, "processing": 3, "completed": 0, "failed": 0, "cancelled": 0}


def test_queue_position_counts_the_queued_jobs_ahead(store: JobStore, tmp_path: Path) -> None:
    """1 for the next job to start, in claim order; None once claimed, cancelled, or unknown."""
    for n in range(4):
        store.create(f"j{n}", OPTIONS, tmp_path / f"{n}.wav")
    assert [store.queue_position(f"j{n}") for n in range(4)] == [1, 2, 3, 4]
    claimed = store.claim_next()
    assert claimed is not None and claimed.id == "j0"
    store.cancel("j2")
    assert [store.queue_position(f"j{n}") for n in range(4)] == [None, 1, None, 2]
    assert store.queue_position("nothing") is None


def test_claim_next_empty_store(store: JobStore) -> None:
    """Nothing queued: None."""
    assert store.claim_next() is None


def test_progress_complete_and_counts(store: JobStore, tmp_path: Path) -> None:
    """Progress is recorded while processing; completion stores the result and finishes the count."""
    store.create("a", OPTIONS, tmp_path / "a")
    store.create("b", OPTIONS, tmp_path / "b")
    store.set_progress("a", 1, 4)  # still queued: ignored
    assert store.get("a").segments_total == 0  # type: ignore[union-attr]
    assert store.claim_next().id == "a"  # type: ignore[union-attr]
    store.set_progress("a", 2, 4)
    job = store.get("a")
    assert job is not None
    assert (job.segments_done, job.segments_total) == (2, 4)
    result = {"transcription": "你好 world", "duration": 1.5, "segments": [{"index": 0, "text": "你好 world"}]}
    store.complete("a", result, "20240101000000.txt")
    job = store.get("a")
    assert job is not None
    assert job.status == "completed"
    assert job.result == result
    assert job.output_file == "20240101000000.txt"
    assert (job.segments_done, job.segments_total) == (4, 4)
    assert job.completed_at is not None
    store.set_progress("a", 1, 4)  # after completion: ignored
    assert store.get("a").segments_done == 4  # type: ignore[union-attr]
    assert store.counts() == {"queued": 1, "processing": 0, "completed": 1, "failed": 0, "cancelled": 0}


def test_fail(store: JobStore, tmp_path: Path) -> None:
    """fail records the reason and ends the job."""
    store.create("a", OPTIONS, tmp_path / "a")
    store.claim_next()
    store.fail("a", "not decodable audio: the file has no audio stream")
    job = store.get("a")
    assert job is not None
    assert job.status == "failed"
    assert job.error == "not decodable audio: the file has no audio stream"
    assert job.completed_at is not None
    assert store.counts() == {"queued": 0, "processing": 0, "completed": 0, "failed": 1, "cancelled": 0}


def test_recover_requeues_processing(store: JobStore, tmp_path: Path) -> None:
    """Processing jobs go back to queued (progress reset); queued and finished jobs are untouched."""
    for name in ("done", "running", "waiting"):
        store.create(name, OPTIONS, tmp_path / name)
    store.claim_next()
    store.complete("done", {}, "x.txt")
    store.claim_next()
    store.set_progress("running", 3, 5)
    assert store.recover() == ["running"]
    job = store.get("running")
    assert job is not None
    assert (job.status, job.segments_done, job.attempts) == ("queued", 0, 1)
    assert store.get("done").status == "completed"  # type: ignore[union-attr]
    assert store.get("waiting").status == "queued"  # type: ignore[union-attr]
    # The requeued job keeps its place: it is older than "waiting".
    assert store.claim_next().id == "running"  # type: ignore[union-attr]


def test_recover_fails_after_max_attempts(store: JobStore, tmp_path: Path) -> None:
    """A job interrupted MAX_ATTEMPTS times is failed with a reason instead of requeued."""
    assert MAX_ATTEMPTS == 3
    store.create("crashy", OPTIONS, tmp_path / "c")
    for attempt in (1, 2):
        assert store.claim_next().attempts == attempt  # type: ignore[union-attr]
        assert store.recover() == ["crashy"]
    assert store.claim_next().attempts == 3  # type: ignore[union-attr]
    assert store.recover() == []
    job = store.get("crashy")
    assert job is not None
    assert job.status == "failed"
    assert job.error == "the service stopped while running this job 3 times"
    assert store.claim_next() is None


def test_store_survives_restart(tmp_path: Path) -> None:
    """A second JobStore on the same file sees the same jobs and state."""
    path = tmp_path / "jobs.db"
    first = JobStore(path)
    first.create("a", OPTIONS, tmp_path / "a")
    first.create("b", OPTIONS, tmp_path / "b")
    first.claim_next()
    second = JobStore(path)
    job = second.get("a")
    assert job is not None
    assert (job.status, job.options) == ("processing", OPTIONS)
    assert second.recover() == ["a"]
    assert first.get("a").status == "queued"  # type: ignore[union-attr]
    assert second.counts() == {"queued": 2, "processing": 0, "completed": 0, "failed": 0, "cancelled": 0}


def test_concurrent_claims_never_share_a_job(store: JobStore, tmp_path: Path) -> None:
    """Several threads (each with its own store object) draining the queue each get distinct jobs."""
    ids = [f"job{n:03d}" for n in range(60)]
    for job_id in ids:
        store.create(job_id, OPTIONS, tmp_path / job_id)
    workers = 6
    got: list[list[str]] = [[] for _ in range(workers)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(workers)

    def drain(n: int) -> None:
        own = store if n % 2 else JobStore(store.db_path)
        try:
            barrier.wait()
            while (job := own.claim_next()) is not None:
                got[n].append(job.id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=drain, args=(n,)) for n in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    claimed = [job_id for chunk in got for job_id in chunk]
    assert len(claimed) == len(ids)
    assert sorted(claimed) == ids
    assert store.counts()["processing"] == len(ids)
    assert all(store.get(i).attempts == 1 for i in ids)  # type: ignore[union-attr]


def test_cancel_queued_and_running_but_not_finished(store: JobStore, tmp_path: Path) -> None:
    """cancel returns the status the job had; a finished job is left as it is."""
    for name in ("a", "b", "c"):
        store.create(name, OPTIONS, tmp_path / name)
    store.claim_next()  # a runs
    assert store.cancel("a") == "processing" and store.cancel("b") == "queued"
    for name in ("a", "b"):
        job = store.get(name)
        assert job is not None and job.status == "cancelled" and job.completed_at is not None
    assert store.cancel("a") is None and store.cancel("nope") is None
    # A cancelled job is never claimed, and a runner finishing it late cannot overwrite the cancellation.
    assert store.claim_next().id == "c"  # type: ignore[union-attr]
    assert store.complete("a", {"transcription": "x"}, "out.txt") is False
    store.fail("a", "late failure")
    assert store.get("a").status == "cancelled"  # type: ignore[union-attr]
    assert store.counts()["cancelled"] == 2


def test_delete_only_finished_jobs(store: JobStore, tmp_path: Path) -> None:
    """delete removes a finished row and returns it; queued or unknown ids are left alone."""
    store.create("a", OPTIONS, tmp_path / "a")
    store.create("b", OPTIONS, tmp_path / "b")
    assert store.delete("a") is None
    store.claim_next()
    store.complete("a", {"transcription": "x"}, "out.txt")
    deleted = store.delete("a")
    assert deleted is not None and deleted.output_file == "out.txt"
    assert store.get("a") is None and store.delete("a") is None and store.get("b") is not None


def test_finished_before(store: JobStore, tmp_path: Path) -> None:
    """Only finished jobs older than the cutoff are listed."""
    store.create("a", OPTIONS, tmp_path / "a")
    store.create("b", OPTIONS, tmp_path / "b")
    store.claim_next()
    store.complete("a", {"transcription": "x"}, "out.txt")
    assert store.finished_before("9999-01-01T00:00:00+00:00") == ["a"]
    assert store.finished_before("2000-01-01T00:00:00+00:00") == []
