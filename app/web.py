"""The web page at GET /: one HTML file whose script, style and language catalogues are the app's static files.

The page is a client of the public API like any other (it holds no route of its own beyond its files), so a
browser can do nothing through it that curl could not.
"""

from __future__ import annotations

from flask import Blueprint, Flask, Response, current_app, request

bp = Blueprint("web", __name__)

# The page's own files only: no inline script or style, no other origin. Media and subtitle tracks play from
# blob: URLs made of the user's own file and of the results the page fetched.
PAGE_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "media-src 'self' blob:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
# Everything else is data, never a document: nothing in an answer (a transcript, a file name) can run as one.
API_POLICY = "default-src 'none'; frame-ancestors 'none'"
# The endpoints that serve the page and its files.
PAGE_ENDPOINTS = frozenset({"web.index", "static"})


@bp.get("/")
def index() -> Response:
    """The page itself."""
    # Like every static file it is sent with Cache-Control: no-cache (revalidated on every visit), so that an
    # upgraded server never serves a page older than its API.
    response = current_app.send_static_file("index.html")
    # A page to show, not a file to save.
    response.headers.pop("Content-Disposition", None)
    return response


def install_content_policy(app: Flask) -> None:
    """Send the page's Content-Security-Policy with its files and a deny-all one with every other answer."""

    @app.after_request
    def _policy(response: Response) -> Response:
        page = request.endpoint in PAGE_ENDPOINTS
        response.headers["Content-Security-Policy"] = PAGE_POLICY if page else API_POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        if page:
            response.headers["Referrer-Policy"] = "no-referrer"
        return response
