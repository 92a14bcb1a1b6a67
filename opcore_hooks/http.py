"""Outbound HTTP for helpdesk plugins: httpx's requests and answers over the standard library's
``http.client``, one keep-alive connection per thread and origin.

A plugin builds ``httpx.Request`` objects and reads ``httpx.Response`` objects, so its tests put
``httpx.MockTransport`` in the transport's place and cassettes record it. What sends them is the
question here. A worker sends one request per ticket from each of its eight threads, and the
cost of that send is the largest single part of its CPU per ticket:

- behind one shared ``httpx.HTTPTransport``, the threads meet in httpcore's connection pool,
  which walks all its connections under a lock on every request and every answer, polling
  each idle socket;
- httpcore and h11 spend more Python per request than ``http.client`` spends on the same
  exchange (bench/transport.py; figures in ``docs/BENCHMARKS.md``, "The host's transport").

So each thread keeps its own connection per origin, as ``opcore_hooks.store.PinnedRedis`` does
for Redis, and speaks HTTP/1.1 through ``http.client``. Requests through a proxy (HTTP(S)_PROXY,
ALL_PROXY) go through ``httpx.HTTPTransport``, whose proxy support this does not repeat.

A request sent here ends within its timeout, whatever the helpdesk does (``ThreadTransport``):
the delivery engine sizes a claim's lock from ``Helpdesk.request_timeout`` on that promise.
"""

from __future__ import annotations

import functools
import http.client
import io
import ipaddress
import re
import select
import socket
import ssl
import threading
import time
import urllib.parse
import urllib.request
import weakref
from typing import Any

import httpx

Origin = tuple[str, str, int]

#: Connections a thread keeps open, one per origin; the least recently used closes first. Zendesk
#: has an origin per subdomain: without a bound, a worker thread would hold one per account.
MAX_ORIGINS_PER_THREAD = 8

#: The largest answer body read from a helpdesk. Its answers are small JSON (a ticket, a page of
#: a search); a larger one is a fault or an attack, refused as a transport error before it is
#: held whole in a worker's memory.
MAX_ANSWER_BYTES = 8 * 1024 * 1024
#: RFC 9110: a field name is a token; a value holds no CR, LF or NUL (nor any obs-fold).
_BAD_NAME = re.compile(rb"[^!#$%&'*+\-.^_`|~0-9A-Za-z]")
_BAD_VALUE = re.compile(rb"[\r\n\x00]")


def proxy_for(url: str) -> str | None:
    """The proxy ``httpx.Client`` would take from the environment for ``url``: HTTP(S)_PROXY or
    ALL_PROXY, unless NO_PROXY covers its host. For requests sent to a transport, not a Client,
    which reads no environment."""
    parts = urllib.parse.urlsplit(url)
    proxies = urllib.request.getproxies_environment()
    if urllib.request.proxy_bypass_environment(parts.hostname or "", proxies):
        return None
    return proxies.get(parts.scheme) or proxies.get("all")


def transport_for(url: str) -> httpx.BaseTransport:
    """The transport for requests to ``url``: direct connections per thread, or the
    environment's proxy through httpx.

    Through a proxy a request has no total deadline: httpcore bounds each socket operation by
    its phase's timeout and offers nothing over a whole request, so a helpdesk (or proxy) that
    trickles its answer holds the thread past ``request_timeout``, and the claim's lock may
    expire under it. Giving it one would take a watchdog per request that closes httpcore's
    connections from outside, which httpcore does not promise to survive; not done.
    """
    proxy = proxy_for(url)
    return ThreadTransport() if proxy is None else httpx.HTTPTransport(proxy=proxy)


