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
from datetime import datetime
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
#: A swept claim comes round again after this long if its writer never ran.
LEASE_SECONDS = 300.0

# KEYS: notes hash, note queue, claim hash, due set. ARGV: message key, payload, order score, ttl ms,
# due member, deadline. A known message is a duplicate, unless it was a dead letter (a replay
# queues it again). Without a ticket, the claim enters the due set (its earliest deadline stays).
_ENQUEUE = """
local state = redis.call('HGET', KEYS[1], ARGV[1])
if state and state ~= 'dead' then return {'duplicate'} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
local ticket = redis.call('HGET', KEYS[3], 'ticket_id')
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

# KEYS: store hash, claim hash, notes hash, note queue, note lock, slots, blocked, limit, sent.
# ARGV: store snapshot, now, hold, window, quota, member, reserve margin, admit margin, lock token,
#       lock ms, epsilon, follow, then the snapshot's field names.
# A payload is "<received at>|<json>". The pacing slot is booked only when it is now: a note
# never books ahead, so every reservation a creation or a finish holds comes first.
_BEGIN = PACING_LUA + SNAPSHOT_LUA + """
if stale(KEYS[1], ARGV[1], 13) then return {'stale', redis.call('HGETALL', KEYS[1])} end
local now = tonumber(ARGV[2])
local sending = redis.call('HGET', KEYS[3], '.sending')
local key = sending
if not key then
  local head = redis.call('ZRANGE', KEYS[4], 0, 0)
  if #head == 0 then return {'empty'} end
  key = head[1]
end
local payload = redis.call('HGET', KEYS[3], key)
if not payload or payload == 'done' or payload == 'dead' then
  redis.call('ZREM', KEYS[4], key)
  redis.call('HDEL', KEYS[3], '.sending')
  return {'again'}
end
local ticket = redis.call('HGET', KEYS[2], 'ticket_id')
if not ticket then return {'noticket'} end
local holder = redis.call('GET', KEYS[5])
if holder == ARGV[9] then return {'go', ticket, key, payload, sending and '1' or ''} end
if holder then return {'busy'} end
local ready = tonumber(string.match(payload, '^([^|]+)|')) + tonumber(ARGV[3])
if not sending and ready > now then return {'wait', string.format('%.6f', ready)} end
local window, quota, follow = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[12] == '1'
local slot = reserve(KEYS[6], KEYS[7], KEYS[8], now, window, quota, follow, ARGV[6], tonumber(ARGV[7]))
if slot - now > tonumber(ARGV[11]) then
  redis.call('ZREM', KEYS[6], ARGV[6])
  return {'wait', string.format('%.6f', slot)}
end
local retry = admit(KEYS[9], KEYS[7], KEYS[8], now, window + tonumber(ARGV[8]), quota, follow, ARGV[6])
if retry then return {'wait', string.format('%.6f', retry)} end
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
  redis.call('ZREM', KEYS[2], ARGV[1])
