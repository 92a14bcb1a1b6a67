"""Each store's widget signing secrets: provisioned, rotated with a grace period, sealed at rest.

Provisioning returns the secret once; it is kept sealed by the host's vault (bound to the
store and to ``<plugin>.widget_secret``), and the previous secret keeps working for
``GRACE_SECONDS`` after a rotation, long enough to update the helpdesk without a gap, unless
the rotation asks to revoke it at once.

The iframe URL's token is not stored at all: it is an HMAC of the plugin and store under the
store's signing secret (:func:`iframe_token`). So it is good for that store's panel only, and
it ends exactly when its secret does: after the grace period of a rotation, at once with
``revoke_previous``, and when the widget or the store is deleted. One secret, one lifecycle.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
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


def iframe_token(secret: str, plugin: str, store_id: str) -> str:
    """The credential of the store's iframe URL, derived from its signing secret.

    Bound to the plugin and store, so a token copied into another store's URL never matches,
    and distinct from any request signature (which MACs ``<t>.<path>``, never this text).
    """
    mac = hmac.new(secret.encode(), f"opcore-iframe/v1\n{plugin}\n{store_id}".encode(), hashlib.sha256)
    return "opi_" + base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode()


def token_matches(token: str, secrets: list[str], plugin: str, store_id: str) -> bool:
    """Whether ``token`` is the iframe token of one of ``secrets``; constant time, never stops early."""
    matched = False
    for secret in secrets:
        matched |= hmac.compare_digest(token.encode(), iframe_token(secret, plugin, store_id).encode())
    return matched


class WidgetSecrets:
    """One plugin's widget secrets: a hash per store (``<ns>:<plugin>:widget:<store>``) and an index."""

    def __init__(self, host: Host, plugin: str) -> None:
        self.host = host
        self.current_field, self.previous_field = f"{plugin}.widget_secret", f"{plugin}.widget_previous_secret"
        self.plugin = plugin
        self.index = host.key(plugin, "widgets")

    def key(self, store_id: str) -> str:
        return self.host.key(self.plugin, "widget", store_id)

    def provision(self, store_id: str, now: float | None = None, revoke_previous: bool = False) -> Provisioned:
        """Give the store a new signing secret; the one it replaces verifies for GRACE_SECONDS more,
        or not at all with ``revoke_previous`` (a secret or iframe URL that leaked).

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
                    if current and not revoke_previous:
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

    def revoke(self, store_id: str) -> bool:
        """End every secret and iframe URL of the store at once; whether it had a widget."""
        pipe = self.host.redis.pipeline()
        pipe.delete(self.key(store_id))
        pipe.srem(self.index, store_id)
        existed, _ = pipe.execute()
        if existed:
            log.info("%s widget of store %r revoked", self.plugin, store_id)
        return bool(existed)

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
