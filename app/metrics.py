"""Prometheus metrics: the instruments the service records as it works, and the figures read at scrape time.

One registry per app (not prometheus_client's global one), so that every app the tests build has counters of
its own. Names follow Prometheus' guide: one prefix, the unit in the name (seconds, tokens), `_total` on
counters (prometheus_client appends it), labels only of small fixed sets (a route's rule, never its path).
What the engine and the job store already count (model state, loads, stops, pending segments, jobs by state)
is read from them when scraped, not counted twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PREFIX = "qwen_asr"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MODEL_STATES = ("unloaded", "loading", "loaded", "error")

# Whole requests: a /health poll takes milliseconds, an hour of audio many minutes.
REQUEST_BUCKETS = (0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
# One stage of one file or batch: decoding an hour of audio, or one generate call over a batch of segments.
STAGE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


def _name(name: str) -> str:
    return f"{PREFIX}_{name}"


class Metrics:
    """The service's instruments in a registry of its own; the Engine, Pipeline and HTTP layer record into them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            _name("http_requests"), "HTTP requests answered, by route, method and status.",
            ["route", "method", "status"], registry=r,
        )  # fmt: skip
        self.request_seconds = Histogram(
            _name("http_request_duration_seconds"), "Time from a request's arrival to the end of its response.",
            ["route", "method"], buckets=REQUEST_BUCKETS, registry=r,
        )  # fmt: skip
        # kind: generate (transcription, translation and chat share batches), identify, align.
        self.queue_wait = Histogram(
            _name("queue_wait_seconds"),
            "Time a segment, alignment or identification waited in the inference worker's queue for its batch.",
            ["kind"], buckets=STAGE_BUCKETS, registry=r,
        )  # fmt: skip
        self.decode = Histogram(
            _name("decode_seconds"), "Time ffmpeg took to decode one file (its audio read off the pipe).",
            buckets=STAGE_BUCKETS, registry=r,
        )  # fmt: skip
        self.vad = Histogram(
            _name("vad_seconds"), "Time Silero VAD took over one file.", buckets=STAGE_BUCKETS, registry=r
        )
        self.generation = Histogram(
            _name("generation_seconds"), "Time of one generate call over a batch.", ["kind"],
            buckets=STAGE_BUCKETS, registry=r,
        )  # fmt: skip
        self.alignment = Histogram(
            _name("alignment_seconds"), "Time of one forced-aligner call over a batch.", buckets=STAGE_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            _name("batch_size"), "Requests in one model call.", ["kind"], buckets=BATCH_BUCKETS, registry=r
        )
        self.audio_seconds = Counter(
            _name("audio_seconds"), "Seconds of audio decoded for transcription, translation and identification.",
            registry=r,
        )  # fmt: skip
        # kind: what each request asked, transcribe, translate, chat or identify.
        self.generated_tokens = Counter(
            _name("generated_tokens"), "New tokens the model generated (after trimming loops).", ["kind"],
            registry=r,
        )  # fmt: skip
        self.prompt_tokens = Counter(
            _name("prompt_tokens"), "Prompt tokens the model read (template, text and audio).", ["kind"], registry=r
        )

    def watch(self, source: Callable[[], Iterator[Metric]]) -> None:
        """Add figures read when scraped: source yields them (from the engine's and job store's own counts)."""
        self.registry.register(_Scraped(source))

    def exposition(self) -> bytes:
        """Everything, in Prometheus' text format."""
        return generate_latest(self.registry)


class _Scraped(Collector):
    """A collector whose figures come from a function called at each scrape."""

    def __init__(self, source: Callable[[], Iterator[Metric]]) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        yield from self.source()

    def describe(self) -> list[Metric]:
        # Nothing to describe ahead: the names are checked against the instruments' when first scraped.
        return []


def _state(name: str, what: str, current: str) -> GaugeMetricFamily:
    """A state as a gauge per possible state: 1 for the current one, 0 for the others."""
    family = GaugeMetricFamily(_name(name), f"1 for the {what}'s current state, 0 for the others.", labels=["state"])
    for state in MODEL_STATES:
        family.add_metric([state], 1.0 if current == state else 0.0)
    return family


