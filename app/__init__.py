"""Qwen-Omni speech transcription service: the application factory."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import IO

from flask import Flask, Request
from flask.json.provider import DefaultJSONProvider
from werkzeug.formparser import FormDataParser

from app.devices import gpu_memory
from app.errors import register_error_handlers
from app.security import install_security
from app.services import BackendLoader, build_services
from app.settings import Settings
from app.storage import install_disk_guard
from app.tracing import configure_logging


def _upload_request_class(upload_dir: Path) -> type[Request]:
    """A Request whose file uploads stream straight to disk under the data dir, deleted when the request ends."""

    class UploadRequest(Request):
        def _get_file_stream(
            self,
            total_content_length: int | None,
            content_type: str | None,
            filename: str | None = None,
            content_length: int | None = None,
        ) -> IO[bytes]:
            # Named, so ffmpeg reads it in place; the name is ours, never the client's.
            return tempfile.NamedTemporaryFile(prefix="upload-", dir=upload_dir)

        def make_form_data_parser(self) -> FormDataParser:
            # Not silent: werkzeug would otherwise answer a malformed body (or a part header that is not
            # UTF-8, such as a Latin-1 file name) with an empty form, and the client would hear "no file".
            parser = super().make_form_data_parser()
            parser.silent = False
            return parser

    return UploadRequest


# Form limits: the transcription options are a handful of short fields (a prompt is at most 4000 characters).
# werkzeug applies the field limit to its parser's buffer too, which takes 64 KiB reads: keep it well above.
MAX_FORM_PARTS = 100
MAX_FORM_FIELD_BYTES = 256 * 1024


class _JSONProvider(DefaultJSONProvider):
    """Flask's JSON, with a body nested too deeply for the parser reported as invalid JSON (a 400), not a crash."""

    sort_keys = False

    def loads(self, s: str | bytes, **kwargs: object) -> object:
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            raise ValueError("the JSON is nested too deeply") from None


def create_app(settings: Settings | None = None, loader: BackendLoader | None = None) -> Flask:
    """Build the app; settings default to the environment, loader to the configured checkpoint."""
    settings = settings or Settings.from_env()
    configure_logging("json" if settings.log_format == "json" else "plain")
    # Import torch now, in the worker process, so the first /health does not wait seconds for it.
    gpu_memory()
    services = build_services(settings, loader)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_size
    app.config["MAX_FORM_PARTS"] = MAX_FORM_PARTS
    app.config["MAX_FORM_MEMORY_SIZE"] = MAX_FORM_FIELD_BYTES
    app.request_class = _upload_request_class(services.uploads_dir)
    app.json = _JSONProvider(app)
    app.extensions["asr"] = services

    from app.api import bp
    from app.observability import bp as observability_bp
    from app.observability import install_observability
    from app.openai_api import bp as openai_bp
    from app.openapi import bp as openapi_bp
    from app.vision_api import bp as vision_bp
    from app.web import bp as web_bp
    from app.web import install_content_policy
    from app.webservice import bp as webservice_bp

    app.register_blueprint(bp)
    app.register_blueprint(openai_bp)
    app.register_blueprint(vision_bp)
    app.register_blueprint(openapi_bp)
    app.register_blueprint(webservice_bp)
    app.register_blueprint(observability_bp)
    app.register_blueprint(web_bp)
    register_error_handlers(app)
    # First: every later hook, the key check included, runs with the request's id in place.
    install_observability(app)
    install_security(app, settings)
    install_content_policy(app)
    # After the key check: a client without a key learns nothing of the disk.
    install_disk_guard(app, services.disk)
    services.start()
    return app
