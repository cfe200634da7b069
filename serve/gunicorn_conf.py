"""gunicorn settings: one worker process (the model lives there), many threads.

Never import torch here: this file runs in the master, and CUDA does not survive fork.
"""

import os

from app.settings import Settings

_settings = Settings.from_env()

bind = f"[{_settings.host}]:{_settings.port}" if ":" in _settings.host else f"{_settings.host}:{_settings.port}"
workers = 1
# gthread with request heads read by the event loop, read deadlines and /health in threads of its own.
worker_class = "serve.http_worker.Worker"
threads = _settings.threads
# Connections held at once (idle keep-alive and heads still arriving included); each is a socket, not a thread.
worker_connections = 2000
# gthread workers heartbeat from their main loop, so long transcriptions in request threads are not killed.
timeout = 120
graceful_timeout = 30
keepalive = 5
# The service logs one line per request itself (app/observability.py: its id, route, status, audio and
# processing seconds, client); gunicorn's access log would be a second, less useful line.
accesslog = None
errorlog = "-"
loglevel = "info"
if _settings.log_format == "json":
    # gunicorn's own lines (start, worker exits, refused requests) as JSON lines too.
    logconfig_dict = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "app.tracing.JsonLines"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        # Replaces gunicorn's defaults whole (it merges only the top level): the root logger, which the service's
        # own lines go to, writes JSON lines as well.
        "root": {"level": "INFO", "handlers": ["stderr"]},
        "loggers": {"gunicorn.error": {"handlers": ["stderr"], "level": "INFO", "propagate": False}},
    }
# The app (and the model, later) load in the worker after fork, never in the master.
preload_app = False
# Nothing here uses gunicorn's control socket; it would be written under $HOME, which may be read-only.
control_socket_disable = True
# The worker heartbeat file: memory-backed where available, so a read-only root filesystem works.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None


def post_worker_init(worker: object) -> None:
    """Errors gunicorn answers itself (a request line over 4 KB, malformed headers) use the JSON error body."""
    from serve import http_errors

    http_errors.install(worker)


def worker_int(worker: object) -> None:
    """SIGINT or SIGQUIT (Ctrl-C): stop the service's own threads before the worker exits."""
    _stop_services(worker)


def worker_exit(server: object, worker: object) -> None:
    """After the worker's loop ends (SIGTERM, once in-flight requests are done or the grace period is over)."""
    _stop_services(worker)


def _stop_services(worker: object) -> None:
    # Running jobs are requeued, waiting requests answered 503, the model unloaded, ffmpeg stopped; then the
    # interpreter exits with no thread left inside the model.
    app = getattr(worker, "application", None)
    services = getattr(app, "extensions", {}).get("asr")
    if services is not None:
        services.stop(timeout=10)
