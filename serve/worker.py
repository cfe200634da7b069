#!/usr/bin/env python3
"""Run a cluster GPU worker: the service's model, fed segments through Celery from a Redis broker.

It takes the service's own flags and ASR_* variables (--variant, --checkpoint-path, --device, --batch-size,
--aligner, ...); --broker (ASR_BROKER_URL) is required. Run one per GPU, each with its own
CUDA_VISIBLE_DEVICES, on as many machines as you like; the HTTP service (started with the same --broker)
sends them segments. Stop it with SIGTERM or Ctrl-C: the segments it holds are finished first.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "serve"))

from qwen2_5_omni_awq import build_parser, settings_from, with_absolute_checkpoint  # noqa: E402

from app.checkpoints import start_up_problem  # noqa: E402
from app.errors import ServiceError  # noqa: E402
from app.tracing import configure_logging  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    """Parse the service's flags (plus --broker), check the model can be found, and run the worker."""
    parser = build_parser()
    parser.description = __doc__
    parser.add_argument(
        "--alive", action="store_true", help="exit 0 if a worker on this host has a fresh heartbeat (health checks)"
    )
    args = parser.parse_args(argv)
    alive = args.__dict__.pop("alive")
    try:
        settings = settings_from(args)
    except (ValueError, ServiceError) as exc:
        sys.exit(f"error: {exc}")
    if not settings.clustered:
        sys.exit("error: a worker needs --broker redis://host:port/db (or ASR_BROKER_URL)")
    if alive:
        sys.exit(0 if _alive_here(settings.broker) else 1)
    problem = start_up_problem(settings)
    if problem is not None:
        sys.exit(f"error: {problem}")
    settings = with_absolute_checkpoint(settings)
    if settings.local_model:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    configure_logging(settings.log_format)
    logging.getLogger(__name__).info("worker for %s on %s", settings.checkpoint_path, settings.device)

    from app.worker import serve

    serve(settings)


def _alive_here(broker_url: str) -> bool:
    """Whether a worker on this host beats in the broker (a container holds one worker)."""
    import socket

    import redis

    from app.broker import connect, live_workers

    try:
        return any(w["host"] == socket.gethostname() for w in live_workers(connect(broker_url)))
    except (redis.RedisError, OSError) as exc:  # unreachable broker: unhealthy, and say why
        print(f"broker unreachable: {exc}", file=sys.stderr)
        return False


if __name__ == "__main__":
    main()
