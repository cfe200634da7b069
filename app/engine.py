"""The one inference worker: it alone owns the model, loads it lazily, batches segments and unloads when idle."""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from app.backends import (
    Aligner,
    AlignerDownloading,
    Alignment,
    AlignmentRequest,
    Backend,
    BackendOutOfMemory,
    GenerationRequest,
    GenerationResult,
)
from app.errors import InferenceFailed, ModelUnavailable, OutOfMemory, ServiceError, ShuttingDown
from app.metrics import Metrics

log = logging.getLogger(__name__)


class ModelState(StrEnum):
    """Where the model is in its lifecycle."""

    UNLOADED = "unloaded"
    LOADING = "loading"
    LOADED = "loaded"
    ERROR = "error"


@dataclass
class _Work:
    request: GenerationRequest | AlignmentRequest
    future: Future[Any]
    # When it was queued (time.perf_counter), for the queue-wait metric.
    queued_at: float = field(default_factory=time.perf_counter)

    @property
    def stage(self) -> str:
        """The metrics' name of its kind: align, identify, or generate (all other generations)."""
        if isinstance(self.request, AlignmentRequest):
            return "align"
        return "identify" if self.request.task == "identify" else "generate"

    @property
    def kind(self) -> Any:
        """What a batch must share: alignments go together, language identifications together, other
        generations with equal params."""
        if isinstance(self.request, AlignmentRequest):
            return "align"
        return ("identify", self.request.params) if self.request.task == "identify" else self.request.params


# After the aligner fails to load, word times are estimated for this long before a load is tried again.
ALIGNER_RETRY_SECONDS = 60.0
# While the aligner downloads, how often the worker looks whether it is there.
ALIGNER_POLL_SECONDS = 5.0


_STOP = object()


class Inference(Protocol):
    """What the pipeline and the routes need of an engine: this one, or cluster mode's RemoteEngine."""

    def start(self) -> None: ...
    def stop(self, timeout: float | None = None) -> None: ...
    def submit(self, requests: Sequence[GenerationRequest]) -> list[Future[GenerationResult]]: ...
    def submit_alignments(self, requests: Sequence[AlignmentRequest]) -> list[Future[Alignment]]: ...
    def status(self) -> dict[str, Any]: ...
    def aligner_status(self) -> dict[str, Any] | None: ...


