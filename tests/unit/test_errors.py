"""app.errors: status per error class and the one JSON error body, through a real Flask app."""

from __future__ import annotations

import errno
import logging
import sqlite3

import pytest
from flask import Flask, abort
from flask.testing import FlaskClient

from app.errors import (
    MAX_MESSAGE_CHARS,
    AudioTooLong,
    BrokerUnavailable,
    CheckpointError,
    ClientDisconnected,
    DecodeInterrupted,
    InferenceFailed,
    InsufficientStorage,
    InvalidOption,
    InvalidRequest,
    JobNotFound,
    MediaNotFound,
    MediaTooLarge,
    MissingFile,
    ModelNotFound,
    ModelUnavailable,
    NoSpeech,
    OutOfMemory,
    QueueFull,
    RemoteMediaRefused,
    RequestTimeout,
    ResultNotReady,
    ServiceError,
    ShuttingDown,
    StorageUnavailable,
    Unauthorized,
    UnsupportedAudio,
    UnsupportedMedia,
    UploadTooLarge,
    error_body,
    register_error_handlers,
)


@pytest.mark.parametrize(
    ("cls", "status", "code"),
    [
        (ServiceError, 500, "internal_error"),
        (InvalidRequest, 400, "invalid_request"),
        (MissingFile, 400, "missing_file"),
        (RemoteMediaRefused, 400, "remote_media_refused"),
        (UploadTooLarge, 413, "upload_too_large"),
        (UnsupportedAudio, 415, "unsupported_audio"),
        (UnsupportedMedia, 415, "unsupported_media"),
        (MediaTooLarge, 413, "media_too_large"),
        (MediaNotFound, 404, "media_not_found"),
        (NoSpeech, 422, "no_speech"),
        (JobNotFound, 404, "job_not_found"),
        (ResultNotReady, 404, "result_not_ready"),
        (ModelNotFound, 404, "model_not_found"),
        (Unauthorized, 401, "unauthorized"),
        (QueueFull, 503, "queue_full"),
        (ModelUnavailable, 503, "model_unavailable"),
        (InferenceFailed, 500, "inference_failed"),
        (OutOfMemory, 503, "out_of_memory"),
        (AudioTooLong, 413, "audio_too_long"),
        (RequestTimeout, 408, "request_timeout"),
        (ClientDisconnected, 499, "client_disconnected"),
        (ShuttingDown, 503, "shutting_down"),
        (DecodeInterrupted, 503, "decode_interrupted"),
        (InsufficientStorage, 507, "insufficient_storage"),
        (StorageUnavailable, 503, "storage_unavailable"),
        (CheckpointError, 503, "model_unavailable"),
        (BrokerUnavailable, 503, "broker_unavailable"),
    ],
)
def test_status_and_code_per_class(cls: type[ServiceError], status: int, code: str) -> None:
    """Each ServiceError subclass carries its HTTP status and machine code."""
    error = cls("something went wrong")
    assert (error.status, error.code, error.message) == (status, code, "something went wrong")
    assert str(error) == "something went wrong"


def test_invalid_option_names_field() -> None:
    """InvalidOption is a 400 whose message is prefixed by the field."""
    error = InvalidOption("temperature", "must be a number in [0, 2], got 3.0")
    assert (error.status, error.code, error.field) == (400, "invalid_option", "temperature")
    assert error.message == "temperature: must be a number in [0, 2], got 3.0"
    assert isinstance(error, InvalidRequest)


def test_every_subclass_is_covered() -> None:
    """No ServiceError subclass is left without a test row above."""
    seen: set[type] = set()
    todo = [ServiceError]
    while todo:
        cls = todo.pop()
        seen.add(cls)
        todo.extend(cls.__subclasses__())
    names = {c.__name__ for c in seen}
    assert names == {
        "ServiceError",
        "InvalidRequest",
        "MissingFile",
        "RemoteMediaRefused",
        "InvalidOption",
        "UploadTooLarge",
        "OutOfMemory",
        "UnsupportedAudio",
        "UnsupportedMedia",
        "MediaTooLarge",
        "MediaNotFound",
        "NoSpeech",
        "JobNotFound",
        "ResultNotReady",
        "ModelNotFound",
        "ModelUnavailable",
        "BrokerUnavailable",
        "Unauthorized",
        "QueueFull",
        "InferenceFailed",
        "AudioTooLong",
        "RequestTimeout",
        "ClientDisconnected",
        "ShuttingDown",
        "DecodeInterrupted",
        "InsufficientStorage",
        "StorageUnavailable",
        "CheckpointError",
    }


