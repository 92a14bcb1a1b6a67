"""The one Redis connection factory: real Redis in production, fakeredis when embedded.

Both give a ``redis.Redis``-compatible client, so the broker, the dedup keys, the settings
and the read model run the same code either way; only this module knows the difference.
"""

from __future__ import annotations

import logging
import threading

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


def connect(url: str | None, *, server: fakeredis.FakeServer | None = None) -> redis.Redis:
    """A client for ``url``, or for the embedded store (``server`` or the process's own)."""
    if url:
        return redis.Redis.from_url(url, health_check_interval=30, socket_timeout=10, socket_connect_timeout=5)
    return fakeredis.FakeRedis(server=server or embedded_server())
