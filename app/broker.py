"""Cluster mode's shared parts: the Redis connection, the Celery app and its settings, the keys, and how a
segment, its result and a worker's heartbeat are written into Redis.

The HTTP nodes (app/remote_engine.py) and the GPU workers (app/worker.py) speak only through what is here.
A Celery task carries a segment's id and where to answer, never its audio: the audio waits in Redis under
the id (int16 PCM, half of float32 and a fifth of float32 as JSON), with a time to live, and a result is
written there once (SET NX) however many times its task runs.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from app import media
from app.backends import (
    AlignmentRequest,
    ChatPrompt,
    GenerationParams,
    GenerationRequest,
    GenerationResult,
)
from app.errors import BrokerUnavailable, InferenceFailed, MediaTooLarge, ModelUnavailable, OutOfMemory, ServiceError
from app.media import Video

log = logging.getLogger(__name__)

# Every key the service writes starts with this, so a Redis shared with other programs stays readable.
PREFIX = "qwen-asr:"
# The one task every worker runs. Its queue is named after the variant: a worker serving another variant (a
# different model) never takes this one's segments.
TASK = "qwen_asr.segment"
# A worker refreshes its heartbeat this often; one silent for WORKER_TTL is gone (its segments are sent again).
HEARTBEAT_SECONDS = 2.0
WORKER_TTL = 10.0
# A segment's audio and result wait this long at most: a client that died leaves nothing behind for longer.
SEGMENT_TTL = 6 * 3600
RESULT_TTL = 3600
# The most audio one segment message may carry: 300 s (the longest segment) of 16 kHz int16 is 9.6 MB.
MAX_SEGMENT_BYTES = 10 * 1024**2
# The most a chat's media (audio, and images and video frames as PNG) may take in one message.
MAX_MEDIA_BYTES = 64 * 1024**2
# Errors a worker reports and a client raises again, by code; anything else is an inference failure.
_REMOTE_ERRORS: dict[str, type[ServiceError]] = {
    cls.code: cls for cls in (ModelUnavailable, BrokerUnavailable, OutOfMemory, InferenceFailed)
}


def key(*parts: str) -> str:
    """A Redis key under the service's prefix."""
    return PREFIX + ":".join(parts)


def redacted(url: str) -> str:
    """The broker URL without its password, for /health and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def connect(url: str) -> Any:
    """A Redis client for url (a connection pool, safe to share between threads)."""
    import redis
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    # Short timeouts and two quick retries: a Redis that vanished must turn into a clear 503 within seconds,
    # never a request hanging. (A retried script may run twice; the job store's scripts allow for that.)
    return redis.Redis.from_url(
        url,
        socket_timeout=10,
        socket_connect_timeout=5,
        health_check_interval=15,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.1), 2),
    )


@contextmanager
def reachable(what: str) -> Iterator[None]:
    """Redis and Celery connection errors as BrokerUnavailable (a 503 with Retry-After), naming what failed."""
    import kombu.exceptions
    import redis

    try:
        yield
    except (redis.RedisError, kombu.exceptions.OperationalError, ConnectionError) as exc:
        raise BrokerUnavailable(f"{what}: the broker cannot be reached ({exc})", retry_after=5) from exc


def failures() -> tuple[type[BaseException], ...]:
    """What a broker that is down or restarting raises: redis-py's errors, socket errors, BrokerUnavailable."""
    import redis

    return (redis.RedisError, OSError, ServiceError)


def queue(variant: str) -> str:
    """The Celery queue of a variant's segments."""
    return f"qwen-asr-segments-{variant}"


def celery_app(broker_url: str, visibility_timeout: float, variant: str) -> Any:
    """The Celery app both roles build, configured for long GPU tasks on a Redis broker (see the README)."""
    from celery import Celery

    app = Celery("qwen_asr", broker=broker_url, set_as_current=False)
    app.conf.update(
        # Acknowledged when done, not when received: a worker killed mid-task leaves it to be delivered again.
        task_acks_late=True,
        # ...including when the worker process itself dies (SIGKILL, the OOM killer).
        task_reject_on_worker_lost=True,
        # One message per pool thread: a worker never holds segments another idle worker could be running.
        worker_prefetch_multiplier=1,
        # Results travel through our own keys (written once), not Celery's result backend.
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=queue(variant),
        # Redis redelivers an unacknowledged message after this: it must exceed the longest task, a model
        # load plus a batch, or a slow task runs twice. Clients resend a dead worker's segments long before.
        broker_transport_options={"visibility_timeout": visibility_timeout},
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        worker_hijack_root_logger=False,
        # The model's loaders print progress bars: they stay on stderr rather than become warning lines.
        worker_redirect_stdouts=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
    )
    return app


# Segments ----------------------------------------------------------------------------------------------


def _pcm(samples: np.ndarray) -> bytes:
    clipped = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0)
    return (clipped * 32767.0).round().astype("<i2").tobytes()


def _samples(raw: bytes) -> np.ndarray:
    return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32767.0


