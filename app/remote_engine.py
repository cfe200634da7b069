"""Cluster mode's engine on the HTTP side: the Engine's interface, with the model behind a Celery queue.

submit() writes each segment's audio into Redis and queues a task naming it; a GPU worker (app/worker.py)
runs it through its own Engine, which batches it with whatever else it holds, and answers on this process's
reply list. One thread here reads the replies (streamed text, then the result) and keeps watch: a segment
whose worker stopped beating is sent again at once, without waiting for Redis' visibility timeout.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Any

from app import broker
from app.backends import Alignment, AlignmentRequest, GenerationRequest, GenerationResult
from app.errors import BrokerUnavailable, InvalidRequest, ServiceError, ShuttingDown

log = logging.getLogger(__name__)

# How often the reply thread looks after what it waits for: dead workers, cancelled segments, lost replies.
WATCH_SECONDS = 1.0
# With no live worker for this long, what waits fails (503; a job goes back to its queue) instead of hanging.
NO_WORKER_SECONDS = broker.WORKER_TTL + 5.0


@dataclass
class _Pending:
    future: Future[Any]
    on_text: Callable[[str], None] | None
    sent: float
    streaming: bool = True
    # The text streamed so far, and the worker whose run it comes from.
    streamed: str = ""
    source: str | None = None
    # A run sent again (its worker died) streams from the start: its text so far, until it passes `streamed`.
    rerun: str = ""
    rerun_source: str | None = None

    def fresh(self, piece: str, by: str) -> str:
        """What of a streamed piece is new to the client: a second run repeats the first run's text, and that
        repeat is dropped; a second run that diverges (sampling) ends the stream, as Engine's retries do."""
        if self.source is None:
            self.source = by
        if by == self.source:
            self.streamed += piece
            return piece
        if by != self.rerun_source:
            self.rerun_source, self.rerun = by, ""
        self.rerun += piece
        if not (self.rerun.startswith(self.streamed) or self.streamed.startswith(self.rerun)):
            if self.streaming:
                log.warning("a segment sent again streams other text than its first run; its streaming ends")
            self.streaming = False
            return ""
        if len(self.rerun) <= len(self.streamed):
            return ""
        new = self.rerun[len(self.streamed) :]
        self.source, self.streamed = by, self.rerun
        return new