class ThreadTransport(httpx.BaseTransport):
    """An httpx transport whose every thread keeps one HTTP/1.1 connection per origin (at most
    ``MAX_ORIGINS_PER_THREAD``).

    A connection found closed by the server while it was idle is replaced before the request
    is sent. A request whose connection fails after it was sent is not sent again: the
    helpdesk may have acted on it, and only the caller knows whether repeating it is safe.
    Each thread's connections close when the thread ends, and all of them on ``close()``.

    A request has a total deadline, the largest of its connect, write and read timeouts
    (httpx's ``timeout`` extension; pool has no meaning here, as there is no pool to wait for),
    counted from the call: the name's lookup, the TCP connect, the TLS handshake, sending, the
    status line, the headers and the body all fit in it, or the request fails with httpx's
    ConnectTimeout, WriteTimeout or ReadTimeout for the step it was in. Each socket operation
    waits at most its phase's timeout and never past the deadline. Per operation alone, a
    helpdesk that sends a byte every half second against a two-second read timeout would keep
    the thread for as long as it likes, and the claim's lock (sized from ``request_timeout``,
    which every plugin sends as all four timeouts) would expire under a live request. The
    plugins pass ``httpx.Timeout(request_timeout)``, so ``request_timeout`` bounds a request's
    wall time, give or take the scheduler. A request with any of the three left unbounded
    (None, or no extension: httpx's own default) has no deadline, as with httpx.

    Where it differs from ``httpx.HTTPTransport``: no HTTP/2; an answer is read whole before
    it is returned (``iter_raw`` and friends still work), and refused over
    ``MAX_ANSWER_BYTES``; an error answer sent while a large body is still being written is
    lost to the write error (helpdesk requests are small JSON); an answer with more than 100
    headers is refused (``http.client``'s limit); a request has a total deadline (above).
    """

    def __init__(self, *, tls: ssl.SSLContext | None = None) -> None:
        self._tls = tls
        self._local = threading.local()
        self._lock = threading.Lock()
        self._held: weakref.WeakSet[_Connections] = weakref.WeakSet()  # one per living thread that sent

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        deadline = _deadline(timeouts)  # from the call: what the caller waits is what counts
        url = request.url
        if url.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"cannot send {url.scheme!r} URLs", request=request)
        # raw_host: the IDNA-encoded name (or an IPv6 address without brackets) that httpx connects to.
        origin = (url.scheme, url.raw_host.decode("ascii"), url.port or (443 if url.scheme == "https" else 80))
        body = request.read()
        headers = request.headers.raw  # as httpx.Request prepared them: Host and Content-Length included
        if "transfer-encoding" in request.headers:  # a streamed body, read whole above: send its length
            headers = [(k, v) for k, v in headers if k.lower() != b"transfer-encoding"]
            headers.append((b"Content-Length", str(len(body)).encode()))
        if any(_BAD_NAME.search(name) or _BAD_VALUE.search(value) for name, value in headers):
            # http.client lets a folded line ("\r\n ") and NUL through, which h11 (httpx's own
            # transport) refuses. Its value may be a credential: name the fault, never the value.
            raise httpx.LocalProtocolError("a header holds a line break, a NUL or a character no header name "
                                           "may hold; nothing was sent", request=request)
        write, read = timeouts.get("write"), timeouts.get("read")
        conn = self._connection(origin)
        step = "connect"
        try:
            sock = _socket_of(conn)
            if sock is None:
                conn.timeout = timeouts.get("connect")
                # http.client's hook for opening the socket (an attribute of every connection):
                # the lookup and each address within the deadline. The TLS handshake then waits
                # at most the socket timeout it leaves, in total (the ssl module's own deadline).
                conn._create_connection = functools.partial(_connect, deadline=deadline)
                conn.connect()
                sock = _socket_of(conn)
            step = "write"
            if sock is not None:
                sock.settimeout(_left(write, deadline))
            conn.putrequest(request.method, url.raw_path.decode("ascii"), skip_host=True, skip_accept_encoding=True)
            for name, value in headers:
                conn.putheader(name, value)
            conn.endheaders()  # the head, then the body: one sendall each, each bounded in total
            if body:
                if sock is not None:
                    sock.settimeout(_left(write, deadline))
                conn.send(body)
            step = "read"
            if sock is not None:
                sock.settimeout(_left(read, deadline))
            conn.response_class = (_FinalResponse if deadline is None else
                                   functools.partial(_FinalResponse, deadline=deadline, timeout=read))
            answer = conn.getresponse()
            content = _read_body(answer)
        except Exception as exc:  # noqa: BLE001 - any failure of the exchange is httpx's TransportError
            conn.close()
            if step == "write" and isinstance(exc, ValueError):  # http.client refused a header or the
                # request line, before sending anything. Its message quotes the value, which may be a
                # credential: name what was wrong, not it.
                raise httpx.LocalProtocolError("a header or the request line is not valid HTTP (a line break "
                                               "or a control character in it?)", request=request) from None
            raise _transport_error(exc, request, step, deadline) from exc
        except BaseException:  # interrupted mid-exchange: never reuse a connection in an unknown state
            conn.close()
            raise
        # An answer with "Connection: close" has closed the connection (http.client does): the
        # thread's next request opens a new one. Header bytes go back as they came (latin-1 is
        # http.client's own decoding); the body as a stream, decoded by httpx when read.
        return httpx.Response(
            answer.status, request=request, stream=httpx.ByteStream(content),
            headers=[(k.encode("latin-1"), v.encode("latin-1")) for k, v in answer.getheaders()],
            extensions={"http_version": b"HTTP/1.0" if answer.version == 10 else b"HTTP/1.1",
                        "reason_phrase": answer.reason.encode("latin-1")})

    def _connection(self, origin: Origin) -> http.client.HTTPConnection:
        """This thread's connection to ``origin``: connected and idle, or not connected yet."""
        held = getattr(self._local, "held", None)
        if held is None:
            held = self._local.held = _Connections()
            weakref.finalize(held, _close_all, held.by_origin)  # the thread ended: close its connections
            with self._lock:
                self._held.add(held)
        conn = held.by_origin.pop(origin, None)  # put back last: the dict's order is recency of use
        if conn is None:
            while len(held.by_origin) >= MAX_ORIGINS_PER_THREAD:
                held.by_origin.pop(next(iter(held.by_origin))).close()
            scheme, host, port = origin
            # Looked up at call time: vcrpy's cassettes patch these classes.
            if scheme == "https":
                conn = http.client.HTTPSConnection(host, port, context=self._tls_context())
            else:
                conn = http.client.HTTPConnection(host, port)
        held.by_origin[origin] = conn
        sock = _socket_of(conn)
        if sock is not None and _dropped(sock):
            conn.close()  # the server closed it while idle (keep-alive timeout): reconnect now
        return conn

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:  # loading the CA bundle takes milliseconds: once per transport
            self._tls = httpx.create_ssl_context()
        return self._tls

    def close(self) -> None:
        with self._lock:
            held = list(self._held)
        for connections in held:
            _close_all(connections.by_origin)

    def __repr__(self) -> str:
        return f"ThreadTransport(threads={len(self._held)})"


