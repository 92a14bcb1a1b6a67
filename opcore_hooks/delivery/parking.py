"""Work parked while a store's helpdesk credentials are rejected, released when valid ones are saved.

A 401 means every further call with those credentials will fail too, so retrying would only
burn the quota and the retries; the message is kept here instead (nothing is dropped) and sent
again, unchanged, when the store's credentials become valid.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..host import Host


class Parking:
    """One plugin's parked messages, a list per store (``<ns>:<plugin>:parked:<store>``)."""

    def __init__(self, host: Host, plugin: str) -> None:
        self.host = host
        self.plugin = plugin

    def key(self, store_id: str) -> str:
        return self.host.key(self.plugin, "parked", store_id)

    def park(self, store_id: str, actor: str, args: list[Any]) -> None:
        self.host.redis.rpush(self.key(store_id), json.dumps({"actor": actor, "args": args}))

    def count(self, store_id: str) -> int:
        return int(self.host.redis.llen(self.key(store_id)))

    def release(self, store_id: str) -> int:
        """Send every parked message of ``store_id`` again; returns how many were released.

        Each entry is popped only after its message was enqueued, so a crash here re-sends at
        most one message twice (the actors are idempotent), and loses none.
        """
        key, redis, broker = self.key(store_id), self.host.redis, self.host.broker
        released = 0
        while True:
            raw = redis.lindex(key, 0)
            if raw is None:
                return released
            entry = json.loads(raw)
            broker.get_actor(entry["actor"]).send(*entry["args"])
            redis.lpop(key)
            released += 1
