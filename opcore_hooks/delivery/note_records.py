"""The note mirror's records in Redis, each step one script: what ``notes.py`` writes and reads.

Per claim and plugin, beside the claim's delivery record (``ledger.py``):

- the notes hash (``<ns>:<plugin>:notes:<store>:<claim>``): each message by its key, as a
  waiting payload (``<received at>|<json>``) until it is ``done``, ``dead`` or ``skipped``; the
  ``.sending`` mark (the message whose write may have acted unrecorded) and each message's
  ``.attempts:<key>``;
- the note queue (``ledger.note_queue_key``): waiting messages by ``created_at``; the ledger's
  scripts read its size, so the create that records a ticket knows notes wait for it;
- the note lock (``notelock``): one writer per claim;
- per plugin, the due set (``notes-due``): claims whose messages wait for a ticket, by deadline.

The split is the ledger's and the engine's: this module keeps the records consistent, one
round trip per step; ``notes.py`` decides what to do next.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from .ledger import EPSILON, SNAPSHOT_LUA, Ledger, Snapshot
from .pacing import LUA as PACING_LUA
from .pacing import Pacer

if TYPE_CHECKING:
    from ..host import Host

#: Note records outlive the 7-day deadline whatever the retention, so a waiting message is never lost.
MIN_TTL_MS = 8 * 86_400_000

# KEYS: notes hash, note queue, claim hash, due set. ARGV: message key, payload, order score, ttl ms,
# due member, deadline, retention ms. A known message is a duplicate ('waiting' while it is still
# queued: the writer is woken again, in case the wake after its first enqueue was lost), unless it
# was a dead letter (a replay queues it again). Without a ticket, the claim enters the due set
# (its earliest deadline stays). A message is one of the claim's events: its record lives on.
_ENQUEUE = """
local state = redis.call('HGET', KEYS[1], ARGV[1])
local ticket = redis.call('HGET', KEYS[3], 'ticket_id')
if ticket then redis.call('PEXPIRE', KEYS[3], ARGV[7]) end
if state and state ~= 'dead' then
  if string.find(state, '|', 1, true) then return {'waiting', ticket or ''} end
  return {'duplicate', ''}
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
if ticket then return {'queued', ticket} end
redis.call('ZADD', KEYS[4], 'NX', ARGV[6], ARGV[5])
return {'queued', ''}
"""

# KEYS: due set. ARGV: now, lease until, how many. Claims past their deadline, leased (not
# removed): a worker that dies before their writer runs leaves them to the next sweep.
_SWEEP = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, member in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[2], member) end
return due
"""

# KEYS: store hash, claim hash, notes hash, note queue, note lock, slots, blocked, limit, sent,
#       the claim's messages in flight (accepted at the ingress, not yet dispatched), due set.
# ARGV: store snapshot, now, hold, window, quota, member, reserve margin, admit margin, lock token,
#       lock ms, epsilon, follow, due member, the longest wait for messages in flight, then the
#       snapshot's field names.
# A waiting payload is "<received at>|<json>"; anything else (done, dead, skipped) is finished.
# The head waits its hold, and while another message of the claim is still on its way from the
# ingress (a backlog or the bulk lane can hold it past the hold), up to a limit. The pacing slot is
# booked only when it is now: a note never books ahead, so every reservation a creation or a
# finish holds comes first.
_BEGIN = PACING_LUA + SNAPSHOT_LUA + """
if stale(KEYS[1], ARGV[1], 15) then return {'stale', redis.call('HGETALL', KEYS[1])} end
local now = tonumber(ARGV[2])
local sending = redis.call('HGET', KEYS[3], '.sending')
local key = sending
if not key then
  local head = redis.call('ZRANGE', KEYS[4], 0, 0)
  if #head == 0 then
    redis.call('ZREM', KEYS[11], ARGV[13])
    return {'empty'}
  end
  key = head[1]
end
local payload = redis.call('HGET', KEYS[3], key)
if not payload or not string.find(payload, '|', 1, true) then
  redis.call('ZREM', KEYS[4], key)
  redis.call('HDEL', KEYS[3], '.sending')
  return {'again'}
end
local ticket = redis.call('HGET', KEYS[2], 'ticket_id')
if not ticket then return {'noticket'} end
local holder = redis.call('GET', KEYS[5])
if holder == ARGV[9] then return {'go', ticket, key, payload, sending and '1' or ''} end
if holder then return {'busy'} end
local received = tonumber(string.match(payload, '^([^|]+)|'))
if not sending then
  local ready = received + tonumber(ARGV[3])
  if ready > now then return {'wait', string.format('%.6f', ready)} end
  local coming = redis.call('SCARD', KEYS[10])
  if coming > 0 and received + tonumber(ARGV[14]) > now then return {'wait', string.format('%.6f', now + 0.25)} end
end
local window, quota, follow = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[12] == '1'
local slot = reserve(KEYS[6], KEYS[7], KEYS[8], now, window, quota, follow, ARGV[6], tonumber(ARGV[7]))
if slot - now > tonumber(ARGV[11]) then
  redis.call('ZREM', KEYS[6], ARGV[6])
  return {'wait', string.format('%.6f', slot)}
end
local retry = admit(KEYS[9], KEYS[7], KEYS[8], now, window + tonumber(ARGV[8]), quota, follow, ARGV[6])
if retry then
  redis.call('ZREM', KEYS[6], ARGV[6])
  return {'wait', string.format('%.6f', retry)}
end
redis.call('SET', KEYS[5], ARGV[9], 'PX', ARGV[10])
redis.call('HSET', KEYS[3], '.sending', key)
return {'go', ticket, key, payload, sending and '1' or ''}
"""

