"""Cluster mode's GPU worker: a Celery worker whose pool threads feed one Engine, which batches what they hold.

Each task names a segment waiting in Redis; its thread marks it taken, hands it to the engine and waits, so
that a worker holding N tasks hands the engine N segments at once (one batch, not N generate calls). The
result is written once under the segment (SET NX) and announced on its client's reply list. A heartbeat
says who the worker is and what it holds; clients resend the segments of a worker whose heartbeat stops.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import replace
from typing import Any

from app import broker
from app.backends import AlignmentRequest
from app.engine import Engine
from app.errors import BrokerUnavailable, ServiceError, ShuttingDown
from app.metrics import Metrics
from app.settings import Settings

log = logging.getLogger(__name__)

# After the first segment of a batch arrives, the engine waits this long for the pool's other threads to hand
# it theirs: a task's thread takes a few milliseconds from Redis to the engine.
GATHER_SECONDS = 0.02
# A result that cannot be written (Redis is restarting) is tried again for this long; then the task is given
# back to the queue (or, Redis still down, left unacknowledged for Redis to deliver again).
PUBLISH_SECONDS = 300.0


class SegmentWorker:
    """Runs segment tasks through the engine and reports itself in Redis."""

    def __init__(self, settings: Settings, engine: Engine, metrics: Metrics, worker_id: str | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.metrics = metrics
        # host:pid, and a random part: a container started again keeps its hostname and often its pid, and a
        # new worker must not pass for the dead one whose segments are to be resent.
        self.id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.host = socket.gethostname()
        self.redis = broker.connect(settings.broker)
        self._done = 0
        # The segments in hand (their tasks running here): the heartbeat lists them, so that a client can tell a
        # segment held from one lost.
        self._holding: set[str] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._beat: threading.Thread | None = None

    # Tasks --------------------------------------------------------------------------------------------

    def run(self, segment: str, reply: str) -> None:
        """Run one segment task and answer on reply.

        Raises ShuttingDown, or Redis' own errors, when the task must go back to the queue (this worker is
        stopping; Redis is down or full): a task acknowledged without its result written would leave its
        request waiting for ever.
        """
        with self._lock:
            self._holding.add(segment)
        try:
            self._run(segment, reply)
        finally:
            with self._lock:
                self._holding.discard(segment)

    def _run(self, segment: str, reply: str) -> None:
        r = self.redis
        if r.exists(broker.key("out", segment)):
            # Ran before (its worker died after writing, or the task was delivered twice): announce it again.
            self._announce(segment, reply)
            return
        stored = r.hgetall(broker.key("seg", segment))
        if not stored:
            # Its client gave up on it (no one reads this answer), or it waited in the queue past its time to
            # live: the client's request fails (a job goes back to its queue) rather than wait for ever.
            gone = BrokerUnavailable("the segment's audio expired before a worker took it", retry_after=10)
            self._publish(segment, reply, broker.encode_error(gone))
            return
        try:
            meta = json.loads(stored[b"meta"])
            request = broker.decode_request(meta, stored.get(b"audio", b""))
            if isinstance(request, AlignmentRequest):
                body = broker.encode_result(self.engine.submit_alignments([request])[0].result())
            else:
                if meta.get("stream"):
                    # Each run streams under its own name: a segment run again repeats its text from the start,
                    # and its client drops what it has shown already.
                    run = f"{self.id}:{uuid.uuid4().hex[:8]}"
                    request = replace(request, on_text=self._streamer(segment, reply, run))
                body = broker.encode_result(self.engine.submit([request])[0].result())
        except ShuttingDown:
            raise
        except ServiceError as exc:  # the segment's client gets the failure, in the Engine's own words
            body = broker.encode_error(exc)
        except Exception as exc:  # a malformed segment fails it, never the worker
            log.exception("segment %s failed", segment)
            body = broker.encode_error(exc)
        self._publish(segment, reply, body)
        with self._lock:
            self._done += 1

    def _streamer(self, segment: str, reply: str, run: str) -> Any:
        def on_text(piece: str) -> None:
            self.redis.rpush(reply, json.dumps({"sid": segment, "text": piece, "run": run}))

        return on_text

    def _publish(self, segment: str, reply: str, body: str) -> None:
        """Write the result once (a second run's result is dropped) and tell its client, retrying through outages."""
        deadline = time.monotonic() + PUBLISH_SECONDS
        wait = 0.2
        while True:
            try:
                pipe = self.redis.pipeline(transaction=True)
                pipe.set(broker.key("out", segment), body, nx=True, ex=broker.RESULT_TTL)
                pipe.execute()
                self._announce(segment, reply)
                return
            except Exception:  # Redis is restarting: the result is kept until it is back
                if time.monotonic() > deadline:
                    log.exception("the result of segment %s could not be written; the task goes back", segment)
                    raise
                log.warning("writing the result of segment %s failed; retrying", segment, exc_info=True)
                time.sleep(wait)
                wait = min(5.0, wait * 2)

    def _announce(self, segment: str, reply: str) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.rpush(reply, json.dumps({"sid": segment, "done": True}))
        pipe.expire(reply, broker.RESULT_TTL)
        pipe.execute()

    # The heartbeat ------------------------------------------------------------------------------------

    def start_heartbeat(self) -> None:
        """Report this worker every HEARTBEAT_SECONDS until stop()."""
        self._beat = threading.Thread(target=self._heartbeat, name="worker-heartbeat", daemon=True)
        self._beat.start()

    def describe(self) -> dict[str, Any]:
        """What /health shows of this worker."""
        status = self.engine.status()
        with self._lock:
            done, holding = self._done, sorted(self._holding)
        return {
            "id": self.id,
            "host": self.host,
            "pid": os.getpid(),
            "device": status["device"] or self.settings.device,
            "visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "variant": self.settings.variant,
            "checkpoint": self.settings.checkpoint_path,
            "model": status,
            "aligner": self.engine.aligner_status(),
            "in_hand": status["pending_segments"],
            "batch_size": self.settings.batch_size,
            "segments_done": done,
            "holding": holding,
            "generate_calls": self._sample("qwen_asr_batch_size_count"),
            "segments_generated": self._sample("qwen_asr_batch_size_sum"),
            "seen": time.time(),
        }

    def _sample(self, name: str) -> int:
        value = self.metrics.registry.get_sample_value(name, {"kind": "generate"})
        return int(value or 0)

    def _heartbeat(self) -> None:
        while not self._stopping.is_set():
            try:
                pipe = self.redis.pipeline(transaction=True)
                pipe.set(broker.key("worker", self.id), json.dumps(self.describe()), ex=int(broker.WORKER_TTL))
                pipe.sadd(broker.key("workers"), self.id)
                pipe.execute()
            except Exception:  # Redis is restarting: beat again shortly
                log.warning("the heartbeat could not be written", exc_info=True)
            self._stopping.wait(broker.HEARTBEAT_SECONDS)

    def stop(self) -> None:
        """Stop beating and say so at once, so clients need not wait for the heartbeat to expire."""
        self._stopping.set()
        try:
            self.redis.delete(broker.key("worker", self.id))
            self.redis.srem(broker.key("workers"), self.id)
        except Exception:  # the heartbeat expires on its own
            log.warning("could not deregister the worker", exc_info=True)


def build_engine(settings: Settings, metrics: Metrics) -> Engine:
    """The same engine the single-process service runs: lazy load, idle unload, batching, the aligner."""
    from app.checkpoints import DownloadProgress
    from app.devices import release_memory
    from app.services import aligner_loader, real_loader

    download = DownloadProgress()
    return Engine(
        real_loader(settings, download),
        idle_timeout=settings.idle_timeout,
        batch_size=settings.batch_size,
        token_budget=settings.token_budget,
        release=release_memory,
        aligner_loader=aligner_loader(settings, download),
        metrics=metrics,
        gather=GATHER_SECONDS,
    )


def serve(settings: Settings, *, loglevel: str = "INFO") -> None:
    """Run a worker until it is stopped: Celery's consumer, a thread per segment held, one engine."""
    from celery import signals
    from celery.exceptions import Reject

    metrics = Metrics()
    engine = build_engine(settings, metrics)
    worker = SegmentWorker(settings, engine, metrics)
    app = broker.celery_app(settings.broker, settings.visibility_timeout, settings.variant)

    import redis

    @app.task(name=broker.TASK, acks_late=True, reject_on_worker_lost=True)  # type: ignore[untyped-decorator]
    def segment(segment_id: str, reply: str) -> None:
        try:
            worker.run(segment_id, reply)
        except (ShuttingDown, redis.RedisError, OSError) as exc:
            # This worker is stopping, or Redis cannot take the result: the segment goes back to the queue.
            # (Should Redis not take that either, the task stays unacknowledged and Redis delivers it again.)
            raise Reject(f"given back: {exc}", requeue=True) from None

    @signals.worker_ready.connect  # type: ignore[untyped-decorator]
    def ready(**_: Any) -> None:
        log.info("worker %s ready: %d segments at a time on %s", worker.id, settings.batch_size, settings.device)

    @signals.worker_shutdown.connect  # type: ignore[untyped-decorator]
    def shutdown(**_: Any) -> None:
        worker.stop()
        engine.stop(timeout=30)

    engine.start()
    worker.start_heartbeat()
    # One pool thread per segment a batch can take: the worker holds no more than one batch (the prefetch
    # multiplier is 1), so an idle worker elsewhere finds the rest still queued.
    app.worker_main(
        [
            "worker",
            "--pool=threads",
            f"--concurrency={settings.batch_size}",
            f"--hostname=qwen-asr@{worker.id}",
            f"--queues={broker.queue(settings.variant)}",
            f"--loglevel={loglevel}",
            "--without-gossip",
            "--without-mingle",
        ]
    )