@pytest.fixture
def client() -> FlaskClient:
    """A tiny app with the service's error handlers and routes that raise."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = 1000

    @app.post("/option")
    def option() -> str:
        raise InvalidOption("segment_duration", "must be a number in [1, 300], got 0.0")

    @app.get("/job")
    def job() -> str:
        raise JobNotFound("no job with id abc")

    @app.get("/model")
    def model() -> str:
        raise ModelUnavailable("model could not be loaded: OSError: no such checkpoint")

    @app.post("/v1/option")
    def openai_option() -> str:
        raise InvalidOption("temperature", "must be a number in [0, 2], got 3.0")

    @app.post("/v1/audio")
    def openai_audio() -> str:
        raise UnsupportedAudio("ffmpeg cannot decode the upload")

    @app.get("/v1/model")
    def openai_model() -> str:
        raise ModelUnavailable("model could not be loaded: OSError: no such checkpoint")

    @app.get("/v1/boom")
    def openai_boom() -> str:
        raise RuntimeError("secret internal detail")

    @app.get("/busy")
    def busy() -> str:
        raise QueueFull("100 jobs are already queued", retry_after=60)

    @app.get("/locked")
    def locked() -> str:
        raise Unauthorized("a valid API key is required")

    @app.get("/disk-full")
    def disk_full() -> str:
        raise OSError(errno.ENOSPC, "No space left on device")

    @app.get("/read-only")
    def read_only() -> str:
        raise sqlite3.OperationalError("attempt to write a readonly database")

    @app.get("/long-message")
    def long_message() -> str:
        raise InvalidRequest("x" * 5000)

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("secret internal detail /srv/app/engine.py")

    @app.get("/abort")
    def aborted() -> str:
        abort(400)

    @app.post("/upload")
    def upload() -> str:
        from flask import request

        return str(len(request.get_data()))

    register_error_handlers(app)
    return app.test_client()


def test_invalid_option_response(client: FlaskClient) -> None:
    """A raised InvalidOption is a 400 with the service's JSON error body."""
    response = client.post("/option")
    assert response.status_code == 400
    assert response.is_json
    assert response.get_json() == {
        "status": "error",
        "error": {"code": "invalid_option", "message": "segment_duration: must be a number in [1, 300], got 0.0"},
    }


def test_service_error_statuses(client: FlaskClient) -> None:
    """Other ServiceErrors keep their own status and code."""
    response = client.get("/job")
    assert response.status_code == 404
    assert response.get_json() == error_body("job_not_found", "no job with id abc")
    response = client.get("/model")
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "model_unavailable"


def test_unknown_route_is_json_404(client: FlaskClient) -> None:
    """Routing misses use the same body, code not_found."""
    response = client.get("/does-not-exist")
    assert response.status_code == 404
    body = response.get_json()
    assert body["status"] == "error"
    assert body["error"]["code"] == "not_found"
    assert body["error"]["message"]


def test_wrong_method_is_json_405(client: FlaskClient) -> None:
    """A wrong method is a JSON 405 with an Allow header."""
    response = client.get("/option")
    assert response.status_code == 405
    assert response.get_json()["error"]["code"] == "method_not_allowed"
    assert "POST" in response.headers["Allow"]


def test_aborted_400_is_json(client: FlaskClient) -> None:
    """A werkzeug 400 maps to invalid_request."""
    response = client.get("/abort")
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_request"