# KEYS: notes hash, note queue, stats hash, sent zset, note lock.
# ARGV: message key, its new state ('' leaves it waiting), stat ('' for none), sent member ('' for
#       none), answer time, lock token, ttl ms, '1' to clear the sending mark.
_END = """
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('HDEL', KEYS[1], '.attempts:' .. ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
end
if ARGV[8] == '1' then redis.call('HDEL', KEYS[1], '.sending') end
for i = 1, 2 do
  if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('PEXPIRE', KEYS[i], ARGV[7]) end
end
if ARGV[3] ~= '' then redis.call('HINCRBY', KEYS[3], ARGV[3], 1) end
if ARGV[4] ~= '' then redis.call('ZADD', KEYS[4], 'XX', ARGV[5], ARGV[4]) end
if redis.call('GET', KEYS[5]) == ARGV[6] then redis.call('DEL', KEYS[5]) end
return redis.call('ZCARD', KEYS[2])
"""

# KEYS: notes hash, note queue, due set. ARGV: new state, due member, due score ('' to leave the
# due set), ttl ms, then the message keys. Retires waiting messages (skipped, dead) in one step,
# the sending mark with them, and sets the claim's deadline from what is left: a message that
# arrives meanwhile keeps a deadline (the earliest left, or ARGV[3] when the rest were retired).
_RETIRE = """
for i = 5, #ARGV do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[1])
  redis.call('HDEL', KEYS[1], '.attempts:' .. ARGV[i])
  redis.call('ZREM', KEYS[2], ARGV[i])
  if redis.call('HGET', KEYS[1], '.sending') == ARGV[i] then redis.call('HDEL', KEYS[1], '.sending') end
end
if redis.call('ZCARD', KEYS[2]) == 0 then
  redis.call('ZREM', KEYS[3], ARGV[2])
elseif ARGV[3] ~= '' then
  redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
end
for i = 1, 2 do
  if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('PEXPIRE', KEYS[i], ARGV[4]) end
end
return redis.call('ZCARD', KEYS[2])
"""


def member(store_id: str, claim_id: str) -> str:
    """A claim in the due set: JSON, so any id round-trips."""
    return json.dumps([store_id, claim_id])


