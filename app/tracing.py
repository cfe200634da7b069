"""Request ids and the logs that carry them: the record of the request (or job) a thread works for, and the
log format (plain lines or JSON lines) with that id on every line.

A context variable holds the current record, so that any code on the request's own thread (the pipeline
included) adds to it and every line it logs names the request, without Flask's request object. A job's runner
thread sets the record of the job's request while it runs it. The inference worker serves many requests in
one batch, so its lines name none.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal

from pythonjsonlogger.json import JsonFormatter

LogFormat = Literal["plain", "json"]
LOG_FORMATS = ("plain", "json")
# A client's X-Request-ID is kept when it is a short token of safe characters (a proxy's UUID, a trace id);
# anything else is replaced, so that no header can put text of its choosing into the logs.
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
NO_REQUEST = "-"
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
# The fields every JSON line starts with, and the names they go by there.
JSON_FIELDS = ("asctime", "levelname", "name", "request_id", "message")
JSON_NAMES = {"asctime": "time", "levelname": "level", "name": "logger"}


@dataclass
class RequestRecord:
    """What one request (or job) has done so far, for its log line."""

    request_id: str
    audio_seconds: float = 0.0


_current: ContextVar[RequestRecord | None] = ContextVar("asr_request", default=None)


def request_id_from(header: str | None) -> str:
    """The client's X-Request-ID when it is a safe token, else a new one."""
    if header is not None and _CLIENT_ID.fullmatch(header):
        return header
    return uuid.uuid4().hex


def begin(request_id: str) -> RequestRecord:
    """Make a fresh record current on this thread (a pooled thread's last request's record is dropped)."""
    record = RequestRecord(request_id)
    _current.set(record)
    return record


def end() -> None:
    """No record is current on this thread any more."""
    _current.set(None)


@contextmanager
def working_for(request_id: str | None) -> Iterator[RequestRecord]:
    """The current record for a block of work done on behalf of a request (a job's run), restored after it."""
    record = RequestRecord(request_id or uuid.uuid4().hex)
    token = _current.set(record)
    try:
        yield record
    finally:
        _current.reset(token)


def current_id() -> str | None:
    """The id of the request this thread works for, if any."""
    record = _current.get()
    return record.request_id if record is not None else None


def add_audio(seconds: float) -> None:
    """Count audio processed for the current request, if there is one."""
    record = _current.get()
    if record is not None:
        record.audio_seconds += seconds


def _with_request_id(factory: Any) -> Any:
    def make(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record: logging.LogRecord = factory(*args, **kwargs)
        record.request_id = current_id() or NO_REQUEST
        return record

    make.asr_request_ids = True  # type: ignore[attr-defined]
    return make


def formatter(log_format: LogFormat) -> logging.Formatter:
    """Plain lines with the request id in brackets, or JSON lines (every extra field of a record included)."""
    return JsonLines() if log_format == "json" else logging.Formatter(PLAIN_FORMAT)


def configure_logging(log_format: LogFormat) -> None:
    """Every log record carries the current request id; the root logger writes in log_format.

    The record factory is process-wide (gunicorn's own loggers get the id too), installed once however many
    apps are built. A root logger that already has handlers (a test runner's) keeps them, in the chosen format.
    """
    factory = logging.getLogRecordFactory()
    if not getattr(factory, "asr_request_ids", False):
        logging.setLogRecordFactory(_with_request_id(factory))
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
        root.setLevel(logging.INFO)
    for handler in root.handlers:
        if type(handler) is logging.StreamHandler:
            handler.setFormatter(formatter(log_format))


class JsonLines(JsonFormatter):
    """The JSON formatter as gunicorn's logging config names it (a class it can build without arguments)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(list(JSON_FIELDS), rename_fields=JSON_NAMES, json_ensure_ascii=False)