def test_body_over_limit_is_json_413(client: FlaskClient) -> None:
    """A body over MAX_CONTENT_LENGTH is a 413 naming the limit."""
    response = client.post("/upload", data=b"x" * 2000, content_type="application/octet-stream")
    assert response.status_code == 413
    assert response.get_json() == error_body("upload_too_large", "upload is larger than the limit of 1000 bytes")
    assert client.post("/upload", data=b"x" * 10, content_type="application/octet-stream").data == b"10"


def test_unexpected_exception_is_opaque_500(client: FlaskClient, caplog: pytest.LogCaptureFixture) -> None:
    """A bug gives a generic 500 JSON body; the traceback is logged, never sent."""
    with caplog.at_level(logging.ERROR, logger="app.errors"):
        response = client.get("/boom")
    assert response.status_code == 500
    assert response.get_json() == error_body("internal_error", "internal server error")
    text = response.get_data(as_text=True)
    assert "Traceback" not in text
    assert "secret internal detail" not in text
    assert "RuntimeError" not in text
    assert any(r.exc_info and r.exc_info[0] is RuntimeError for r in caplog.records)


def test_openai_routes_use_openai_envelope_with_param(client: FlaskClient) -> None:
    """Under /v1 an option error is OpenAI's envelope, the field in param."""
    response = client.post("/v1/option")
    assert response.status_code == 400
    assert response.get_json() == {
        "error": {
            "message": "temperature: must be a number in [0, 2], got 3.0",
            "type": "invalid_request_error",
            "param": "temperature",
            "code": "invalid_option",
        }
    }


def test_openai_statuses_and_types(client: FlaskClient) -> None:
    """Undecodable audio is OpenAI's 400; server faults are server_error; routing misses keep the envelope."""
    audio = client.post("/v1/audio")
    assert audio.status_code == 400 and audio.get_json()["error"]["code"] == "unsupported_audio"
    model = client.get("/v1/model")
    assert model.status_code == 503 and model.get_json()["error"]["type"] == "server_error"
    boom = client.get("/v1/boom")
    assert boom.status_code == 500 and "secret" not in boom.get_data(as_text=True)
    assert boom.get_json()["error"] == {
        "message": "internal server error",
        "type": "server_error",
        "param": None,
        "code": "internal_error",
    }
    missing = client.get("/v1/nothing-here")
    assert missing.status_code == 404 and missing.get_json()["error"]["code"] == "not_found"
    wrong = client.get("/v1/option")
    assert wrong.status_code == 405 and wrong.get_json()["error"]["type"] == "invalid_request_error"
    assert "POST" in wrong.headers["Allow"]
    # A path that merely starts with "v1" is native.
    assert client.get("/v1x").get_json()["status"] == "error"


def test_retry_after_and_www_authenticate_headers(client: FlaskClient) -> None:
    """A ServiceError with retry_after sends Retry-After; a 401 names the Bearer scheme."""
    busy = client.get("/busy")
    assert busy.status_code == 503 and busy.headers["Retry-After"] == "60"
    assert busy.get_json() == error_body("queue_full", "100 jobs are already queued")
    locked = client.get("/locked")
    assert locked.status_code == 401 and locked.headers["WWW-Authenticate"].startswith("Bearer")
    assert "Retry-After" not in locked.headers


def test_storage_failures_name_their_cause(client: FlaskClient) -> None:
    """A full disk is 507 insufficient_storage, an unwritable database 503 storage_unavailable: never a 500."""
    full = client.get("/disk-full")
    assert full.status_code == 507 and full.get_json()["error"]["code"] == "insufficient_storage"
    assert "disk is full" in full.get_json()["error"]["message"] and full.headers["Retry-After"]
    read_only = client.get("/read-only")
    assert read_only.status_code == 503 and read_only.get_json()["error"]["code"] == "storage_unavailable"


def test_no_error_message_is_unbounded(client: FlaskClient) -> None:
    """Whatever built it, a message is clipped to MAX_MESSAGE_CHARS."""
    message = client.get("/long-message").get_json()["error"]["message"]
    assert len(message) == MAX_MESSAGE_CHARS and message.endswith("...")
