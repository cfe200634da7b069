"""One exception hierarchy, one status per class, one JSON error body."""

from __future__ import annotations

import errno
import logging
import reprlib
import sqlite3
from typing import Any

from flask import Flask, Response, g, has_request_context, jsonify, request
from werkzeug.exceptions import HTTPException

from app.tracing import current_id

log = logging.getLogger(__name__)

# Client input quoted in an error message is clipped to this: a 2 MB model name or a list of 200,000 numbers
# must not come back whole. reprlib bounds strings, containers and their nesting alike.
_QUOTE = reprlib.Repr()
_QUOTE.maxstring = _QUOTE.maxother = 80
_QUOTE.maxlist = _QUOTE.maxtuple = _QUOTE.maxdict = _QUOTE.maxset = 6
_QUOTE.maxlevel = 2
# No error message is longer than this, whatever built it.
MAX_MESSAGE_CHARS = 1000


def quoted(value: object) -> str:
    """A client's value as an error message quotes it: its repr, clipped."""
    return _QUOTE.repr(value)


class ServiceError(Exception):
    """Base of every error the service reports to a client."""

    status = 500
    code = "internal_error"
    # The request field at fault, when there is one (OpenAI's envelope reports it as "param").
    param: str | None = None

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        # Seconds a client should wait before trying again, sent as Retry-After.
        self.retry_after = retry_after


class InvalidRequest(ServiceError):
    """The request is malformed."""

    status = 400
    code = "invalid_request"


class MissingFile(InvalidRequest):
    """No `file` field (`audio_file` on whisper-asr-webservice's routes) in the multipart body."""

    code = "missing_file"
    param = "file"

    def __init__(self, message: str, *, field: str = "file") -> None:
        super().__init__(message)
        self.param = field


class InvalidOption(InvalidRequest):
    """A form option is not a valid value; the message names the field and the allowed range."""

    code = "invalid_option"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.param = field


class RemoteMediaRefused(InvalidRequest):
    """A remote image_url/video_url is not fetched: the message says which URL and why (address, size, time)."""

    code = "remote_media_refused"


class Unauthorized(ServiceError):
    """API keys are configured and the request carries none of them."""

    status = 401
    code = "unauthorized"


class UploadTooLarge(ServiceError):
    """The upload is over the configured limit."""

    status = 413
    code = "upload_too_large"


class AudioTooLong(ServiceError):
    """The audio lasts longer than the server's duration cap."""

    status = 413
    code = "audio_too_long"


class RequestTimeout(ServiceError, TimeoutError):
    """The client sent its request (head or body) too slowly; an OSError too, for the HTTP server's handlers."""

    status = 408
    code = "request_timeout"


class ClientDisconnected(ServiceError):
    """The client closed the connection before its answer was ready: the work for it is stopped."""

    # nginx's "client closed request": nobody reads it, but the access log says what happened.
    status = 499
    code = "client_disconnected"


class UnsupportedAudio(ServiceError):
    """ffmpeg cannot decode the upload into audio samples."""

    status = 415
    code = "unsupported_audio"


class UnsupportedMedia(ServiceError):
    """An image or video part cannot be decoded, or has a shape the vision tower cannot take."""

    status = 415
    code = "unsupported_media"


class MediaTooLarge(ServiceError):
    """An image or video is over the server's bounds (pixels, duration) or the model's context."""

    status = 413
    code = "media_too_large"


class NoSpeech(ServiceError):
    """The audio decodes, but holds no speech to identify a language in."""

    status = 422
    code = "no_speech"


class JobNotFound(ServiceError):
    """No job with that id."""

    status = 404
    code = "job_not_found"


class MediaNotFound(ServiceError):
    """No kept image or video has this media_id (expired, never existed, or another key's)."""

    status = 404
    code = "media_not_found"


class ResultNotReady(ServiceError):
    """A job's result was asked for before the job completed (or after it failed or was cancelled)."""

    status = 404
    code = "result_not_ready"


class QueueFull(ServiceError):
    """As many async jobs are waiting as the server allows."""

    status = 503
    code = "queue_full"


class ModelNotFound(ServiceError):
    """The request names a model this server does not serve."""

    status = 404
    code = "model_not_found"
    param = "model"


class ModelUnavailable(ServiceError):
    """The model could not be loaded."""

    status = 503
    code = "model_unavailable"


class BrokerUnavailable(ModelUnavailable):
    """Cluster mode: Redis (the queue, the jobs) cannot be reached, or no worker holds the model for now."""

    code = "broker_unavailable"


class ShuttingDown(ServiceError):
    """The service is stopping; the work was not done and may be sent again after the restart."""

    status = 503
    code = "shutting_down"


class DecodeInterrupted(ServiceError):
    """ffmpeg was stopped by a signal: the decode was interrupted, which says nothing about the file."""

    status = 503
    code = "decode_interrupted"


class InsufficientStorage(ServiceError):
    """The data directory is full (or below its free-space reserve)."""

    status = 507
    code = "insufficient_storage"


class StorageUnavailable(ServiceError):
    """The data directory or the job database cannot be written (read-only, I/O error)."""

    status = 503
    code = "storage_unavailable"


