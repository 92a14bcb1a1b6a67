"""Each store's widget signing secrets: provisioned, rotated with a grace period, sealed at rest.

Provisioning returns the secret once; it is kept sealed by the host's vault (bound to the
store and to ``<plugin>.widget_secret``), and the previous secret keeps working for
``GRACE_SECONDS`` after a rotation, long enough to update the helpdesk without a gap.
"""

from __future__ import annotations

import logging
import secrets as random
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import redis
from pydantic import BaseModel

from ..crypto import DecryptionError

if TYPE_CHECKING:
    from ..host import Host

log = logging.getLogger("opcore.panel")

#: How long the secret replaced by a rotation still verifies (stated in the provisioning answer).
GRACE_SECONDS = 24 * 3600


class Provisioned(BaseModel):
    signing_secret: str
    previous_secret_valid_until: datetime | None = None


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(int(ts), tz=timezone.utc)


class WidgetSecrets:
    """One plugin's widget secrets: a hash per store (``<ns>:<plugin>:widget:<store>``) and an index."""

    def __init__(self, host: Host, plugin: str) -> None:
        self.host = host
        self.current_field, self.previous_field = f"{plugin}.widget_secret", f"{plugin}.widget_previous_secret"
        self._prefix = host.key(plugin, "widget")
        self.index = host.key(plugin, "widgets")

    def key(self, store_id: str) -> str:
        return f"{self._prefix}:{store_id}"

    def provision(self, store_id: str, now: float | None = None) -> Provisioned:
        """Give the store a new signing secret; the one it replaces verifies for GRACE_SECONDS more.

        Optimistic transaction, so two concurrent rotations cannot both demote the same secret and
        leave one caller holding a secret that never verifies. A current secret the vault can no
        longer open (its master key is gone) is dropped: re-provisioning is the way out of that.
        """
        now = time.time() if now is None else now
        secret = "opw_" + random.token_urlsafe(32)
        key, vault = self.key(store_id), self.host.vault
        with self.host.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    current, until = pipe.hget(key, "secret"), None
                    fields: dict[str, Any] = {"secret": vault.encrypt(store_id, self.current_field, secret),
                                              "at": int(now)}
                    if current:
                        try:
                            old = vault.decrypt(store_id, self.current_field, current.decode())
                            fields["previous"] = vault.encrypt(store_id, self.previous_field, old)
                            until = fields["previous_until"] = int(now) + GRACE_SECONDS
                        except DecryptionError as exc:
                            log.warning("widget of store %r: previous secret dropped: %s", store_id, exc)
                    pipe.multi()
                    pipe.hdel(key, "previous", "previous_until")
                    pipe.hset(key, mapping=fields)
                    pipe.sadd(self.index, store_id)
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue
        return Provisioned(signing_secret=secret, previous_secret_valid_until=utc(until) if until else None)

    def active(self, store_id: str, now: float) -> list[str] | None:
        """The secrets that verify now (current first); None when no widget was provisioned."""
        return self.open(store_id, self.host.redis.hgetall(self.key(store_id)), now)

    def open(self, store_id: str, raw: dict[bytes, bytes], now: float) -> list[str] | None:
        """``active`` for a hash already read (the panel reads it with the context version)."""
        if b"secret" not in raw:
            return None
        vault = self.host.vault
        found = [vault.decrypt(store_id, self.current_field, raw[b"secret"].decode())]
        if b"previous" in raw and int(raw.get(b"previous_until", b"0")) >= now:
            found.append(vault.decrypt(store_id, self.previous_field, raw[b"previous"].decode()))
        return found

    def rotate(self) -> int:
        """Reseal every widget secret under the newest master key; returns how many were resealed."""
        host, count = self.host, 0
        for member in host.redis.smembers(self.index):
            store_id = member.decode()
            key = self.key(store_id)
            with host.redis.pipeline() as pipe:
                while True:
                    try:
                        pipe.watch(key)
                        raw = pipe.hgetall(key)
                        fresh = {}
                        for field, place in ((b"secret", self.current_field), (b"previous", self.previous_field)):
                            if field in raw and not host.vault.is_current(raw[field].decode()):
                                fresh[field] = host.vault.reseal(store_id, place, raw[field].decode())
                        pipe.multi()
                        if fresh:
                            pipe.hset(key, mapping=fresh)
                        pipe.execute()
                        break
                    except redis.WatchError:
                        continue
            count += len(fresh)
        return count
