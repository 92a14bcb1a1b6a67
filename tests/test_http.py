"""The host's outbound transport against a real socket: what a helpdesk plugin relies on when
it sends a ticket. A small scripted HTTP/1.1 server counts connections and requests, so each
test sees what went over the wire, not what the transport believes it sent."""

from __future__ import annotations

import contextlib
import datetime
import gc
import ipaddress
import json
import os
import socket
import ssl
import struct
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from opcore_hooks import ThreadTransport, transport_for
from opcore_hooks import http as transport_module
from opcore_hooks.http import MAX_ORIGINS_PER_THREAD

TIMEOUT = {"connect": 5.0, "read": 5.0, "write": 5.0, "pool": 5.0}
#: What a plugin sends as httpx.Timeout(1.0): one second for each phase and for the whole request.
ONE_SECOND = {"connect": 1.0, "read": 1.0, "write": 1.0, "pool": 1.0}


@dataclass
class Seen:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    connection: int


@dataclass
class Server:
    """Answers each request with ``reply(seen)``: raw bytes to write, pieces to write one after
    the other (a generator may pause between them; a None piece hangs up), or None to close
    unanswered."""

    reply: Callable[[Seen], bytes | Iterable[bytes | None] | None]
    tls: ssl.SSLContext | None = None
    sock: socket.socket = field(default_factory=lambda: socket.create_server(("127.0.0.1", 0)))
    requests: list[Seen] = field(default_factory=list)
    connections: int = 0
    open_connections: set[socket.socket] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://localhost:{self.sock.getsockname()[1]}"

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            self.open_connections.add(conn)
            threading.Thread(target=self._handle, args=(conn, self.connections), daemon=True).start()

    def _handle(self, conn: socket.socket, number: int) -> None:
        try:
            if self.tls is not None:
                self.open_connections.discard(conn)
                conn = self.tls.wrap_socket(conn, server_side=True)
                self.open_connections.add(conn)
            reader = conn.makefile("rb")
            while True:
                line = reader.readline()
                if not line:
                    return
                method, target, _ = line.decode().split(" ", 2)
                headers = []
                while (header := reader.readline()) not in (b"\r\n", b""):
                    name, value = header.decode().split(":", 1)
                    headers.append((name, value.strip()))
                length = int(next((v for k, v in headers if k.lower() == "content-length"), "0"))
                seen = Seen(method, target, headers, reader.read(length), number)
                self.requests.append(seen)
                answer = self.reply(seen)
                if answer is None:
                    return
                for piece in [answer] if isinstance(answer, bytes) else answer:
                    if piece is None:
                        return
                    conn.sendall(piece)
        except OSError:
            return
        finally:
            self.open_connections.discard(conn)
            conn.close()

    def close_idle(self) -> None:
        """What a server's keep-alive timeout does: close every connection it holds."""
        for conn in list(self.open_connections):
            conn.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + 5
        while self.open_connections and time.monotonic() < deadline:
            time.sleep(0.01)


def ok(body: dict | None = None, extra: str = "") -> bytes:
    content = json.dumps(body if body is not None else {"ok": True}).encode()
    return (f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(content)}\r\n{extra}\r\n"
            .encode() + content)


@contextmanager
def server(reply: Callable[[Seen], bytes | Iterable[bytes | None] | None] = lambda seen: ok(),
           tls: ssl.SSLContext | None = None) -> Iterator[Server]:
    running = Server(reply, tls)
    thread = threading.Thread(target=running.serve, daemon=True)
    thread.start()
    try:
        yield running
    finally:
        running.sock.close()
        for conn in list(running.open_connections):
            conn.close()


def post(transport: httpx.BaseTransport, url: str, payload: dict | None = None, **extensions) -> httpx.Response:
    request = httpx.Request("POST", f"{url}/v1/tickets?x=1", json=payload or {"ticket": {"subject": "hi"}},
                            headers={"x-key": "k"}, extensions={"timeout": TIMEOUT, **extensions})
    response = transport.handle_request(request)
    response.read()
    return response


def test_a_thread_reuses_one_connection_and_sends_what_httpx_prepared():
    with server() as srv:
        transport = ThreadTransport()
        answers = [post(transport, srv.url, {"n": i}) for i in range(5)]
        assert [a.json() for a in answers] == [{"ok": True}] * 5
        assert srv.connections == 1
        first = srv.requests[0]
        assert (first.method, first.target) == ("POST", "/v1/tickets?x=1")
        assert json.loads(first.body) == {"n": 0}
        names = [name.lower() for name, _ in first.headers]
        # Exactly httpx.Request's headers: nothing added (no Accept-Encoding), nothing twice.
        assert sorted(names) == sorted(name.decode().lower() for name, _ in httpx.Request(
            "POST", f"{srv.url}/v1/tickets?x=1", json={"n": 0}, headers={"x-key": "k"}).headers.raw)
        assert len(names) == len(set(names))
        transport.close()


