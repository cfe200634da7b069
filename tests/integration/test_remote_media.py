"""app.remote_media: the SSRF-safe fetcher, against real HTTP servers on loopback (no network is used)."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, urlsplit

import pytest

from app.errors import RemoteMediaRefused
from app.remote_media import IPAddress, fetch, why_not_public

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
SECRET = b"the metadata service's credentials"


class Server(ThreadingHTTPServer):
    """A loopback server that records what it was asked and stops its slow answers when told."""

    daemon_threads = True

    def __init__(self, host: str) -> None:
        super().__init__((host, 0), Handler)
        self.seen: list[tuple[str, str | None]] = []
        self.stop = threading.Event()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def url(self, path: str) -> str:
        return f"http://{self.server_address[0]}:{self.port}{path}"


class Handler(BaseHTTPRequestHandler):
    """The routes the tests fetch."""

    # HTTP/1.1, for chunked bodies.
    protocol_version = "HTTP/1.1"
    server: Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.server.seen.append((self.path, self.headers.get("Host")))
        parts = urlsplit(self.path)
        query = {key: values[0] for key, values in parse_qs(parts.query).items()}
        n = int(query.get("n", "0"))
        # The client giving up (on a body over its limit, at its deadline) is what the tests expect of it.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.route(parts.path, query, n)

    def route(self, path: str, query: dict[str, str], n: int) -> None:
        if path == "/media":
            self.answer(200, PNG, "image/png")
        elif path == "/secret":
            self.answer(200, SECRET, "text/plain")
        elif path.startswith("/hops/"):
            left = int(path.rsplit("/", 1)[1])
            if left == 0:
                self.answer(200, PNG, "image/png")
            else:
                self.redirect(f"/hops/{left - 1}")
        elif path.startswith("/slow-hops/"):
            self.server.stop.wait(0.4)
            self.redirect(f"/slow-hops/{int(path.rsplit('/', 1)[1]) + 1}")
        elif path == "/to":
            self.redirect(query["url"], int(query.get("status", "302")))
        elif path == "/big":
            self.answer(200, b"x" * n, "application/octet-stream")
        elif path == "/claims":
            # A Content-Length it never sends: only the header can have refused the fetch.
            self.send_response(200)
            self.send_header("Content-Length", str(n))
            self.end_headers()
            self.wfile.flush()
            self.server.stop.wait(5)
        elif path in ("/chunked", "/until-close"):
            self.stream(chunked=path == "/chunked", n=n, hang="hang" in query)
        elif path == "/dribble":
            self.send_response(200)
            self.send_header("Content-Length", "20")
            self.end_headers()
            self.dribble(b"x" * 20)
        elif path == "/slow-head":
            self.wfile.write(b"HTTP/1.1 200 OK\r\n")
            self.dribble(b"X-Slow: " + b"x" * 12)
        else:
            self.answer(404, b"no such thing", "text/plain")

    def answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def redirect(self, location: str, status: int = 302) -> None:
        self.send_response(status)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def stream(self, *, chunked: bool, n: int, hang: bool) -> None:
        """n bytes in 100-byte pieces, then (hang) nothing more for up to 5 s, with no Content-Length."""
        self.send_response(200)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Connection", "close")
        self.end_headers()
        for start in range(0, n, 100):
            piece = b"y" * min(100, n - start)
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
        self.wfile.flush()
        if hang:
            self.server.stop.wait(5)
        elif chunked:
            self.wfile.write(b"0\r\n\r\n")

    def dribble(self, data: bytes) -> None:
        """One byte every 0.5 s (10 s for 20 bytes, unless the client hangs up or the test ends)."""
        self.wfile.flush()
        for byte in data:
            if self.server.stop.wait(0.5):
                return
            self.wfile.write(bytes([byte]))
            self.wfile.flush()


def serve(host: str) -> Iterator[Server]:
    """A Server on host in a thread, shut down after the test."""
    server = Server(host)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stop.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def server() -> Iterator[Server]:
    """The media server, on 127.0.0.1."""
    yield from serve("127.0.0.1")


@pytest.fixture
def inner() -> Iterator[Server]:
    """A second server, on 127.0.0.2: what a redirect must not reach when 127.0.0.1 passes for public."""
    yield from serve("127.0.0.2")


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every connection the fetcher tries to open, none of them opened."""
    tried: list[tuple[str, int]] = []

    def refuse(address: tuple[str, int], *args: object, **kwargs: object) -> socket.socket:
        tried.append(address)
        raise ConnectionRefusedError(111, "not in this test")

    monkeypatch.setattr(socket, "create_connection", refuse)
    return tried


