"""Pacing per scope (an API key, an account) shared by every worker through Redis.

A helpdesk allows ``quota`` requests per ``window`` seconds per scope (Richpanel: 50 per 30 s
per API key) and answers 429 past it. Instead of trying and backing off, each piece of work *reserves* a slot: the
earliest time at which the sliding window still has room. A backlog therefore turns into
messages scheduled at the quota's pace, each fetched once when its slot comes (no thrashing of
the delay queue), and a store's backlog never occupies the workers another store needs. Every
request is then *admitted* against the requests really sent (a create that follows a lookup
in the same turn is admitted without a reservation of its own).

A rate-limit answer blocks the scope until its ``Retry-After`` has passed; reservations made
before the block are re-checked when they run. A remaining count lower than our own count
means someone else spends the same scope (another app on the account): the difference is kept
as the scope's *others* figure for a window, and the quota that reserve() and admit() see is
lowered by it, for reservations made now and far ahead alike, so we slow down instead of
meeting a 429. (Booking the difference as reservations at the moment it was seen, as opcore
did first, left the slots already reserved for later windows unaware of it: a backlog then met
admission refusals and retried in a herd.)

Keys in Redis are a fingerprint of the scope, never the scope itself (it may be an API key):
an HMAC under a key derived from the master key, so that a Redis dump cannot confirm a guessed
API key (an unkeyed hash could). Pacing state is short-lived (a window of seconds, and any
Retry-After block), so it starts over when the newest master key changes (processes on
different newest keys pace apart until every one has restarted), and once on the upgrade to
keyed names: that costs at most one rate-limit answer per account, which delivery already
handles as any other.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import redis

# The pacing rules as Lua functions, so every script that paces (the ones below, and the
# delivery ledger's, which takes a turn in the same round trip as the claim's own state) runs
# the very same code. Times are seconds since the epoch, as floats.
#
# reserve(): the earliest time the sliding window of *reservations* has room, booked for
# ``member``. Slots are handed out in non-decreasing order, which makes "the quota-th latest
# reservation plus the window" the exact earliest time with room in the window.
#
# admit(): admission on what was really *sent*: a reservation only says when a message should
# come back; the request may go later than its slot (a busy worker, the delay queue's own
# latency), and booking the next window from the slot rather than the send lets the next
# window start early and meet a 429. Returns nil (the send is recorded) or the time to retry.
LUA = """
local function base_quota(seen, quota, follow)
  local advertised = tonumber(seen[1] or '0')
  if advertised > 0 and (follow or advertised < quota) then return advertised end
  return quota
end

-- The limit key is a hash: the advertised 'limit', and 'others' (requests someone else spent in
-- a window) valid until 'others_until'.
local function quota_of(limit_key, quota, follow, now)
  local seen = redis.call('HMGET', limit_key, 'limit', 'others', 'others_until')
  local others = 0
  if tonumber(seen[3] or '0') > now then others = tonumber(seen[2] or '0') end
  return math.max(1, base_quota(seen, quota, follow) - others)
end

local function reserve(slots, blocked_key, limit_key, now, window, quota, follow, member, margin)
  quota = quota_of(limit_key, quota, follow, now)
  redis.call('ZREMRANGEBYSCORE', slots, '-inf', now - window)
  local slot = now
  local n = redis.call('ZCARD', slots)
  if n >= quota then
    local r = redis.call('ZRANGE', slots, n - quota, n - quota, 'WITHSCORES')
    slot = math.max(slot, tonumber(r[2]) + window + margin)
  end
  if n > 0 then
    local last = redis.call('ZRANGE', slots, -1, -1, 'WITHSCORES')
    slot = math.max(slot, tonumber(last[2]))
  end
  slot = math.max(slot, tonumber(redis.call('GET', blocked_key) or '0'))
  redis.call('ZADD', slots, slot, member)
  redis.call('PEXPIREAT', slots, math.ceil((slot + window) * 1000) + 1000)
  return slot
end

