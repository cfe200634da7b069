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
from dataclasses import dataclass, field
from typing import Any

from app import broker
from app.backends import Alignment, AlignmentRequest, GenerationRequest, GenerationResult
from app.errors import BrokerUnavailable, InvalidRequest, ServiceError, ShuttingDown

log = logging.getLogger(__name__)

# How often the reply thread looks after what it waits for: dead workers, cancelled segments, lost replies.
WATCH_SECONDS = 1.0
# With no live worker for this long, what waits fails (503; a job goes back to its queue) instead of hanging.
NO_WORKER_SECONDS = broker.WORKER_TTL + 5.0
# A segment found neither done, nor held by a live worker, nor queued for this long is sent again: two
# heartbeats, so that a task a worker has just taken shows in its heartbeat first.
LOST_SECONDS = 2 * broker.HEARTBEAT_SECONDS + 1.0


@dataclass
class _Pending:
    future: Future[Any]
    on_text: Callable[[str], None] | None
    streaming: bool = True
    # The text shown to the client so far, and each run's own text (a run: one worker taking the segment once).
    shown: str = ""
    runs: dict[str, str] = field(default_factory=dict)
    # When the watch first found it neither done, nor held by a live worker, nor queued (None: it is accounted for).
    unaccounted: float | None = None

    def fresh(self, piece: str, run: str) -> str:
        """What of a streamed piece is new to the client. A segment sent again is run again from its start: a
        run repeating what was shown adds nothing until it passes it; a run that says something else (sampling)
        ends the stream, as Engine's retries do. The result stands either way."""
        text = self.runs[run] = self.runs.get(run, "") + piece
        if text.startswith(self.shown):
            new, self.shown = text[len(self.shown) :], text
            return new
        if self.shown.startswith(text):
            return ""
        if self.streaming:
            log.warning("a segment run again streams other text than its first run; its streaming ends")
        self.streaming = False
        return ""


