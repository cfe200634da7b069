"""Remote image_url/video_url media, fetched without letting a client reach the server's own network (SSRF).

Every hop's host is resolved once, every address it resolves to must be public, and the connection goes to
that checked address, never to the name again, so DNS rebinding cannot swap in an inner address between the
check and the connect. TLS still verifies the certificate against the URL's host (also sent as SNI and Host).

One deadline covers the whole fetch: resolving, connecting, the TLS handshake, each redirect, the response
head and the body. Socket timeouts alone cannot give that (each bounds one wait, and a server sending a byte
per wait never trips them), so a timer shuts the fetch's sockets down when the deadline passes, which wakes
whatever read is blocked on them.

This opens its sockets itself and speaks HTTP through http.client rather than urllib3's connection pools:
the pools create their socket inside the TLS handshake, out of the timer's reach, and urllib3 is only a
transitive dependency (of requests, through gptqmodel), not one requirements.txt pins.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import ipaddress
import re
import reprlib
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote, urljoin, urlsplit

from app.errors import RemoteMediaRefused, quoted

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# (host, port) -> the addresses it resolves to, as text: socket.getaddrinfo's answer, or a test's.
Resolver = Callable[[str, int], list[str]]
# An address -> why it is refused ("is a loopback address"), or None when it may be fetched from.
AddressCheck = Callable[[IPAddress], str | None]

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 * 1024
_DEFAULT_PORTS = {"http": 80, "https": 443}
# After IDNA encoding: anything else in a host name could smuggle bytes into the Host header or SNI.
_HOST_NAME = re.compile(r"[a-z0-9_.-]+")
# RFC 3986's reserved and unreserved characters, and "%" so existing escapes survive: the rest (spaces,
# controls, non-ASCII) is escaped, as http.client refuses to send it.
_TARGET_SAFE = "/?:@!$&'()*+,;=%~[]"
_SHARED = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_PUBLIC_ONLY = "remote media must be on a public address"
# URLs are clipped longer than other client input (errors.quoted's 80 characters): a message names two of
# them (a redirect and its origin) and must still say which, within errors.MAX_MESSAGE_CHARS.
_URL_QUOTE = reprlib.Repr()
_URL_QUOTE.maxstring = 300


@dataclass(frozen=True)
class Fetched:
    """A fetched body, its Content-Type and the URL it finally came from (after redirects)."""

    data: bytes
    content_type: str | None
    url: str


def fetch(
    url: str,
    *,
    max_bytes: int,
    timeout: float,
    max_redirects: int = 3,
    allow_private: bool = False,
    resolver: Resolver | None = None,
    address_check: AddressCheck | None = None,
) -> Fetched:
    """GET an http(s) URL whose every hop is on a public address; RemoteMediaRefused says why not."""
    if max_bytes < 0 or timeout <= 0 or max_redirects < 0:
        raise ValueError("max_bytes and max_redirects must be >= 0 and timeout > 0")
    resolve = resolver or _getaddrinfo
    check = None if allow_private else (address_check or why_not_public)
    deadline = _Deadline(timeout)
    try:
        origin = url
        for hop in range(max_redirects + 1):
            label = _show(url) if hop == 0 else f"{_show(url)} (redirected from {_show(origin)})"
            target = _parse(url, label)
            addresses = _resolve(target, label, resolve, check, deadline)
            answer = _get(target, addresses, label, max_bytes, deadline)
            if isinstance(answer, Fetched):
                return answer
            url = urljoin(url, answer)
        raise RemoteMediaRefused(f"{_show(origin)}: more than {max_redirects} redirects")
    finally:
        deadline.stop()


def why_not_public(address: IPAddress) -> str | None:
    """Why an address is not a public unicast one ("is a loopback address"), or None when it is."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return why_not_public(address.ipv4_mapped)
        for kind, inner in _embedded_ipv4(address):
            reason = why_not_public(inner)
            if reason is not None:
                return f"is a {kind} address for {inner}, which {reason}"
        if address in _NAT64:
            # The NAT64 gateway reaches exactly the embedded address, found public above.
            return None
    if address.is_unspecified:
        return "is the unspecified address"
    if address.is_loopback:
        return "is a loopback address"
    if address.is_link_local:
        return "is a link-local address"
    if address.is_multicast:
        return "is a multicast address"
    if address in _SHARED:
        return "is in the shared address space (100.64.0.0/10, carrier-grade NAT)"
    if address.is_private:
        return "is a private address"
    if address.is_reserved:
        return "is a reserved address"
    if not address.is_global:
        return "is not a globally routable address"
    return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> list[tuple[str, ipaddress.IPv4Address]]:
    """The IPv4 addresses a 6to4, Teredo or NAT64 address leads to, each with its mechanism's name."""
    if address.sixtofour is not None:
        return [("6to4", address.sixtofour)]
    if address.teredo is not None:
        server, client = address.teredo
        return [("Teredo", server), ("Teredo", client)]
    if address in _NAT64:
        return [("NAT64", ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))]
    return []