def encode_request(request: GenerationRequest | AlignmentRequest) -> tuple[dict[str, Any], bytes]:
    """A request as JSON-able metadata and its media as bytes: audio as int16 PCM, then images and video frames
    as PNG; ValueError when they are over the bound."""
    images: list[np.ndarray] = []
    videos: list[Video] = []
    if isinstance(request, AlignmentRequest):
        meta: dict[str, Any] = {"kind": "align", "text": request.text, "language": request.language}
        audio = _pcm(request.samples)
    else:
        meta = {
            "kind": "generate",
            "params": asdict(request.params),
            "language": request.language,
            "prompt": request.prompt,
            "task": request.task,
            "stream": request.on_text is not None,
        }
        audios = request.chat.audios if request.chat is not None else [request.samples]
        if request.chat is not None:
            meta["messages"] = request.chat.messages
            meta["grid"] = request.chat.grid.factor
            images, videos = request.chat.images, request.chat.videos
        meta["lengths"] = [len(a) for a in audios]
        audio = b"".join(_pcm(a) for a in audios)
    if len(audio) > MAX_SEGMENT_BYTES:
        raise ValueError(f"a segment's audio is {len(audio)} bytes, over the {MAX_SEGMENT_BYTES} a message may carry")
    if not images and not videos:
        return meta, audio
    pictures = [media.to_png(i) for i in images]
    meta["images"] = [len(p) for p in pictures]
    meta["videos"] = []
    for video in videos:
        frames = [media.to_png(f) for f in video.frames]
        pictures.extend(frames)
        meta["videos"].append({"fps": video.fps, "factor": video.grid.factor, "frames": [len(f) for f in frames]})
    payload = audio + b"".join(pictures)
    if len(payload) > MAX_MEDIA_BYTES:
        raise MediaTooLarge(
            f"the request's images and video are {len(payload) / 1024**2:.0f} MB once compressed, over the "
            f"{MAX_MEDIA_BYTES // 1024**2} MB a cluster message may carry: send smaller or shorter media"
        )
    meta["audio_bytes"] = len(audio)
    return meta, payload


def decode_request(meta: dict[str, Any], payload: bytes) -> GenerationRequest | AlignmentRequest:
    """The request encode_request() wrote (without its streaming callback, which the worker sets)."""
    audio_end = meta.get("audio_bytes", len(payload))
    samples = _samples(payload[:audio_end])
    if meta["kind"] == "align":
        return AlignmentRequest(samples, meta["text"], meta["language"])
    pieces: list[np.ndarray] = []
    start = 0
    for length in meta["lengths"]:
        pieces.append(samples[start : start + length])
        start += length
    params = GenerationParams(**meta["params"])
    if "messages" not in meta:
        return GenerationRequest(pieces[0], params, meta["language"], meta["prompt"], task=meta["task"])
    at = audio_end

    def picture(size: int) -> np.ndarray:
        nonlocal at
        at += size
        return media.from_png(payload[at - size : at])

    images = [picture(size) for size in meta.get("images", [])]
    videos = [
        Video(np.stack([picture(size) for size in v["frames"]]), v["fps"], media.Grid(v["factor"]))
        for v in meta.get("videos", [])
    ]
    grid = media.Grid(meta.get("grid", media.QWEN25_GRID.factor))
    return GenerationRequest.for_chat(ChatPrompt(meta["messages"], pieces, images, videos, grid), params)


def encode_result(result: GenerationResult | list[tuple[str, float, float]] | None) -> str:
    """A generation's result or an alignment (None: not aligned) as the JSON written under the segment."""
    if isinstance(result, GenerationResult):
        return json.dumps({"generated": asdict(result)})
    return json.dumps({"aligned": result})


def encode_error(error: BaseException) -> str:
    """A failure as JSON: our own errors keep their code, message and Retry-After."""
    if isinstance(error, ServiceError):
        body = {"code": error.code, "message": error.message, "retry_after": error.retry_after}
    else:
        body = {"code": InferenceFailed.code, "message": f"{type(error).__name__}: {error}", "retry_after": None}
    return json.dumps({"error": body})


def decode_result(raw: bytes | str) -> GenerationResult | list[tuple[str, float, float]] | None:
    """What encode_result() wrote; raises the error encode_error() wrote."""
    data = json.loads(raw)
    if "error" in data:
        error = data["error"]
        cls = _REMOTE_ERRORS.get(error.get("code"), InferenceFailed)
        raise cls(str(error.get("message")), retry_after=error.get("retry_after"))
    if "generated" in data:
        return GenerationResult(**data["generated"])
    aligned = data["aligned"]
    return None if aligned is None else [(str(w), float(s), float(e)) for w, s, e in aligned]


# Workers ----------------------------------------------------------------------------------------------


def live_workers(client: Any) -> list[dict[str, Any]]:
    """The workers whose heartbeat is fresh, as they last described themselves (id, host, device, model...)."""
    ids = sorted(member.decode() for member in client.smembers(key("workers")))
    if not ids:
        return []
    found = client.mget([key("worker", worker) for worker in ids])
    workers: list[dict[str, Any]] = []
    gone: list[str] = []
    for worker, raw in zip(ids, found, strict=True):
        if raw is None:
            gone.append(worker)
            continue
        try:
            entry = json.loads(raw)
            entry["seconds_since_seen"] = round(max(0.0, time.time() - float(entry["seen"])), 1)
            if not isinstance(entry["model"], dict) or "state" not in entry["model"]:
                raise KeyError("model")
        except (ValueError, KeyError, TypeError):  # a heartbeat this version cannot read (another version)
            log.warning("worker %s's heartbeat cannot be read; it is left out", worker)
            continue
        workers.append(entry)
    if gone:
        # The heartbeat expired: the worker is gone. Keeping the set small keeps /health cheap.
        client.srem(key("workers"), *gone)
    return workers


def queued_segments(client: Any, variant: str) -> int:
    """A variant's segments waiting in the broker's queue (taken ones are in the workers' hands, not counted)."""
    return int(client.llen(queue(variant)))


def error_message(exc: BaseException) -> str:
    """A broker failure in words for /health."""
    return str(exc.message) if isinstance(exc, ServiceError) else f"{type(exc).__name__}: {exc}"
