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
  spends on the same exchange (bench/worker_cpu.py and ``docs/BENCHMARKS.md``).

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
        origin = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        timeout = request.extensions.get("timeout", {}).get("read")
        body = request.read()
        headers = request.headers.raw  # as httpx.Request prepared them: Host and Content-Length included
        if "transfer-encoding" in request.headers:  # a streamed body, read whole above: send its length
            headers = [(k, v) for k, v in headers if k.lower() != b"transfer-encoding"]
            headers.append((b"Content-Length", str(len(body)).encode()))
        conn, fresh = self._connection(origin, timeout)
        sent = False
        try:
            conn.putrequest(request.method, url.raw_path.decode("ascii"), skip_host=True, skip_accept_encoding=True)
            for name, value in headers:
                conn.putheader(name, value)
            conn.endheaders(body or None)
            sent = True
            answer = conn.getresponse()
            content = answer.read()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise _transport_error(exc, request, connecting=fresh and not sent, sent=sent) from exc
        except ValueError:  # http.client refused a header or the request line; nothing was sent
            conn.close()
            # Its message quotes the value, which may be a credential: name what was wrong, not it.
            raise httpx.LocalProtocolError("a header or the request line is not valid HTTP (a line break "
                                           "or a control character in it?)", request=request) from None
        # An answer with "Connection: close" has closed the connection (http.client does): the
        # thread's next request opens a new one.
        return httpx.Response(answer.status, headers=answer.getheaders(), content=content, request=request,
                              extensions={"http_version": b"HTTP/1.1", "reason_phrase": answer.reason.encode("latin-1")})

    def _connection(self, origin: Origin, timeout: float | None) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's connection to ``origin``, and whether it has yet to connect."""
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
                conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=self._tls_context())
            else:
                conn = http.client.HTTPConnection(host, port, timeout=timeout)
        held.by_origin[origin] = conn
        sock = conn.sock if isinstance(conn.sock, socket.socket) else None
        if sock is not None and _dropped(sock):
            conn.close()  # the server closed it while idle (keep-alive timeout): reconnect now
            sock = None
        conn.timeout = timeout
        if sock is not None:
            sock.settimeout(timeout)
        return conn, sock is None

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


def _dropped(sock: socket.socket) -> bool:
    """An idle keep-alive socket that is readable has been closed (or answered out of turn)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def _transport_error(exc: BaseException, request: httpx.Request, *, connecting: bool,
                     sent: bool) -> httpx.TransportError:
    """httpx's error for what went wrong, so callers see the same failures as with httpx's own transport."""
    detail = str(exc) or type(exc).__name__
    if connecting and isinstance(exc, TimeoutError):
        return httpx.ConnectTimeout(detail, request=request)
    if connecting and isinstance(exc, (ConnectionRefusedError, socket.gaierror, ssl.SSLError)):
        return httpx.ConnectError(detail, request=request)
    if isinstance(exc, TimeoutError):
        return (httpx.ReadTimeout if sent else httpx.WriteTimeout)(detail, request=request)
    if isinstance(exc, http.client.HTTPException):  # a bad status line, headers, or a close without an answer
        return httpx.RemoteProtocolError(detail, request=request)
    return (httpx.ReadError if sent else httpx.WriteError)(detail, request=request)