@dataclass(frozen=True)
class _Target:
    """One hop's URL, taken apart: where to connect and what to send."""

    url: str
    tls: bool
    host: str  # ASCII (IDNA), as sent in Host and SNI and checked against the certificate
    literal: IPAddress | None
    port: int
    host_header: str
    request_target: str


def _parse(url: str, label: str) -> _Target:
    """The URL's parts, refused unless it is http(s) with a host and no credentials."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise RemoteMediaRefused(f"{label}: not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        what = f"a {quoted(scheme)[1:-1]}: URL" if scheme else "a URL without a scheme"
        raise RemoteMediaRefused(f"{label}: only http and https URLs can be fetched, not {what}")
    if "@" in parts.netloc:
        # The URL is not quoted back: it would repeat the password.
        where = _show(f"{scheme}://{parts.netloc.rpartition('@')[2]}")
        raise RemoteMediaRefused(f"{where}: URLs with a user name or password (user:pass@) are refused")
    host = parts.hostname
    if not host:
        raise RemoteMediaRefused(f"{label}: the URL has no host")
    literal = _ip(host)
    if literal is None:
        try:
            host = host.encode("idna").decode("ascii").lower()
        except UnicodeError:
            host = ""
        if not _HOST_NAME.fullmatch(host):
            raise RemoteMediaRefused(f"{label}: {quoted(parts.hostname)[1:-1]} is not a valid host name")
    port = port if port is not None else _DEFAULT_PORTS[scheme]
    shown_host = f"[{host}]" if isinstance(literal, ipaddress.IPv6Address) else host
    host_header = shown_host if port == _DEFAULT_PORTS[scheme] else f"{shown_host}:{port}"
    path = parts.path or "/"
    request_target = quote(f"{path}?{parts.query}" if parts.query else path, safe=_TARGET_SAFE)
    return _Target(url, scheme == "https", host, literal, port, host_header, request_target)


def _ip(text: str) -> IPAddress | None:
    """The address text spells, IPv4-mapped IPv6 as the IPv4 address it is; None if it is not one."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _getaddrinfo(host: str, port: int) -> list[str]:
    """The system resolver's addresses for host, in its order of preference."""
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in found))


def _resolve(
    target: _Target, label: str, resolve: Resolver, check: AddressCheck | None, deadline: _Deadline
) -> list[IPAddress]:
    """The addresses to connect to, every one of them checked: one refused address refuses the host."""
    if target.literal is not None:
        addresses = [target.literal]
    else:
        try:
            found = resolve(target.host, target.port)
        except (OSError, UnicodeError, ValueError) as exc:
            raise RemoteMediaRefused(f"{label}: cannot resolve {target.host} ({exc})") from None
        if not found:
            raise RemoteMediaRefused(f"{label}: {target.host} resolves to no address")
        addresses = []
        for text in found:
            address = _ip(text)
            if address is None:
                raise RemoteMediaRefused(f"{label}: {target.host} resolved to {quoted(text)}, not an address")
            addresses.append(address)
    if check is not None:
        for address in addresses:
            reason = check(address)
            if reason is not None:
                subject = str(address) if target.literal is not None else f"{target.host} resolves to {address}, which"
                raise RemoteMediaRefused(f"{label}: {subject} {reason}; {_PUBLIC_ONLY}")
    if deadline.left() <= 0:
        raise _timed_out(label, deadline)
    return addresses


def _get(target: _Target, addresses: list[IPAddress], label: str, max_bytes: int, deadline: _Deadline) -> Fetched | str:
    """One request to the checked addresses: the body, or a redirect's Location."""
    try:
        sock = _connect(target, addresses, label, deadline)
        connection = _Connection(sock, target)
        try:
            connection.request(
                "GET",
                target.request_target,
                headers={"Host": target.host_header, "Accept-Encoding": "identity", "Connection": "close"},
            )
            response = connection.getresponse()
            if response.status in _REDIRECTS:
                location = response.getheader("Location")
                if not location:
                    raise RemoteMediaRefused(f"{label}: answered {response.status} without a Location")
                return location
            if not 200 <= response.status < 300:
                reason = quoted(response.reason)[1:-1]
                raise RemoteMediaRefused(f"{label}: the server answered {response.status} {reason}")
            data = _read_body(response, label, max_bytes, deadline)
            return Fetched(data, response.getheader("Content-Type"), target.url)
        finally:
            connection.close()
    except (OSError, http.client.HTTPException) as exc:
        if deadline.passed or isinstance(exc, TimeoutError):
            raise _timed_out(label, deadline) from None
        raise RemoteMediaRefused(f"{label}: {_failure(exc)}") from None


