"""Each claim's delivery record in Redis, read and written in one round trip per step.

A claim's hash (``<ns>:<plugin>:claim:<store>:<claim>``) holds ``ticket_id`` once known,
``pending`` while a create may have reached the helpdesk unrecorded, and ``finish``
(``wanted``/``done``). Before any request to the helpdesk a worker *takes a turn*, which in
one Lua script checks that:

1. the store's settings are the ones this process decrypted (otherwise ``stale``, with the
   fresh fields, so settings can be cached per process yet never be used once changed);
2. the work is not done already (a ticket exists; a finish is done or has no ticket yet);
3. no other worker holds the claim's lock (Dramatiq delivers at least once);
4. the scope's pacing admits a request now (pacing.LUA, the same functions every pacer runs);

and only then takes the lock, records the request as sent, and, for a create, sets
``pending``. Finishing (the outcome, its counter, the answer time for pacing, the lock's
release) is one more script. The worker's CPU per ticket was dominated by redis-py's cost per
round trip (28 of them per ticket before this module; see docs/BENCHMARKS.md).
"""

from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Literal, Mapping

from .pacing import LUA as PACING_LUA
from .pacing import Pacer

if TYPE_CHECKING:
    from ..host import Host

Kind = Literal["create", "finish"]
#: A slot this close is taken now rather than rescheduled: the delay queue's own latency is larger.
EPSILON = 0.05

# KEYS: store hash, claim hash, claim lock, slots, blocked, limit, sent, the claim's note queue.
# ARGV: store snapshot, kind, now, window, quota, member, reserve margin, admit margin, lock token,
#       lock ms, slot ('' when none was reserved yet), epsilon, follow ('1': an advertised limit may raise
#       the quota), then the snapshot's field names.
# The snapshot is the fields' values in the order Python names them (no sorting in Lua, whose
# string order follows Redis's locale). A rerun of the same call (redis-py retries one whose
# answer was lost) finds its own lock token and goes on, instead of waiting out its own lock.
#: stale(): whether the store's settings hash differs from the snapshot this process decrypted
#: (``joined``, with the field names in ARGV from ``first`` on). Every script that takes a turn
#: runs it first.
SNAPSHOT_LUA = """
local function stale(store_key, joined, first)
  local names = {}
  for i = first, #ARGV do names[#names + 1] = ARGV[i] end
  if redis.call('HLEN', store_key) ~= #names then return true end
  if #names == 0 then return false end
  local values = redis.call('HMGET', store_key, unpack(names))
  local parts = {}
  for i, name in ipairs(names) do
    if not values[i] then return true end
    parts[#parts + 1] = name; parts[#parts + 1] = values[i]
  end
  return table.concat(parts, '\\0') ~= joined
end
"""

_BEGIN = PACING_LUA + SNAPSHOT_LUA + """
if stale(KEYS[1], ARGV[1], 14) then return {'stale', redis.call('HGETALL', KEYS[1])} end
local claim = redis.call('HMGET', KEYS[2], 'ticket_id', 'pending', 'finish')
local ticket, pending, finish = claim[1] or '', claim[2] or '', claim[3] or ''
if ARGV[2] == 'create' and ticket ~= '' then return {'ticket', ticket, finish, redis.call('ZCARD', KEYS[8])} end
if ARGV[2] == 'finish' and (ticket == '' or finish == 'done') then return {'skip', ticket, finish} end
local holder = redis.call('GET', KEYS[3])
if holder == ARGV[9] then return {'go', ticket, finish, pending} end
if holder then return {'busy'} end
local now, window, quota = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local slot = tonumber(ARGV[11])
local follow = ARGV[13] == '1'
if not slot then slot = reserve(KEYS[4], KEYS[5], KEYS[6], now, window, quota, follow, ARGV[6], tonumber(ARGV[7])) end
if slot - now > tonumber(ARGV[12]) then return {'wait', string.format('%.6f', slot)} end
local retry = admit(KEYS[7], KEYS[5], KEYS[6], now, window + tonumber(ARGV[8]), quota, follow, ARGV[6])
if retry then return {'wait', string.format('%.6f', retry)} end
redis.call('SET', KEYS[3], ARGV[9], 'PX', ARGV[10])
if ARGV[2] == 'create' and pending ~= '1' then redis.call('HSET', KEYS[2], 'pending', '1') end
return {'go', ticket, finish, pending}
"""