class _Connections:
    """One thread's connections; its finalizer closes them when the thread ends."""

    __slots__ = ("__weakref__", "by_origin")

    def __init__(self) -> None:
        self.by_origin: dict[Origin, http.client.HTTPConnection] = {}


def _close_all(by_origin: dict[Origin, Any]) -> None:
    for conn in list(by_origin.values()):
        conn.close()


def _socket_of(conn: http.client.HTTPConnection) -> socket.socket | None:
    """The connection's socket; None before it connects, and under a cassette (vcrpy's fake)."""
    return conn.sock if isinstance(conn.sock, socket.socket) else None


def _dropped(sock: socket.socket) -> bool:
    """An idle keep-alive socket that is readable has been closed (or answered out of turn).
    poll, not select: select fails on descriptors numbered 1024 or more."""
    try:
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            return bool(poller.poll(0))
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def _deadline(timeouts: dict[str, float | None]) -> float | None:
    """When the request must be over (``time.monotonic()``): the largest of its connect, write
    and read timeouts from now, so a caller's ``httpx.Timeout(t)`` gets ``t`` in total, not the
    three phases' sum. None when one of them is None (unbounded), as no deadline can be kept
    that the caller did not set."""
    phases = [timeouts.get(name) for name in ("connect", "write", "read")]
    if any(phase is None for phase in phases):
        return None
    return time.monotonic() + max(phases)  # type: ignore[type-var]