def engine_figures(status: dict[str, Any], aligner: dict[str, Any] | None) -> Iterator[Metric]:
    """The engine's lifecycle and counts (its status(), as /health shows it) as metrics."""
    yield _state("model_state", "model", status["state"])
    yield CounterMetricFamily(_name("model_loads"), "Times the model was loaded.", value=status["loads"])
    yield CounterMetricFamily(_name("model_unloads"), "Times the model was unloaded.", value=status["unloads"])
    yield GaugeMetricFamily(
        _name("segments_pending"), "Segments queued or in the worker's hands.", value=status["pending_segments"]
    )
    yield CounterMetricFamily(
        _name("oom_batch_splits"), "Batches halved after running out of accelerator memory.",
        value=status["oom_batch_splits"],
    )  # fmt: skip
    stops = CounterMetricFamily(
        _name("generation_stops"),
        "Segments and answers stopped early: max_tokens (a token limit or the runaway guard), repetition (a loop).",
        labels=["reason"],
    )
    stops.add_metric(["max_tokens"], status["max_tokens_stops"])
    stops.add_metric(["repetition"], status["repetition_stops"])
    yield stops
    if aligner is not None:
        yield _state("aligner_state", "forced aligner", aligner["state"])
        yield CounterMetricFamily(_name("aligner_loads"), "Times the aligner was loaded.", value=aligner["loads"])


def job_figures(counts: dict[str, int]) -> Iterator[Metric]:
    """Async jobs by state (from the job store)."""
    jobs = GaugeMetricFamily(_name("jobs"), "Async jobs in the store, by state.", labels=["state"])
    for state, count in counts.items():
        jobs.add_metric([state], count)
    yield jobs


def cluster_figures(status: dict[str, Any]) -> Iterator[Metric]:
    """Cluster mode: the broker, its queue and each live worker (RemoteEngine.cluster_status(), as /health)."""
    yield GaugeMetricFamily(_name("broker_up"), "1 when the broker (Redis) answers.", value=float(status["reachable"]))
    workers = status["workers"]
    yield GaugeMetricFamily(_name("cluster_workers"), "Workers whose heartbeat is fresh.", value=len(workers))
    if status["queued_segments"] is not None:
        yield GaugeMetricFamily(
            _name("cluster_queued_segments"), "Segments waiting in the broker's queue for a worker.",
            value=status["queued_segments"],
        )  # fmt: skip
    yield GaugeMetricFamily(
        _name("cluster_waiting_segments"), "Segments this HTTP node has sent and waits on.",
        value=status["waiting_segments"],
    )  # fmt: skip
    yield CounterMetricFamily(
        _name("cluster_resent_segments"), "Segments this node sent again because their worker stopped.",
        value=status["resent_segments"],
    )  # fmt: skip
    # Per worker, labelled by its id (host:pid): a cluster has a handful.
    in_hand = GaugeMetricFamily(
        _name("worker_segments_in_hand"), "Segments a worker holds (queued in its engine or generating).",
        labels=["worker"],
    )  # fmt: skip
    loaded = GaugeMetricFamily(_name("worker_model_loaded"), "1 when a worker's model is loaded.", labels=["worker"])
    seen = GaugeMetricFamily(
        _name("worker_last_seen_seconds"), "Seconds since a worker's last heartbeat.", labels=["worker"]
    )
    done = CounterMetricFamily(_name("worker_segments"), "Segment tasks a worker has finished.", labels=["worker"])
    calls = CounterMetricFamily(
        _name("worker_generate_calls"), "Generate calls a worker has made (segments per call: its batching).",
        labels=["worker"],
    )  # fmt: skip
    for worker in workers:
        labels = [str(worker["id"])]
        in_hand.add_metric(labels, worker["in_hand"])
        loaded.add_metric(labels, 1.0 if worker["model"]["state"] == "loaded" else 0.0)
        seen.add_metric(labels, worker["seconds_since_seen"])
        done.add_metric(labels, worker["segments_done"])
        calls.add_metric(labels, worker["generate_calls"])
    yield from (in_hand, loaded, seen, done, calls)
