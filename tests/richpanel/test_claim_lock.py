"""The claim's lock outlives every request made under it, even one the helpdesk trickles.

The lock keeps a second worker from creating the same ticket while the first one's request may
still act. It is sized from the request timeout, which holds only if a request's *total* time is
bounded by it: a helpdesk that sends one byte at a time must not hold a request (and a worker)
past the lock's life.
"""

from __future__ import annotations

import socket
import threading
import time

from opcore_hooks.testing import claim_created, wait_for
from plugins.richpanel import session

from .test_delivery import STORE, delivering, post


class Trickle:
    """Answers the first request with headers, then one body byte every 0.2 s (of 10,000); every
    later request gets a 503 at once. Records when the first request arrived and when its client
    gave up."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.started: float | None = None
        self.ended: float | None = None
        self.stopping = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            if self.started is not None:
                conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            self.started = time.monotonic()
            try:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 10000\r\n\r\n")
                for _ in range(10_000):
                    if self.stopping.wait(0.2):
                        break
                    conn.sendall(b" ")
            except OSError:  # the client closed: its request is over
                pass
            self.ended = time.monotonic()

    def close(self) -> None:
        self.stopping.set()
        self.sock.close()


def test_a_trickled_answer_ends_the_request_before_the_lock_expires(make_host, run_worker, sandbox, monkeypatch):
    host, worker, sandbox = delivering(make_host, run_worker, sandbox, monkeypatch)  # 2 s request timeout
    trickle = Trickle()
    try:
        session.settings_of(host).api_url = trickle.url  # the store is set up; now Richpanel trickles
        claim_id = "claim-trickled"
        lock = host.key("richpanel", "lock", STORE, claim_id)
        lives: list[tuple[float, int]] = []

        def watch() -> None:  # the lock's remaining life, sampled while the request runs
            while trickle.ended is None and not trickle.stopping.is_set():
                if trickle.started is not None:
                    lives.append((time.monotonic(), host.redis.pttl(lock)))
                time.sleep(0.05)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        post(host, claim_created(claim_id=claim_id))
        lock_life = host.delivery("richpanel").ledger.lock_ms / 1000
        wait_for(lambda: trickle.ended is not None, timeout=lock_life + 10)
        watcher.join(5)
        assert trickle.ended - trickle.started < lock_life  # the client gave up, within the lock's life
        # the lock was held all the while (the server notices the client gone up to 0.2 s late,
        # by when the engine has rightly released it)
        during = [life for at, life in lives if at < trickle.ended - 0.3]
        assert during and min(during) > 0
    finally:
        trickle.close()
