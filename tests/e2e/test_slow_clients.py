"""Slow, stalled and vanished clients against the real server, over real sockets on loopback.

The server runs with 8 request threads and short deadlines, so each case would exhaust its threads or hold
them for good if a slow client could. Latency figures are printed, not asserted (bench/hardening.py
measures them); what is asserted is that /health answers within a monitor's budget and nothing is held.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support import JFK, Server, SlowHeads, make_audio, post, wait_for

pytestmark = pytest.mark.e2e

THREADS = 8
HEADER_TIMEOUT = 3
BODY_TIMEOUT = 2
HEALTH_BUDGET = 5.0  # the compose healthcheck's timeout


@pytest.fixture(scope="module")
def server(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("slow-clients") / "data"
    args = [
        *("--threads", str(THREADS), "--header-timeout", str(HEADER_TIMEOUT), "--body-timeout", str(BODY_TIMEOUT)),
        *("--max-new-tokens", "4", "--max-upload-size", "50M"),
    ]
    srv = Server(tiny_checkpoint, data, args).start()
    yield srv
    srv.stop()


def connect(server: Server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=30)


def read_reply(sock: socket.socket) -> bytes:
    """One whole HTTP response (head and Content-Length body) from a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0
    )
    while len(body) < length and (chunk := sock.recv(4096)):
        body += chunk
    return head + b"\r\n\r\n" + body


def health_latencies(server: Server, count: int) -> list[float]:
    latencies = []
    for _ in range(count):
        started = time.monotonic()
        assert requests.get(server.url + "/health", timeout=HEALTH_BUDGET).status_code == 200
        latencies.append(time.monotonic() - started)
        time.sleep(0.05)
    return sorted(latencies)


@pytest.mark.parametrize("count", [12, 64])
def test_health_answers_while_slow_heads_hold_connections(server: Server, count: int) -> None:
    """12 and 64 connections trickling headers (more than the 8 threads): /health keeps answering at once,
    and the server drops each slow head at its deadline with a 408."""
    loris = SlowHeads(server.port, count)
    try:
        time.sleep(1)
        latencies = health_latencies(server, 40)
        print(
            f"\n/health with {count} slow heads: p50 {latencies[20] * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms"
        )
        wait_for(lambda: loris.dropped == count, timeout=HEADER_TIMEOUT + 5, what="the server to drop every slow head")
        assert all(b" 408 " in reply.split(b"\r\n", 1)[0] for reply in loris.replies if reply)
    finally:
        loris.end()


def test_a_stalled_upload_gets_408_and_frees_its_thread(server: Server) -> None:
    """More stalled uploads than threads: each gets 408 after the body timeout; afterwards a real request runs."""
    boundary = "b0undary"
    head = (
        f"POST /transcribe/json HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
        "Content-Length: 1000000\r\n\r\n"
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
    ).encode() + b"RIFF" * 256
    socks = []
    for _ in range(THREADS + 4):
        sock = connect(server)
        sock.sendall(head)
        socks.append(sock)
    started = time.monotonic()
    for sock in socks:
        reply = read_reply(sock)
        assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
        assert b"request_timeout" in reply
        sock.close()
    # All of them were dropped about one body timeout after they stalled, not one after another.
    assert time.monotonic() - started < BODY_TIMEOUT * 4
    assert not any((server.data_dir / "uploads").iterdir())
    assert post(server, "/transcribe/json", JFK).status_code == 200


def test_expect_100_continue_over_the_limit_is_refused_before_the_body(server: Server) -> None:
    """A client that waits for 100 Continue hears 413 instead, and sends nothing; within limits it hears 100."""
    sock = connect(server)
    sock.sendall(
        b"POST /transcribe/json HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        b"Content-Length: 999999999\r\nExpect: 100-continue\r\n\r\n"
    )
    reply = read_reply(sock)
    sock.close()
    assert reply.startswith(b"HTTP/1.1 413") and b"100 Continue" not in reply
    assert b"upload_too_large" in reply
    # Within the limit, curl's default behaviour: 100 first, then the body, then the answer.
    with open(JFK, "rb") as f:
        ok = requests.post(server.url + "/transcribe/json", files={"file": f}, headers={"Expect": "100-continue"})
    assert ok.status_code == 200


def test_work_stops_when_a_synchronous_client_leaves(server: Server, tmp_path: Path) -> None:
    """As many vanished clients as threads, each with 20 minutes of 1 s segments: their work is dropped, the
    threads come back, and the next request is served."""
    long = make_audio(tmp_path, 1200, "long.mp3")
    boundary = "l0ng"
    payload = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="segment_duration"\r\n\r\n1\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="l.mp3"\r\n\r\n'
        ).encode()
        + long.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    head = (
        f"POST /transcribe/json HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode()
    socks = [connect(server) for _ in range(THREADS)]
    senders = [threading.Thread(target=sock.sendall, args=(head + payload,), daemon=True) for sock in socks]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(60)

    def pending() -> int:
        return int(requests.get(server.url + "/health", timeout=HEALTH_BUDGET).json()["model"]["pending_segments"])

    # Wait until the work has reached the engine, then vanish.
    deadline = time.monotonic() + 60
    while pending() == 0:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    for sock in socks:
        sock.close()
    deadline = time.monotonic() + 30
    while left := pending():
        assert time.monotonic() < deadline, f"{left} segments still pending for clients that left"
        time.sleep(0.2)
    assert post(server, "/transcribe/json", JFK).status_code == 200
    # One request line each, with nginx's "client closed request" status.
    assert server.log().count(" 499 audio_seconds=") == THREADS
