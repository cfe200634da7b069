"""What a newcomer meets without weights: a clear start-up error, or a clear /health state and fast 503s.

Nothing here reaches the network: the Hugging Face cache is an empty directory, and the Hub endpoint is a
closed port on loopback, so "no network" fails at once and the same way everywhere.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import requests

from tests.support import AISHELL, ROOT, Server, assert_error, free_port, post, wait_for

pytestmark = pytest.mark.e2e

CLI = ROOT / "serve" / "qwen2_5_omni_awq.py"
HUB_ID = "Qwen/Qwen2.5-Omni-7B-AWQ"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(CLI), "--port", str(free_port()), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize("kind", ["missing", "not-a-checkpoint"])
def test_a_local_checkpoint_that_is_not_there_is_a_start_up_error(tmp_path: Path, kind: str) -> None:
    """A directory that does not exist, or holds no config.json: the CLI exits at once and says what to do."""
    path = tmp_path / "weights"
    if kind == "not-a-checkpoint":
        path.mkdir()
    started = time.monotonic()
    result = run_cli("--checkpoint-path", str(path), "--data-dir", str(tmp_path / "data"))
    assert result.returncode != 0 and time.monotonic() - started < 30
    assert "make_tiny_checkpoint" in result.stderr and str(path) in result.stderr
    assert ("no such directory" if kind == "missing" else "no config.json") in result.stderr


@pytest.fixture
def offline_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache and a Hub endpoint that refuses connections, for the servers started here."""
    cache = tmp_path / "hf"
    cache.mkdir()
    monkeypatch.setenv("HF_HOME", str(cache))
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return cache


def test_a_hub_id_not_in_the_cache_with_local_model(offline_env: Path, tmp_path: Path) -> None:
    """--local-model and an uncached Hub id: the service starts, /health is degraded with the fix, requests get
    503 at once, and an async job waits queued for the model instead of failing."""
    server = Server(Path(HUB_ID), tmp_path / "data", ["--job-workers", "1"]).start()
    try:
        health = requests.get(server.url + "/health", timeout=5).json()
        assert health["status"] == "degraded" and health["model"]["state"] == "unloaded"
        assert any("not in the Hugging Face cache" in p and f"hf download {HUB_ID}" in p for p in health["problems"])
        started = time.monotonic()
        message = assert_error(post(server, "/transcribe/json", AISHELL), 503, "model_unavailable")
        assert time.monotonic() - started < 10
        assert "not in the Hugging Face cache" in message and "make_tiny_checkpoint" in message
        assert "internet" not in message.lower()
        job_id = post(server, "/transcribe/async", AISHELL).json()["job_id"]
        time.sleep(4)
        job = requests.get(f"{server.url}/status/{job_id}", timeout=5).json()
        assert job["status"] in ("queued", "processing"), job
        health = requests.get(server.url + "/health", timeout=5).json()
        assert health["status"] == "degraded" and health["model"]["state"] == "error"
        assert health["jobs"]["queued"] + health["jobs"]["running"] == 1
    finally:
        server.stop()


def test_no_network_fails_fast_with_advice(offline_env: Path, tmp_path: Path) -> None:
    """Without --local-model and without network: one quick failure naming the download command, not minutes
    of retries per file."""
    server = Server(Path(HUB_ID), tmp_path / "data", [], local_model=False).start()
    try:
        started = time.monotonic()
        message = assert_error(post(server, "/transcribe/json", AISHELL), 503, "model_unavailable")
        assert time.monotonic() - started < 30
        assert "could not download" in message and f"hf download {HUB_ID}" in message and "--local-model" in message
        health = requests.get(server.url + "/health", timeout=5).json()
        assert health["status"] == "degraded" and any("could not download" in p for p in health["problems"])
    finally:
        server.stop()


