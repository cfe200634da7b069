"""Cluster mode, all parts real: a redis-server on loopback, two GPU workers (serve/worker.py, on CPU) with the
tiny checkpoint and the tiny aligner, and an HTTP node started with --broker. Components are killed with
SIGKILL and started again; every accepted job must finish exactly once."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import redis
import requests

from tests.support import (
    AISHELL,
    JFK,
    LIBRISPEECH,
    RedisServer,
    Server,
    Worker,
    build_tiny,
    make_audio,
    post,
    wait_for,
)

pytestmark = pytest.mark.e2e

# Short segments with few tokens: many segments, quickly.
FAST = {"max_new_tokens": "12", "segment_duration": "2", "vad": "false"}
BATCH = 4


class Cluster:
    """Redis, the workers and the HTTP node of one test module."""

    def __init__(self, root: Path, checkpoint: Path, aligner: Path) -> None:
        self.root = root
        self.checkpoint = checkpoint
        self.aligner = aligner
        self.redis = RedisServer(root / "redis").start()
        self.workers: list[Worker] = []
        (root / "http").mkdir()
        self.server = Server(checkpoint, root / "http" / "data", self.node_args())

    def node_args(self) -> list[str]:
        return ["--broker", self.redis.url, "--aligner", str(self.aligner), "--job-workers", "3"]

    def add_worker(self) -> Worker:
        log = self.root / f"worker-{len(self.workers)}.log"
        args = ["--batch-size", str(BATCH), "--aligner", str(self.aligner), "--idle-timeout", "600"]
        worker = Worker(self.checkpoint, self.redis.url, log, args).start()
        self.workers.append(worker)
        return worker

    def live(self) -> dict[int, dict[str, Any]]:
        """The workers /health lists, by pid."""
        cluster = requests.get(self.server.url + "/health", timeout=30).json()["cluster"]
        return {w["pid"]: w for w in cluster["workers"]}

    def wait_workers(self, *workers: Worker, loaded: bool = False) -> None:
        def there() -> bool:
            live = self.live()
            return all(w.pid in live and (not loaded or live[w.pid]["model_state"] == "loaded") for w in workers)

        try:
            wait_for(there, 120, "the workers to join", interval=0.5)
        except AssertionError:
            raise AssertionError("\n".join(w.log()[-3000:] for w in workers)) from None

    def stop(self) -> None:
        self.server.stop()
        for worker in self.workers:
            worker.stop()
        self.redis.stop()


@pytest.fixture(scope="module")
def cluster(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    aligner = build_tiny(tmp_path_factory.mktemp("tiny-aligner"), "qwen3-aligner")
    found = Cluster(tmp_path_factory.mktemp("cluster"), tiny_checkpoint, aligner)
    try:
        first, second = found.add_worker(), found.add_worker()
        found.server.start()
        found.wait_workers(first, second)
        # Both models loaded before anything is timed or killed.
        for _ in range(4):
            assert post(found.server, "/transcribe", JFK, **FAST).status_code == 200
        found.wait_workers(first, second, loaded=True)
        yield found
    finally:
        found.stop()


@pytest.fixture(scope="module")
def long_audio(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 s of speech: 20 segments of 2 s."""
    return make_audio(tmp_path_factory.mktemp("cluster-audio"), 40, "long.mp3")


def submit(server: Server, path: Path, **fields: str) -> str:
    response = post(server, "/transcribe/async", path, **fields)
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


def job(server: Server, job_id: str) -> dict[str, Any]:
    return dict(requests.get(f"{server.url}/status/{job_id}", timeout=30).json())


def wait_jobs(server: Server, ids: list[str], timeout: float = 180) -> dict[str, dict[str, Any]]:
    def finished() -> dict[str, dict[str, Any]] | None:
        found = {i: job(server, i) for i in ids}
        return found if all(j["status"] in ("completed", "failed", "cancelled") for j in found.values()) else None

    result: dict[str, dict[str, Any]] = wait_for(finished, timeout, "the jobs to finish", interval=0.5)
    return result


def check_once(found: dict[str, Any], at_least: int) -> None:
    """Completed, with each segment once and in order: no segment lost, none counted twice."""
    assert found["status"] == "completed", found
    total = found["progress"]["segments_total"]
    assert total >= at_least and found["progress"]["segments_done"] == total
    starts = [s["start"] for s in found["segments"]]
    assert len(starts) == total and starts == sorted(set(starts))
    assert found["segments"][-1]["end"] == pytest.approx(found["duration"], abs=0.1)


# Every endpoint through the queue ----------------------------------------------------------------------


