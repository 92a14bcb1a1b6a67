"""The one Redis connection factory: real Redis in production, fakeredis when embedded.

Both give a ``redis.Redis``-compatible client, so the broker, the dedup keys, the settings
and the read model run the same code either way; only this module knows the difference.
"""

from __future__ import annotations

import logging
import threading
import weakref

import fakeredis
import redis

log = logging.getLogger("opcore.store")

_embedded_server: fakeredis.FakeServer | None = None
_embedded_lock = threading.Lock()

EMBEDDED_WARNING = (
    "OPCORE_REDIS_URL is not set: using the embedded in-process store. Nothing survives this "
    "process (queued events, settings, ticket ids); set OPCORE_REDIS_URL for production."
)


def embedded_server() -> fakeredis.FakeServer:
    """The process's embedded server: every client of one process must see the same data."""
    global _embedded_server
    with _embedded_lock:
        if _embedded_server is None:
            log.warning(EMBEDDED_WARNING)
            _embedded_server = fakeredis.FakeServer()
        return _embedded_server


class _Pinned:
    """One thread's connection; handed back to the pool when the thread's locals are dropped."""

    __slots__ = ("conn", "__weakref__")

    def __init__(self, conn: redis.connection.AbstractConnection) -> None:
        self.conn = conn


class PinnedRedis(redis.Redis):
    """A client whose every thread keeps one connection of the shared pool.

    redis-py takes a connection from its pool and gives it back around every command; both
    steps lock the pool, and with eight worker threads that lock was the largest single cost
    of a Redis call (bench/worker_cpu.py). redis-py's own ``single_connection_client`` skips
    the pool but serialises every thread on one connection; this keeps one per thread.
    Pipelines, transactions and pub/sub still take their connections from the pool.
    """

    def __init__(self, *args, **kwargs) -> None:
        self._pins = threading.local()
        super().__init__(*args, **kwargs)

    @property
    def connection(self):  # read by redis.Redis.execute_command
        pin = getattr(self._pins, "pin", None)
        if pin is None:
            pool = self.connection_pool
            pin = self._pins.pin = _Pinned(pool.get_connection())
            weakref.finalize(pin, pool.release, pin.conn)  # the thread ended: back to the pool
        return pin.conn

    @connection.setter
    def connection(self, value) -> None:  # redis.Redis.__init__ sets None
        if value is not None:
            raise TypeError("PinnedRedis keeps one connection per thread; it cannot be given one")

    def close(self) -> None:
        # redis.Redis.close() would hand this thread's pin back to the pool while the thread
        # still holds it. The pins belong to the pool: closing a pool this client made closes them.
        if self.auto_close_connection_pool:
            self.connection_pool.close()


def connect(url: str | None, *, server: fakeredis.FakeServer | None = None) -> redis.Redis:
    """A client for ``url``, or for the embedded store (``server`` or the process's own)."""
    if url:
        return PinnedRedis.from_url(url, health_check_interval=30, socket_timeout=10, socket_connect_timeout=5)
    return pinned(fakeredis.FakeRedis(server=server or embedded_server()))


def pinned(client: redis.Redis) -> PinnedRedis:
    """``client``'s pool (real or fake) behind a PinnedRedis: one code path for both stores."""
    return client if isinstance(client, PinnedRedis) else PinnedRedis(connection_pool=client.connection_pool)
