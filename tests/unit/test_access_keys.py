"""app.security's key check and the settings that configure access control."""

from __future__ import annotations

import pytest
from flask import Flask

from app.security import KeyCheck, presented_key
from app.settings import Settings


def test_key_check_accepts_only_configured_keys() -> None:
    """Every configured key matches; prefixes, extensions, case changes and None do not."""
    check = KeyCheck(("alpha", "beta-longer-key"))
    assert check.accepts("alpha") and check.accepts("beta-longer-key")
    for wrong in (None, "", "alph", "alpha ", "ALPHA", "alphaa", "beta", "beta-longer-key2"):
        assert not check.accepts(wrong), wrong


@pytest.mark.parametrize(
    ("headers", "key"),
    [
        ({"Authorization": "Bearer abc"}, "abc"),
        ({"Authorization": "bearer  abc "}, "abc"),
        ({"X-API-Key": "xyz"}, "xyz"),
        ({"Authorization": "Bearer abc", "X-API-Key": "xyz"}, "abc"),
        ({"Authorization": "Basic abc"}, None),
        ({"Authorization": "Bearer "}, None),
        ({"X-API-Key": "  "}, None),
        ({}, None),
    ],
)
def test_presented_key(headers: dict[str, str], key: str | None) -> None:
    """Bearer first, then X-API-Key; other schemes and blanks are no key."""
    with Flask(__name__).test_request_context(headers=headers):
        assert presented_key() == key


def test_settings_parse_keys_and_keep_them_out_of_repr() -> None:
    """Comma-separated keys, blanks dropped; repr never shows them."""
    settings = Settings.from_env({"ASR_API_KEY": " k1, ,k2 "})
    assert settings.api_keys == ("k1", "k2")
    assert "k1" not in repr(settings)
    assert Settings.from_env({}).api_keys == ()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ASR_RATE_LIMIT": "sixty a minute"}, "rate_limit"),
        ({"ASR_MAX_QUEUED_JOBS": "0"}, "max_queued_jobs"),
        ({"ASR_RETENTION_HOURS": "-1"}, "retention_hours"),
        ({"ASR_RETENTION_HOURS": "nan"}, "retention_hours"),
        ({"ASR_TRUSTED_PROXIES": "-1"}, "trusted_proxies"),
    ],
)
def test_invalid_access_settings_are_refused_at_start(env: dict[str, str], message: str) -> None:
    """A bad limit or retention stops the service at start, naming the setting."""
    with pytest.raises(ValueError, match=message):
        Settings.from_env(env)


def test_valid_rate_limits() -> None:
    """flask-limiter's syntax, one or several limits."""
    assert Settings.from_env({"ASR_RATE_LIMIT": "60/minute;1000/day"}).rate_limit == "60/minute;1000/day"
    assert Settings.from_env({"ASR_RATE_LIMIT": "10 per second"}).rate_limit == "10 per second"
