"""Work parked while a store's Richpanel key is rejected, released when a valid key is saved.

A 401 means every further call with that key will fail too, so retrying would only burn the
quota and the retries; the message is kept here instead (nothing is dropped) and sent again,
unchanged, when the store's credentials become valid.
"""

from __future__ import annotations

import json
from typing import Any

from opcore_hooks import Host


NAME = "richpanel"


def _key(host: Host, store_id: str) -> str:
    return host.key(NAME, "parked", store_id)


def park(host: Host, store_id: str, actor: str, args: list[Any]) -> None:
    host.redis.rpush(_key(host, store_id), json.dumps({"actor": actor, "args": args}))


def parked_count(host: Host, store_id: str) -> int:
    return int(host.redis.llen(_key(host, store_id)))


def release_parked(host: Host, store_id: str) -> int:
    """Send every parked message of ``store_id`` again; returns how many were released.

    Each entry is popped only after its message was enqueued, so a crash here re-sends at
    most one message twice (the actors are idempotent), and loses none.
    """
    key = _key(host, store_id)
    released = 0
    while True:
        raw = host.redis.lindex(key, 0)
        if raw is None:
            return released
        entry = json.loads(raw)
        host.broker.get_actor(entry["actor"]).send(*entry["args"])
        host.redis.lpop(key)
        released += 1