def storage_error(exc: BaseException) -> ServiceError | None:
    """The client-facing error for a failure to write the data directory; None if exc is not one."""
    if isinstance(exc, ServiceError):
        return None
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return InsufficientStorage(
            "the server's disk is full: no room to store the upload or its results", retry_after=60
        )
    if isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EIO):
        return StorageUnavailable(f"the server cannot write its data directory ({exc.strerror})", retry_after=30)
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc).lower()
        if "full" in text:
            return InsufficientStorage("the server's disk is full: the job database cannot grow", retry_after=60)
        if "readonly" in text or "read-only" in text or "disk i/o" in text or "unable to open" in text:
            return StorageUnavailable(f"the job database cannot be written ({exc})", retry_after=30)
    return None


class CheckpointError(ModelUnavailable):
    """The checkpoint cannot be found or fetched; the message says what to do."""


class OutOfMemory(ServiceError):
    """Even a single segment does not fit in accelerator memory."""

    status = 503
    code = "out_of_memory"


class InferenceFailed(ServiceError):
    """The backend raised while generating."""

    status = 500
    code = "inference_failed"


def error_body(code: str, message: str, request_id: str | None = None) -> dict[str, Any]:
    """The native API's error body; request_id (the X-Request-ID) when it answers a request the service read."""
    error = {"code": code, "message": message}
    if request_id is not None:
        error["request_id"] = request_id
    return {"status": "error", "error": error}


def openai_error_body(
    status: int, code: str, message: str, param: str | None = None, request_id: str | None = None
) -> dict[str, Any]:
    """OpenAI's error envelope, with the type OpenAI gives that status (and the request's id, as error_body)."""
    error: dict[str, Any] = {"message": message, "type": _openai_type(status), "param": param, "code": code}
    if request_id is not None:
        error["request_id"] = request_id
    return {"error": error}


def _openai_type(status: int) -> str:
    if status >= 500:
        return "server_error"
    if status == 401:
        return "authentication_error"
    if status == 429:
        return "rate_limit_error"
    return "invalid_request_error"


# OpenAI answers an undecodable upload with 400, not 415: its SDKs map 400 to BadRequestError.
OPENAI_STATUS = {415: 400}


def is_openai_route() -> bool:
    """Whether this request is on the OpenAI-compatible API, whose errors use OpenAI's envelope."""
    return has_request_context() and (request.path == "/v1" or request.path.startswith("/v1/"))


def _request_id() -> str | None:
    """The id of the request being answered: its record's (set by the app's first hook), or the thread's when a
    stream outlives its request context."""
    if has_request_context():
        record = g.get("asr_record")
        return None if record is None else str(record.request_id)
    return current_id()


def _json_error(status: int, code: str, message: str, param: str | None = None) -> Response:
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[: MAX_MESSAGE_CHARS - 3] + "..."
    request_id = _request_id()
    if is_openai_route():
        status = OPENAI_STATUS.get(status, status)
        response = jsonify(openai_error_body(status, code, message, param, request_id))
    else:
        response = jsonify(error_body(code, message, request_id))
    response.status_code = status
    return response


# Werkzeug raises these itself (routing, body limits); they get codes in the same vocabulary.
HTTP_CODES = {
    400: "invalid_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "upload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


def register_error_handlers(app: Flask) -> None:
    """Map every exception to the one JSON error body."""

    @app.errorhandler(ServiceError)
    def _service_error(exc: ServiceError) -> Response:
        if exc.status >= 500:
            # Refusals that say the service is busy, stopping or out of room are operational, not faults.
            (log.warning if exc.status in (503, 507) else log.error)("%s: %s", exc.code, exc.message)
        response = _json_error(exc.status, exc.code, exc.message, exc.param)
        if exc.retry_after is not None:
            response.headers["Retry-After"] = str(exc.retry_after)
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="qwen-omni-asr"'
        return response

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, ServiceError):
            # werkzeug reports a failed body read as its own 400 (a client that left): the read's own error,
            # such as a body that arrived too slowly, is what happened.
            return _service_error(cause)
        status = exc.code or 500
        code = HTTP_CODES.get(status, "http_error")
        message = exc.description or exc.name
        if status == 404:
            message = (
                f"no route {request.method} {quoted(request.path)[1:-1]}; see /openapi.json for this server's routes"
            )
        if status == 413:
            message = _too_large_message(app)
        if status == 429:
            message = f"rate limit exceeded ({exc.description}); try again after Retry-After seconds"
        response = _json_error(status, code, message)
        if status == 405 and exc.valid_methods:  # type: ignore[attr-defined]
            response.headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        storage = storage_error(exc)
        if storage is not None:
            # Not a bug: the disk is full or read-only. Say so, with the status that names it.
            log.error("storage error: %s", exc)
            return _service_error(storage)
        # A bug, not a client error: log the traceback here, never send it.
        log.exception("unhandled error")
        return _json_error(500, "internal_error", "internal server error")


def _too_large_message(app: Flask) -> str:
    """Which limit a 413 from werkzeug hit: the upload's size, or the form's part count or text field size."""
    upload = f"upload is larger than the limit of {app.config.get('MAX_CONTENT_LENGTH')} bytes"
    if not (has_request_context() and request.mimetype == "multipart/form-data"):
        return upload
    form = (
        f"the form is over its limits: at most {app.config.get('MAX_FORM_PARTS')} parts, and at most "
        f"{app.config.get('MAX_FORM_MEMORY_SIZE')} bytes in a text field (the audio goes in the file part)"
    )
    length, limit = request.content_length, app.config.get("MAX_CONTENT_LENGTH")
    if length is None:
        # A chunked body has no length to tell the two apart.
        return f"{upload}, or {form}"
    return upload if limit is not None and length > limit else form