def _connect(target: _Target, addresses: list[IPAddress], label: str, deadline: _Deadline) -> socket.socket:
    """A socket to the first checked address that accepts, TLS-wrapped for https, under the deadline."""
    failures: list[str] = []
    for address in addresses:
        left = deadline.left()
        if left <= 0:
            raise _timed_out(label, deadline)
        try:
            sock = socket.create_connection((str(address), target.port), timeout=left)
        except TimeoutError:
            raise
        except OSError as exc:
            failures.append(f"{address}: {_failure(exc)}")
            continue
        deadline.watch(sock)
        if not target.tls:
            return sock
        try:
            tls = _tls_context().wrap_socket(sock, server_hostname=target.host, do_handshake_on_connect=False)
        except BaseException:
            sock.close()
            raise
        # Watched before the handshake, which a slow server could otherwise stretch without limit.
        deadline.watch(tls)
        try:
            tls.do_handshake()
        except BaseException:
            tls.close()
            raise
        return tls
    raise RemoteMediaRefused(f"{label}: cannot connect ({'; '.join(failures)})")


class _Connection(http.client.HTTPConnection):
    """http.client over a socket this module opened to a checked address, never one it opens by name."""

    def __init__(self, sock: socket.socket, target: _Target) -> None:
        super().__init__(target.host, target.port)
        self._opened = sock

    def connect(self) -> None:
        """Use the checked socket."""
        self.sock = self._opened


def _read_body(response: http.client.HTTPResponse, label: str, max_bytes: int, deadline: _Deadline) -> bytes:
    """The body, refused as soon as it is over max_bytes (before reading, when Content-Length says so)."""
    length = _content_length(response)
    if length is not None and length > max_bytes:
        raise RemoteMediaRefused(f"{label}: Content-Length {length} is over the limit of {max_bytes} bytes")
    body = bytearray()
    while True:
        # read1 returns what one receive brings, so a slow body is seen arriving and the limit is checked
        # after each piece; asking for at most one byte over the limit bounds what is ever held.
        chunk = response.read1(min(_CHUNK, max_bytes + 1 - len(body)))
        if not chunk:
            break
        body += chunk
        if len(body) > max_bytes:
            raise RemoteMediaRefused(f"{label}: the body is larger than the limit of {max_bytes} bytes")
    if deadline.passed:
        # The timer's shutdown ends a read as if the body were complete.
        raise _timed_out(label, deadline)
    if length is not None and len(body) < length:
        raise RemoteMediaRefused(f"{label}: the connection closed after {len(body)} of {length} bytes")
    return bytes(body)


def _content_length(response: http.client.HTTPResponse) -> int | None:
    """The declared length of a body that is not chunked; None when there is none or it is not a number."""
    if "chunked" in (response.getheader("Transfer-Encoding") or "").lower():
        return None
    value = (response.getheader("Content-Length") or "").strip()
    return int(value) if value.isdigit() else None


def _failure(exc: BaseException) -> str:
    """What went wrong on the connection, in words a client can act on."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"the TLS certificate is not valid ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return f"the TLS handshake failed ({exc.reason or exc})"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "the server closed the connection without answering"
    if isinstance(exc, http.client.HTTPException):
        return f"the server's answer is not valid HTTP ({type(exc).__name__})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError) and exc.strerror:
        return f"connection failed ({exc.strerror})"
    return f"connection failed ({type(exc).__name__})"


def _timed_out(label: str, deadline: _Deadline) -> RemoteMediaRefused:
    """The refusal for a fetch that outlived its deadline."""
    return RemoteMediaRefused(f"{label}: no complete answer within {deadline.seconds:g} s")


def _show(url: str) -> str:
    """A client's URL as messages quote it: clipped, odd characters escaped."""
    return _URL_QUOTE.repr(url)[1:-1]


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """The system's trusted CAs, hostname checking on: built once, not at import."""
    return ssl.create_default_context()


class _Deadline:
    """The fetch's one time limit: when it passes, a timer shuts the fetch's sockets down, waking any read."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.passed = False
        self._end = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def left(self) -> float:
        """Seconds until the deadline (0 once it has passed)."""
        return 0.0 if self.passed else max(0.0, self._end - time.monotonic())

    def watch(self, sock: socket.socket) -> None:
        """Shut sock down when the deadline passes (at once if it has)."""
        with self._lock:
            self._sockets.append(sock)
            if not self.passed:
                sock.settimeout(max(0.001, self._end - time.monotonic()))
                return
        _shut(sock)

    def stop(self) -> None:
        """The fetch is over: the timer must not touch its sockets, which are closed or about to be."""
        self._timer.cancel()
        with self._lock:
            self._sockets.clear()

    def _expire(self) -> None:
        """The timer's end: every socket of the fetch is shut down."""
        with self._lock:
            self.passed = True
            for sock in self._sockets:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    """Wake whatever is blocked on sock: it reads end of file, or fails to write."""
    # Already closed (OSError) means nothing is blocked on it. The plain socket's shutdown, even on a TLS
    # socket: it wakes a blocked read without sending a TLS alert.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
