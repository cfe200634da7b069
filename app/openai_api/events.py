"""Server-sent events, as OpenAI streams them: `data: <JSON>` events, and a failure as one last error event."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from typing import Any

from flask import Response, stream_with_context
from pydantic import BaseModel

from app.errors import ServiceError, openai_error_body
from app.tracing import current_id

log = logging.getLogger(__name__)


def sse(data: BaseModel | Mapping[str, Any] | str) -> str:
    """One event: a model's body, a JSON object, or a bare string such as [DONE]."""
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {payload}\n\n"


def event_stream(events: Iterator[str], what: str) -> Response:
    """A server-sent event response; a failure once the stream has begun is sent as an error event."""
    response = Response(stream_with_context(_errors_as_events(events, what)), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    # Proxies such as nginx would otherwise buffer the events until the end.
    response.headers["X-Accel-Buffering"] = "no"
    return response


def _errors_as_events(events: Iterator[str], what: str) -> Iterator[str]:
    """The events, then OpenAI's error envelope as one last event if they raise (the status is sent already)."""
    try:
        # yield from: closing this generator closes events too, so their own cleanup runs.
        yield from events
    except ServiceError as exc:
        yield sse(openai_error_body(exc.status, exc.code, exc.message, exc.param, current_id()))
    except Exception:  # a bug: the client gets an error event, the log gets the traceback
        log.exception("%s failed", what)
        yield sse(openai_error_body(500, "internal_error", "internal server error", request_id=current_id()))
