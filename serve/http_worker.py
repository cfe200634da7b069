"""The gunicorn worker class: gthread, hardened against slow and vanished clients.

gunicorn's gthread worker hands a connection to a request thread as soon as its first byte arrives; the
thread then reads the request head and body with no deadline. Twelve clients sending their headers a byte
a second held twelve threads (and /health waited behind them); a stalled upload held its thread forever.
This worker changes three things and keeps the rest of gthread:

- **Heads are read by the event loop.** A connection reaches a thread only once its whole request head has
  arrived, within HEADER_TIMEOUT (and at most HEADS_PER_ADDRESS heads in progress per client address).
  A slow or silent client costs a socket, never a thread.
- **/health has threads of its own.** A complete `GET /health` head goes to a small pool that request
  threads never use, so a monitor gets its answer whatever the other connections do.
- **Bodies have a deadline with a minimum rate**, as Apache's mod_reqtimeout: each read waits at most
  body_timeout for data, and the body as a whole must keep MIN_BODY_RATE bytes a second after the first
  body_timeout seconds. A client that falls behind gets 408 (its upload is deleted) and the thread is free.

It also answers `Expect: 100-continue` only when the application reads the body (gunicorn sends it at once),
so a request refused on its headers (413 over the size limit, 401, 429, 507) is refused before the body is
sent, and it tells the application when the client has gone (`asr.client_gone` in the WSGI environ), so a
synchronous transcription stops when its client disconnects.
"""

from __future__ import annotations

import contextlib
import errno
import json
import select
import selectors
import socket
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from functools import partial
from typing import Any

from gunicorn.workers.gthread import TConn, ThreadWorker

from app.errors import RequestTimeout
from app.settings import Settings

# Bytes a second a body must average once its first body_timeout seconds are over.
MIN_BODY_RATE = 1024
# Heads still arriving, per client address and in all: past either, the oldest of them is dropped (408). A
# real client's head comes in one packet, so it is never the oldest for long; slow ones make room for it.
HEADS_PER_ADDRESS = 32
MAX_HEADS = 1000
# Threads serving /health alone, and threads closing connections that gunicorn lingers on.
HEALTH_THREADS = 4
LINGER_THREADS = 4
HEALTH_PATHS = frozenset({"/health"})
# A head larger than this is handed to gunicorn's parser as it is: its own limits answer with 431 or 400.
MAX_HEAD_BYTES = 128 * 1024
_HEAD_ENDS = (b"\r\n\r\n", b"\n\n")
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class DeadlineSocket:
    """A client socket whose blocking reads, while a request is being served, have a deadline with a minimum rate.

    Everything else is the socket's own. arm() starts a request's clock and disarm() ends it; unarmed (the
    event loop reading heads, gunicorn lingering on a close) reads are the socket's own. A timeout the
    caller sets itself is honoured too: the shorter of the two applies.
    """

    def __init__(self, sock: socket.socket, body_timeout: float) -> None:
        self.raw = sock
        self._body_timeout = body_timeout
        self._timeout: float | None = sock.gettimeout()
        self._armed = False
        self._started = time.monotonic()
        self._received = 0
        self._expired = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)

    def settimeout(self, value: float | None) -> None:
        self._timeout = value
        self.raw.settimeout(value)

    def setblocking(self, flag: bool) -> None:
        self._timeout = None if flag else 0.0
        self.raw.setblocking(flag)

    def arm(self) -> None:
        """A request is being served from now (its head has already been read)."""
        self._armed = True
        self._started = time.monotonic()
        self._received = 0
        self._expired = False

    def disarm(self) -> None:
        """The request is done: reads are the socket's own again."""
        self._armed = False

    def recv(self, size: int, flags: int = 0) -> bytes:
        """Like socket.recv, but RequestTimeout once an armed request's client falls behind.

        After one timeout the connection reads as closed: the application has had its error, and gunicorn
        treats what follows as a client that left.
        """
        if not self._armed or self._timeout == 0.0:
            return self.raw.recv(size, flags)
        if self._expired:
            return b""
        deadline = self._started + self._body_timeout + self._received / MIN_BODY_RATE
        ours = min(self._body_timeout, deadline - time.monotonic())
        if ours <= 0:
            return self._expire(f"the request body arrived slower than {MIN_BODY_RATE} bytes a second")
        wait = ours if self._timeout is None else min(ours, self._timeout)
        self.raw.settimeout(wait)
        try:
            data = self.raw.recv(size, flags)
        except TimeoutError:
            if wait < ours:
                raise  # the caller's own, shorter timeout: its error to handle
            return self._expire(f"no part of the request body arrived for {wait:.0f} s")
        finally:
            self.raw.settimeout(self._timeout)
        self._received += len(data)
        return data

    def _expire(self, why: str) -> bytes:
        self._expired = True
        raise RequestTimeout(f"{why}; the request was dropped: send it again on a faster connection")