class RemoteEngine:
    """Segments go to the cluster's workers through the broker; results come back as futures, as from Engine."""

    def __init__(
        self,
        broker_url: str,
        visibility_timeout: float,
        *,
        variant: str,
        checkpoint: str,
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
        self._celery = broker.celery_app(broker_url, visibility_timeout, variant)
        # Workers serve this node only if they run its variant (its queue); the checkpoint should match too.
        self._variant, self._checkpoint = variant, checkpoint
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
        # Set by the reply thread while the broker cannot be reached (a send then fails for that reason).
        self._broker_down = False
        # When the queue was last searched for segments unaccounted for (a search reads the whole queue).
        self._searched = 0.0

    # The Engine's interface ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread that reads this process's replies (again, should it ever have ended)."""
        with self._lock:
            if not self._stopping.is_set() and (self._thread is None or not self._thread.is_alive()):
                # Give the new thread its first look at the workers before any request is refused for want of one.
                self._worker_seen = self._clock()
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
            workers = self._serving(broker.live_workers(self._redis))
            queued = broker.queued_segments(self._redis, self._variant)
            error = None
        except broker.failures() as exc:  # /health reports the broker itself; this shape only has to stay whole
            workers, queued, error = [], 0, f"the broker cannot be reached: {broker.error_message(exc)}"
        models = [w["model"] for w in workers]
        states = {m.get("state") for m in models}
        state = next((s for s in ("loaded", "loading") if s in states), None)
        if state is None:
            state = "error" if error or (models and states == {"error"}) else "unloaded"
        if error is None and state == "error":
            error = "; ".join(sorted({str(m["error"]) for m in models if m.get("error")}))
        device = next((m["device"] for m in models if m.get("state") == "loaded" and m.get("device")), None)
        total = {name: sum(_count(m.get(name)) for m in models) for name in _SUMMED}
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
            aligners = [w["aligner"] for w in self._serving(broker.live_workers(self._redis)) if w.get("aligner")]
        except broker.failures():  # the broker's state is /health's cluster section's to report
            return None
        if not aligners:
            return None
        states = {a.get("state") for a in aligners}
        state = next((s for s in ("loaded", "loading", "error") if s in states), "unloaded")
        error = next((a["error"] for a in aligners if a.get("error")), None)
        return {"state": state, "error": error, "loads": sum(_count(a.get("loads")) for a in aligners)}

    # The cluster's own figures -------------------------------------------------------------------------

    def cluster_status(self) -> dict[str, Any]:
        """The broker, the live workers and the queue, for /health and /metrics."""
        found: dict[str, Any] = {
            "broker": broker.redacted(self.broker_url),
            "reachable": True,
            "error": None,
            "workers": [],
            "queued_segments": None,
            "waiting_segments": self._waiting(),
            "resent_segments": self._resent,
        }
        try:
            self._redis.ping()
            found["workers"] = broker.live_workers(self._redis)
            found["queued_segments"] = broker.queued_segments(self._redis, self._variant)
        except broker.failures() as exc:  # reported, never raised: /health must answer while Redis is down
            found.update(reachable=False, error=broker.error_message(exc), workers=[], queued_segments=None)
        return found

    def _serving(self, workers: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The workers that take this node's segments: those of its variant."""
        return [w for w in workers if w.get("variant") == self._variant]

    def mismatches(self, workers: list[dict[str, Any]]) -> list[str]:
        """Why live workers do not serve this node as it expects (another variant, another checkpoint), in words."""
        found = []
        for worker in workers:
            if worker.get("variant") != self._variant:
                found.append(
                    f"worker {worker['id']} serves the {worker.get('variant')} variant, this node {self._variant}: "
                    "it takes none of this node's segments"
                )
            elif worker.get("checkpoint") != self._checkpoint:
                found.append(
                    f"worker {worker['id']} runs {worker.get('checkpoint')}, this node expects {self._checkpoint}"
                )
        return found

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
        if not self._broker_down and self._clock() - self._worker_seen > NO_WORKER_SECONDS:
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
            self._pending[segment] = _Pending(future, on_text)
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
        self._celery.send_task(broker.TASK, args=[segment, self._reply], queue=broker.queue(self._variant))

    # The reply thread ---------------------------------------------------------------------------------

    def _run(self) -> None:
        down_since: float | None = None
        watched = self._clock()
        while not self._stopping.is_set():
            try:
                item = self._redis.blpop([self._reply], timeout=WATCH_SECONDS)
                if down_since is not None:
                    log.info("the broker is back")
                    self._broker_down = False
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
                    self._broker_down = True
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
            piece = pending.fresh(str(message["text"]), str(message.get("run")))
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
        self._settle(self._results(segments))

    def _results(self, segments: list[str]) -> list[tuple[str, bytes]]:
        """The results written for these segments."""
        if not segments:
            return []
        found = self._redis.mget([broker.key("out", s) for s in segments])
        return [(s, raw) for s, raw in zip(segments, found, strict=True) if raw is not None]

    def _settle(self, done: list[tuple[str, bytes]]) -> None:
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
        keys = [broker.key(kind, s) for s in segments for kind in ("seg", "out")]
        if keys:
            self._redis.delete(*keys)

    def _watch(self) -> None:
        """Drop what nobody waits for, pick up answers whose reply was lost, resend what was lost.

        A segment waiting here is accounted for while its result is written, a live worker holds it (its
        heartbeat lists it), or its task waits in the queue. One that stays unaccounted for (its worker died,
        its task was given back when Redis could not take the restore, a crash of Redis lost the task) is
        queued again: its result is written once however many times it runs.
        """
        with self._lock:
            cancelled = [s for s, p in self._pending.items() if p.future.cancelled()]
            for segment in cancelled:
                del self._pending[segment]
            segments = list(self._pending)
        self._forget(cancelled)
        workers = self._serving(broker.live_workers(self._redis))
        if workers:
            self._worker_seen = self._clock()
        if not segments:
            return
        # Results first, then whether every reply is read: a result found with replies unread may have text
        # still waiting behind it, and is picked up from the reply list instead.
        done = self._results(segments)
        if done and not self._redis.llen(self._reply):
            self._settle(done)
        finished = {s for s, _ in done}
        if not workers and self._clock() - self._worker_seen > NO_WORKER_SECONDS:
            self._fail_waiting("no worker is running")
            return
        if self._clock() < self._grace_until:
            return
        held = {segment for w in workers for segment in w.get("holding", ())}
        open_ = [s for s in segments if s not in finished and s not in held]
        now = self._clock()
        if open_ and now - self._searched < LOST_SECONDS / 2:
            return  # the queue was searched a moment ago
        self._searched = now
        lost = self._lost(open_)
        with self._lock:
            for segment in segments:
                pending = self._pending.get(segment)
                if pending is None:
                    continue
                if segment not in lost:
                    pending.unaccounted = None
                elif pending.unaccounted is None:
                    pending.unaccounted = now
        for segment in lost:
            with self._lock:
                pending = self._pending.get(segment)
            # Unaccounted for over two heartbeats: no worker is about to list it (a task just taken).
            if pending is not None and pending.unaccounted is not None and now - pending.unaccounted >= LOST_SECONDS:
                self._queue(segment)
                pending.unaccounted = None
                self._resent += 1
                log.warning("segment %s was lost (its worker stopped, or its task); sent again", segment)

    def _lost(self, segments: list[str]) -> set[str]:
        """Of segments neither done nor held by a live worker, those whose task is not in the queue either."""
        if not segments:
            return set()
        queued = self._redis.lrange(broker.queue(self._variant), 0, -1)
        waiting = "".join(item.decode(errors="replace") for item in queued)
        return {s for s in segments if s not in waiting}

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


def _count(value: Any) -> int:
    """A count from a heartbeat (0 when a worker of another version does not report it)."""
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return 0


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