def resolver(table: dict[str, list[str]], asked: list[str] | None = None) -> Callable[[str, int], list[str]]:
    """A resolver answering from table (anything else does not resolve), noting each name it is asked."""

    def resolve(host: str, port: int) -> list[str]:
        if asked is not None:
            asked.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return table[host]

    return resolve


def never_resolve(host: str, port: int) -> list[str]:
    """The resolver of a test in which nothing may be resolved."""
    raise AssertionError(f"{host} was resolved")


def only_test_server(address: IPAddress) -> str | None:
    """The strict check, except that 127.0.0.1 (the test server) passes for a public address."""
    return None if address == ipaddress.ip_address("127.0.0.1") else why_not_public(address)


def test_loopback_url_is_refused_by_default(server: Server) -> None:
    """The test server itself is on loopback: without allow_private it is never asked anything."""
    url = server.url("/media")
    with pytest.raises(RemoteMediaRefused) as caught:
        fetch(url, max_bytes=10_000, timeout=5)
    error = caught.value
    assert (error.status, error.code) == (400, "remote_media_refused")
    assert error.message == f"{url}: 127.0.0.1 is a loopback address; remote media must be on a public address"
    assert server.seen == []


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://10.1.2.3/x.png", "10.1.2.3 is a private address"),
        ("http://192.168.1.1/", "192.168.1.1 is a private address"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"),
        ("http://[::1]:8080/", "::1 is a loopback address"),
        ("http://[::ffff:127.0.0.1]/", "127.0.0.1 is a loopback address"),
        ("https://100.64.0.1/", "100.64.0.1 is in the shared address space (100.64.0.0/10"),
        ("http://0.0.0.0:8000/", "0.0.0.0 is the unspecified address"),
        ("http://224.0.0.1/", "224.0.0.1 is a multicast address"),
        ("http://[fe80::1]/", "fe80::1 is a link-local address"),
        ("http://[fe80::1%25eth0]/", "fe80::1%25eth0 is a link-local address"),
        ("http://[fd00::5]/", "fd00::5 is a private address"),
        ("http://[2002:7f00:1::1]/", "is a 6to4 address for 127.0.0.1, which is a loopback address"),
    ],
)
def test_literal_non_public_address_is_refused_without_connecting(
    url: str, reason: str, connections: list[tuple[str, int]]
) -> None:
    """An address in the URL is checked as a resolved one would be, and nothing is resolved or connected."""
    with pytest.raises(RemoteMediaRefused) as caught:
        fetch(url, max_bytes=10_000, timeout=5, resolver=never_resolve)
    assert reason in caught.value.message
    assert caught.value.message.endswith("remote media must be on a public address")
    assert connections == []


@pytest.mark.parametrize("host", ["127.1", "2130706433", "0x7f.0.0.1", "localhost"])
def test_other_spellings_of_loopback_are_refused(host: str, connections: list[tuple[str, int]]) -> None:
    """Names the system resolver turns into loopback (numeric forms, /etc/hosts) are checked after resolving."""
    with pytest.raises(RemoteMediaRefused, match="is a loopback address") as caught:
        fetch(f"http://{host}/x", max_bytes=10_000, timeout=5)
    assert f"{host} resolves to " in caught.value.message
    assert connections == []


