"""Cluster mode's job store against a real redis-server: claims, leases, exactly-once completion, the audio."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from app import redis_jobs
from app.errors import BrokerUnavailable, QueueFull
from app.jobs import MAX_ATTEMPTS
from app.protocol.native import TranscribeOptions
from app.redis_jobs import RedisJobStore, node_id
from tests.support import JFK, RedisServer, free_port


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[Any]:
    found = redis.Redis.from_url(redis_server.url)
    found.flushdb()
    yield found
    found.close()


@pytest.fixture
def upload(tmp_path: Path) -> Path:
    path = tmp_path / "jobs" / "one" / "audio"
    path.parent.mkdir(parents=True)
    path.write_bytes(JFK.read_bytes())
    return path


def store(client: Any, node: str, retention: float = 3600) -> RedisJobStore:
    return RedisJobStore(client, node, retention_seconds=retention, max_audio_seconds=3600)


def create(found: RedisJobStore, job_id: str, upload: Path, **kwargs: Any) -> None:
    found.create(job_id, TranscribeOptions(), upload, name="jfk", **kwargs)


def test_a_job_is_claimed_once_and_only_its_claim_finishes_it(client: Any, upload: Path) -> None:
    a, b = store(client, "node-a"), store(client, "node-b")
    create(a, "job1", upload)
    assert b.get("job1") is not None and b.queue_position("job1") == 1
    claimed = a.claim_next()
    assert claimed is not None and claimed.id == "job1" and claimed.status == "processing" and claimed.attempts == 1
    assert claimed.claim and b.claim_next() is None
    # Without the claim (another node, or a stale run), nothing reaches the job.
    assert not b.complete("job1", {"text": "theirs"}, "x.txt")
    assert not b.complete("job1", {"text": "theirs"}, "x.txt", claim="forged")
    b.set_progress("job1", 9, 9, claim="forged")
    assert a.get("job1").segments_done == 0  # type: ignore[union-attr]
    a.set_progress("job1", 1, 2, claimed.claim)
    assert b.get("job1").segments_done == 1  # type: ignore[union-attr]
    assert a.complete("job1", {"text": "ours"}, "out.txt", claimed.claim)
    # The same call again (a client retrying after a lost reply) is told it landed, and changes nothing.
    assert a.complete("job1", {"text": "again"}, "out.txt", claimed.claim)
    assert not b.complete("job1", {"text": "again"}, "out.txt", "forged")
    done = b.get("job1")
    assert done is not None and done.status == "completed" and done.result == {"text": "ours"}
    assert done.segments_done == 2 and done.output_file == "out.txt"
    assert b.counts() == {"queued": 0, "processing": 0, "completed": 1, "failed": 0, "cancelled": 0}
    # The audio goes with the job's end; the record expires after the retention (plus a margin).
    assert not client.exists("qwen-asr:job:job1:audio")
    assert 3600 < client.ttl("qwen-asr:job:job1") <= 3600 + redis_jobs.EXPIRY_MARGIN


def test_a_lease_that_runs_out_is_taken_back_and_the_first_claim_is_void(
    client: Any, upload: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_jobs, "LEASE_SECONDS", 0.3)
    a, b = store(client, "node-a"), store(client, "node-b")
    create(a, "job1", upload)
    first = a.claim_next()
    assert first is not None and a.renew("job1", first.claim)
    assert b.reclaim() == []  # still leased
    time.sleep(0.5)
    assert b.reclaim() == ["job1"]
    again = a.claim_next()  # the same node may claim it again: a new run, with a claim of its own
    assert again is not None and again.attempts == 2 and again.claim != first.claim
    # The stalled first run wakes up: its claim is void, so it can neither renew nor finish.
    assert not a.renew("job1", first.claim)
    assert not a.complete("job1", {"text": "stale"}, "a.txt", first.claim)
    assert a.renew("job1", again.claim)
    assert a.complete("job1", {"text": "fresh"}, "b.txt", again.claim)
    assert a.get("job1").result == {"text": "fresh"}  # type: ignore[union-attr]


def test_a_node_started_again_takes_its_own_jobs_back_at_once(client: Any, upload: Path, tmp_path: Path) -> None:
    a, b = store(client, "node-a"), store(client, "node-b")
    create(a, "job1", upload)
    create(a, "job2", upload)
    assert a.claim_next() is not None and b.claim_next() is not None
    restarted = store(client, "node-a")
    # Its own job at once; node-b's is still leased and stays where it is.
    assert restarted.recover() == ["job1"]
    assert a.get("job2").status == "processing"  # type: ignore[union-attr]
    assert restarted.queue_position("job1") == 1


def test_a_job_interrupted_too_often_fails(client: Any, upload: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_jobs, "LEASE_SECONDS", 0.1)
    create(store(client, "n"), "job1", upload)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        assert store(client, f"node-{attempt}").claim_next() is not None
        time.sleep(0.2)  # the node dies holding it
        assert store(client, "other").reclaim() == (["job1"] if attempt < MAX_ATTEMPTS else [])
    failed = store(client, "other").get("job1")
    assert failed is not None and failed.status == "failed" and "3 times" in (failed.error or "")


def test_cancel_from_another_node_stops_the_run_and_delete_needs_a_finished_job(client: Any, upload: Path) -> None:
    a, b = store(client, "node-a"), store(client, "node-b")
    create(a, "job1", upload)
    run = a.claim_next()
    assert run is not None
    assert b.delete("job1") is None  # not finished
    assert b.cancel("job1") == "processing"
    assert b.cancel("job1") is None
    assert not a.renew("job1", run.claim)  # the runner stops at its next renewal
    assert not a.complete("job1", {}, "x.txt", run.claim)
    cancelled = b.get("job1")
    assert cancelled is not None and cancelled.status == "cancelled" and cancelled.error == "cancelled by the client"
    deleted = b.delete("job1")
    assert deleted is not None and deleted.id == "job1" and a.get("job1") is None
    assert b.counts()["cancelled"] == 0


def test_requeue_keeps_the_job_s_place_and_can_give_the_attempt_back(client: Any, upload: Path) -> None:
    a = store(client, "node-a")
    for name in ("job1", "job2"):
        create(a, name, upload)
    first = a.claim_next()
    assert first is not None and first.id == "job1"
    a.requeue("job1", count_attempt=False, claim=first.claim)
    assert a.queue_position("job1") == 1 and a.queue_position("job2") == 2
    again = a.claim_next()
    assert again is not None and again.id == "job1" and again.attempts == 1


def test_queue_full_counts_inside_the_script(client: Any, upload: Path) -> None:
    a = store(client, "node-a")
    create(a, "job1", upload, max_queued=1)
    with pytest.raises(QueueFull):
        create(a, "job2", upload, max_queued=1)
    assert a.get("job2") is None and not client.exists("qwen-asr:job:job2:audio")


def test_the_audio_travels_as_flac_with_a_time_to_live(client: Any, upload: Path, tmp_path: Path) -> None:
    a = store(client, "node-a")
    create(a, "job1", upload)
    assert 0 < client.ttl("qwen-asr:job:job1:audio") <= redis_jobs.AUDIO_TTL
    # No .flac left beside the upload; the stored bytes are a FLAC of the same length, at 16 kHz mono.
    assert [p.name for p in upload.parent.iterdir()] == ["audio"]
    target = tmp_path / "elsewhere" / "audio"
    assert store(client, "node-b").fetch_audio("job1", target)
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "stream=codec_name,sample_rate,channels:format=duration",
         "-of", "default=nw=1", str(target)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "codec_name=flac" in probe and "sample_rate=16000" in probe and "channels=1" in probe
    assert abs(float(probe.split("duration=")[1].split()[0]) - 11.0) < 0.1
    assert target.stat().st_size < upload.stat().st_size * 2
    assert not store(client, "node-b").fetch_audio("missing", tmp_path / "x")


def test_finished_before_lists_old_finished_jobs(client: Any, upload: Path) -> None:
    a = store(client, "node-a")
    create(a, "job1", upload)
    run = a.claim_next()
    assert run is not None
    a.fail("job1", "broken", run.claim)
    later = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() + 60))
    assert a.finished_before(later) == ["job1"]
    assert a.finished_before("2000-01-01T00:00:00+00:00") == []


def test_an_unreachable_redis_is_a_503_not_a_crash(tmp_path: Path) -> None:
    gone = store(redis.Redis(port=free_port(), socket_connect_timeout=1), "node-a")
    with pytest.raises(BrokerUnavailable):
        gone.get("job1")
    with pytest.raises(BrokerUnavailable):
        gone.counts()


def test_the_node_id_is_kept_in_the_data_dir(tmp_path: Path) -> None:
    first = node_id(tmp_path)
    assert first == node_id(tmp_path) and len(first) == 12
    other = tmp_path / "other"
    other.mkdir()
    assert node_id(other) != first
