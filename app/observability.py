"""The HTTP layer's telemetry: X-Request-ID on every request and response, one log line per request, the
request metrics, and GET /metrics.
"""

from __future__ import annotations

import logging
import time

from flask import Blueprint, Flask, Response, g, request

from app.metrics import CONTENT_TYPE
from app.security import client_identity
from app.services import current_services
from app.tracing import RequestRecord, begin, end, request_id_from

bp = Blueprint("observability", __name__)
# The request lines have a logger of their own, so that a log collector can tell them from the rest.
log = logging.getLogger("app.requests")
# Methods a metric label may name; anything else a client invents counts as OTHER (labels stay a small set).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
HEADER = "X-Request-ID"


@bp.get("/metrics")
def metrics() -> Response:
    """The service's metrics in Prometheus' text format."""
    return Response(current_services().metrics.exposition(), content_type=CONTENT_TYPE)


def install_observability(app: Flask) -> None:
    """Give every request an id before anything else runs (the key check's 401 carries it too), and account
    for it once its response has been sent, stream included."""

    @app.before_request
    def _begin() -> None:
        g.asr_started = time.perf_counter()
        g.asr_record = begin(request_id_from(request.headers.get(HEADER)))

    @app.after_request
    def _account(response: Response) -> Response:
        record: RequestRecord | None = g.get("asr_record")
        if record is None:  # a request that failed before _begin ran
            record = begin(request_id_from(request.headers.get(HEADER)))
        started: float = g.get("asr_started", time.perf_counter())
        response.headers[HEADER] = record.request_id
        # The route's rule, not its path: a label per job id or per scanned URL would grow without end.
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        method = request.method if request.method in METHODS else "OTHER"
        status = response.status_code
        client = client_identity()
        metrics = current_services().metrics

        def done() -> None:
            try:
                seconds = time.perf_counter() - started
                metrics.requests.labels(route, method, str(status)).inc()
                metrics.request_seconds.labels(route, method).observe(seconds)
                log.info(
                    "%s %s %d audio_seconds=%.3f processing_seconds=%.3f client=%s",
                    method, route, status, record.audio_seconds, seconds, client,
                    extra={
                        "event": "request", "method": method, "route": route, "status": status,
                        "audio_seconds": round(record.audio_seconds, 3), "processing_seconds": round(seconds, 3),
                        "client": client,
                    },
                )  # fmt: skip
            finally:
                end()

        # On close, so that a streamed answer is counted once it has been sent, with the audio it took. A
        # send_file response passes its file straight to the server, which then never closes the response
        # (nor runs this): it is served through the response instead, as every other body is.
        response.direct_passthrough = False
        response.call_on_close(done)
        return response