def test_name_with_any_private_address_is_refused(connections: list[tuple[str, int]]) -> None:
    """One inner address among public ones refuses the name: a connection could pick any of them."""
    resolve = resolver({"media.example": ["93.184.215.14", "10.0.0.7"]})
    with pytest.raises(RemoteMediaRefused) as caught:
        fetch("http://media.example/cat.png", max_bytes=10_000, timeout=5, resolver=resolve)
    assert caught.value.message == (
        "http://media.example/cat.png: media.example resolves to 10.0.0.7, which is a private address; "
        "remote media must be on a public address"
    )
    assert connections == []


def test_unresolvable_name_is_refused(connections: list[tuple[str, int]]) -> None:
    """A name that does not resolve is refused with that reason."""
    with pytest.raises(RemoteMediaRefused, match=r"cannot resolve nowhere\.example"):
        fetch("http://nowhere.example/a.png", max_bytes=10_000, timeout=5, resolver=resolver({}))
    assert connections == []


def test_allow_private_fetches_through_the_checked_address(server: Server) -> None:
    """With allow_private, a name resolving to loopback is fetched: from the address, with the name as Host."""
    asked: list[str] = []
    resolve = resolver({"media.example": ["127.0.0.1"]}, asked)
    url = f"http://media.example:{server.port}/media"
    got = fetch(url, max_bytes=10_000, timeout=5, allow_private=True, resolver=resolve)
    assert (got.data, got.content_type, got.url) == (PNG, "image/png", url)
    assert server.seen == [("/media", f"media.example:{server.port}")]
    assert asked == ["media.example"]


def test_address_check_can_be_replaced(server: Server) -> None:
    """An injected check decides alone (allow_private left off): the test server can pass for a public one."""
    resolve = resolver({"public.example": ["127.0.0.1"]})
    url = f"http://public.example:{server.port}/media"
    assert fetch(url, max_bytes=10_000, timeout=5, resolver=resolve, address_check=only_test_server).data == PNG
    with pytest.raises(RemoteMediaRefused, match="which is a loopback address"):
        fetch(url, max_bytes=10_000, timeout=5, resolver=resolve)


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("http://127.0.0.2:{port}/secret", "127.0.0.2 is a loopback address"),
        ("http://internal.example:{port}/secret", "internal.example resolves to 127.0.0.2, which is a loopback"),
    ],
)
def test_redirect_to_an_inner_address_is_refused(server: Server, inner: Server, target: str, reason: str) -> None:
    """Each hop is checked again before connecting: a public page cannot bounce the fetch inward."""
    resolve = resolver({"public.example": ["127.0.0.1"], "internal.example": ["127.0.0.2"]})
    location = target.format(port=inner.port)
    url = f"http://public.example:{server.port}/to?url={quote(location, safe='')}"
    with pytest.raises(RemoteMediaRefused) as caught:
        fetch(url, max_bytes=10_000, timeout=5, resolver=resolve, address_check=only_test_server)
    assert caught.value.message.startswith(f"{location} (redirected from {url}): {reason}")
    assert inner.seen == []
    # The same redirect is followed when inner addresses are allowed: the refusal above was the check's.
    got = fetch(url, max_bytes=10_000, timeout=5, resolver=resolve, allow_private=True)
    assert (got.data, got.url) == (SECRET, location)
    assert inner.seen == [("/secret", f"{urlsplit(location).netloc}")]


