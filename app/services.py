"""The bootstrap: the one place that chooses and wires the service's dependencies."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from flask import current_app
from prometheus_client.core import Metric

from app.backends import Aligner, AlignerDownloading, Backend
from app.checkpoints import DownloadProgress
from app.engine import Engine, Inference
from app.errors import ServiceError
from app.jobs import JobRunner, JobStore, Store
from app.media_store import MediaStore
from app.metrics import Metrics, cluster_figures, engine_figures, job_figures
from app.pipeline import Pipeline
from app.redis_jobs import RedisJobStore
from app.remote_engine import RemoteEngine
from app.settings import Settings
from app.storage import DiskGuard
from app.vad import SpeechModel

log = logging.getLogger(__name__)

BackendLoader = Callable[[], Backend]


@dataclass(frozen=True)
class Services:
    """App-wide services, kept in app.extensions["asr"]."""

    settings: Settings
    # In cluster mode (settings.clustered), a RemoteEngine: the model runs in the workers.
    engine: Inference
    pipeline: Pipeline
    jobs: Store
    runner: JobRunner
    uploads_dir: Path
    outputs_dir: Path
    disk: DiskGuard
    download: DownloadProgress
    metrics: Metrics
    # Images and videos kept for follow-up questions (the native vision routes), on this node's disk.
    media: MediaStore

    def start(self) -> None:
        """Start the inference worker and the job runners (the model itself still loads lazily)."""
        self.engine.start()
        self.runner.start()

    def stop(self, timeout: float = 30) -> None:
        """Shut down: running jobs are interrupted and requeued, waiting requests get 503, the model is unloaded.

        The runners are told first, so a job whose segments fail with the engine's shutdown is requeued
        (it runs again after the restart) rather than failed.
        """
        self.runner.stop()
        self.engine.stop(timeout=timeout)
        self.runner.stop(timeout=timeout)


def current_services() -> Services:
    """The services of the app handling this request."""
    found: Services = current_app.extensions["asr"]
    return found


def real_loader(settings: Settings, download: DownloadProgress) -> BackendLoader:
    """Find (or download) the configured checkpoint and load it through its family's backend."""

    def load() -> Backend:
        from app.checkpoints import resolve

        checkpoint = resolve(settings, download)
        if settings.model_variant.family == "qwen3-asr":
            from app.backends.qwen3_asr import Qwen3AsrBackend

            return Qwen3AsrBackend.load(settings, checkpoint)
        from app.backends.qwen_omni import QwenOmniBackend

        return QwenOmniBackend.load(settings, checkpoint)

    return load


def aligner_loader(settings: Settings, download: DownloadProgress) -> Callable[[], Aligner] | None:
    """Find (or download) the configured forced aligner and load it; None with --aligner none."""
    if not settings.aligner_enabled:
        return None

    own = replace(settings, checkpoint_path=settings.aligner)
    lock = threading.Lock()
    found: list[str] = []
    failed: list[Exception] = []
    fetching: list[threading.Thread] = []

    def fetch() -> None:
        from app.checkpoints import resolve

        try:
            found.append(resolve(own, download))
        except Exception as exc:  # reported by the next load, which marks the aligner failed
            log.exception("aligner download failed")
            failed.append(exc)

    def where() -> str:
        """The aligner's local directory; a download runs in the background, never on the inference worker."""
        from app.checkpoints import cached_snapshot, is_local, resolve

        with lock:
            if found:
                return found[0]
            if is_local(settings.aligner) or settings.local_model:
                found.append(resolve(own, download))  # on disk, or refused: no network either way
                return found[0]
            if (snapshot := cached_snapshot(settings.aligner)) is not None:
                found.append(str(snapshot))
                return found[0]
            if failed:
                raise failed.pop()
            if not fetching or not fetching[-1].is_alive():
                fetching.append(threading.Thread(target=fetch, name="aligner-download", daemon=True))
                fetching[-1].start()
            raise AlignerDownloading(f"downloading {settings.aligner}: word times are estimated until it is here")

    def load() -> Aligner:
        from app.backends.qwen3_aligner import Qwen3Aligner

        # Found, checked and downloaded as the model is, under its own name.
        return Qwen3Aligner.load(settings, where())

    return load


def _cluster(settings: Settings) -> tuple[RemoteEngine, RedisJobStore]:
    """Cluster mode: the engine is the workers' behind the broker, and the jobs live in the same Redis."""
    from app.broker import connect
    from app.redis_jobs import node_id

    engine = RemoteEngine(
        settings.broker,
        settings.visibility_timeout,
        variant=settings.variant,
        checkpoint=settings.checkpoint_path,
        batch_size=settings.batch_size,
        token_budget=settings.token_budget,
        idle_timeout=settings.idle_timeout,
        aligner=settings.aligner_enabled,
    )
    store = RedisJobStore(
        connect(settings.broker),
        node_id(settings.data_path),
        retention_seconds=settings.retention_hours * 3600,
        max_audio_seconds=settings.max_audio_duration,
    )
    return engine, store


def build_services(settings: Settings, loader: BackendLoader | None = None) -> Services:
    """Wire the services for these settings; tests pass a loader to inject a faulty backend."""
    from app.devices import release_memory

    data = settings.data_path
    uploads, outputs, jobs_dir = data / "uploads", data / "outputs", data / "jobs"
    for directory in (uploads, outputs, jobs_dir):
        directory.mkdir(parents=True, exist_ok=True)
    # Uploads in flight belong to this process alone; anything left there is from a crash.
    for leftover in uploads.iterdir():
        leftover.unlink(missing_ok=True)
    download = DownloadProgress()
    metrics = Metrics()
    engine: Inference
    store: Store
    if settings.clustered:
        engine, store = _cluster(settings)
    else:
        engine = Engine(
            loader or real_loader(settings, download),
            idle_timeout=settings.idle_timeout,
            batch_size=settings.batch_size,
            token_budget=settings.token_budget,
            release=release_memory,
            # A test's own loader (a faulty backend) runs without an aligner.
            aligner_loader=None if loader is not None else aligner_loader(settings, download),
            metrics=metrics,
        )
        store = JobStore(data / "jobs.sqlite3")
    pipeline = Pipeline(
        engine,
        SpeechModel(settings.vad_settings),
        settings.max_audio_duration,
        paced=settings.model_variant.paced,
        metrics=metrics,
    )
    disk = DiskGuard(data, settings.min_free_space)
    runner = JobRunner(
        store,
        pipeline,
        jobs_dir,
        outputs,
        settings.job_workers,
        retention_seconds=settings.retention_hours * 3600,
        disk=disk,
    )

    def scraped() -> Iterator[Metric]:
        yield from engine_figures(engine.status(), engine.aligner_status())
        if isinstance(engine, RemoteEngine):
            yield from cluster_figures(engine.cluster_status())
        try:
            counts = store.counts()
        except (sqlite3.Error, OSError, ServiceError):  # /health reports an unreadable store; the scrape goes on
            log.warning("job counts left out of /metrics: the job database cannot be read", exc_info=True)
            return
        yield from job_figures(counts)

    metrics.watch(scraped)
    media = MediaStore(data / "media")
    return Services(settings, engine, pipeline, store, runner, uploads, outputs, disk, download, metrics, media)