class NoteRecords:
    """One plugin's note records. ``lock_ms`` bounds a writer's lock (a lookup and a write)."""

    def __init__(self, host: Host, plugin: str, ledger: Ledger, pacer: Pacer, lock_ms: int) -> None:
        self.host, self.plugin, self.redis = host, plugin, host.redis
        self.ledger, self.pacer, self.lock_ms = ledger, pacer, lock_ms
        self.ttl_ms = max(ledger.retention_ms, MIN_TTL_MS)
        self.due_key = host.key(plugin, "notes-due")
        self._enqueue = self.redis.register_script(_ENQUEUE)
        self._sweep = self.redis.register_script(_SWEEP)
        self._begin = self.redis.register_script(_BEGIN)
        self._end = self.redis.register_script(_END)
        self._retire = self.redis.register_script(_RETIRE)

    def notes_key(self, store_id: str, claim_id: str) -> str:
        return self.host.key(self.plugin, "notes", store_id, claim_id)

    def lock_key(self, store_id: str, claim_id: str) -> str:
        return self.host.key(self.plugin, "notelock", store_id, claim_id)

    def enqueue(self, store_id: str, claim_id: str, entry: dict[str, Any], *, received: float, score: float,
                deadline: float) -> tuple[str, str]:
        """Queue a message: (``queued``, ``waiting`` (already queued) or ``duplicate``; the ticket id or '')."""
        status, ticket = self._enqueue(
            keys=[self.notes_key(store_id, claim_id), self.ledger.note_queue_key(store_id, claim_id),
                  self.ledger.claim_key(store_id, claim_id), self.due_key],
            args=[entry["key"], f"{received!r}|{json.dumps(entry)}", repr(float(score)), self.ttl_ms,
                  member(store_id, claim_id), repr(deadline), self.ledger.retention_ms])
        return status.decode(), ticket.decode()

    def sweep(self, now: float, lease_until: float, limit: int) -> list[tuple[str, str]]:
        """Claims past their deadline, leased until ``lease_until``."""
        due = self._sweep(keys=[self.due_key], args=[repr(now), repr(lease_until), limit])
        return [tuple(json.loads(raw)) for raw in due]  # type: ignore[misc]

    def take(self, store_id: str, claim_id: str, settings_key: str, scope: str, store: Snapshot, token: str,
             sent_member: str, *, hold: float, in_flight_wait: float) -> list[Any]:
        """A writer's turn at the claim's head note (_BEGIN's reply)."""
        pacer = self.pacer
        return self._begin(
            keys=[settings_key, self.ledger.claim_key(store_id, claim_id), self.notes_key(store_id, claim_id),
                  self.ledger.note_queue_key(store_id, claim_id), self.lock_key(store_id, claim_id), *pacer.keys(scope),
                  self.host.messages_in_flight_key(store_id, claim_id), self.due_key],
            args=[store.joined, repr(time.time()), hold, repr(pacer.window), pacer.quota, sent_member,
                  repr(pacer.margin), repr(pacer.ADMIT_MARGIN), token, self.lock_ms, EPSILON, pacer.follow,
                  member(store_id, claim_id), in_flight_wait, *store.names])

    def end(self, store_id: str, claim_id: str, scope: str, key: str, token: str, sent_member: str, *,
            state: str = "", stat: str = "", clear: bool = True) -> None:
        """The turn's outcome: the message's new state ('' leaves it waiting), a counter, the
        answer time for pacing, the lock released; ``clear`` drops the sending mark."""
        self._end(keys=[self.notes_key(store_id, claim_id), self.ledger.note_queue_key(store_id, claim_id),
                        self.ledger.stats_key, self.pacer.keys(scope)[3], self.lock_key(store_id, claim_id)],
                  args=[key, state, stat, sent_member, repr(time.time()), token, self.ttl_ms, "1" if clear else ""])

    def count_attempt(self, store_id: str, claim_id: str, key: str) -> int:
        return int(self.redis.hincrby(self.notes_key(store_id, claim_id), f".attempts:{key}", 1))

    def waiting(self, store_id: str, claim_id: str) -> list[dict[str, Any]]:
        """The claim's waiting messages, by ``created_at``."""
        keys = [k.decode() for k in self.redis.zrange(self.ledger.note_queue_key(store_id, claim_id), 0, -1)]
        raws = self.redis.hmget(self.notes_key(store_id, claim_id), keys) if keys else []
        return [json.loads(raw.decode().partition("|")[2]) for raw in raws if raw and b"|" in raw]

    def retire(self, store_id: str, claim_id: str, keys: list[str], state: str, due: float | None) -> int:
        """Mark ``keys`` ``state`` and out of the queue; the claim's deadline becomes ``due`` (or
        it leaves the due set with its last message). Returns how many still wait."""
        return int(self._retire(
            keys=[self.notes_key(store_id, claim_id), self.ledger.note_queue_key(store_id, claim_id), self.due_key],
            args=[state, member(store_id, claim_id), "" if due is None else repr(due), self.ttl_ms, *keys]))

    def hold(self, store_id: str, claim_id: str) -> None:
        """Keep the claim's records for their time to live from now, out of the due set: its
        writer waits elsewhere (parked), and sets the deadline anew when it runs."""
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.pexpire(self.notes_key(store_id, claim_id), self.ttl_ms)
            pipe.pexpire(self.ledger.note_queue_key(store_id, claim_id), self.ttl_ms)
            pipe.zrem(self.due_key, member(store_id, claim_id))
            pipe.execute()
