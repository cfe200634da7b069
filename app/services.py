"""The bootstrap: the one place that chooses and wires the service's dependencies."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from app.backends import Backend
from app.engine import Engine
from app.jobs import JobRunner, JobStore
from app.pipeline import Pipeline
from app.settings import Settings

BackendLoader = Callable[[], Backend]


@dataclass(frozen=True)
class Services:
    """App-wide services, kept in app.extensions["asr"]."""

    settings: Settings
    engine: Engine
    pipeline: Pipeline
    jobs: JobStore
    runner: JobRunner
    uploads_dir: Path
    outputs_dir: Path

    def start(self) -> None:
        """Start the inference worker and the job runners (the model itself still loads lazily)."""
        self.engine.start()
        self.runner.start()

    def stop(self) -> None:
        """Stop taking jobs and unload the model."""
        self.runner.stop()
        self.engine.stop(timeout=30)


def real_loader(settings: Settings) -> BackendLoader:
    """Load the configured checkpoint through the Qwen-Omni backend."""

    def load() -> Backend:
        from app.backends.qwen_omni import QwenOmniBackend

        return QwenOmniBackend.load(settings)

    return load


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
    engine = Engine(
        loader or real_loader(settings),
        idle_timeout=settings.idle_timeout,
        batch_size=settings.batch_size,
        token_budget=settings.token_budget,
        release=release_memory,
    )
    pipeline = Pipeline(engine)
    store = JobStore(data / "jobs.sqlite3")
    runner = JobRunner(
        store, pipeline, jobs_dir, outputs, settings.job_workers, retention_seconds=settings.retention_hours * 3600
    )
    return Services(settings, engine, pipeline, store, runner, uploads, outputs)
