"""The note mirror: each message of a claim's Order Protection conversation as one private note.

For stores that turned ``mirror_messages`` on, a ``message.created`` becomes a note on the
claim's ticket (``Helpdesk.add_note``). What holds, and where:

- **Once per message.** The claim's notes hash (``<ns>:<plugin>:notes:<store>:<claim>``) holds
  each message by its key (``message_id``, else the event id): queued, then ``done`` (or
  ``dead``); a message already there is a duplicate. The key being written is marked
  ``.sending`` before the request; a later turn that finds the mark (a dead worker, a lost
  answer, a 5xx) asks ``find_note`` before writing again.
- **In order.** Waiting messages sit in a sorted set by ``created_at``. One writer per claim
  (a lock) takes the earliest; it waits until that message reached opcore ``HOLD_SECONDS``
  ago, so a message sent just after it, but dated earlier, goes first. A straggler arriving
  later than that is written when it comes.
- **Never before the ticket.** A turn without a ticket writes nothing; the create that
  records the ticket sees the waiting messages (ledger ``_FINISH``) and wakes the writer.
  A message whose claim has no ticket ``DEADLINE_SECONDS`` after it arrived is a dead letter:
  the claim waits in the plugin's due set (``<ns>:<plugin>:notes-due``), which every worker
  sweeps (``sweep``, from the worker's ticker). A Dramatiq message delayed by a week would sit
  in a worker's delay prefetch all that time, crowding out the paced tickets.
- **Below creations and snoozes.** A note takes a request only when the scope's pacing has
  room *now* and no reservation is booked ahead of it: while a backlog of creations and
  finishes holds the quota, notes wait behind it.
- **Nothing lost.** Rate limits and transient failures reschedule the writer; rejected
  credentials park it; a refused note is a dead letter (replaying it queues it again).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from ..events import Event, MessageCreated
from .helpdesk import Call, CredentialsRejected, HelpdeskError, Note, RateLimited, Refused
from .ledger import EPSILON, SNAPSHOT_LUA, snapshot
from .pacing import LUA as PACING_LUA

if TYPE_CHECKING:
    from .engine import Delivery

log = logging.getLogger("opcore.notes")

#: Messages of a claim reaching opcore within this many seconds of each other are written in
#: ``created_at`` order (CONTRACT.md, "Note mirror").
HOLD_SECONDS = 2.0
#: A message whose claim still has no ticket this long after it arrived becomes a dead letter.
DEADLINE_SECONDS = 7 * 86_400.0
#: Note records outlive the deadline whatever the retention, so a waiting message is never lost.
MIN_TTL_MS = 8 * 86_400_000
BUSY_RETRY_SECONDS = 2.0
#: How long the head note waits, at most, for a message of its claim that the ingress accepted and
#: the dispatch has not queued yet (a backlog, the bulk lane, a retried plugin call).
IN_FLIGHT_WAIT_SECONDS = 30.0
#: A swept claim comes round again after this long if its writer never ran.
LEASE_SECONDS = 300.0

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
  local coming = tonumber(redis.call('GET', KEYS[10]) or '0')
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


class Later(Exception):
    """Internal: the writer's run is over; it runs again after ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay


def message_key(message: MessageCreated, event: Event) -> str:
    """The message's identity within its claim: its ``message_id``, else the event's id."""
    return f"m:{message.message_id}" if message.message_id is not None else f"e:{event.id}"


