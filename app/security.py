"""Access control for the whole app: optional API keys and an optional per-client rate limit."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from flask import Flask, g, request
from flask_limiter import Limiter
from werkzeug.middleware.proxy_fix import ProxyFix

from app.errors import Unauthorized
from app.settings import Settings

# Monitors poll /health without credentials, and it must never be throttled. The web page and its static files
# are open too: the page asks for the key itself, and holds nothing the key guards.
OPEN_PATHS = frozenset({"/health", "/"})
OPEN_PREFIXES = ("/static/",)


def open_paths(settings: Settings) -> frozenset[str]:
    """The paths served without a key or a rate limit: /health, the page, and /metrics when it is made public."""
    return OPEN_PATHS | {"/metrics"} if settings.metrics_public else OPEN_PATHS


def is_open(path: str, paths: frozenset[str]) -> bool:
    """Whether a request path is served without a key or a rate limit."""
    return path in paths or path.startswith(OPEN_PREFIXES)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def presented_key() -> str | None:
    """The key a request carries: "Authorization: Bearer <key>" or "X-API-Key: <key>"."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    key = request.headers.get("X-API-Key", "").strip()
    return key or None


def key_id(key: str) -> str:
    """What identifies a key in storage and logs: a prefix of its digest, never the key itself."""
    return _digest(key).hex()[:32]


class KeyCheck:
    """Matches a presented key against the configured ones in constant time."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        # Comparing fixed-length digests keeps a key's length from leaking through timing as well.
        self._digests = [_digest(key) for key in keys]

    def accepts(self, key: str | None) -> bool:
        """Whether key is one of the configured keys; every key is compared, match or not."""
        if key is None:
            return False
        presented = _digest(key)
        matched = False
        for digest in self._digests:
            matched |= hmac.compare_digest(presented, digest)
        return matched


@dataclass(frozen=True)
class Caller:
    """Who is asking: the owner a job they submit records, and whether they may see every job."""

    # key_id() of the client's key; None when the server has no keys (every client is the same one).
    owner: str | None
    # An admin key (or an open server) sees and deletes every job.
    admin: bool

    def may_see(self, job_owner: str | None) -> bool:
        """Whether a job with this owner exists for the caller (others get 404, as if it did not)."""
        return self.admin or job_owner is None or job_owner == self.owner


OPEN = Caller(owner=None, admin=True)


def caller() -> Caller:
    """The caller of this request (set by the key check; an open server has one anonymous admin caller)."""
    found: Caller = g.get("asr_caller", OPEN)
    return found


def client_identity() -> str:
    """Who the request came from, for the logs: its key's id (never the key), else its address."""
    owner = caller().owner
    return f"key:{owner[:12]}" if owner is not None else f"addr:{request.remote_addr or 'unknown'}"


def _client(check: KeyCheck | None) -> str:
    """Whom a rate limit counts: a valid key, else the client address (so guessing keys gains no fresh budget)."""
    key = presented_key()
    if check is not None and check.accepts(key):
        return "key:" + key_id(key or "")
    return "addr:" + (request.remote_addr or "unknown")


def install_security(app: Flask, settings: Settings) -> None:
    """Wire proxy headers, the rate limit and API keys into app, as the settings ask."""
    if settings.trusted_proxies:
        # Only as many X-Forwarded-For hops as there are proxies we run are believed.
        proxies = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies, x_proto=proxies, x_host=proxies)  # type: ignore[method-assign]
    keys = settings.every_api_key
    check = KeyCheck(keys) if keys else None
    unchecked = open_paths(settings)
    admins = KeyCheck(settings.admin_api_keys)
    if settings.rate_limit.strip():
        # Before the key check, so a client guessing keys is throttled too. One gunicorn worker process holds
        # every request, so counting in memory is exact.
        limiter = Limiter(
            key_func=lambda: _client(check),
            app=app,
            application_limits=[settings.rate_limit],
            storage_uri="memory://",
            headers_enabled=True,
        )
        limiter.request_filter(lambda: is_open(request.path, unchecked))
    if check is not None:
        valid = check

        @app.before_request
        def _require_key() -> None:
            if is_open(request.path, unchecked):
                return
            key = presented_key()
            if not valid.accepts(key):
                raise Unauthorized(
                    "a valid API key is required: send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
                )
            g.asr_caller = Caller(owner=key_id(key or ""), admin=admins.accepts(key))
