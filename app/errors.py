"""One exception hierarchy, one status per class, one JSON error body."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, has_request_context, jsonify, request
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


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
    """No `file` field in the multipart body."""

    code = "missing_file"
    param = "file"


class InvalidOption(InvalidRequest):
    """A form option is not a valid value; the message names the field and the allowed range."""

    code = "invalid_option"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.param = field


class Unauthorized(ServiceError):
    """API keys are configured and the request carries none of them."""

    status = 401
    code = "unauthorized"


class UploadTooLarge(ServiceError):
    """The upload is over the configured limit."""

    status = 413
    code = "upload_too_large"


class UnsupportedAudio(ServiceError):
    """ffmpeg cannot decode the upload into audio samples."""

    status = 415
    code = "unsupported_audio"


class JobNotFound(ServiceError):
    """No job with that id."""

    status = 404
    code = "job_not_found"


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


class OutOfMemory(ServiceError):
    """Even a single segment does not fit in accelerator memory."""

    status = 503
    code = "out_of_memory"


class InferenceFailed(ServiceError):
    """The backend raised while generating."""

    status = 500
    code = "inference_failed"


def error_body(code: str, message: str) -> dict[str, Any]:
    """The native API's error body."""
    return {"status": "error", "error": {"code": code, "message": message}}


def openai_error_body(status: int, code: str, message: str, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error envelope, with the type OpenAI gives that status."""
    return {"error": {"message": message, "type": _openai_type(status), "param": param, "code": code}}


def _openai_type(status: int) -> str:
    if status >= 500:
        return "server_error"
    if status == 401:
        return "authentication_error"
    if status == 429:
        return "rate_limit_error"
    return "invalid_request_error"


# OpenAI answers an undecodable upload with 400, not 415: its SDKs map 400 to BadRequestError.
_OPENAI_STATUS = {415: 400}


def is_openai_route() -> bool:
    """Whether this request is on the OpenAI-compatible API, whose errors use OpenAI's envelope."""
    return has_request_context() and (request.path == "/v1" or request.path.startswith("/v1/"))


def _json_error(status: int, code: str, message: str, param: str | None = None) -> Response:
    if is_openai_route():
        status = _OPENAI_STATUS.get(status, status)
        response = jsonify(openai_error_body(status, code, message, param))
    else:
        response = jsonify(error_body(code, message))
    response.status_code = status
    return response


# Werkzeug raises these itself (routing, body limits); they get codes in the same vocabulary.
_HTTP_CODES = {
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
            log.error("%s: %s", exc.code, exc.message)
        response = _json_error(exc.status, exc.code, exc.message, exc.param)
        if exc.retry_after is not None:
            response.headers["Retry-After"] = str(exc.retry_after)
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="qwen-omni-asr"'
        return response

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        code = _HTTP_CODES.get(status, "http_error")
        message = exc.description or exc.name
        if status == 413:
            limit = app.config.get("MAX_CONTENT_LENGTH")
            message = f"upload is larger than the limit of {limit} bytes"
        if status == 429:
            message = f"rate limit exceeded ({exc.description}); try again after Retry-After seconds"
        response = _json_error(status, code, message)
        if status == 405 and exc.valid_methods:  # type: ignore[attr-defined]
            response.headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        # A bug, not a client error: log the traceback here, never send it.
        log.exception("unhandled error")
        return _json_error(500, "internal_error", "internal server error")