class RemoteEngine:
    """Segments go to the cluster's workers through the broker; results come back as futures, as from Engine."""

    def __init__(
        self,
        broker_url: str,
        visibility_timeout: float,
        *,
        batch_size: int,
        token_budget: int,
        idle_timeout: float,
        aligner: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.broker_url = broker_url
        # Whether the workers time words (the cluster runs one configuration: the node's --aligner is theirs).
        self._aligner = aligner
        self._redis = broker.connect(broker_url)
        self._celery = broker.celery_app(broker_url, visibility_timeout)
        # Answers for this process come on a list of its own; a restarted process starts a new one.
        self._reply = broker.key("reply", uuid.uuid4().hex)
        self._settings = {"batch_size": batch_size, "token_budget": token_budget, "idle_timeout": idle_timeout}
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._resent = 0
        # When a live worker was last seen (the watch thread looks every WATCH_SECONDS).
        self._worker_seen = clock()
        # No segment is resent before this: after the broker comes back, the workers' heartbeats need a moment.
        self._grace_until = 0.0
        # Deletes a worker's mark on a segment only if it is still that worker's (one atomic step).
        self._release = self._redis.register_script(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
        )

    # The Engine's interface ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread that reads this process's replies (again, should it ever have ended)."""
        with self._lock:
            if not self._stopping.is_set() and (self._thread is None or not self._thread.is_alive()):
                self._thread = threading.Thread(target=self._run, name="broker-replies", daemon=True)
                self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Fail what still waits (ShuttingDown: jobs run again after the restart) and end the reply thread."""
        self._stopping.set()
        with self._lock:
            waiting, self._pending = self._pending, {}
        for pending in waiting.values():
            _settle(pending.future, error=_shutting_down())
        try:
            # Workers skip what is forgotten: a stopped node's segments take no GPU time from the next one's.
            self._forget(list(waiting))
        except broker.failures():
            log.warning("could not clear %d segment(s) from the broker at shutdown", len(waiting))
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, requests: Sequence[GenerationRequest]) -> list[Future[GenerationResult]]:
        """Queue segments (or chats) for the workers; each future resolves to the result or raises."""
        return [self._send(request, request.on_text) for request in requests]

    def submit_alignments(self, requests: Sequence[AlignmentRequest]) -> list[Future[Alignment]]:
        """Queue texts to time; each resolves to None at once with --aligner none (the words are then estimated),
        as a worker without an aligner would answer."""
        if not self._aligner:
            futures: list[Future[Alignment]] = []
            for _ in requests:
                futures.append(Future())
                futures[-1].set_result(None)
            return futures
        return [self._send(request, None) for request in requests]

    def status(self) -> dict[str, Any]:
        """The Engine's status() shape, summed over the live workers (the model runs there)."""
        try:
            workers = broker.live_workers(self._redis)
            queued = broker.queued_segments(self._redis)
            error = None
        except broker.failures() as exc:  # /health reports the broker itself; this shape only has to stay whole
            workers, queued, error = [], 0, f"the broker cannot be reached: {broker.error_message(exc)}"
        models = [w["model"] for w in workers]
        states = {m["state"] for m in models}
        state = next((s for s in ("loaded", "loading") if s in states), None)
        if state is None:
            state = "error" if error or (models and states == {"error"}) else "unloaded"
        if error is None and state == "error":
            error = "; ".join(sorted({str(m["error"]) for m in models if m["error"]}))
        device = next((m["device"] for m in models if m["state"] == "loaded" and m["device"]), None)
        total = {name: sum(int(m[name]) for m in models) for name in _SUMMED}
        return {
            "state": state,
            "error": error,
            "device": device,
            "idle_timeout": self._settings["idle_timeout"],
            "seconds_until_unload": None,
            "batch_size": self._settings["batch_size"],
            "token_budget": self._settings["token_budget"],
            **total,
            "pending_segments": queued + total["pending_segments"],
            "retry_load_in": None,
        }

    def aligner_status(self) -> dict[str, Any] | None:
        """The workers' aligners: loaded if any is; None when no live worker has one."""
        try:
            aligners = [w["aligner"] for w in broker.live_workers(self._redis) if w.get("aligner")]
        except broker.failures():  # the broker's state is /health's cluster section's to report
            return None
        if not aligners:
            return None
        states = {a["state"] for a in aligners}
        state = next((s for s in ("loaded", "loading", "error") if s in states), "unloaded")
        error = next((a["error"] for a in aligners if a["error"]), None)
        return {"state": state, "error": error, "loads": sum(int(a["loads"]) for a in aligners)}

    # The cluster's own figures -------------------------------------------------------------------------

    def cluster_status(self) -> dict[str, Any]:
        """The broker, the live workers and the queue, for /health and /metrics."""
        try:
            self._redis.ping()
            workers = broker.live_workers(self._redis)
            queued = broker.queued_segments(self._redis)
        except broker.failures() as exc:  # reported, never raised: /health must answer while Redis is down
            return {
                "broker": broker.redacted(self.broker_url),
                "reachable": False,
                "error": broker.error_message(exc),
                "workers": [],
                "queued_segments": None,
                "waiting_segments": self._waiting(),
                "resent_segments": self._resent,
            }
        return {
            "broker": broker.redacted(self.broker_url),
            "reachable": True,
            "error": None,
            "workers": workers,
            "queued_segments": queued,
            "waiting_segments": self._waiting(),
            "resent_segments": self._resent,
        }

    def _waiting(self) -> int:
        with self._lock:
            return len(self._pending)

    # Sending ------------------------------------------------------------------------------------------

    def _send(
        self, request: GenerationRequest | AlignmentRequest, on_text: Callable[[str], None] | None
    ) -> Future[Any]:
        if self._stopping.is_set():
            raise _shutting_down()
        self.start()
        if self._clock() - self._worker_seen > NO_WORKER_SECONDS:
            # Nothing would take it: refuse now (a job waits and tries again) rather than queue it for nobody.
            raise BrokerUnavailable(
                "no worker is running: start serve/worker.py against this broker and send the request again",
                retry_after=10,
            )
        try:
            meta, audio = broker.encode_request(request)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
        segment = uuid.uuid4().hex
        future: Future[Any] = Future()
        with self._lock:
            self._pending[segment] = _Pending(future, on_text, self._clock())
        try:
            with broker.reachable("queuing a segment"):
                pipe = self._redis.pipeline(transaction=True)
                pipe.hset(broker.key("seg", segment), mapping={"meta": json.dumps(meta), "audio": audio})
                pipe.expire(broker.key("seg", segment), broker.SEGMENT_TTL)
                pipe.execute()
                self._queue(segment)
        except BaseException:
            with self._lock:
                self._pending.pop(segment, None)
            raise
        return future

    def _queue(self, segment: str) -> None:
        # The reply list travels with the task: a worker that finds the segment's audio expired still answers.
        self._celery.send_task(broker.TASK, args=[segment, self._reply], queue=broker.QUEUE)

    # The reply thread ---------------------------------------------------------------------------------

    def _run(self) -> None:
        down_since: float | None = None
        watched = self._clock()
        while not self._stopping.is_set():
            try:
                item = self._redis.blpop([self._reply], timeout=WATCH_SECONDS)
                if down_since is not None:
                    log.info("the broker is back")
                    # Heartbeats lapsed while it was down: give the workers time to beat again before
                    # taking their silence for death.
                    down_since, self._worker_seen = None, self._clock()
                    self._grace_until = self._clock() + broker.WORKER_TTL
                if item is not None:
                    self._on_reply(json.loads(item[1]))
                if self._clock() - watched >= WATCH_SECONDS:
                    watched = self._clock()
                    self._watch()
            except broker.failures():  # the broker went away: keep waiting for it, never die
                if down_since is None:
                    down_since = self._clock()
                    log.warning("reading replies from the broker failed; retrying", exc_info=True)
                self._stopping.wait(min(5.0, 0.2 + self._clock() - down_since))
                if self._clock() - down_since > NO_WORKER_SECONDS:
                    self._fail_waiting("the broker cannot be reached")
            except Exception:  # a bug must not end the thread every request on this node waits on
                log.exception("handling a reply failed")
                self._stopping.wait(0.5)

    def _on_reply(self, message: dict[str, Any]) -> None:
        segment = str(message.get("sid"))
        with self._lock:
            pending = self._pending.get(segment)
        if pending is None:
            return  # cancelled, or a second run's answer to a segment already settled
        if "text" in message:
            piece = pending.fresh(str(message["text"]), str(message.get("by")))
            if piece and pending.on_text is not None and pending.streaming:
                try:
                    pending.on_text(piece)
                except Exception:  # as Engine: a failing stream ends the stream, not the generation
                    log.exception("streaming a segment's text failed; its streaming ends")
                    pending.streaming = False
            return
        self._collect([segment])

    def _collect(self, segments: list[str]) -> None:
        """Settle the segments whose results are written, and clear their keys."""
        found = self._redis.mget([broker.key("out", s) for s in segments])
        done = [(s, raw) for s, raw in zip(segments, found, strict=True) if raw is not None]
        if not done:
            return
        with self._lock:
            settled = [(self._pending.pop(s, None), raw) for s, raw in done]
        for pending, raw in settled:
            if pending is None:
                continue
            try:
                _settle(pending.future, result=broker.decode_result(raw))
            except ServiceError as exc:
                _settle(pending.future, error=exc)
            except Exception as exc:  # a malformed answer fails its segment, not the thread
                log.exception("a worker's answer could not be read")
                _settle(pending.future, error=BrokerUnavailable(f"a worker's answer could not be read: {exc}"))
        self._forget([s for s, _ in done])

    def _forget(self, segments: list[str]) -> None:
        """Delete what the segments left in Redis; a worker that then receives one finds no audio and skips it."""
        keys = [broker.key(kind, s) for s in segments for kind in ("seg", "out", "taken")]
        if keys:
            self._redis.delete(*keys)

    def _watch(self) -> None:
        """Drop what nobody waits for, pick up answers whose reply was lost, resend what a dead worker held."""
        with self._lock:
            cancelled = [s for s, p in self._pending.items() if p.future.cancelled()]
            for segment in cancelled:
                del self._pending[segment]
            segments = list(self._pending)
        self._forget(cancelled)
        alive = {w["id"] for w in broker.live_workers(self._redis)}
        if alive:
            self._worker_seen = self._clock()
        if not segments:
            return
        if not self._redis.llen(self._reply):
            # Every reply so far is read, so a result found now has no streamed text still waiting behind it.
            self._collect(segments)
            with self._lock:
                segments = [s for s in segments if s in self._pending]
        if not alive and self._clock() - self._worker_seen > NO_WORKER_SECONDS:
            self._fail_waiting("no worker is running")
            return
        if self._clock() < self._grace_until:
            return
        holders = self._redis.mget([broker.key("taken", s) for s in segments])
        for segment, holder in zip(segments, holders, strict=True):
            if holder is not None and holder.decode() not in alive:
                # Its worker died holding it: Redis would deliver it again only after the visibility timeout.
                # Queued first, then the dead worker's mark cleared (only if it is still that worker's), so a
                # failed send is tried again at the next watch.
                self._queue(segment)
                self._release(keys=[broker.key("taken", segment)], args=[holder])
                self._resent += 1
                log.warning("worker %s stopped with segment %s in hand; sent again", holder.decode(), segment)

    def _fail_waiting(self, why: str) -> None:
        """Fail everything this node waits on (503: a job goes back to its queue); never raises."""
        with self._lock:
            waiting, self._pending = self._pending, {}
        if not waiting:
            return
        log.error("%s: failing %d waiting segment(s)", why, len(waiting))
        error = BrokerUnavailable(f"{why}; send the request again once a worker is running", retry_after=10)
        for pending in waiting.values():
            _settle(pending.future, error=error)
        try:
            self._forget(list(waiting))
        except broker.failures():  # Redis is down: what they left expires
            log.warning("could not clear %d failed segment(s) from the broker", len(waiting))


# Counts every worker reports in its engine's status(), summed for the cluster.
_SUMMED = (
    "loads",
    "unloads",
    "oom_batch_splits",
    "max_tokens_stops",
    "repetition_stops",
    "pending_segments",
)


def _settle(future: Future[Any], *, result: Any = None, error: BaseException | None = None) -> None:
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass  # cancelled by its request meanwhile


def _shutting_down() -> ShuttingDown:
    return ShuttingDown("the service is shutting down; send the request again once it is back", retry_after=10)