def _left(phase: float | None, deadline: float | None) -> float | None:
    """One socket operation's timeout: its phase's, cut to what is left of the deadline.
    TimeoutError once nothing is left: the caller maps it to the step's httpx timeout."""
    if deadline is None:
        return phase
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the request's deadline passed")
    return left if phase is None else min(phase, left)


def _connect(address: tuple[str, int], timeout: float | None, source_address: Any = None, *,
             deadline: float | None) -> socket.socket:
    """``socket.create_connection`` within the request's deadline. The standard one gives each
    of a name's addresses the whole connect timeout, so a name with several addresses (a
    helpdesk behind a CDN has a few) and a black-holed one among them would take a timeout per
    address; here each address gets its connect timeout cut to what is left, and the socket
    keeps the rest as its timeout for the TLS handshake that follows."""
    host, port = address
    error: OSError | None = None
    for family, kind, proto, _, where in _addresses(host, port, deadline):
        budget = _left(timeout, deadline)  # raises once the deadline passed: no address is tried
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(budget)
            if source_address:
                sock.bind(source_address)
            sock.connect(where)
            sock.settimeout(_left(timeout, deadline))
            return sock
        except OSError as exc:  # this address failed: the next, if time is left
            sock.close()
            error = exc
    raise error if error is not None else OSError(f"no address found for {host!r}")


def _addresses(host: str, port: int, deadline: float | None) -> list[Any]:
    """``getaddrinfo`` for ``host`` within the deadline. The system's resolver takes no timeout
    of ours (its own retries can last tens of seconds), so with a deadline a name is looked up
    on a daemon thread that is waited for until the deadline and then left to end when the
    resolver gives up. A thread per new connection, not per request: a connection is kept."""
    if deadline is None or _is_address(host):
        return socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    found: list[Any] = []

    def look_up() -> None:
        try:
            found.append(socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM))
        except Exception as exc:  # noqa: BLE001 - raised in the caller's thread, below
            found.append(exc)

    lookup = threading.Thread(target=look_up, name="opcore-resolve", daemon=True)
    lookup.start()
    lookup.join(_left(None, deadline))
    if not found:
        raise TimeoutError(f"looking up {host!r} outlasted the request's deadline")
    if isinstance(found[0], Exception):
        raise found[0]
    return found[0]


def _is_address(host: str) -> bool:
    """An IP address needs no lookup (getaddrinfo answers it at once)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class _TooLarge(http.client.HTTPException):
    """An answer body over ``MAX_ANSWER_BYTES``: reported as httpx's RemoteProtocolError."""


def _read_body(answer: http.client.HTTPResponse) -> bytes:
    """The answer's body, at most ``MAX_ANSWER_BYTES``. A declared length over it is refused
    before anything is read, and so is a chunk's (``_FinalResponse``); a chunked or
    read-until-close body is read in pieces and refused once it passes the limit. A declared
    length within it is read whole: http.client reports a body cut short of it
    (IncompleteRead) only when given no size to read."""
    if answer.length is not None:
        if answer.length > MAX_ANSWER_BYTES:
            raise _TooLarge(f"the answer's body is {answer.length} bytes, over the {MAX_ANSWER_BYTES} bytes read")
        return answer.read()
    parts: list[bytes] = []
    size = 0
    while part := answer.read(64 * 1024):  # b"" at the last chunk or the server's close
        size += len(part)
        if size > MAX_ANSWER_BYTES:
            raise _TooLarge(f"the answer's body is over the {MAX_ANSWER_BYTES} bytes read")
        parts.append(part)
    return b"".join(parts)