def test_each_thread_keeps_its_own_connection():
    with server() as srv:
        transport = ThreadTransport()
        done = []

        def send() -> None:
            for _ in range(3):
                done.append(post(transport, srv.url).status_code)

        threads = [threading.Thread(target=send) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert done == [200] * 12
        assert srv.connections == 4
        assert sorted({(r.connection) for r in srv.requests}) == [1, 2, 3, 4]
        transport.close()


def test_a_connection_the_server_closed_while_idle_is_replaced_before_sending():
    with server() as srv:
        transport = ThreadTransport()
        post(transport, srv.url)
        srv.close_idle()
        assert post(transport, srv.url).status_code == 200  # no error reaches the caller
        assert srv.connections == 2
        assert len(srv.requests) == 2  # and the request went once
        transport.close()


def test_a_request_whose_answer_is_lost_is_an_error_and_is_not_sent_again():
    with server(lambda seen: None) as srv:  # reads the request, then hangs up
        transport = ThreadTransport()
        with pytest.raises(httpx.RemoteProtocolError) as caught:
            post(transport, srv.url)
        assert isinstance(caught.value, httpx.TransportError)
        assert len(srv.requests) == 1  # the helpdesk may have acted: only the caller may repeat it


def test_no_listener_is_a_connect_error():
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(httpx.ConnectError):
        post(ThreadTransport(), f"http://127.0.0.1:{port}")


def test_a_slow_answer_is_a_read_timeout():
    def slow(seen: Seen) -> bytes:
        time.sleep(1.0)
        return ok()

    with server(slow) as srv:
        request = httpx.Request("GET", f"{srv.url}/v1/teams",
                                extensions={"timeout": {**TIMEOUT, "read": 0.2}})
        with pytest.raises(httpx.ReadTimeout):
            ThreadTransport().handle_request(request)


def trickled(start: bytes, dribble: bytes, rest: bytes = b"", every: float = 0.3) -> Iterator[bytes]:
    """``start``, then ``dribble`` a byte every ``every`` seconds, then ``rest``: each byte in
    time for any read timeout over ``every``, the whole far later than a second."""
    yield start
    for byte in dribble:
        time.sleep(every)
        yield bytes([byte])
    yield rest


TRICKLED = {  # 40 bytes, 12 s: a per-read timeout never fires; only a total deadline does
    "status line": lambda: trickled(b"HTTP/1.1 200 ", b"O" * 40, b"\r\ncontent-length: 2\r\n\r\n{}"),
    "headers": lambda: trickled(b"HTTP/1.1 200 OK\r\n", b"x-wait: 1234567\r\n" * 2 + b"x-wai",
                                b"t: 1\r\ncontent-length: 2\r\n\r\n{}"),
    "body": lambda: trickled(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 42\r\n\r\n",
                             b'{"x": "' + b"a" * 33, b'"}'),
}


@pytest.mark.parametrize("part", TRICKLED)
def test_an_answer_trickled_a_byte_at_a_time_is_cut_at_the_requests_deadline(part):
    # A security review saw a request live 12 s against a 2 s read timeout: each byte came in
    # time for the read timeout, which bounds one read, never the answer.
    with server(lambda seen: TRICKLED[part]()) as srv:
        transport = ThreadTransport()
        with pytest.raises(httpx.ReadTimeout) as caught:
            post(transport, srv.url, timeout=ONE_SECOND)
        assert "deadline" in str(caught.value)  # the total, not one read's timeout
        assert isinstance(caught.value, httpx.TimeoutException)  # transient, outcome unknown: classify()
        assert len(srv.requests) == 1
        transport.close()


def test_the_connection_of_a_request_cut_at_its_deadline_is_not_reused():
    answers = iter([TRICKLED["body"](), [ok()]])
    with server(lambda seen: next(answers)) as srv:
        transport = ThreadTransport()
        with pytest.raises(httpx.ReadTimeout):
            post(transport, srv.url, timeout=ONE_SECOND)
        assert post(transport, srv.url).json() == {"ok": True}  # not the rest of the cut answer
        assert srv.connections == 2
        transport.close()


def black_hole() -> tuple[socket.socket, list[socket.socket]]:
    """A listening socket whose accept queue is full: the kernel drops each new SYN, so a
    connect to it waits as one to a black-holed address does."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(0)
    fillers = []
    for _ in range(3):  # Linux queues one connection on a backlog of 0; the others wait in SYN-SENT
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(sock.getsockname())
        fillers.append(filler)
    time.sleep(0.1)  # the first filler's handshake, over loopback
    return sock, fillers


def test_a_connect_that_is_never_answered_is_a_connect_timeout():
    sock, fillers = black_hole()
    try:
        with pytest.raises(httpx.ConnectTimeout):
            post(ThreadTransport(), f"http://127.0.0.1:{sock.getsockname()[1]}", timeout=ONE_SECOND)
    finally:
        for s in [sock, *fillers]:
            s.close()


def test_a_names_addresses_share_the_deadline_rather_than_each_taking_a_connect_timeout(monkeypatch):
    # socket.create_connection gives each address the whole connect timeout: a name with a
    # black-holed address before a good one would take a timeout per address.
    sock, fillers = black_hole()
    real = socket.getaddrinfo
    try:
        with server() as srv:
            good = int(srv.url.rsplit(":", 1)[1])

            def two_addresses(host, port, *args, **kwargs):
                if host != "helpdesk.test":
                    return real(host, port, *args, **kwargs)
                return [*real("127.0.0.1", sock.getsockname()[1], socket.AF_INET, socket.SOCK_STREAM),
                        *real("127.0.0.1", good, socket.AF_INET, socket.SOCK_STREAM)]

            monkeypatch.setattr(socket, "getaddrinfo", two_addresses)
            with pytest.raises(httpx.ConnectTimeout):
                post(ThreadTransport(), "http://helpdesk.test", timeout=ONE_SECOND)
            assert srv.connections == 0  # the deadline passed on the first address: no second try
            # With time left after the first address, the next one is tried, as before.
            assert post(ThreadTransport(), "http://helpdesk.test",
                        timeout={**ONE_SECOND, "connect": 0.3}).json() == {"ok": True}
    finally:
        for s in [sock, *fillers]:
            s.close()


def test_a_name_whose_lookup_hangs_is_a_connect_timeout(monkeypatch):
    released = threading.Event()
    real = socket.getaddrinfo

    def hanging(host, *args, **kwargs):
        if host == "helpdesk.test":
            released.wait(30)  # a resolver that does not answer: the system's has no timeout of ours
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", hanging)
    try:
        with pytest.raises(httpx.ConnectTimeout):
            post(ThreadTransport(), "http://helpdesk.test", timeout=ONE_SECOND)
    finally:
        released.set()


@pytest.mark.parametrize("scheme, error", [("http", httpx.ReadTimeout), ("https", httpx.ConnectTimeout)])
def test_a_listener_that_never_accepts_is_a_timeout(scheme, error):
    # The kernel completes the TCP handshake into the accept queue: a plain request is written
    # and waits for an answer (it may have been received: ReadTimeout); a TLS handshake waits.
    sock = socket.create_server(("127.0.0.1", 0))
    try:
        with pytest.raises(error):
            post(ThreadTransport(), f"{scheme}://127.0.0.1:{sock.getsockname()[1]}", timeout=ONE_SECOND)
    finally:
        sock.close()


OVERSIZED = {
    "declared length": b"HTTP/1.1 200 OK\r\ncontent-length: 5000\r\n\r\n" + b"a" * 5000,
    "chunks": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + (b"258\r\n" + b"a" * 600 + b"\r\n") * 2
              + b"0\r\n\r\n",  # 2 x 600 bytes
    "one chunk": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n7d0\r\n",  # 2000 bytes, never sent
    "until close": [b"HTTP/1.0 200 OK\r\n\r\n" + b"a" * 5000, None],
}


@pytest.mark.parametrize("shape", OVERSIZED)
def test_an_answer_body_over_the_limit_is_refused_as_a_transport_error(monkeypatch, shape):
    monkeypatch.setattr(transport_module, "MAX_ANSWER_BYTES", 1000)
    answers = iter([OVERSIZED[shape], ok()])
    with server(lambda seen: next(answers)) as srv:
        transport = ThreadTransport()
        with pytest.raises(httpx.RemoteProtocolError, match="1000"):
            post(transport, srv.url)
        assert post(transport, srv.url).json() == {"ok": True}  # on a new connection
        assert srv.connections == 2
        transport.close()


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n" + b"a" * 1000,
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1f4\r\n" + b"a" * 500 + b"\r\n1f4\r\n" + b"a" * 500
    + b"\r\n0\r\n\r\n",
    [b"HTTP/1.0 200 OK\r\n\r\n" + b"a" * 1000, None],
], ids=["declared length", "chunks", "until close"])
def test_an_answer_body_at_the_limit_arrives_whole(monkeypatch, answer):
    monkeypatch.setattr(transport_module, "MAX_ANSWER_BYTES", 1000)
    with server(lambda seen: answer) as srv:
        assert post(ThreadTransport(), srv.url).content == b"a" * 1000


def test_a_body_cut_short_of_its_declared_length_is_still_an_error():
    with server(lambda seen: [b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc", None]) as srv:
        with pytest.raises(httpx.RemoteProtocolError):
            post(ThreadTransport(), srv.url)


def test_connection_close_chunked_answers_and_repeated_headers_arrive_whole():
    chunked = (b"HTTP/1.1 429 Too Many Requests\r\ntransfer-encoding: chunked\r\nretry-after: 7\r\n"
               b"x-note: a\r\nx-note: b\r\nconnection: close\r\n\r\n"
               b"5\r\n{\"a\":\r\n3\r\n 1}\r\n0\r\n\r\n")
    with server(lambda seen: chunked) as srv:
        transport = ThreadTransport()
        first = post(transport, srv.url)
        assert (first.status_code, first.json(), first.headers["retry-after"]) == (429, {"a": 1}, "7")
        assert first.headers.get_list("x-note") == ["a", "b"]
        assert first.reason_phrase == "Too Many Requests"
        post(transport, srv.url)
        assert srv.connections == 2  # the server said close: the next request opened a new one
        transport.close()


def test_a_thread_that_ends_closes_its_connection_and_close_closes_the_rest():
    with server() as srv:
        transport = ThreadTransport()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            worker = threading.Thread(target=post, args=(transport, srv.url))
            worker.start()
            worker.join()
            post(transport, srv.url)
            del worker
            gc.collect()
        assert srv.connections == 2
        assert not [w for w in caught if issubclass(w.category, ResourceWarning)]  # closed, not left to the GC
        deadline = time.monotonic() + 5
        while len(srv.open_connections) > 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(srv.open_connections) == 1  # the ended thread's connection is closed
        transport.close()
        while srv.open_connections and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not srv.open_connections


def test_an_unknown_scheme_is_refused_before_anything_is_sent():
    with pytest.raises(httpx.UnsupportedProtocol):
        ThreadTransport().handle_request(httpx.Request("GET", "ftp://example.invalid/x"))


def test_a_proxy_from_the_environment_goes_through_httpx(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setenv("NO_PROXY", "internal.example")
    assert isinstance(transport_for("https://api.richpanel.com"), httpx.HTTPTransport)
    assert isinstance(transport_for("https://internal.example"), ThreadTransport)
    monkeypatch.delenv("HTTPS_PROXY")
    assert isinstance(transport_for("https://api.richpanel.com"), ThreadTransport)


def self_signed(tmp_path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(the server's context, a client context that trusts only that certificate) for localhost."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert_file, key_file)
    trusting = ssl.create_default_context(cafile=str(cert_file))
    return served, trusting


def test_https_verifies_the_server_certificate(tmp_path):
    served, trusting = self_signed(tmp_path)
    with server(tls=served) as srv:
        assert srv.url.startswith("https://localhost:")
        with pytest.raises(httpx.ConnectError, match="certificate"):
            post(ThreadTransport(), srv.url)  # the system's CAs do not know this certificate
        transport = ThreadTransport(tls=trusting)
        assert [post(transport, srv.url).json() for _ in range(3)] == [{"ok": True}] * 3
        assert srv.connections == 2  # the refused handshake, then one kept connection
        transport.close()


def test_a_thread_keeps_at_most_a_few_origins_open_closing_the_least_recently_used():
    with ExitStack() as stack:
        servers = [stack.enter_context(server()) for _ in range(MAX_ORIGINS_PER_THREAD + 2)]
        transport = ThreadTransport()
        post(transport, servers[0].url)
        for srv in servers[2:]:
            post(transport, srv.url)
            post(transport, servers[0].url)  # kept in use: never the least recent
        deadline = time.monotonic() + 5
        while sum(len(s.open_connections) for s in servers) > MAX_ORIGINS_PER_THREAD and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sum(len(s.open_connections) for s in servers) == MAX_ORIGINS_PER_THREAD
        assert servers[0].connections == 1 and servers[0].open_connections  # the busy origin kept its one
        assert not servers[2].open_connections and all(s.open_connections for s in servers[3:])  # the oldest went
        post(transport, servers[2].url)  # and a closed origin simply connects again
        assert servers[2].connections == 2
        transport.close()


def test_a_header_that_would_split_the_request_is_refused_without_echoing_it():
    with server() as srv:
        request = httpx.Request("GET", f"{srv.url}/v1/teams", headers={"x-key": "rp_secret_value\r\nX-Evil: 1"},
                                extensions={"timeout": TIMEOUT})
        with pytest.raises(httpx.LocalProtocolError) as caught:
            ThreadTransport().handle_request(request)
        assert "rp_secret_value" not in str(caught.value) and caught.value.__cause__ is None
        assert srv.requests == []  # nothing reached the server


@pytest.mark.parametrize("headers", [{"x-key": "rp_secret_value\r\n folded"}, {"x-key": "rp_secret_value\x00"},
                                     {"x-key": "rp_secret_value\n"}, {"x key": "rp_secret_value"}])
def test_folded_lines_nul_and_bad_names_are_refused_as_httpx_would(headers):
    with server() as srv:
        request = httpx.Request("GET", f"{srv.url}/v1/teams", headers=headers, extensions={"timeout": TIMEOUT})
        with pytest.raises(httpx.LocalProtocolError) as caught:
            ThreadTransport().handle_request(request)
        assert "rp_secret_value" not in str(caught.value)
        assert srv.requests == [] and srv.connections == 0  # refused before connecting


def test_interim_answers_are_skipped_and_never_reach_the_next_request():
    def early_hints(seen: Seen) -> bytes:
        key = dict((k.lower(), v) for k, v in seen.headers)["x-key"]
        return b"HTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n" + ok({"for": key})

    with server(early_hints) as srv:
        transport = ThreadTransport()
        answers = []
        for key in ("store-a", "store-b", "store-c"):
            request = httpx.Request("GET", f"{srv.url}/v1/teams", headers={"x-key": key},
                                    extensions={"timeout": TIMEOUT})
            answer = transport.handle_request(request)
            answer.read()
            answers.append((answer.status_code, answer.json()))
        # Each request gets its own final answer: never a 103, never another store's answer.
        assert answers == [(200, {"for": "store-a"}), (200, {"for": "store-b"}), (200, {"for": "store-c"})]
        transport.close()


def test_header_bytes_outside_ascii_arrive_as_sent():
    with server(lambda seen: ok(extra="x-reason: café\r\n")) as srv:  # sent as UTF-8 bytes
        answer = post(ThreadTransport(), srv.url)
        assert answer.headers.raw[-1] == (b"x-reason", "café".encode())  # the server's bytes, untouched
        assert answer.json() == {"ok": True}


def test_keep_alive_holds_when_the_process_has_many_files_open():
    spare = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]  # sockets numbered past select's 1024
    try:
        with server() as srv:
            transport = ThreadTransport()
            for _ in range(3):
                post(transport, srv.url)
            assert srv.connections == 1
            transport.close()
    finally:
        for fd in spare:
            os.close(fd)


def test_a_connection_reset_during_the_tls_handshake_is_a_connect_error():
    sock = socket.create_server(("127.0.0.1", 0))

    def reset() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = sock.accept()
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()

    threading.Thread(target=reset, daemon=True).start()
    try:
        with pytest.raises(httpx.ConnectError):  # known never to have been sent
            post(ThreadTransport(), f"https://127.0.0.1:{sock.getsockname()[1]}")
    finally:
        sock.close()


def test_a_malformed_answer_is_a_protocol_error_and_the_connection_is_not_reused():
    answers = iter([b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n7fffffffffffffff\r\n", ok()])
    with server(lambda seen: next(answers)) as srv:
        transport = ThreadTransport()
        with pytest.raises(httpx.RemoteProtocolError):
            post(transport, srv.url)
        assert post(transport, srv.url).json() == {"ok": True}
        assert srv.connections == 2
        transport.close()


def test_a_client_streams_the_answer_as_httpx_would():
    chunked = (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: text/plain\r\n\r\n"
               b"3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n")
    with server(lambda seen: chunked) as srv, httpx.Client(transport=ThreadTransport(), timeout=5) as client:
        with client.stream("GET", f"{srv.url}/v1/teams") as answer:
            assert b"".join(answer.iter_raw()) == b"abcdef"
            assert "content-length" not in answer.headers  # nothing added to what the server sent