class _ContinueOnRead:
    """wsgi.input that sends `100 Continue` on the first read: the client sends its body only when it is wanted."""

    def __init__(self, stream: Any, sock: DeadlineSocket) -> None:
        self._stream = stream
        self._sock = sock
        self.sent = False

    def _go(self) -> None:
        if not self.sent:
            self.sent = True
            self._sock.raw.sendall(_CONTINUE)
            self._sock.arm()  # the body's clock starts when it is asked for

    def read(self, size: int | None = None) -> bytes:
        self._go()
        return bytes(self._stream.read(size))

    def readline(self, size: int | None = None) -> bytes:
        self._go()
        return bytes(self._stream.readline(size))

    def readlines(self, hint: int | None = None) -> list[bytes]:
        self._go()
        return list(self._stream.readlines(hint))

    def __iter__(self) -> Iterator[bytes]:
        self._go()
        return iter(self._stream)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def client_gone(sock: DeadlineSocket) -> Callable[[], bool]:
    """A check that the client has closed its side of the connection (or reset it), without reading data."""

    def gone() -> bool:
        poller = select.poll()
        poller.register(sock.raw.fileno(), select.POLLIN | select.POLLRDHUP | select.POLLHUP | select.POLLERR)
        events = poller.poll(0)
        if not events:
            return False
        flags = events[0][1]
        if flags & (select.POLLRDHUP | select.POLLHUP | select.POLLERR):
            return True
        try:
            # Readable: a pipelined next request (still here), or the end of the stream (gone).
            return sock.raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    return gone


class _RequestState(threading.local):
    """What handle_request tells the WSGI wrapper about the request on this thread."""

    sock: DeadlineSocket | None = None
    expects_continue = False
    input: _ContinueOnRead | None = None