def test_health_shows_the_broker_and_both_workers(cluster: Cluster) -> None:
    health = requests.get(cluster.server.url + "/health", timeout=30).json()
    assert health["status"] == "ok", health["problems"]
    section = health["cluster"]
    assert section["reachable"] and section["broker"] == cluster.redis.url
    assert {w.pid for w in cluster.workers} <= {w["pid"] for w in section["workers"]}
    for worker in section["workers"]:
        assert worker["device"] == "cpu" and worker["batch_size"] == BATCH
        assert worker["model_state"] == "loaded" and worker["seconds_since_seen"] < 10
    # The HTTP node loads no model: the model section is the workers'.
    assert health["model"]["state"] == "loaded" and health["model"]["device"] == "cpu"
    assert health["model"]["aligner"] is not None


def test_native_routes(cluster: Cluster) -> None:
    server = cluster.server
    text = post(server, "/transcribe", LIBRISPEECH, **FAST)
    assert text.status_code == 200 and text.headers["Content-Type"].startswith("text/plain")
    body = post(server, "/transcribe/json", LIBRISPEECH, word_timestamps="true", **FAST).json()
    assert len(body["segments"]) >= 4 and body["duration"] > 8
    assert all("words" in s for s in body["segments"])
    for route, marker in (("/transcribe/srt", "-->"), ("/transcribe/vtt", "WEBVTT")):
        response = post(server, route, JFK, **FAST)
        assert response.status_code == 200 and (marker in response.text or not response.text.strip())
    job_id = submit(server, AISHELL, **FAST)
    check_once(wait_jobs(server, [job_id])[job_id], 3)
    vtt = requests.get(f"{server.url}/status/{job_id}/result", params={"format": "vtt"}, timeout=30)
    assert vtt.status_code == 200 and vtt.text.startswith("WEBVTT")
    asr = requests.post(
        server.url + "/asr", params={"output": "json"}, files={"audio_file": JFK.open("rb")}, timeout=120
    )
    assert asr.status_code == 200 and "segments" in asr.json()
    detected = requests.post(server.url + "/detect-language", files={"audio_file": JFK.open("rb")}, timeout=120)
    assert detected.status_code == 200 and detected.json()["language_code"]


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")
def test_openai_routes(cluster: Cluster) -> None:
    client = openai.OpenAI(base_url=cluster.server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    assert [m.id for m in client.models.list()]
    with JFK.open("rb") as f:
        verbose = client.audio.transcriptions.create(
            model="whisper-1", file=f, response_format="verbose_json", timestamp_granularities=["word"]
        )
    assert verbose.duration and verbose.duration > 10
    with JFK.open("rb") as f:
        events = list(client.audio.transcriptions.create(model="whisper-1", file=f, stream=True))
    assert events[-1].type == "transcript.text.done"
    with JFK.open("rb") as f:
        assert isinstance(client.audio.translations.create(model="whisper-1", file=f).text, str)
    audio = {"type": "input_audio", "input_audio": {"data": _b64(JFK), "format": "flac"}}
    messages: Any = [{"role": "user", "content": [{"type": "text", "text": "What is said?"}, audio]}]
    answer = client.chat.completions.create(model="whisper-1", messages=messages, max_tokens=8)
    assert answer.usage is not None and answer.usage.prompt_tokens > 200
    chunks = list(client.chat.completions.create(model="whisper-1", messages=messages, max_tokens=8, stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[0].choices[0].delta.role == "assistant" and streamed


def _b64(path: Path) -> str:
    import base64

    return base64.b64encode(path.read_bytes()).decode()


# Spreading and batching -------------------------------------------------------------------------------


def test_a_long_file_is_spread_over_both_workers_in_batches(cluster: Cluster, long_audio: Path) -> None:
    before = cluster.live()
    response = post(cluster.server, "/transcribe/json", long_audio, **FAST)
    assert response.status_code == 200, response.text
    segments = len(response.json()["segments"])
    assert segments >= 20

    def counted() -> dict[int, dict[str, Any]] | None:
        # Heartbeats come every 2 s: wait for the ones that count this request's segments.
        now = cluster.live()
        done = sum(now[pid]["segments_done"] - before[pid]["segments_done"] for pid in before if pid in now)
        return now if done >= segments else None

    after = wait_for(counted, 10, "the heartbeats to count the segments", interval=0.5)
    done = {pid: after[pid]["segments_done"] - before[pid]["segments_done"] for pid in before}
    assert all(n > 0 for n in done.values()), done
    # Batching kept: a worker's generate calls took several segments at once.
    calls = {pid: after[pid]["generate_calls"] - before[pid]["generate_calls"] for pid in done}
    generated = {pid: after[pid]["segments_generated"] - before[pid]["segments_generated"] for pid in done}
    assert any(generated[pid] > calls[pid] > 0 for pid in done), (calls, generated)
    metrics = requests.get(cluster.server.url + "/metrics", timeout=30).text
    assert "qwen_asr_cluster_workers 2.0" in metrics and "qwen_asr_worker_generate_calls_total{" in metrics


# Killing parts ---------------------------------------------------------------------------------------


def test_a_worker_killed_mid_work_loses_nothing(cluster: Cluster, long_audio: Path) -> None:
    server = cluster.server
    victim, survivor = cluster.workers[-2], cluster.workers[-1]
    before = cluster.live()[survivor.pid]["segments_done"]
    ids = [submit(server, long_audio, **FAST) for _ in range(3)]
    sync: dict[str, requests.Response] = {}
    thread = threading.Thread(target=lambda: sync.update(r=post(server, "/transcribe/json", long_audio, **FAST)))
    thread.start()
    wait_for(lambda: cluster.live().get(victim.pid, {}).get("in_hand"), 60, "the victim to hold segments")
    victim.stop(signal.SIGKILL)
    found = wait_jobs(server, ids)
    thread.join(180)
    for job_id in ids:
        check_once(found[job_id], 20)
    response = sync["r"]
    if response.status_code == 200:
        assert len(response.json()["segments"]) >= 20
    else:  # failing cleanly: the one JSON error body, a 503 with a code
        assert response.status_code == 503 and response.json()["error"]["code"], response.text
    health = requests.get(server.url + "/health", timeout=30).json()["cluster"]
    assert victim.pid not in {w["pid"] for w in health["workers"]}
    assert health["resent_segments"] > 0
    wait_for(lambda: cluster.live()[survivor.pid]["segments_done"] > before + 40, 10, "the survivor's count")
    # A worker in its place, for the tests that follow.
    cluster.wait_workers(cluster.add_worker())


def test_the_http_node_killed_and_started_again_loses_no_job(cluster: Cluster, long_audio: Path) -> None:
    server = cluster.server
    ids = [submit(server, long_audio, **FAST) for _ in range(3)]
    wait_for(lambda: job(server, ids[0])["status"] == "processing", 60, "a job to start")
    server.stop(signal.SIGKILL)
    server.start()
    for job_id, found in wait_jobs(server, ids).items():
        check_once(found, 20)
        assert found["started_at"] is not None, job_id


def test_redis_killed_and_started_again_on_its_data_loses_no_job(cluster: Cluster, long_audio: Path) -> None:
    server = cluster.server
    ids = [submit(server, long_audio, **FAST) for _ in range(3)]
    wait_for(lambda: job(server, ids[0])["status"] == "processing", 60, "a job to start")
    cluster.redis.stop(signal.SIGKILL)
    health = requests.get(server.url + "/health", timeout=30)
    assert health.status_code == 200
    assert health.json()["status"] == "degraded" and not health.json()["cluster"]["reachable"]
    gone = requests.get(f"{server.url}/status/{ids[0]}", timeout=30)
    assert gone.status_code == 503 and gone.json()["error"]["code"] == "broker_unavailable"
    refused = post(server, "/transcribe/json", JFK, **FAST)
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "broker_unavailable"
    # Down past the 15 s after which what the node waits on fails (its jobs go back to the queue).
    time.sleep(17)
    cluster.redis.start()
    for found in wait_jobs(server, ids, timeout=240).values():
        check_once(found, 20)
    # The node's reply thread lived through it: a new request is answered.
    assert post(server, "/transcribe/json", JFK, **FAST).status_code == 200
    # Whatever is stored expires (segments a killed node left too), but the indexes of the jobs by state.
    client = redis.Redis.from_url(cluster.redis.url)
    lasting = [k for k in client.scan_iter("qwen-asr:*") if client.ttl(k) < 0]
    assert {k.decode() for k in lasting} <= {
        "qwen-asr:workers", "qwen-asr:jobs:seq", *(f"qwen-asr:jobs:{s}" for s in ("queued", "processing",
        "completed", "failed", "cancelled"))
    }, lasting  # fmt: skip


def test_a_job_left_by_a_node_that_never_returns_runs_on_another(cluster: Cluster, tmp_path: Path) -> None:
    """Every node sees every job; one whose node died is taken back when its lease runs out, and runs from the
    audio kept in Redis (the nodes share no disk)."""
    other = Server(cluster.checkpoint, tmp_path / "data", cluster.node_args()).start()
    job_id = submit(other, LIBRISPEECH, **FAST)
    other.stop(signal.SIGKILL)
    found = wait_jobs(cluster.server, [job_id], timeout=120)[job_id]
    check_once(found, 5)