def test_the_service_binds_loopback_unless_told_otherwise() -> None:
    """Outside the container the default address is 127.0.0.1; the images pass 0.0.0.0 themselves."""
    result = run_cli("--help")
    assert "(default: 127.0.0.1; env ASR_HOST)" in " ".join(result.stdout.split())
    for dockerfile in (ROOT / "Dockerfile", ROOT / "docker" / "Dockerfile.cpu"):
        assert "ASR_HOST=0.0.0.0" in dockerfile.read_text()


class FakeHub(http.server.ThreadingHTTPServer):
    """The few Hugging Face Hub routes a snapshot download uses, serving a local checkpoint as a repository,
    its files at `rate` bytes a second, on a loopback port."""

    daemon_threads = True

    def __init__(self, repo: str, folder: Path, rate: int) -> None:
        self.repo, self.folder, self.rate, self.sha = repo, folder, rate, "0" * 40
        super().__init__(("127.0.0.1", 0), _HubHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _HubHandler(http.server.BaseHTTPRequestHandler):
    server: FakeHub

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._file(send_body=False)

    def do_GET(self) -> None:
        hub, path = self.server, unquote(urlparse(self.path).path)
        names = sorted(p.name for p in hub.folder.iterdir() if p.is_file())
        if path.startswith(f"/api/models/{hub.repo}/revision/"):
            self._json({"id": hub.repo, "sha": hub.sha, "siblings": [{"rfilename": n} for n in names]})
        elif path.startswith(f"/api/models/{hub.repo}/tree/"):
            self._json(
                [
                    {
                        "type": "file",
                        "path": n,
                        "size": (hub.folder / n).stat().st_size,
                        "oid": hashlib.sha1(n.encode()).hexdigest(),
                    }
                    for n in names
                ]
            )
        else:
            self._file(send_body=True)

    def _json(self, data: object) -> None:
        body = json.dumps(data).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _file(self, send_body: bool) -> None:
        hub, path = self.server, unquote(urlparse(self.path).path)
        prefix = f"/{hub.repo}/resolve/{hub.sha}/"
        target = hub.folder / path[len(prefix) :] if path.startswith(prefix) else None
        if target is None or not target.is_file():
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = target.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
        self.send_header("X-Repo-Commit", hub.sha)
        self.end_headers()
        if send_body:
            step = max(1, hub.rate // 10)
            for at in range(0, len(data), step):
                self.wfile.write(data[at : at + step])
                time.sleep(0.1)


@pytest.fixture
def hub(tiny_checkpoint: Path) -> Iterator[FakeHub]:
    server = FakeHub("tiny/omni", tiny_checkpoint, rate=150_000)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


def test_a_hub_checkpoint_is_downloaded_once_with_its_progress_shown(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first request downloads the checkpoint (only its model files) through the real huggingface_hub
    client: /health and the log show the download as it runs, then the request is answered."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    server = Server(Path(hub.repo), tmp_path / "data", ["--max-new-tokens", "4"], local_model=False).start()
    try:
        answer: dict[str, int] = {}
        request = threading.Thread(
            target=lambda: answer.setdefault("status", post(server, "/transcribe/json", AISHELL).status_code)
        )
        request.start()
        seen = wait_for(
            lambda: (
                (d := requests.get(server.url + "/health", timeout=5).json()["model"]["download"])
                and d["bytes_total"] > 0
                and d
            ),
            timeout=60,
            what="the download in /health",
        )
        assert seen["checkpoint"] == hub.repo and 0 <= seen["bytes_done"] <= seen["bytes_total"]
        request.join(120)
        assert answer["status"] == 200
        health = requests.get(server.url + "/health", timeout=5).json()
        assert health["model"]["download"] is None and health["model_loaded"] and health["status"] == "ok"
        assert f"downloading {hub.repo} from the Hugging Face Hub" in server.log()
        assert f"download of {hub.repo} ended" in server.log()
        snapshot = tmp_path / "hf" / "hub" / "models--tiny--omni" / "snapshots" / hub.sha
        assert (snapshot / "model.safetensors").is_file()
    finally:
        server.stop()