class Worker(ThreadWorker):
    """gthread with request heads read by the event loop, deadlines on bodies and /health in its own pool."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = Settings.from_env()
        self.header_timeout = settings.header_timeout
        self.body_timeout = settings.body_timeout
        self.health_pool: futures.ThreadPoolExecutor | None = None
        # Lingering closes (gunicorn waits up to 2 s for the client to close after an unread body): off the
        # event loop, which would otherwise stop reading every other connection's head meanwhile.
        self.linger_pool: futures.ThreadPoolExecutor | None = None
        # Connections whose head is still arriving, oldest first (they share one timeout, so also by deadline),
        # in all and per client address.
        self.heads: deque[TConn] = deque()
        self.heads_by_address: defaultdict[str, deque[TConn]] = defaultdict(deque)
        self.state = _RequestState()
        # gunicorn's own deferred and TLS/HTTP2 paths are kept where this worker's head reading cannot apply.
        self.read_heads = not self.cfg.is_ssl and self.cfg.http2_cleartext not in ("prior-knowledge", "both")

    def init_process(self) -> None:
        self.health_pool = futures.ThreadPoolExecutor(max_workers=HEALTH_THREADS, thread_name_prefix="health")
        self.linger_pool = futures.ThreadPoolExecutor(max_workers=LINGER_THREADS, thread_name_prefix="linger")
        super().init_process()

    def load_wsgi(self) -> None:
        super().load_wsgi()
        # The Flask app itself, for the shutdown hooks (self.wsgi becomes the wrapper around it).
        self.application = self.wsgi
        self.wsgi = self._wrap(self.wsgi)

    def _wrap(self, app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
        def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            sock = self.state.sock
            if sock is not None:
                environ["asr.client_gone"] = client_gone(sock)
                if self.state.expects_continue:
                    self.state.input = _ContinueOnRead(environ["wsgi.input"], sock)
                    environ["wsgi.input"] = self.state.input
            return app(environ, start_response)

        return wrapped

    # Connections -----------------------------------------------------------------------------------------

    def accept(self, listener: socket.socket) -> None:
        """Accept a connection; its socket reads with deadlines."""
        try:
            client, address = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        client.setblocking(True)
        conn = TConn(self.cfg, DeadlineSocket(client, self.body_timeout), address, listener.getsockname())
        self.enqueue_req(conn)

    def enqueue_req(self, conn: TConn) -> None:
        """Hand a connection on: to the event loop until its head is complete, then to a pool by its path."""
        if not self.read_heads or not isinstance(conn.sock, DeadlineSocket):
            super().enqueue_req(conn)
            return
        head = getattr(conn, "head", None)
        if head is None:
            # Read-ahead left by the previous request on this connection is the start of the next head.
            buffered = conn.parser.unreader.take_buffered() if conn.parser is not None else b""
            conn.head = head = bytearray(buffered)
            conn.head_deadline = time.monotonic() + self.header_timeout
        if _head_complete(head):
            self._dispatch(conn)
            return
        address = _address(conn)
        for crowd, most in ((self.heads_by_address[address], HEADS_PER_ADDRESS), (self.heads, MAX_HEADS)):
            if len(crowd) >= most:
                oldest = crowd[0]
                self._stop_reading(oldest)
                self._drop(oldest, _timeout_reply("it was the slowest of too many"))
        conn.sock.raw.setblocking(False)
        self.heads.append(conn)
        # Looked up again: dropping the last head of this address above removed its entry.
        self.heads_by_address[address].append(conn)
        self.poller.register(conn.sock.raw, selectors.EVENT_READ, partial(self._on_head_readable, conn))

    def _on_head_readable(self, conn: TConn, _sock: socket.socket) -> None:
        try:
            data = conn.sock.raw.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._stop_reading(conn)
            self._drop(conn, None)
            return
        conn.head += data
        if _head_complete(conn.head) or len(conn.head) > MAX_HEAD_BYTES:
            self._stop_reading(conn)
            self._dispatch(conn)

    def _stop_reading(self, conn: TConn) -> None:
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(conn.sock.raw)
        self.heads.remove(conn)
        address = _address(conn)
        same = self.heads_by_address[address]
        same.remove(conn)
        if not same:
            del self.heads_by_address[address]

    def _dispatch(self, conn: TConn) -> None:
        """The head is here: give it to gunicorn's parser and the connection to a thread."""
        head = bytes(conn.head)
        del conn.head
        conn.sock.raw.setblocking(True)
        conn.init()  # plain HTTP/1: builds the parser, reads nothing
        conn.parser.unreader.unread(head)
        conn.data_ready = True
        pool = self.health_pool if _path(head) in HEALTH_PATHS and self.health_pool is not None else self.tpool
        fs = pool.submit(self.handle, conn)
        fs.add_done_callback(lambda fut: self.method_queue.defer(self.finish_request, conn, fut))

    def _drop(self, conn: TConn, reply: bytes | None) -> None:
        """Close a connection that never sent a whole head (a short reply first, best effort)."""
        if reply:
            with contextlib.suppress(OSError):
                conn.sock.raw.send(reply)
        self.nr_conns -= 1
        conn.close()

    def finish_request(self, conn: TConn, fs: futures.Future[Any]) -> None:
        """gthread's, but a connection that closes lingers in a thread of its own, not on the event loop."""
        if fs.cancelled() or fs.exception() is not None or fs.result() or self.linger_pool is None:
            super().finish_request(conn, fs)  # kept alive, deferred, or failed: gthread's own handling
            return
        self.nr_conns -= 1
        self.linger_pool.submit(conn.close, True)

    def murder_pending(self) -> None:
        """gunicorn's sweep of idle connections, plus the heads past their deadline (each gets a 408)."""
        super().murder_pending()
        now = time.monotonic()
        while self.heads and self.heads[0].head_deadline <= now:
            conn = self.heads[0]
            self._stop_reading(conn)
            self._drop(conn, _timeout_reply(f"it did not arrive within {self.header_timeout:g} s"))

    # Requests --------------------------------------------------------------------------------------------

    def handle(self, conn: TConn) -> Any:
        if not isinstance(conn.sock, DeadlineSocket):
            return super().handle(conn)
        conn.sock.arm()
        try:
            return super().handle(conn)
        finally:
            conn.sock.disarm()

    def handle_request(self, req: Any, conn: TConn) -> bool:
        """gunicorn's handle_request, with 100 Continue left to the first read of the body."""
        state = self.state
        state.sock = conn.sock if isinstance(conn.sock, DeadlineSocket) else None
        state.expects_continue = bool(req._expected_100_continue) and state.sock is not None
        state.input = None
        if state.expects_continue:
            req._expected_100_continue = False
        try:
            keepalive = bool(super().handle_request(req, conn))
            # The body was never asked for, so the client may or may not send it: the connection cannot be reused.
            if state.expects_continue and (state.input is None or not state.input.sent):
                return False
            return keepalive
        finally:
            state.sock, state.expects_continue, state.input = None, False, None

    def handle_quit(self, sig: int, frame: Any) -> None:
        self._shutdown_pools()
        super().handle_quit(sig, frame)

    def run(self) -> None:
        try:
            super().run()
        finally:
            self._shutdown_pools()

    def _shutdown_pools(self) -> None:
        for pool in (self.health_pool, self.linger_pool):
            if pool is not None:
                pool.shutdown(wait=False)


def _head_complete(head: bytes | bytearray) -> bool:
    return any(end in head for end in _HEAD_ENDS)


def _path(head: bytes) -> str:
    """The path of a request line (`GET /health?x HTTP/1.1` -> /health); empty when it is not one."""
    line = head.split(b"\n", 1)[0].split()
    if len(line) < 2 or line[0] not in (b"GET", b"HEAD"):
        return ""
    return line[1].split(b"?", 1)[0].decode("latin-1")


def _address(conn: TConn) -> str:
    client = conn.client
    return str(client[0]) if isinstance(client, tuple) and client else str(client)


def _timeout_reply(why: str) -> bytes:
    """A 408 for a request head that was dropped, in the service's JSON error body."""
    message = f"the request head was dropped: {why}"
    body = json.dumps({"status": "error", "error": {"code": "request_timeout", "message": message}}).encode()
    return (
        b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
