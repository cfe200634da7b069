"""One exception hierarchy, one status per class, one JSON error body."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """Base of every error the service reports to a client."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(ServiceError):
    """The request is malformed."""

    status = 400
    code = "invalid_request"


class MissingFile(InvalidRequest):
    """No `file` field in the multipart body."""

    code = "missing_file"


class InvalidOption(InvalidRequest):
    """A form option is not a valid value; the message names the field and the allowed range."""

    code = "invalid_option"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


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


def _json_error(status: int, code: str, message: str) -> Response:
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
}


def register_error_handlers(app: Flask) -> None:
    """Map every exception to the one JSON error body."""

    @app.errorhandler(ServiceError)
    def _service_error(exc: ServiceError) -> Response:
        if exc.status >= 500:
            log.error("%s: %s", exc.code, exc.message)
        return _json_error(exc.status, exc.code, exc.message)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        code = _HTTP_CODES.get(status, "http_error")
        message = exc.description or exc.name
        if status == 413:
            limit = app.config.get("MAX_CONTENT_LENGTH")
            message = f"upload is larger than the limit of {limit} bytes"
        response = _json_error(status, code, message)
        if status == 405 and exc.valid_methods:  # type: ignore[attr-defined]
            response.headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        # A bug, not a client error: log the traceback here, never send it.
        log.exception("unhandled error")
        return _json_error(500, "internal_error", "internal server error")