class NoteMirror:
    """One plugin's note mirror; the :class:`Delivery` it belongs to lends its pacing, settings
    cache, parking and dead letters."""

    def __init__(self, delivery: Delivery) -> None:
        self.delivery = delivery
        host, plugin = delivery.host, delivery.plugin
        self.host, self.plugin, self.redis = host, plugin, host.redis
        self.ttl_ms = max(delivery.ledger.retention_ms, MIN_TTL_MS)
        self.deadline_seconds = DEADLINE_SECONDS
        self.due_key = host.key(plugin, "notes-due")
        self._enqueue = self.redis.register_script(_ENQUEUE)
        self._sweep = self.redis.register_script(_SWEEP)
        self._begin = self.redis.register_script(_BEGIN)
        self._end = self.redis.register_script(_END)
        self._retire_script = self.redis.register_script(_RETIRE)
        # A writer may look a note up (Zendesk: up to 3 pages) and write it under one lock.
        self.lock_ms = int((4 * delivery.helpdesk.request_timeout + 5) * 1000)
        options = {"max_retries": 20, "min_backoff": 1000, "max_backoff": 600_000,
                   "on_retry_exhausted": "opcore.exhausted"}
        self.add_actor = host.actor(self.add_note, plugin=plugin, **options)
        self.write_actor = host.actor(self.write_notes, plugin=plugin, **options)

    # -- keys ---------------------------------------------------------------------------------
    def notes_key(self, store_id: str, claim_id: str) -> str:
        return self.host.key(self.plugin, "notes", store_id, claim_id)

    def _lock_key(self, store_id: str, claim_id: str) -> str:
        return self.host.key(self.plugin, "notelock", store_id, claim_id)

    # -- arrival ------------------------------------------------------------------------------
    def message_created(self, message: MessageCreated, event: Event) -> None:
        """Queue the message as a note if its store mirrors messages to this helpdesk."""
        if not self.mirroring(message.store_id):
            return
        created = message.created_at
        if created is not None and created.tzinfo is None:  # Order Protection writes UTC
            created = created.replace(tzinfo=timezone.utc)
        self.add_note(message.store_id, {
            "key": message_key(message, event), "claim_id": message.claim_id, "message": message.message,
            "sender_type": message.sender_type, "author_name": message.author_name,
            "created_at": created.timestamp() if created else None, "received_at": event.received_at or time.time()})

    def mirroring(self, store_id: str) -> bool:
        """Whether the store has this helpdesk enabled with the mirror on; a cached no is read afresh."""
        delivery, helpdesk = self.delivery, self.delivery.helpdesk
        for fresh in (False, True):
            _, config = delivery.store(store_id, fresh=fresh)
            if config is not None and helpdesk.enabled(config) and helpdesk.mirrors_messages(config):
                return True
        return False

    def add_note(self, store_id: str, entry: dict[str, Any]) -> None:
        """Queue one message (the actor a dead letter replays: it arrives anew, with a new
        deadline); the writer runs once it may."""
        entry = {**entry, "received_at": entry.get("received_at") or time.time()}
        claim_id, received = entry["claim_id"], float(entry["received_at"])
        score = entry["created_at"] if entry.get("created_at") is not None else received
        status, ticket = self._enqueue(
            keys=[self.notes_key(store_id, claim_id), self.delivery.ledger.note_queue_key(store_id, claim_id),
                  self.delivery.ledger.claim_key(store_id, claim_id), self.due_key],
            args=[entry["key"], f"{received!r}|{json.dumps(entry)}", repr(float(score)), self.ttl_ms,
                  _member(store_id, claim_id), repr(received + self.deadline_seconds),
                  self.delivery.ledger.retention_ms])
        if status != b"queued":
            self.delivery.count("note_duplicates")
        if status != b"duplicate" and ticket:  # written once it has waited HOLD_SECONDS for earlier-dated ones
            self.wake(store_id, claim_id, delay=received + HOLD_SECONDS - time.time())
        # else: the create that records the ticket wakes the writer; the due set is the deadline

    def sweep(self, now: float | None = None, limit: int = 500) -> int:
        """Wake the writer of every claim past its deadline (a worker's ticker calls this)."""
        now = time.time() if now is None else now
        due = self._sweep(keys=[self.due_key], args=[repr(now), repr(now + LEASE_SECONDS), limit])
        for member in due:
            store_id, claim_id = json.loads(member)
            self.wake(store_id, claim_id)
        return len(due)

    def wake(self, store_id: str, claim_id: str, *, delay: float = 0.0) -> None:
        """Send the claim's writer, after ``delay`` seconds."""
        if delay > EPSILON:
            self.write_actor.send_with_options(args=(store_id, claim_id), delay=int(delay * 1000) + 1)
        else:
            self.write_actor.send_with_options(args=(store_id, claim_id))

    # -- the writer ---------------------------------------------------------------------------
    def write_notes(self, store_id: str, claim_id: str) -> None:
        """Write the claim's waiting notes, in order, as far as its ticket, timing and pacing allow."""
        try:
            self._write(store_id, claim_id)
        except Later as later:
            self.wake(store_id, claim_id, delay=later.delay)

    def _write(self, store_id: str, claim_id: str) -> None:
        delivery, helpdesk = self.delivery, self.delivery.helpdesk
        stale = 0
        while True:
            snap, config = delivery.store(store_id)
            if not (self._active(config) and helpdesk.usable(config)):  # the cache may be behind: read afresh
                snap, config = delivery.store(store_id, fresh=True)
            if not self._active(config):
                self._drop(store_id, claim_id)
                return
            if not helpdesk.usable(config):
                self._park(store_id, claim_id)
                return
            scope = helpdesk.pacing_scope(config)
            token, member = f"{random.getrandbits(64):016x}", f"{random.getrandbits(128):032x}"
            reply = self._take(store_id, claim_id, scope, snap.joined, snap.names, token, member)
            outcome = reply[0].decode()
            if outcome == "stale":
                stale += 1
                if stale > 3:
                    raise RuntimeError(f"the {self.plugin} settings of store {store_id!r} kept changing; retrying later")
                flat = [part.decode() for part in reply[1]]
                delivery._remember(store_id, dict(zip(flat[::2], flat[1::2])))
                continue
            if outcome == "again":
                continue
            if outcome == "empty":
                return
            if outcome == "noticket":
                self._no_ticket(store_id, claim_id)
                return
            if outcome == "busy":
                delivery.count("lock_waits")
                raise Later(BUSY_RETRY_SECONDS)
            if outcome == "wait":  # spread the waiting writers over a second past the slot
                raise Later(float(reply[1]) - time.time() + random.uniform(0.0, 1.0))
            ticket_id, key, payload, looked_for = (part.decode() for part in reply[1:5])
            if not self._send(store_id, claim_id, config, scope, token, member, ticket_id, key,
                              payload.partition("|")[2], bool(looked_for)):
                return

    def _take(self, store_id: str, claim_id: str, scope: str, joined: str, names: tuple[str, ...], token: str,
              member: str) -> list[Any]:
        delivery, pacer = self.delivery, self.delivery.pacer
        return self._begin(
            keys=[delivery.helpdesk.settings_key(store_id), delivery.ledger.claim_key(store_id, claim_id),
                  self.notes_key(store_id, claim_id), delivery.ledger.note_queue_key(store_id, claim_id),
                  self._lock_key(store_id, claim_id), *pacer.keys(scope),
                  self.host.messages_in_flight_key(store_id, claim_id), self.due_key],
            args=[joined, repr(time.time()), HOLD_SECONDS, repr(pacer.window), pacer.quota, member, repr(pacer.margin),
                  repr(pacer.ADMIT_MARGIN), token, self.lock_ms, EPSILON, pacer.follow, _member(store_id, claim_id),
                  IN_FLIGHT_WAIT_SECONDS, *names])

    def _active(self, config: Any) -> bool:
        helpdesk = self.delivery.helpdesk
        return config is not None and helpdesk.enabled(config) and helpdesk.mirrors_messages(config)

    def _send(self, store_id: str, claim_id: str, config: Any, scope: str, token: str, member: str,
              ticket_id: str, key: str, entry_json: str, look_first: bool) -> bool:
        """Write one note (after looking for it, when an earlier write may have acted); False
        when the writer must stop (its work parked)."""
        delivery, helpdesk = self.delivery, self.delivery.helpdesk
        entry = json.loads(entry_json)
        note = self.note(store_id, claim_id, entry)
        call = Call(config, scope, delivery._observer(scope))

        def end(state: str = "", stat: str = "", *, clear: bool = True) -> None:
            self._end(keys=[self.notes_key(store_id, claim_id), delivery.ledger.note_queue_key(store_id, claim_id),
                            delivery.ledger.stats_key, delivery.pacer.keys(scope)[3], self._lock_key(store_id, claim_id)],
                      args=[key, state, stat, member, repr(time.time()), token, self.ttl_ms, "1" if clear else ""])

        looking = look_first
        try:
            if looking:
                if delivery._send(call, lambda c: helpdesk.find_note(c, ticket_id, note), count=True):
                    end("done", "notes_adopted")
                    return True
                delivery.pacer.answered(scope, member)
                looking = False
                admitted, retry_at = delivery.pacer.admit(scope)
                if admitted is None:
                    assert retry_at is not None
                    end(clear=True)  # not there: the next turn writes it without looking again
                    raise Later(retry_at - time.time())
                member = admitted
            delivery._send(call, lambda c: helpdesk.add_note(c, ticket_id, note), count=True)
        except RateLimited:
            end(clear=not looking)  # a rate-limited write did nothing; an unanswered lookup asks again
            raise Later(delivery.pacer.blocked_until(scope) - time.time()) from None
        except CredentialsRejected as exc:
            end(clear=not looking)
            helpdesk.credentials_rejected(config, str(exc))
            self._park(store_id, claim_id)
            return False
        except Refused as exc:
            end("dead", "dead_note")
            self._dead(store_id, claim_id, entry, f"{helpdesk.title} refused the note: {exc}")
            return True
        except HelpdeskError as exc:  # transient: the note may or may not be there; look first next time
            end(clear=False)
            attempts = int(self.redis.hincrby(self.notes_key(store_id, claim_id), f".attempts:{key}", 1))
            if attempts >= delivery.max_attempts:
                end("dead", "dead_note")
                self._dead(store_id, claim_id, entry, f"gave up after {attempts} attempts: {exc}")
                return True
            raise Later(min(2.0 ** (attempts - 1), 600.0) * random.uniform(0.5, 1.0)) from None
        end("done", "notes")
        return True

    def note(self, store_id: str, claim_id: str, entry: dict[str, Any]) -> Note:
        """The note a queued message makes; its ref is the same on every attempt."""
        digest = hashlib.sha256(json.dumps([self.plugin, store_id, claim_id, entry["key"]]).encode()).hexdigest()
        created = entry.get("created_at")
        return Note(store_id=store_id, claim_id=claim_id, ref=f"opcore-note-{digest[:24]}", message=entry["message"],
                    claim_url=self.host.claim_url(claim_id), sender_type=entry.get("sender_type"),
                    author_name=entry.get("author_name"),
                    created_at=datetime.fromtimestamp(created).astimezone() if created is not None else None)

    # -- what is not written ------------------------------------------------------------------
    def _waiting(self, store_id: str, claim_id: str) -> list[dict[str, Any]]:
        keys = [k.decode() for k in self.redis.zrange(self.delivery.ledger.note_queue_key(store_id, claim_id), 0, -1)]
        raws = self.redis.hmget(self.notes_key(store_id, claim_id), keys) if keys else []
        return [json.loads(raw.decode().partition("|")[2]) for raw in raws if raw and b"|" in raw]

    def _retire(self, store_id: str, claim_id: str, keys: list[str], state: str, due: float | None) -> int:
        """Mark ``keys`` ``state`` and out of the queue; the claim's deadline becomes ``due`` (or
        leaves the due set with its last message). Returns how many still wait."""
        return int(self._retire_script(
            keys=[self.notes_key(store_id, claim_id), self.delivery.ledger.note_queue_key(store_id, claim_id),
                  self.due_key],
            args=[state, _member(store_id, claim_id), "" if due is None else repr(due), self.ttl_ms, *keys]))

    def _park(self, store_id: str, claim_id: str) -> None:
        """Credentials rejected: the writer waits in the store's parking for valid ones. The claim
        leaves the due set meanwhile (a sweep would only park it again); released, its writer
        sets the deadline anew."""
        self._retire(store_id, claim_id, [], "", None)  # refreshes the records' expiry
        self.redis.zrem(self.due_key, _member(store_id, claim_id))
        self.delivery.parking.park(store_id, self.write_actor.actor_name, [store_id, claim_id])
        self.delivery.count("parked")

    def _drop(self, store_id: str, claim_id: str) -> None:
        """The store disabled this helpdesk or turned the mirror off: its waiting notes are not written."""
        waiting = self._waiting(store_id, claim_id)
        self._retire(store_id, claim_id, [entry["key"] for entry in waiting], "skipped", None)
        if waiting:
            log.info("%s: %d note(s) of claim %r of store %r not written: the note mirror is off",
                     self.plugin, len(waiting), claim_id, store_id)

    def _no_ticket(self, store_id: str, claim_id: str) -> None:
        """No ticket yet: messages past the deadline become dead letters; the rest wait for it."""
        now = time.time()
        waiting = self._waiting(store_id, claim_id)
        due = [e for e in waiting if now - float(e["received_at"]) >= self.deadline_seconds]
        rest = [float(e["received_at"]) for e in waiting if e not in due]
        self._retire(store_id, claim_id, [e["key"] for e in due], "dead",
                     (min(rest) if rest else now) + self.deadline_seconds)
        for entry in due:
            self.delivery.count("dead_note")
            self._dead(store_id, claim_id, entry,
                       f"the claim had no ticket {self.deadline_seconds / 86_400:g} days after this message arrived")

    def _dead(self, store_id: str, claim_id: str, entry: dict[str, Any], reason: str) -> None:
        """A dead letter whose replay queues the message again, as if it had just arrived."""
        log.error("%s: a note for claim %r of store %r is a dead letter: %r", self.plugin, claim_id, store_id, reason)
        replayed = {k: v for k, v in entry.items() if k != "received_at"}
        self.host.dead_letters.add(self.add_actor.actor_name, [store_id, replayed], reason=reason, store_id=store_id,
                                   claim_id=claim_id, part=self.note(store_id, claim_id, entry).ref)


def _member(store_id: str, claim_id: str) -> str:
    """A claim in the due set: JSON, so any id round-trips."""
    return json.dumps([store_id, claim_id])