end
if ARGV[8] == '1' then redis.call('HDEL', KEYS[1], '.sending') end
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[7]) end
if ARGV[3] ~= '' then redis.call('HINCRBY', KEYS[3], ARGV[3], 1) end
if ARGV[4] ~= '' then redis.call('ZADD', KEYS[4], 'XX', ARGV[5], ARGV[4]) end
if redis.call('GET', KEYS[5]) == ARGV[6] then redis.call('DEL', KEYS[5]) end
return redis.call('ZCARD', KEYS[2])
"""


class Later(Exception):
    """Internal: the writer's run is over; it runs again after ``delay`` seconds."""

    def __init__(self, delay: float, attempt: int = 0) -> None:
        super().__init__()
        self.delay, self.attempt = delay, attempt


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
        received = event.received_at or time.time()
        created = message.created_at.timestamp() if message.created_at else received
        self.add_note(message.store_id, {
            "key": message_key(message, event), "claim_id": message.claim_id, "message": message.message,
            "sender_type": message.sender_type, "author_name": message.author_name,
            "created_at": created if message.created_at else None, "received_at": received})

    def mirroring(self, store_id: str) -> bool:
        """Whether the store has this helpdesk enabled with the mirror on; a cached no is read afresh."""
        delivery, helpdesk = self.delivery, self.delivery.helpdesk
        for fresh in (False, True):
            _, config = delivery.store(store_id, fresh=fresh)
            if config is not None and helpdesk.enabled(config) and helpdesk.mirrors_messages(config):
                return True
        return False

    def add_note(self, store_id: str, entry: dict[str, Any]) -> None:
        """Queue one message (the actor a dead letter replays); the writer runs once it may."""
        claim_id, received = entry["claim_id"], float(entry["received_at"])
        score = entry["created_at"] if entry.get("created_at") is not None else received
        status, *rest = self._enqueue(
            keys=[self.notes_key(store_id, claim_id), self.delivery.ledger.note_queue_key(store_id, claim_id),
                  self.delivery.ledger.claim_key(store_id, claim_id), self.due_key],
            args=[entry["key"], f"{received!r}|{json.dumps(entry)}", repr(float(score)), self.ttl_ms,
                  _member(store_id, claim_id), repr(received + self.deadline_seconds)])
        if status == b"duplicate":
            self.delivery.count("note_duplicates")
        elif rest[0]:  # written once it has waited HOLD_SECONDS for messages dated before it
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

    def wake(self, store_id: str, claim_id: str, *, delay: float = 0.0, attempt: int = 0) -> None:
        """Send the claim's writer, after ``delay`` seconds."""
        kwargs = {"attempt": attempt} if attempt else {}
        if delay > EPSILON:
            self.write_actor.send_with_options(args=(store_id, claim_id), kwargs=kwargs, delay=int(delay * 1000) + 1)
        else:
            self.write_actor.send_with_options(args=(store_id, claim_id), kwargs=kwargs)

    # -- the writer ---------------------------------------------------------------------------
    def write_notes(self, store_id: str, claim_id: str, attempt: int = 0) -> None:
        """Write the claim's waiting notes, in order, as far as its ticket, timing and pacing allow."""
        try:
            self._write(store_id, claim_id, attempt)
        except Later as later:
            self.wake(store_id, claim_id, delay=later.delay, attempt=later.attempt)

    def _write(self, store_id: str, claim_id: str, attempt: int) -> None:
        delivery, helpdesk = self.delivery, self.delivery.helpdesk
        stale = 0
        while True:
            snap, config = delivery.store(store_id)
            if not self._active(config):
                snap, config = delivery.store(store_id, fresh=True)
                if not self._active(config):
                    self._drop(store_id, claim_id)
                    return
            if not helpdesk.usable(config):
                delivery.parking.park(store_id, self.write_actor.actor_name, [store_id, claim_id])
                delivery.count("parked")
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
                self.redis.zrem(self.due_key, _member(store_id, claim_id))
                return
            if outcome == "noticket":
                self._no_ticket(store_id, claim_id)
                return
            if outcome == "busy":
                delivery.count("lock_waits")
                raise Later(BUSY_RETRY_SECONDS, attempt)
            if outcome == "wait":  # spread the waiting writers over a second past the slot
                raise Later(float(reply[1]) - time.time() + random.uniform(0.0, 1.0), attempt)
            ticket_id, key, payload, looked_for = (part.decode() for part in reply[1:5])
            went = self._send(store_id, claim_id, config, scope, token, member, ticket_id, key,
                              payload.partition("|")[2], bool(looked_for), attempt)
            if went is None:
                return
            attempt = went

    def _take(self, store_id: str, claim_id: str, scope: str, joined: str, names: tuple[str, ...], token: str,
              member: str) -> list[Any]:
        delivery, pacer = self.delivery, self.delivery.pacer
        return self._begin(
            keys=[delivery.helpdesk.settings_key(store_id), delivery.ledger.claim_key(store_id, claim_id),
                  self.notes_key(store_id, claim_id), delivery.ledger.note_queue_key(store_id, claim_id),
                  self._lock_key(store_id, claim_id), *pacer.keys(scope)],
            args=[joined, repr(time.time()), HOLD_SECONDS, repr(pacer.window), pacer.quota, member, repr(pacer.margin),
                  repr(pacer.ADMIT_MARGIN), token, delivery.ledger.lock_ms, EPSILON, pacer.follow, *names])

    def _active(self, config: Any) -> bool:
        helpdesk = self.delivery.helpdesk
        return config is not None and helpdesk.enabled(config) and helpdesk.mirrors_messages(config)

    def _send(self, store_id: str, claim_id: str, config: Any, scope: str, token: str, member: str,
              ticket_id: str, key: str, entry_json: str, look_first: bool, attempt: int) -> int | None:
        """Write one note (after looking for it, when an earlier write may have acted); returns
        the attempt count the next note starts from, or None when the writer must stop (parked)."""
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
                    return 0
                delivery.pacer.answered(scope, member)
                looking = False
                admitted, retry_at = delivery.pacer.admit(scope)
                if admitted is None:
                    assert retry_at is not None
                    end(clear=True)  # not there: the next turn writes it without looking again
                    raise Later(retry_at - time.time(), attempt)
                member = admitted
            delivery._send(call, lambda c: helpdesk.add_note(c, ticket_id, note), count=True)
        except RateLimited:
            end(clear=not looking)  # a rate-limited write did nothing; an unanswered lookup asks again
            raise Later(delivery.pacer.blocked_until(scope) - time.time(), attempt) from None
        except CredentialsRejected as exc:
            end(clear=not looking)
            helpdesk.credentials_rejected(config, str(exc))
            delivery.parking.park(store_id, self.write_actor.actor_name, [store_id, claim_id])
            delivery.count("parked")
            return None
        except Refused as exc:
            end("dead", "dead_note")
            self._dead(store_id, claim_id, entry, f"{helpdesk.title} refused the note: {exc}")
            return attempt
        except HelpdeskError as exc:  # transient: the note may or may not be there; look first next time
            end(clear=False)
            if attempt + 1 >= delivery.max_attempts:
                end("dead", "dead_note")
                self._dead(store_id, claim_id, entry, f"gave up after {attempt + 1} attempts: {exc}")
                return 0
            raise Later(min(2.0 ** attempt, 600.0) * random.uniform(0.5, 1.0), attempt + 1) from None
        end("done", "notes")
        return 0

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
        return [json.loads(raw.decode().partition("|")[2]) for raw in raws
                if raw and raw not in (b"done", b"dead")]

    def _retire(self, store_id: str, claim_id: str, keys: list[str], state: str) -> None:
        pipe = self.redis.pipeline(transaction=True)
        for key in keys:
            pipe.hset(self.notes_key(store_id, claim_id), key, state)
            pipe.zrem(self.delivery.ledger.note_queue_key(store_id, claim_id), key)
        pipe.execute()

    def _drop(self, store_id: str, claim_id: str) -> None:
        """The store disabled this helpdesk or turned the mirror off: its waiting notes are not written."""
        waiting = self._waiting(store_id, claim_id)
        if waiting:
            self._retire(store_id, claim_id, [entry["key"] for entry in waiting], "skipped")
            log.info("%s: %d note(s) of claim %r of store %r not written: the note mirror is off",
                     self.plugin, len(waiting), claim_id, store_id)

    def _no_ticket(self, store_id: str, claim_id: str) -> None:
        """No ticket yet: messages past the deadline become dead letters; the rest wait for it."""
        now, due = time.time(), []
        waiting = self._waiting(store_id, claim_id)
        for entry in waiting:
            if now - float(entry["received_at"]) >= self.deadline_seconds:
                due.append(entry)
        if due:
            self._retire(store_id, claim_id, [entry["key"] for entry in due], "dead")
            for entry in due:
                self.delivery.count("dead_note")
                self._dead(store_id, claim_id, entry,
                           f"the claim had no ticket {self.deadline_seconds / 86_400:g} days after this message arrived")
        rest = [float(entry["received_at"]) for entry in waiting if entry not in due]
        member = _member(store_id, claim_id)
        if rest:
            self.redis.zadd(self.due_key, {member: min(rest) + self.deadline_seconds})
        else:
            self.redis.zrem(self.due_key, member)

    def _dead(self, store_id: str, claim_id: str, entry: dict[str, Any], reason: str) -> None:
        log.error("%s: a note for claim %r of store %r is a dead letter: %r", self.plugin, claim_id, store_id, reason)
        self.host.dead_letters.add(self.add_actor.actor_name, [store_id, entry], reason=reason, store_id=store_id,
                                   claim_id=claim_id, part=self.note(store_id, claim_id, entry).ref)


def _member(store_id: str, claim_id: str) -> str:
    """A claim in the due set: JSON, so any id round-trips."""
    return json.dumps([store_id, claim_id])