class _DeadlineReader(io.RawIOBase):
    """The answer's socket, read with each receive given its read timeout cut to what is left of
    the request's deadline. A socket timeout bounds one receive only: a server that sends a
    byte every so often, in the status line, the headers or the body, never meets it."""

    def __init__(self, raw: io.RawIOBase, sock: socket.socket, deadline: float, timeout: float | None) -> None:
        self._raw, self._sock, self._deadline, self._timeout = raw, sock, deadline, timeout

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        self._sock.settimeout(_left(self._timeout, self._deadline))
        return self._raw.readinto(buffer)

    def close(self) -> None:
        if not self.closed:
            self._raw.close()  # the socket's own reader: releases its hold on the socket
        super().close()


class _FinalResponse(http.client.HTTPResponse):
    """Skips every interim 1xx answer (103 Early Hints, 102 Processing), as httpx does, and
    reads within the request's deadline when it has one (``_DeadlineReader``).

    http.client skips only 100 Continue and would hand a 103 to the caller as the answer,
    leaving the real one on the wire for the thread's next request: another store's answer.
    A debt: this overrides ``_read_status``, http.client's private step that reads a status
    line, and ``_read_next_chunk_size``, the one that reads a chunk's size, to refuse a chunk
    over ``MAX_ANSWER_BYTES`` before waiting for it (both stable since Python 3.5;
    tests/test_http.py checks the behaviour).
    """

    def __init__(self, sock: socket.socket, debuglevel: int = 0, method: str | None = None, url: str | None = None,
                 *, deadline: float | None = None, timeout: float | None = None) -> None:
        super().__init__(sock, debuglevel, method, url)
        if deadline is not None:  # nothing is buffered yet: the socket's reader moves over whole
            self.fp = io.BufferedReader(_DeadlineReader(self.fp.detach(), sock, deadline, timeout))

    def _read_status(self) -> tuple[str, int, str]:
        while True:
            version, status, reason = super()._read_status()
            if not 100 <= status < 200 or status in (100, 101):  # 100: http.client's own loop skips it
                return version, status, reason
            http.client.parse_headers(self.fp)  # the interim answer's headers: read and dropped

    def _read_next_chunk_size(self) -> int:
        size: int = super()._read_next_chunk_size()
        if size > MAX_ANSWER_BYTES:
            raise _TooLarge(f"the answer has a chunk of {size} bytes, over the {MAX_ANSWER_BYTES} bytes read")
        return size


def _transport_error(exc: BaseException, request: httpx.Request, step: str,
                     deadline: float | None = None) -> httpx.TransportError:
    """httpx's error for what failed at ``step`` (connect, write or read), so callers see the
    failures httpx's own transport reports: a connect error was never sent. A timeout at or
    past the request's deadline says so: its total ran out, not one operation's timeout."""
    detail = str(exc) or type(exc).__name__
    timed_out = isinstance(exc, TimeoutError)
    if timed_out and deadline is not None and time.monotonic() >= deadline:
        detail = "the request's deadline passed"
    if step == "connect":
        return (httpx.ConnectTimeout if timed_out else httpx.ConnectError)(detail, request=request)
    if step == "write":
        return (httpx.WriteTimeout if timed_out else httpx.WriteError)(detail, request=request)
    if timed_out:
        return httpx.ReadTimeout(detail, request=request)
    if isinstance(exc, OSError) and not isinstance(exc, http.client.HTTPException):
        return httpx.ReadError(detail, request=request)
    # A bad status line or headers, a close without an answer (RemoteDisconnected is both), a
    # chunk size too large to hold.
    return httpx.RemoteProtocolError(detail, request=request)
