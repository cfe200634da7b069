"""Test support shared by every suite: paths, recordings, the tiny-checkpoint tool, a real server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
AUDIO = ROOT.parent / "shared" / "audio"
JFK = AUDIO / "jfk.flac"
LIBRISPEECH = AUDIO / "librispeech_1995-1837-0001.wav"
AISHELL = AUDIO / "aishell_BAC009S0724W0121.wav"
RECORDINGS = [JFK, LIBRISPEECH, AISHELL]


def build_tiny(out: Path, family: str, quantization: str = "none") -> Path:
    """Run the project's own tiny-checkpoint tool."""
    tool = ROOT / "serve" / "make_tiny_checkpoint.py"
    cmd = [sys.executable, str(tool), str(out), "--family", family, "--quantization", quantization]
    subprocess.run(cmd, check=True, capture_output=True)
    return out


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_group(process: subprocess.Popen[bytes] | None, sig: int) -> None:
    """Send sig to a process group started with start_new_session and wait; SIGKILL after 60 s."""
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, sig)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@dataclass
class Server:
    """A service started through serve/qwen2_5_omni_awq.py on a loopback port."""

    checkpoint: Path
    data_dir: Path
    args: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    # --local-model: the checkpoint is never downloaded (every tiny checkpoint is a local directory).
    local_model: bool = True

    @property
    def url(self) -> str:
        """Base URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> Server:
        """Start and wait until /health answers."""
        self.log_path = self.data_dir.parent / f"server-{self.port}.log"
        cmd = [
            sys.executable, str(ROOT / "serve" / "qwen2_5_omni_awq.py"),
            "--checkpoint-path", str(self.checkpoint), *(["--local-model"] if self.local_model else []),
            "--host", "127.0.0.1", "--port", str(self.port),
            "--data-dir", str(self.data_dir), *self.args,
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("ASR_")}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if requests.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not come up:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the whole process group (gunicorn master and worker) and wait."""
        stop_group(self.process, sig)

    def log(self) -> str:
        """What the server printed."""
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""


def post(server: Server, route: str, path: Path, **fields: str) -> requests.Response:
    """POST a recording as the multipart field 'file' plus form fields."""
    with open(path, "rb") as f:
        return requests.post(server.url + route, files={"file": (path.name, f)}, data=fields, timeout=300)


def make_audio(tmp_path: Path, seconds: float, name: str = "long.wav") -> Path:
    """A longer recording made from jfk.flac with ffmpeg."""
    out = tmp_path / name
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-stream_loop", "-1", "-i", str(JFK), "-t", str(seconds), str(out)],
        check=True,
    )
    return out


def assert_error(response: requests.Response, status: int, code: str) -> str:
    """The one JSON error body with the given status and code; returns the message."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["status"] == "error" and body["error"]["code"] == code
    assert "Traceback" not in response.text
    return str(body["error"]["message"])


def wait_for(predicate: Callable[[], Any], timeout: float = 120, what: str = "condition", interval: float = 0.1) -> Any:
    """Poll until predicate() is truthy; return its value (AssertionError naming `what` after timeout s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


class SlowHeads:
    """count connections sending a request head one byte a second (slowloris), for as long as the server keeps
    them; `replies` holds what the server sent each one it dropped (b"" when it just closed)."""

    def __init__(self, port: int, count: int, padding: int = 1000) -> None:
        self.head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * padding
        self.stop = threading.Event()
        self.replies: list[bytes] = []
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(port,), daemon=True) for _ in range(count)]
        for thread in self.threads:
            thread.start()

    @property
    def dropped(self) -> int:
        """How many connections the server has closed (or refused)."""
        with self._lock:
            return len(self.replies)

    def _run(self, port: int) -> None:
        reply = b""
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                sock.settimeout(0.01)
                for i in range(len(self.head)):
                    if self.stop.is_set():
                        return
                    sock.send(self.head[i : i + 1])
                    try:
                        reply = sock.recv(4096)  # a 408, or the end of the connection
                        break
                    except TimeoutError:
                        self.stop.wait(1)
                else:
                    return
        except OSError:
            pass
        with self._lock:
            self.replies.append(reply)

    def end(self) -> None:
        """Close every connection still open."""
        self.stop.set()
        for thread in self.threads:
            thread.join(5)


@dataclass
class RedisServer:
    """A real redis-server on a loopback port, persisting to directory with the append-only file (as in compose)."""

    directory: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The broker URL the service and the workers take."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 30) -> RedisServer:
        """Start (again, on the same data) and wait until it answers PING."""
        import redis

        self.directory.mkdir(parents=True, exist_ok=True)
        cmd = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
            "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
        ]  # fmt: skip
        with open(self.directory / "redis.log", "ab") as log:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        client = redis.Redis(port=self.port, socket_timeout=2)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                assert self.process is not None and self.process.poll() is None, "redis-server exited"
                return False

        wait_for(answers, timeout, "redis-server to answer")
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop it (SIGKILL: as a crash, the append-only file as it stands)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=30)


@dataclass
class Worker:
    """A cluster GPU worker (serve/worker.py) on the tiny checkpoint, in its own process group."""

    checkpoint: Path
    broker_url: str
    log_path: Path
    args: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        """Start it; wait_ready() tells when it has joined."""
        cmd = [
            sys.executable, str(ROOT / "serve" / "worker.py"), "--broker", self.broker_url,
            "--checkpoint-path", str(self.checkpoint), "--local-model", "--device", "cpu", *self.args,
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("ASR_")}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        """Its process id (its worker id is host:pid)."""
        assert self.process is not None
        return self.process.pid

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop it (SIGKILL: killed where it stands), and wait."""
        stop_group(self.process, sig)

    def log(self) -> str:
        """What it printed."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
