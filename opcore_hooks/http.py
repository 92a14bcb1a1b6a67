"""Outbound HTTP for helpdesk plugins: httpx's requests and answers over the standard library's
``http.client``, one keep-alive connection per thread and origin.

A plugin builds ``httpx.Request`` objects and reads ``httpx.Response`` objects, so its tests put
``httpx.MockTransport`` in the transport's place and cassettes record it. What sends them is the
question here. A worker sends one request per ticket from each of its eight threads, and the
cost of that send is the largest single part of its CPU per ticket:

- behind one shared ``httpx.HTTPTransport``, the threads meet in httpcore's connection pool,
  which walks all its connections under a lock on every request and every answer, polling
  each idle socket;
- httpcore and h11 spend about 300 µs of Python per request beyond what ``http.client``
  spends on the same exchange (bench/transport.py; figures in ``docs/BENCHMARKS.md``).

So each thread keeps its own connection per origin, as ``opcore_hooks.store.PinnedRedis`` does
for Redis, and speaks HTTP/1.1 through ``http.client``. Requests through a proxy (HTTP(S)_PROXY,
ALL_PROXY) go through ``httpx.HTTPTransport``, whose proxy support this does not repeat.
"""

from __future__ import annotations

import http.client
import select
import socket
import ssl
import threading
import urllib.parse
import urllib.request
import weakref
from typing import Any

import httpx

Origin = tuple[str, str, int]

#: Connections a thread keeps open, one per origin; the least recently used closes first. Zendesk
#: has an origin per subdomain: without a bound, a worker thread would hold one per account.
MAX_ORIGINS_PER_THREAD = 8


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
    environment's proxy through httpx."""
    proxy = proxy_for(url)
    return ThreadTransport() if proxy is None else httpx.HTTPTransport(proxy=proxy)


class ThreadTransport(httpx.BaseTransport):
    """An httpx transport whose every thread keeps one HTTP/1.1 connection per origin (at most
    ``MAX_ORIGINS_PER_THREAD``).

    A connection found closed by the server while it was idle is replaced before the request
    is sent. A request whose connection fails after it was sent is not sent again: the
    helpdesk may have acted on it, and only the caller knows whether repeating it is safe.
    Each thread's connections close when the thread ends, and all of them on ``close()``.

    Where it differs from ``httpx.HTTPTransport``: no HTTP/2; an answer is read whole before
    it is returned (``iter_raw`` and friends still work); an error answer sent while a large
    body is still being written is lost to the write error (helpdesk requests are small JSON);
    an answer with more than 100 headers is refused (``http.client``'s limit).
    """

    def __init__(self, *, tls: ssl.SSLContext | None = None) -> None:
        self._tls = tls
        self._local = threading.local()
        self._lock = threading.Lock()
        self._held: weakref.WeakSet[_Connections] = weakref.WeakSet()  # one per living thread that sent

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"cannot send {url.scheme!r} URLs", request=request)
        # raw_host: the IDNA-encoded name (or an IPv6 address without brackets) that httpx connects to.
        origin = (url.scheme, url.raw_host.decode("ascii"), url.port or (443 if url.scheme == "https" else 80))
        timeouts = request.extensions.get("timeout", {})
        body = request.read()
        headers = request.headers.raw  # as httpx.Request prepared them: Host and Content-Length included
        if "transfer-encoding" in request.headers:  # a streamed body, read whole above: send its length
            headers = [(k, v) for k, v in headers if k.lower() != b"transfer-encoding"]
            headers.append((b"Content-Length", str(len(body)).encode()))
        conn = self._connection(origin)
        step = "connect"
        try:
            sock = _socket_of(conn)
            if sock is None:
                conn.timeout = timeouts.get("connect")
                conn.connect()
                sock = _socket_of(conn)
            step = "write"
            if sock is not None:
                sock.settimeout(timeouts.get("write"))
            conn.putrequest(request.method, url.raw_path.decode("ascii"), skip_host=True, skip_accept_encoding=True)
            for name, value in headers:
                conn.putheader(name, value)
            conn.endheaders(body or None)
            step = "read"
            if sock is not None:
                sock.settimeout(timeouts.get("read"))
            answer = conn.getresponse()
            content = answer.read()
        except Exception as exc:  # noqa: BLE001 - any failure of the exchange is httpx's TransportError
            conn.close()
            if step == "write" and isinstance(exc, ValueError):  # http.client refused a header or the
                # request line, before sending anything. Its message quotes the value, which may be a
                # credential: name what was wrong, not it.
                raise httpx.LocalProtocolError("a header or the request line is not valid HTTP (a line break "
                                               "or a control character in it?)", request=request) from None
            raise _transport_error(exc, request, step) from exc
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
            conn.response_class = _FinalResponse
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


class _FinalResponse(http.client.HTTPResponse):
    """Skips every interim 1xx answer (103 Early Hints, 102 Processing), as httpx does.

    http.client skips only 100 Continue and would hand a 103 to the caller as the answer,
    leaving the real one on the wire for the thread's next request: another store's answer.
    A debt: this overrides ``_read_status``, http.client's private step that reads a status
    line (stable since Python 3.5; tests/test_http.py checks the behaviour).
    """

    def _read_status(self) -> tuple[str, int, str]:
        while True:
            version, status, reason = super()._read_status()
            if not 100 <= status < 200 or status in (100, 101):  # 100: http.client's own loop skips it
                return version, status, reason
            http.client.parse_headers(self.fp)  # the interim answer's headers: read and dropped


def _transport_error(exc: BaseException, request: httpx.Request, step: str) -> httpx.TransportError:
    """httpx's error for what failed at ``step`` (connect, write or read), so callers see the
    failures httpx's own transport reports: a connect error was never sent."""
    detail = str(exc) or type(exc).__name__
    timed_out = isinstance(exc, TimeoutError)
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