local function admit(sent, blocked_key, limit_key, now, span, quota, follow, member)
  quota = quota_of(limit_key, quota, follow, now)
  local blocked = tonumber(redis.call('GET', blocked_key) or '0')
  if blocked > now then return blocked end
  redis.call('ZREMRANGEBYSCORE', sent, '-inf', now - span)
  local n = redis.call('ZCARD', sent)
  if n >= quota then
    local r = redis.call('ZRANGE', sent, n - quota, n - quota, 'WITHSCORES')
    return tonumber(r[2]) + span
  end
  redis.call('ZADD', sent, now, member)
  redis.call('PEXPIRE', sent, math.ceil(span * 1000) + 1000)
  return nil
end
"""

# KEYS: reservations zset, blocked-until key, advertised-limit key.
# ARGV: now, window, quota, member, margin, follow ('1': an advertised limit may raise the quota).
_RESERVE = LUA + """
local slot = reserve(KEYS[1], KEYS[2], KEYS[3], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]),
                     ARGV[6] == '1', ARGV[4], tonumber(ARGV[5]))
return string.format('%.6f', slot)
"""

# KEYS: blocked-until key. ARGV: until. Only ever moves the block later.
_BLOCK = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local untilt = tonumber(ARGV[1])
if untilt > current then
  redis.call('SET', KEYS[1], ARGV[1], 'PXAT', math.ceil(untilt * 1000) + 1000)
  return 1
end
return 0
"""

# KEYS: sent zset (requests actually sent), blocked-until key, advertised-limit key.
# ARGV: now, window, quota, member, margin, follow. Returns 'go' (the send is recorded) or the time to retry.
_ADMIT = LUA + """
local retry = admit(KEYS[1], KEYS[2], KEYS[3], tonumber(ARGV[1]), tonumber(ARGV[2]) + tonumber(ARGV[5]),
                    tonumber(ARGV[3]), ARGV[6] == '1', ARGV[4])
if retry then return string.format('%.6f', retry) end
return 'go'
"""


# KEYS: limit hash, sent zset. ARGV: now, window, margin, configured quota, follow, advertised limit ('' if
# none), remaining ('' if none). Keeps a lower (or, following, any) advertised limit for an hour, and
# the requests someone else spent: a figure as large or larger is kept for a window from now (so
# steady use by others holds it), a smaller one waits for the kept figure to lapse. Returns it.
_OBSERVE = LUA + """
local now, window, margin, quota = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local follow = ARGV[5] == '1'
local limit, remaining = tonumber(ARGV[6]), tonumber(ARGV[7])
if limit and limit > 0 and (follow or limit < quota) then
  redis.call('HSET', KEYS[1], 'limit', limit)
  redis.call('PEXPIRE', KEYS[1], 3600000)
end
if not remaining then return 0 end
local seen = redis.call('HMGET', KEYS[1], 'limit', 'others', 'others_until')
local base = base_quota(seen, quota, follow)
local current = 0
if tonumber(seen[3] or '0') > now then current = tonumber(seen[2] or '0') end
local ours = redis.call('ZCOUNT', KEYS[2], now - window - margin, '+inf')
local others = math.min(base - 1, (base - ours) - remaining)
if others > 0 and others >= current then
  redis.call('HSET', KEYS[1], 'others', others, 'others_until', string.format('%.6f', now + window))
  redis.call('PEXPIRE', KEYS[1], 3600000)
  return others
end
return current
"""


@dataclass(frozen=True)
class Slot:
    at: float

    def wait(self, now: float | None = None) -> float:
        return max(0.0, self.at - (time.time() if now is None else now))


