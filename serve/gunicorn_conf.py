"""gunicorn settings: one worker process (the model lives there), many threads.

Never import torch here: this file runs in the master, and CUDA does not survive fork.
"""

import os

from app.settings import Settings

_settings = Settings.from_env()

bind = f"[{_settings.host}]:{_settings.port}" if ":" in _settings.host else f"{_settings.host}:{_settings.port}"
workers = 1
worker_class = "gthread"
threads = _settings.threads
# gthread workers heartbeat from their main loop, so long transcriptions in request threads are not killed.
timeout = 120
graceful_timeout = 30
keepalive = 5
accesslog = "-"
errorlog = "-"
loglevel = "info"
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