def test_redirect_to_another_scheme_is_refused(server: Server) -> None:
    """A Location is held to the same rules as the URL asked for."""
    url = server.url(f"/to?url={quote('file:///etc/passwd', safe='')}")
    with pytest.raises(RemoteMediaRefused, match="only http and https URLs can be fetched, not a file: URL"):
        fetch(url, max_bytes=10_000, timeout=5, allow_private=True)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_relative_redirects_are_followed(server: Server, status: int) -> None:
    """Every redirect status is followed, its Location taken relative to the URL that answered it."""
    first = f"/to?status={status}&url=%2Fhops%2F2"
    got = fetch(server.url(first), max_bytes=10_000, timeout=5, allow_private=True, max_redirects=3)
    assert (got.data, got.url) == (PNG, server.url("/hops/0"))
    assert [path for path, _ in server.seen] == [first, "/hops/2", "/hops/1", "/hops/0"]


def test_more_redirects_than_allowed_are_refused(server: Server) -> None:
    """max_redirects redirects are followed and the next is not: /hops/3 arrives, /hops/4 is refused."""
    assert fetch(server.url("/hops/3"), max_bytes=10_000, timeout=5, allow_private=True, max_redirects=3).data == PNG
    server.seen.clear()
    with pytest.raises(RemoteMediaRefused, match=r"/hops/4: more than 3 redirects$"):
        fetch(server.url("/hops/4"), max_bytes=10_000, timeout=5, allow_private=True, max_redirects=3)
    assert [path for path, _ in server.seen] == ["/hops/4", "/hops/3", "/hops/2", "/hops/1"]


def test_body_at_the_limit_is_fetched(server: Server) -> None:
    """max_bytes itself is allowed, with and without a Content-Length (the limits below are not off by one)."""
    for path in ("/big?n=1000", "/chunked?n=1000", "/until-close?n=1000"):
        assert len(fetch(server.url(path), max_bytes=1000, timeout=5, allow_private=True).data) == 1000


@pytest.mark.parametrize("path", ["/big?n=1001", "/claims?n=1000000000"])
def test_content_length_over_the_limit_is_refused_before_the_body(server: Server, path: str) -> None:
    """A Content-Length over max_bytes refuses at once: /claims sends its header and then nothing for 5 s."""
    started = time.monotonic()
    with pytest.raises(RemoteMediaRefused, match=r"Content-Length \d+ is over the limit of 1000 bytes"):
        fetch(server.url(path), max_bytes=1000, timeout=5, allow_private=True)
    assert time.monotonic() - started < 3


@pytest.mark.parametrize("path", ["/chunked?n=1100&hang=1", "/until-close?n=1100&hang=1"])
def test_body_without_length_is_cut_off_at_the_limit(server: Server, path: str) -> None:
    """Chunked or read to the close: refused as soon as the limit is passed, not at the end (5 s away)."""
    started = time.monotonic()
    with pytest.raises(RemoteMediaRefused, match="the body is larger than the limit of 1000 bytes"):
        fetch(server.url(path), max_bytes=1000, timeout=5, allow_private=True)
    assert time.monotonic() - started < 3


@pytest.mark.parametrize("path", ["/dribble", "/slow-head"])
def test_a_dribbling_server_is_cut_off_at_the_deadline(server: Server, path: str) -> None:
    """A byte every 0.5 s never trips a socket timeout; the deadline still ends the fetch, in the body or head."""
    started = time.monotonic()
    with pytest.raises(RemoteMediaRefused, match=r"no complete answer within 1\.5 s"):
        fetch(server.url(path), max_bytes=10_000, timeout=1.5, allow_private=True)
    assert 1.4 < time.monotonic() - started < 3


def test_the_deadline_covers_all_redirects(server: Server) -> None:
    """Each hop takes 0.4 s: the deadline counts them together, not each on its own."""
    started = time.monotonic()
    with pytest.raises(RemoteMediaRefused, match=r"no complete answer within 1 s"):
        fetch(server.url("/slow-hops/0"), max_bytes=10_000, timeout=1, allow_private=True, max_redirects=10)
    # Per-hop limits would let all 10 hops through: 4 s and 11 requests.
    assert time.monotonic() - started < 2.5
    assert 2 <= len(server.seen) <= 3


