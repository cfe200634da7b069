"""gunicorn's own error responses (request line too long, malformed headers) in the service's JSON body."""

from __future__ import annotations

import json
import socket
from typing import Any

from gunicorn import util

from app.errors import error_body

_CODES = {
    400: "invalid_request",
    403: "forbidden",
    414: "uri_too_long",
    417: "expectation_failed",
    431: "headers_too_large",
    501: "not_implemented",
}


def write_json_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    """What gunicorn.util.write_error sends, as JSON: a client gets one error body whatever layer refused it."""
    if status_int >= 500 and status_int != 501:
        # gunicorn's 500s are application faults (an invalid response header): their detail stays in the log.
        code, mesg = "internal_error", "internal server error"
    else:
        code = _CODES.get(status_int, "http_error")
    body = json.dumps(error_body(code, mesg)).encode("utf-8")
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    util.write_nonblock(sock, head.encode("latin-1") + body)


def install(worker: Any) -> None:
    """Swap gunicorn's HTML error writer for the JSON one in this worker (gunicorn offers no setting for it)."""
    util.write_error = write_json_error