# KEYS: claim hash, stats hash, sent zset, claim lock, latency histogram hash, the claim's note queue.
# ARGV: stat ('' for none), sent member ('' for none), answer time, lock token, retention ms,
#       histogram bucket ('' for no observation), the observed seconds, then field/value pairs.
# The record lives ``retention`` after its last write: each event's work writes it again. Returns
# the claim's finish field and how many notes wait for the ticket (the note mirror's).
_FINISH = """
if #ARGV > 7 then redis.call('HSET', KEYS[1], unpack(ARGV, 8)) end
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[5]) end
if ARGV[1] ~= '' then redis.call('HINCRBY', KEYS[2], ARGV[1], 1) end
if ARGV[6] ~= '' then
  redis.call('HINCRBY', KEYS[5], ARGV[6], 1)
  redis.call('HINCRBY', KEYS[5], 'count', 1)
  redis.call('HINCRBYFLOAT', KEYS[5], 'sum', ARGV[7])
end
if ARGV[2] ~= '' then redis.call('ZADD', KEYS[3], 'XX', ARGV[3], ARGV[2]) end
if redis.call('GET', KEYS[4]) == ARGV[4] then redis.call('DEL', KEYS[4]) end
return {redis.call('HGET', KEYS[1], 'finish'), redis.call('ZCARD', KEYS[6])}
"""

# KEYS: claim hash. ARGV: retention ms. "done" stays done; returns the finish field and the
# ticket id ('' when none is known).
_WANT_FINISH = """
redis.call('HSETNX', KEYS[1], 'finish', 'wanted')
redis.call('PEXPIRE', KEYS[1], ARGV[1])
local c = redis.call('HMGET', KEYS[1], 'finish', 'ticket_id')
return {c[1] or '', c[2] or ''}
"""

#: Upper bounds (seconds) of the claim-to-ticket histogram's buckets; +Inf is implied.
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0)


def bucket_of(seconds: float) -> str:
    """The histogram field counting ``seconds``: the index of the first bound it fits, or 'inf'."""
    for index, bound in enumerate(LATENCY_BUCKETS):
        if seconds <= bound:
            return str(index)
    return "inf"


@dataclass(frozen=True)
class Snapshot:
    """A store's fields as _BEGIN compares them: the names, and names with values NUL-separated."""

    names: tuple[str, ...]
    joined: str


def fields_of(flat: list[bytes]) -> dict[str, str]:
    """A hash as HGETALL answers it inside a script: names and values, flat."""
    text = [part.decode() for part in flat]
    return dict(zip(text[::2], text[1::2], strict=True))


def snapshot(fields: Mapping[str, str]) -> Snapshot:
    names = tuple(sorted(fields))
    return Snapshot(names, "\0".join(part for name in names for part in (name, fields[name])))


@dataclass
class Turn:
    """What taking a turn found; ``go`` means the lock is held and the request is admitted."""

    outcome: Literal["go", "wait", "busy", "ticket", "skip", "stale"]
    ticket_id: str | None = None
    finish: str | None = None
    pending: bool = False
    at: float | None = None
    fields: dict[str, str] | None = None
    scope: str = field(default="", repr=False)
    member: str = ""
    token: str = ""
    finished: bool = False
    notes_waiting: bool = False


def _text(raw: bytes | None) -> str | None:
    return raw.decode() if raw else None