class Engine:
    """Request threads submit segments and wait on futures; one worker thread does all loading and generation."""

    def __init__(
        self,
        loader: Callable[[], Backend],
        *,
        idle_timeout: float,
        batch_size: int,
        token_budget: int = 1 << 20,
        release: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        load_backoff: tuple[float, float] = (2.0, 60.0),
        aligner_loader: Callable[[], Aligner] | None = None,
        metrics: Metrics | None = None,
        gather: float = 0.0,
    ) -> None:
        self._loader = loader
        # Seconds to wait for more work after the first item arrives at an idle worker, to fill its batch: a
        # cluster worker's segments arrive from several threads a few milliseconds apart.
        self._gather = gather
        # Where stage times, batch sizes and tokens are recorded (none: not recorded).
        self._metrics = metrics
        # The forced aligner: loaded by this worker when alignments arrive, unloaded with the model.
        self._aligner_loader = aligner_loader
        self._aligner: Aligner | None = None
        self._aligner_state = ModelState.UNLOADED
        self._aligner_error: str | None = None
        self._aligner_retry_at = 0.0
        self._aligner_loads = 0
        # After a failed load, work arriving within the backoff fails at once (503, Retry-After) rather than
        # retry a load that just failed; the wait doubles per failure from the first value up to the second.
        self._backoff_first, self._backoff_max = load_backoff
        self._backoff = 0.0
        self._retry_at = 0.0
        self._idle_timeout = idle_timeout
        self._batch_size = batch_size
        self._token_budget = token_budget
        self._oom_splits = 0
        # Segments a token limit cut (the client's max_new_tokens or the runaway guard), and loops stopped: a
        # rising count says the limits are too tight for this speech, or the model is looping on this audio.
        self._stops = {"max_tokens": 0, "repetition": 0}
        self._release = release
        self._clock = clock
        self._queue: queue.Queue[Any] = queue.Queue()
        self._lock = threading.Lock()
        self._backend: Backend | None = None
        self._state = ModelState.UNLOADED
        self._error: str | None = None
        self._device: str | None = None
        self._last_used = clock()
        self._busy = False
        self._held = 0  # segments the worker has taken off the queue but not finished
        self._loads = 0
        self._unloads = 0
        self._thread: threading.Thread | None = None
        # Set by stop(): nothing new is taken, and no model is loaded any more.
        self._stopping = False

    def start(self) -> None:
        """Start the worker thread (once)."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="inference-worker", daemon=True)
                self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Finish the batch in hand, fail what waits (ShuttingDown), unload, and end the worker thread."""
        with self._lock:
            self._stopping = True
        self._queue.put(_STOP)
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, requests: Sequence[GenerationRequest]) -> list[Future[GenerationResult]]:
        """Queue segments for generation; each future resolves to the segment's result or raises."""
        with self._lock:
            if self._stopping:
                raise _shutting_down()
        self.start()
        futures: list[Future[GenerationResult]] = []
        for request in requests:
            future: Future[GenerationResult] = Future()
            self._queue.put(_Work(request, future))
            futures.append(future)
        return futures

    def submit_alignments(self, requests: Sequence[AlignmentRequest]) -> list[Future[Alignment]]:
        """Queue texts to time in their audio; each future resolves to the words' times, or None when the
        aligner is off, failed to load or could not align that text (the caller then estimates)."""
        with self._lock:
            if self._stopping:
                raise _shutting_down()
        self.start()
        futures: list[Future[Alignment]] = []
        for request in requests:
            future: Future[Alignment] = Future()
            if self._aligner_loader is None:
                future.set_result(None)
            else:
                self._queue.put(_Work(request, future))
            futures.append(future)
        return futures

    def aligner_status(self) -> dict[str, Any] | None:
        """The aligner's lifecycle for /health; None when there is no aligner."""
        if self._aligner_loader is None:
            return None
        with self._lock:
            return {"state": self._aligner_state.value, "error": self._aligner_error, "loads": self._aligner_loads}

    def status(self) -> dict[str, Any]:
        """A snapshot of the lifecycle for /health."""
        with self._lock:
            left: float | None = None
            if self._state is ModelState.LOADED and self._idle_timeout > 0 and not self._busy:
                left = max(0.0, self._last_used + self._idle_timeout - self._clock())
            return {
                "state": self._state.value,
                "error": self._error,
                "device": self._device,
                "idle_timeout": self._idle_timeout,
                "seconds_until_unload": None if left is None else round(left, 1),
                "loads": self._loads,
                "unloads": self._unloads,
                "batch_size": self._batch_size,
                "token_budget": self._token_budget,
                "oom_batch_splits": self._oom_splits,
                "max_tokens_stops": self._stops["max_tokens"],
                "repetition_stops": self._stops["repetition"],
                "pending_segments": self._queue.qsize() + self._held,
                "retry_load_in": self._retry_in(),
            }

    def _retry_in(self) -> float | None:
        """Seconds until a failed load may be tried again; None when no backoff is running."""
        if self._state is not ModelState.ERROR:
            return None
        return round(max(0.0, self._retry_at - self._clock()), 1)

    # The worker thread ---------------------------------------------------------------------------------

    def _run(self) -> None:
        pending: deque[_Work] = deque()
        while True:
            if not pending:
                try:
                    item = self._queue.get(timeout=self._until_unload())
                except queue.Empty:
                    self._unload_if_idle()
                    continue
                if item is _STOP:
                    break
                pending.append(item)
                self._gather_more(pending)
            if self._drain(pending):
                break
            batch = self._take_batch(pending)
            self._hold(len(batch) + len(pending))
            if batch:
                self._process(batch, pending)
            self._hold(len(pending))
        # What was submitted after the stop marker, or while it was being reached, fails too: nothing hangs.
        self._drain(pending)
        self._fail_all(pending, _shutting_down())
        self._unload()

    def _gather_more(self, pending: deque[_Work]) -> None:
        """Wait up to the gather time for a batch's worth of work (a stop marker is put back for _drain)."""
        deadline = time.monotonic() + self._gather
        while len(pending) < self._batch_size:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                item = self._queue.get(timeout=left)
            except queue.Empty:
                return
            if item is _STOP:
                self._queue.put(_STOP)
                return
            pending.append(item)

    def _hold(self, count: int) -> None:
        with self._lock:
            self._held = count

    def _drain(self, pending: deque[_Work]) -> bool:
        """Move everything already queued into pending; True if a stop was requested."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return False
            if item is _STOP:
                return True
            pending.append(item)

    def _take_batch(self, pending: deque[_Work]) -> list[_Work]:
        """Live items of one kind, in submission order, within batch size and budget: alignments when any wait,
        else the first item's kind (its params).

        Alignments go first because a segment is done only once its words are timed: behind every generation
        already queued, they would hold back each segment's result (and a job's progress) to the end. They are
        a single forward pass, short beside generation. A padded batch costs its size times its longest
        sequence, so that is what the budget bounds; the first item taken is always taken, whatever its cost.
        """
        batch: list[_Work] = []
        rest: deque[_Work] = deque()
        longest = 0
        kind = "align" if any(w.kind == "align" for w in pending) else None
        while pending:
            work = pending.popleft()
            if work.future.cancelled():
                continue
            kind = work.kind if kind is None else kind
            fits = len(batch) < self._batch_size and (
                not batch or (len(batch) + 1) * max(longest, work.request.cost) <= self._token_budget
            )
            if fits and work.kind == kind:
                batch.append(work)
                longest = max(longest, work.request.cost)
            else:
                rest.append(work)
        pending.extend(rest)
        return batch

    def _process(self, batch: list[_Work], pending: deque[_Work]) -> None:
        live = [w for w in batch if w.future.set_running_or_notify_cancel()]
        if not live:
            return
        if self._metrics is not None:
            now = time.perf_counter()
            for work in live:
                self._metrics.queue_wait.labels(work.stage).observe(now - work.queued_at)
        if live[0].kind == "align":
            self._align(live)
            return
        backend = self._ensure_loaded()
        if backend is None:
            # Everything waiting would fail the same way; fail it now rather than reload per item.
            wait = max(1, math.ceil(self._retry_at - self._clock()))
            error: ServiceError = ModelUnavailable(
                f"model could not be loaded: {self._error} (next attempt in {wait} s)", retry_after=wait
            )
            if self._stopping:
                error = _shutting_down()
            self._fail_all(live, error, running=True)
            self._fail_all(pending, error)
            pending.clear()
            return
        with self._lock:
            self._busy = True
        try:
            self._generate(backend, live)
        finally:
            with self._lock:
                self._busy = False
                self._last_used = self._clock()

    def _generate(self, backend: Backend, batch: list[_Work]) -> None:
        """Generate for a batch; out of memory, halve it and retry each half (a batch of one fails)."""
        requests = [w.request for w in batch if isinstance(w.request, GenerationRequest)]
        started = time.perf_counter()
        try:
            results = backend.generate(requests)
            if len(results) != len(batch):
                raise RuntimeError(f"backend returned {len(results)} results for {len(batch)} segments")
        except BackendOutOfMemory as exc:
            if len(batch) == 1:
                log.error("out of memory on a batch of one segment: %s", exc)
                self._fail_all(
                    batch, OutOfMemory(f"not enough accelerator memory for one segment: {exc}"), running=True
                )
                return
            with self._lock:
                self._oom_splits += 1
            half = len(batch) // 2
            log.warning(
                "out of memory on a batch of %d segments: retrying as %d and %d", len(batch), half, len(batch) - half
            )
            self._generate(backend, batch[:half])
            self._generate(backend, batch[half:])
        except Exception as exc:  # a backend fault fails these requests, never the worker
            log.exception("generation failed")
            self._fail_all(batch, InferenceFailed(f"generation failed: {exc}"), running=True)
        else:
            with self._lock:
                for result in results:
                    if result.stop_reason in self._stops:
                        self._stops[result.stop_reason] += 1
            seconds = time.perf_counter() - started
            for work, result in zip(batch, results, strict=True):
                work.future.set_result(result)
            self._record(batch[0].stage, seconds, requests, results)

    def _record(
        self, stage: str, seconds: float, requests: Sequence[GenerationRequest], results: Sequence[GenerationResult]
    ) -> None:
        """A generate call's time, size and tokens, into the metrics (never a reason for the worker to stop)."""
        if self._metrics is None:
            return
        try:
            self._metrics.generation.labels(stage).observe(seconds)
            self._metrics.batch_size.labels(stage).observe(len(requests))
            for request, result in zip(requests, results, strict=True):
                kind = "chat" if request.chat is not None else request.task
                self._metrics.generated_tokens.labels(kind).inc(result.tokens)
                self._metrics.prompt_tokens.labels(kind).inc(result.prompt_tokens)
        except Exception:  # metrics are an account of the work, not part of it
            log.exception("recording generation metrics failed")

    def _align(self, batch: list[_Work]) -> None:
        """Time a batch of texts; without an aligner (off, or it failed), each resolves to None."""
        aligner = self._ensure_aligner()
        if aligner is None:
            for work in batch:
                work.future.set_result(None)
            return
        with self._lock:
            self._busy = True
        try:
            self._run_alignment(aligner, batch)
        finally:
            with self._lock:
                self._busy = False
                self._last_used = self._clock()

    def _run_alignment(self, aligner: Aligner, batch: list[_Work]) -> None:
        """Align a batch; out of memory, halve it and retry each half. A failure leaves the words estimated."""
        started = time.perf_counter()
        try:
            results = aligner.align([w.request for w in batch if isinstance(w.request, AlignmentRequest)])
            if len(results) != len(batch):
                raise RuntimeError(f"aligner returned {len(results)} results for {len(batch)} segments")
            if self._metrics is not None:
                self._metrics.alignment.observe(time.perf_counter() - started)
                self._metrics.batch_size.labels("align").observe(len(batch))
        except BackendOutOfMemory as exc:
            if len(batch) > 1:
                with self._lock:
                    self._oom_splits += 1
                half = len(batch) // 2
                self._run_alignment(aligner, batch[:half])
                self._run_alignment(aligner, batch[half:])
                return
            log.warning("out of memory aligning one segment; its word times are estimated: %s", exc)
            results = [None]
        except Exception:  # the transcript stands without aligned words
            log.exception("alignment failed; word times are estimated")
            results = [None] * len(batch)
        for work, result in zip(batch, results, strict=True):
            work.future.set_result(result)

    def _ensure_aligner(self) -> Aligner | None:
        if self._aligner is not None or self._aligner_loader is None or self._stopping:
            return self._aligner
        waiting = self._aligner_state in (ModelState.ERROR, ModelState.LOADING)
        if waiting and self._clock() < self._aligner_retry_at:
            return None
        with self._lock:
            self._aligner_state, self._aligner_error = ModelState.LOADING, None
        try:
            aligner = self._aligner_loader()
        except AlignerDownloading as exc:
            # Downloaded off this thread, so no generation waits for it; asked again shortly.
            with self._lock:
                self._aligner_error = str(exc)
                self._aligner_retry_at = self._clock() + ALIGNER_POLL_SECONDS
            return None
        except Exception as exc:  # the service goes on with estimated word times
            log.exception("aligner load failed; word times are estimated")
            self._release()
            with self._lock:
                reason = exc.message if isinstance(exc, ServiceError) else f"{type(exc).__name__}: {exc}"
                self._aligner_state, self._aligner_error = ModelState.ERROR, reason
                self._aligner_retry_at = self._clock() + ALIGNER_RETRY_SECONDS
            return None
        with self._lock:
            self._aligner, self._aligner_state = aligner, ModelState.LOADED
            self._aligner_loads += 1
            self._last_used = self._clock()
        return aligner

    def _ensure_loaded(self) -> Backend | None:
        if self._backend is not None:
            return self._backend
        if self._stopping:
            # Loading while the interpreter shuts down fails in obscure ways (and would be undone at once).
            with self._lock:
                self._state, self._error = ModelState.UNLOADED, None
            return None
        if self._state is ModelState.ERROR and self._clock() < self._retry_at:
            return None
        with self._lock:
            self._state, self._error = ModelState.LOADING, None
        started = self._clock()
        try:
            backend = self._loader()
        except Exception as exc:  # a load failure leaves the service up and reports why
            log.exception("model load failed")
            self._release()
            with self._lock:
                # Our own errors (a missing checkpoint) carry advice meant for the operator, as they are.
                reason = exc.message if isinstance(exc, ServiceError) else f"{type(exc).__name__}: {exc}"
                self._state, self._error = ModelState.ERROR, reason
                self._backoff = min(self._backoff_max, self._backoff * 2 or self._backoff_first)
                self._retry_at = self._clock() + self._backoff
            return None
        with self._lock:
            self._backoff = 0.0
            self._backend, self._device = backend, backend.device
            self._state, self._loads = ModelState.LOADED, self._loads + 1
            self._last_used = self._clock()
        log.info("model loaded in %.1f s", self._clock() - started)
        return backend

    def _until_unload(self) -> float | None:
        if (self._backend is None and self._aligner is None) or self._idle_timeout <= 0:
            return None
        return max(0.0, self._last_used + self._idle_timeout - self._clock())

    def _unload_if_idle(self) -> None:
        loaded = self._backend is not None or self._aligner is not None
        if loaded and self._clock() - self._last_used >= self._idle_timeout > 0:
            log.info("idle for %.0f s: unloading the model", self._idle_timeout)
            self._unload()

    def _unload(self) -> None:
        """Unload the model and the aligner together."""
        backend, aligner = self._backend, self._aligner
        if backend is None and aligner is None:
            return
        with self._lock:
            self._backend, self._aligner = None, None
            if backend is not None:
                self._state = ModelState.UNLOADED
                self._unloads += 1
            if aligner is not None:
                self._aligner_state = ModelState.UNLOADED
        for model in (backend, aligner):
            if model is not None:
                model.close()
        del backend, aligner
        self._release()

    @staticmethod
    def _fail_all(items: Sequence[_Work] | deque[_Work], error: Exception, *, running: bool = False) -> None:
        for work in items:
            if running or work.future.set_running_or_notify_cancel():
                work.future.set_exception(error)


def _shutting_down() -> ShuttingDown:
    return ShuttingDown("the service is shutting down; send the request again once it is back", retry_after=10)
