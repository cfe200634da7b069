"""test_awq_service.sh, the users' smoke test, passes against the real server and fails against nothing."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.support import AISHELL, ROOT, Server, free_port

pytestmark = pytest.mark.e2e


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the script with short generations."""
    env = {**os.environ, "MAX_NEW_TOKENS": "32", "POLL_INTERVAL": "1"}
    return subprocess.run(
        ["bash", str(ROOT / "test_awq_service.sh"), *args], capture_output=True, text=True, env=env, timeout=600
    )


def test_smoke_script_passes_against_the_server(server: Server) -> None:
    """Default recording, then another one; every check passes."""
    for args in ([server.url], [server.url, str(AISHELL)]):
        result = run_script(*args)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "FAIL" not in result.stdout
        summary = result.stdout.strip().splitlines()[-1]
        assert summary.endswith(" passed, 0 failed") and int(summary.split()[0]) >= 20


def test_smoke_script_fails_when_no_server_answers() -> None:
    """Non-zero exit and a FAIL line when the URL is wrong."""
    result = run_script(f"http://127.0.0.1:{free_port()}")
    assert result.returncode != 0 and "FAIL" in result.stdout


def test_one_command_smoke_test_from_a_clone() -> None:
    """scripts/smoke.sh builds the tiny checkpoint, starts the service, passes every check, and cleans up."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASR_")}
    result = subprocess.run(
        [str(ROOT / "scripts" / "smoke.sh")], capture_output=True, text=True, env=env, timeout=600, cwd="/"
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1].endswith(" passed, 0 failed")