class Pacer:
    def __init__(self, client: redis.Redis, prefix: str, *, secret: Callable[[], bytes], quota: int,
                 window: float, follow_server_limit: bool = False) -> None:
        """``secret`` gives the key of the scopes' fingerprints (``Vault.derive("pacing")``); it is
        asked for at the first request, so a host without a master key still builds."""
        self.redis = client
        self.prefix = prefix
        self._secret = secret
        # Every request names its scope's keys twice or more; a process sees few scopes.
        self.fingerprint = functools.lru_cache(maxsize=1024)(self._fingerprint)
        self.quota = quota
        self.window = window
        #: An advertised limit higher than ``quota`` raises it too (else only a lower one counts).
        self.follow_server_limit = follow_server_limit
        self.follow = "1" if follow_server_limit else ""
        #: Headroom added to the window: a request runs a little after its slot, never before.
        self.margin = min(1.0, 0.02 * window + 0.05)
        self._reserve = client.register_script(_RESERVE)
        self._observe = client.register_script(_OBSERVE)
        self._block = client.register_script(_BLOCK)
        self._admit = client.register_script(_ADMIT)

    @functools.cached_property
    def _hmac_key(self) -> bytes:
        return self._secret()

    def _fingerprint(self, scope: str) -> str:
        """The scope's name in Redis (see the module's docstring)."""
        return hmac.new(self._hmac_key, b"opcore-pacing:" + scope.encode(), hashlib.sha256).hexdigest()[:20]

    def keys(self, scope: str) -> tuple[str, str, str, str]:
        """The key's reservations, blocked-until, advertised-limit and sent keys, in LUA's order."""
        fp = self.fingerprint(scope)
        # ':quota' is a hash (the advertised limit, what others spend); the string ':limit' of
        # earlier versions is left to expire, so no script meets a key of the other type.
        return (f"{self.prefix}:{fp}:slots", f"{self.prefix}:{fp}:blocked", f"{self.prefix}:{fp}:quota",
                f"{self.prefix}:{fp}:sent")

    def _keys(self, scope: str) -> tuple[str, str, str]:
        return self.keys(scope)[:3]

    def _sent(self, scope: str) -> str:
        return self.keys(scope)[3]

    #: Admission counts requests by when their answer came back (never earlier than the server
    #: counted them), so its margin only covers clocks: one host, or NTP between hosts.
    ADMIT_MARGIN = 0.05

    def admit(self, scope: str, now: float | None = None) -> tuple[str | None, float | None]:
        """Record a request about to be sent now: (member, None); or (None, when it may be)."""
        now = time.time() if now is None else now
        _, blocked, limit = self._keys(scope)
        member = uuid.uuid4().hex
        answer = self._admit(keys=[self._sent(scope), blocked, limit],
                             args=[repr(now), repr(self.window), self.quota, member, repr(self.ADMIT_MARGIN), self.follow])
        return (member, None) if answer == b"go" else (None, float(answer))

    def answered(self, scope: str, member: str, at: float | None = None) -> None:
        """Move an admitted request to the time its answer came back (a conservative send time)."""
        self.redis.zadd(self._sent(scope), {member: time.time() if at is None else at}, xx=True)

    def reserve(self, scope: str, now: float | None = None) -> Slot:
        """Book the earliest request slot for ``scope``; the caller sends at ``slot.at``."""
        now = time.time() if now is None else now
        at = self._reserve(keys=list(self._keys(scope)),
                           args=[repr(now), repr(self.window), self.quota, uuid.uuid4().hex, repr(self.margin),
                                 self.follow])
        return Slot(float(at))

    def block(self, scope: str, seconds: float, now: float | None = None) -> float:
        """No request with ``scope`` before ``now + seconds`` (a rate limit's Retry-After)."""
        until = (time.time() if now is None else now) + max(0.0, seconds)
        self._block(keys=[self._keys(scope)[1]], args=[repr(until)])
        return until

    def blocked_until(self, scope: str) -> float:
        raw = self.redis.get(self._keys(scope)[1])
        return float(raw) if raw else 0.0

    def quota_for(self, scope: str) -> int:
        """The configured quota, or the server's advertised limit where ``observe`` kept one
        (before what others spend is taken off)."""
        raw = self.redis.hget(self._keys(scope)[2], "limit")
        advertised = int(raw) if raw else 0
        return advertised if advertised > 0 and (self.follow_server_limit or advertised < self.quota) else self.quota

    def observe(self, scope: str, limit: int | None, remaining: int | None, now: float | None = None) -> int:
        """Follow what the server advertises: its limit, and requests we did not send.

        A lower advertised limit than configured (any advertised limit, with
        ``follow_server_limit``) becomes this scope's quota for an hour. A remaining count
        lower than our own count means someone else spends the scope: the difference comes off
        the quota for a window (raised at once by a larger difference). Returns that figure.
        One round trip, on every answer that carries the headers.
        """
        if limit is None and remaining is None:
            return 0
        now = time.time() if now is None else now
        # Sends are stamped no later than the server saw them, so count a margin further back.
        return int(self._observe(keys=[self._keys(scope)[2], self._sent(scope)], args=[
            repr(now), repr(self.window), repr(self.ADMIT_MARGIN), self.quota, self.follow,
            "" if limit is None else limit, "" if remaining is None else remaining]))