class Ledger:
    """One plugin's claim records. ``store_key`` names a store's settings hash (the plugin's)."""

    def __init__(self, host: Host, plugin: str, pacer: Pacer, lock_ms: int,
                 store_key: Callable[[str], str]) -> None:
        self.host = host
        self.plugin = plugin
        self.redis = host.redis
        self.pacer = pacer
        self.lock_ms = lock_ms
        self.store_key = store_key
        self.stats_key = host.key(plugin, "stats")
        self.latency_key = host.key(plugin, "latency")
        self.retention_ms = int(host.settings.retention_days * 86_400_000)
        self._begin = host.redis.register_script(_BEGIN)
        self._finish = host.redis.register_script(_FINISH)
        self._want_finish = host.redis.register_script(_WANT_FINISH)

    def claim_key(self, store_id: str, claim_id: str) -> str:
        return self.host.key(self.plugin, "claim", store_id, claim_id)

    def note_queue_key(self, store_id: str, claim_id: str) -> str:
        """The claim's messages waiting to become notes (``notes.py``), by ``created_at``."""
        return self.host.key(self.plugin, "noteq", store_id, claim_id)

    def _lock_key(self, store_id: str, claim_id: str) -> str:
        return self.host.key(self.plugin, "lock", store_id, claim_id)

    def ticket_id(self, store_id: str, claim_id: str) -> str | None:
        return _text(self.redis.hget(self.claim_key(store_id, claim_id), "ticket_id"))

    def record(self, store_id: str, claim_id: str) -> tuple[str | None, str | None]:
        """The claim's ticket id and finish field, each None when unset."""
        ticket_id, finish = self.redis.hmget(self.claim_key(store_id, claim_id), "ticket_id", "finish")
        return _text(ticket_id), _text(finish)

    def set(self, store_id: str, claim_id: str, **fields: str) -> None:
        self.redis.hset(self.claim_key(store_id, claim_id), mapping=fields)

    def touch(self, store_id: str, claim_id: str) -> None:
        """Keep the claim's record (if it has one) for the retention period from now: an event
        that needs no delivery is still the claim's last event."""
        self.redis.pexpire(self.claim_key(store_id, claim_id), self.retention_ms)

    def look_up_first(self, store_id: str, claim_id: str) -> None:
        """Make the claim's next create ask the helpdesk first, unless the claim has a record.

        For a claim old enough that its record may have expired (retention): a late event must
        find the ticket the helpdesk still holds rather than open a second one.
        """
        key = self.claim_key(store_id, claim_id)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(key, "pending", "1")
            pipe.pexpire(key, self.retention_ms)
            pipe.execute()

    def begin(self, kind: Kind, store_id: str, claim_id: str, scope: str, store_snapshot: Snapshot,
              slot: float | None, now: float | None = None) -> Turn:
        now = time.time() if now is None else now
        pacer, member, token = self.pacer, uuid.uuid4().hex, secrets.token_hex(8)
        reply = self._begin(
            keys=[self.store_key(store_id), self.claim_key(store_id, claim_id), self._lock_key(store_id, claim_id),
                  *pacer.keys(scope), self.note_queue_key(store_id, claim_id)],
            args=[store_snapshot.joined, kind, repr(now), repr(pacer.window), pacer.quota, member,
                  repr(pacer.margin), repr(pacer.ADMIT_MARGIN), token, self.lock_ms, "" if slot is None else repr(slot),
                  EPSILON, pacer.follow, *store_snapshot.names],
        )
        outcome = reply[0].decode()
        if outcome == "stale":
            return Turn("stale", fields=fields_of(reply[1]))
        if outcome == "busy":
            return Turn("busy")
        if outcome == "wait":
            return Turn("wait", at=float(reply[1]))
        turn = Turn(outcome, ticket_id=_text(reply[1]), finish=_text(reply[2]))  # type: ignore[arg-type]
        if outcome == "go":
            turn.pending, turn.scope, turn.member, turn.token = reply[3] == b"1", scope, member, token
        elif outcome == "ticket":
            turn.notes_waiting = bool(reply[3])
        return turn

    def finish(self, store_id: str, claim_id: str, turn: Turn, fields: Mapping[str, str] | None = None,
               stat: str | None = None, latency: float | None = None) -> str | None:
        """Record ``fields`` and count ``stat`` (and ``latency`` seconds in the claim-to-ticket
        histogram); stamp the answer for pacing, release the lock, and keep the record for the
        retention period from now.

        Returns the claim's ``finish`` field as it stands after the write; ``notes_waiting``
        says whether messages wait for the claim's ticket.
        """
        observed = max(0.0, latency) if latency is not None else None
        args = [stat or "", turn.member, repr(time.time()), turn.token, self.retention_ms,
                "" if observed is None else bucket_of(observed), repr(observed or 0.0)]
        for name, value in (fields or {}).items():
            args += [name, value]
        keys = [self.claim_key(store_id, claim_id), self.stats_key,
                self.pacer.keys(turn.scope)[3] if turn.scope else self.host.key(self.plugin, "-"),
                self._lock_key(store_id, claim_id), self.latency_key, self.note_queue_key(store_id, claim_id)]
        finish, waiting = self._finish(keys=keys, args=args)
        turn.finished = True
        turn.notes_waiting = bool(waiting)
        return _text(finish)

    def want_finish(self, store_id: str, claim_id: str) -> tuple[str, str | None]:
        """Mark the claim's ticket for finishing; the claim's finish field after it (``wanted`` or
        ``done``) and the ticket id, when one is known."""
        finish, ticket = self._want_finish(keys=[self.claim_key(store_id, claim_id)], args=[self.retention_ms])
        return finish.decode(), _text(ticket)