def test_a_silent_tls_server_is_cut_off_at_the_deadline() -> None:
    """A listener that never answers the TLS handshake (nor accepts) is given up on at the deadline."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        url = f"https://127.0.0.1:{listener.getsockname()[1]}/a.png"
        started = time.monotonic()
        with pytest.raises(RemoteMediaRefused, match=r"no complete answer within 0\.5 s"):
            fetch(url, max_bytes=10_000, timeout=0.5, allow_private=True)
        assert time.monotonic() - started < 2.5


def test_https_to_a_plain_http_server_fails_the_handshake(server: Server) -> None:
    """https:// really is TLS: the plain server's answer is no ServerHello."""
    with pytest.raises(RemoteMediaRefused, match="the TLS handshake failed"):
        fetch(f"https://127.0.0.1:{server.port}/media", max_bytes=10_000, timeout=5, allow_private=True)


def test_closed_port_is_refused_as_a_connection_failure() -> None:
    """Nothing listening: the message says the connection was refused."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    with pytest.raises(RemoteMediaRefused, match=r"cannot connect \(127\.0\.0\.1: connection refused\)"):
        fetch(f"http://127.0.0.1:{port}/a.png", max_bytes=10_000, timeout=5, allow_private=True)


def test_error_status_is_refused_with_the_status(server: Server) -> None:
    """A 404 is not media: the message quotes the status the server gave."""
    url = server.url("/nothing-here.png")
    with pytest.raises(RemoteMediaRefused) as caught:
        fetch(url, max_bytes=10_000, timeout=5, allow_private=True)
    assert caught.value.message == f"{url}: the server answered 404 Not Found"


@pytest.mark.parametrize(
    ("url", "scheme"),
    [
        ("ftp://media.example/cat.png", "a ftp: URL"),
        ("file:///etc/passwd", "a file: URL"),
        ("gopher://127.0.0.1:6379/_FLUSHALL", "a gopher: URL"),
        ("//media.example/cat.png", "a URL without a scheme"),
    ],
)
def test_other_schemes_are_refused(url: str, scheme: str, connections: list[tuple[str, int]]) -> None:
    """Only http and https: nothing is resolved or connected for any other scheme."""
    with pytest.raises(RemoteMediaRefused) as caught:
        fetch(url, max_bytes=10_000, timeout=5, allow_private=True, resolver=never_resolve)
    assert caught.value.message.endswith(f"only http and https URLs can be fetched, not {scheme}")
    assert connections == []


@pytest.mark.parametrize("userinfo", ["user:hunter2@", "user@", ":hunter2@"])
def test_userinfo_is_refused_without_repeating_it(userinfo: str, connections: list[tuple[str, int]]) -> None:
    """Credentials in the URL are refused, and the message does not repeat them."""
    with pytest.raises(RemoteMediaRefused) as caught:
        fetch(f"https://{userinfo}media.example/cat.png", max_bytes=10_000, timeout=5, resolver=never_resolve)
    message = caught.value.message
    assert message == "https://media.example: URLs with a user name or password (user:pass@) are refused"
    assert "hunter2" not in message
    assert connections == []


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8", "2002:808:808::1", "64:ff9b::808:808"]
)
def test_public_addresses_pass_the_check(address: str) -> None:
    """Public addresses, plain or carried in IPv6 (mapped, 6to4, NAT64), are not refused."""
    assert why_not_public(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("64:ff9b::a00:1", "is a NAT64 address for 10.0.0.1, which is a private address"),
        ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "is a Teredo address for 10.0.0.1, which is a private address"),
        ("192.0.2.7", "is a private address"),
        ("240.0.0.1", "is a private address"),
    ],
)
def test_embedded_and_special_addresses_are_refused(address: str, reason: str) -> None:
    """IPv4 addresses carried inside IPv6 are checked as what they lead to; special-purpose ranges are refused."""
    assert why_not_public(ipaddress.ip_address(address)) == reason
