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
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from ..events import Event, MessageCreated, utc
from ..replication import NotReplicated
from .helpdesk import Call, CredentialsRejected, HelpdeskError, Note, RateLimited, Refused
from .ledger import EPSILON, fields_of
from .note_records import NoteRecords

if TYPE_CHECKING:
    from .engine import Delivery

log = logging.getLogger("opcore.notes")

#: Messages of a claim reaching opcore within this many seconds of each other are written in
#: ``created_at`` order (CONTRACT.md, "Note mirror").
HOLD_SECONDS = 2.0
#: A message whose claim still has no ticket this long after it arrived becomes a dead letter.
DEADLINE_SECONDS = 7 * 86_400.0
BUSY_RETRY_SECONDS = 2.0
#: How long the head note waits, at most, for a message of its claim that the ingress accepted and
#: the dispatch has not queued yet (a backlog, the bulk lane, a retried plugin call).
IN_FLIGHT_WAIT_SECONDS = 30.0
#: A swept claim comes round again after this long if its writer never ran.
LEASE_SECONDS = 300.0


@dataclass
class NoteTurn:
    """A writer's turn at a claim's head note: its lock token, and the pacing member it was admitted as."""

    store_id: str
    claim_id: str
    scope: str = field(repr=False)  # may be an API key
    token: str
    member: str
    key: str = ""


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
        self.host, self.plugin = host, plugin
        self.deadline_seconds = DEADLINE_SECONDS
        # A writer may look a note up (Zendesk: up to 3 pages) and write it under one lock.
        self.records = NoteRecords(host, plugin, delivery.ledger, delivery.pacer,
                                   lock_ms=int((4 * delivery.helpdesk.request_timeout + 5) * 1000))
        self.add_actor = host.actor(self.add_note, plugin=plugin, **delivery.actor_options)
        self.write_actor = host.actor(self.write_notes, plugin=plugin, **delivery.actor_options)

    # -- arrival ------------------------------------------------------------------------------
    def message_created(self, message: MessageCreated, event: Event) -> None:
        """Queue the message as a note if its store mirrors messages to this helpdesk."""
        if not self.mirroring(message.store_id):
            return
        created = utc(message.created_at).timestamp() if message.created_at else None
        self.add_note(message.store_id, {
            "key": message_key(message, event), "claim_id": message.claim_id, "message": message.message,
            "sender_type": message.sender_type, "author_name": message.author_name,
            "created_at": created, "received_at": event.received_at or time.time()})

    def mirroring(self, store_id: str) -> bool:
        """Whether the store has this helpdesk enabled with the mirror on (a cached no is read
        afresh, by the read the dispatch sent along when there is one)."""
        return self.delivery.stores.find(store_id, self._active)

    def add_note(self, store_id: str, entry: dict[str, Any]) -> None:
        """Queue one message (the actor a dead letter replays: it arrives anew, with a new
        deadline); the writer runs once it may."""
        entry = {**entry, "received_at": entry.get("received_at") or time.time()}
        claim_id, received = entry["claim_id"], float(entry["received_at"])
        score = entry["created_at"] if entry.get("created_at") is not None else received
        status, ticket = self.records.enqueue(store_id, claim_id, entry, received=received, score=score,
                                              deadline=received + self.deadline_seconds)
        if status != "queued":
            self.delivery.count("note_duplicates")
        if status != "duplicate" and ticket:  # written once it has waited HOLD_SECONDS for earlier-dated ones
            self.wake(store_id, claim_id, delay=received + HOLD_SECONDS - time.time())
        # else: the create that records the ticket wakes the writer; the due set is the deadline

    def sweep(self, now: float | None = None, limit: int = 500) -> int:
        """Wake the writer of every claim past its deadline (a worker's ticker calls this)."""
        now = time.time() if now is None else now
        due = self.records.sweep(now, now + LEASE_SECONDS, limit)
        for store_id, claim_id in due:
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
            turn = NoteTurn(store_id, claim_id, helpdesk.pacing_scope(config), f"{random.getrandbits(64):016x}",
                        f"{random.getrandbits(128):032x}")
            reply = self.records.take(store_id, claim_id, helpdesk.settings_key(store_id), turn.scope, snap, turn.token,
                                      turn.member, hold=HOLD_SECONDS, in_flight_wait=IN_FLIGHT_WAIT_SECONDS)
            outcome = reply[0].decode()
            if outcome == "stale":
                stale += 1
                if stale > 3:
                    raise delivery.settings_kept_changing(store_id)
                delivery.stores.remember(store_id, fields_of(reply[1]))
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
            ticket_id, turn.key, payload, looked_for = (part.decode() for part in reply[1:5])
            if not self._send(turn, config, ticket_id, json.loads(payload.partition("|")[2]), bool(looked_for)):
                return

    def _active(self, config: Any) -> bool:
        helpdesk = self.delivery.helpdesk
        return config is not None and helpdesk.enabled(config) and helpdesk.mirrors_messages(config)

    def _send(self, turn: NoteTurn, config: Any, ticket_id: str, entry: dict[str, Any], look_first: bool) -> bool:
        """Write one note (after looking for it, when an earlier write may have acted); False
        when the writer must stop (its work parked)."""
        delivery, helpdesk, records = self.delivery, self.delivery.helpdesk, self.records
        store_id, claim_id, scope = turn.store_id, turn.claim_id, turn.scope
        note = self.note(store_id, claim_id, entry)
        call = Call(config, scope, delivery._observer(scope))

        def end(state: str = "", stat: str = "", *, clear: bool = True) -> None:
            records.end(store_id, claim_id, scope, turn.key, turn.token, turn.member, state=state, stat=stat, clear=clear)

        looking = look_first
        try:  # the note's in-flight mark is on the replicas first (engine.Delivery._replicated)
            delivery.host.replication.confirm(delivery.redis)
        except NotReplicated as exc:
            end(clear=not looking)
            delivery.host.metrics.count_refusal("delivery")
            log.warning("%s: a note of claim %r waits: %s", delivery.plugin, claim_id, exc)
            raise Later(random.uniform(1.0, 3.0)) from None
        try:
            if looking:
                if delivery._send(call, lambda c: helpdesk.find_note(c, ticket_id, note), count=True):
                    end("done", "notes_adopted")
                    return True
                delivery.pacer.answered(scope, turn.member)
                looking = False
                admitted, retry_at = delivery.pacer.admit(scope)
                if admitted is None:
                    assert retry_at is not None
                    end(clear=True)  # not there: the next turn writes it without looking again
                    raise Later(retry_at - time.time())
                turn.member = admitted
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
            attempts = records.count_attempt(store_id, claim_id, turn.key)
            if attempts >= delivery.max_attempts:
                end("dead", "dead_note")
                self._dead(store_id, claim_id, entry, f"gave up after {attempts} attempts: {exc}")
                return True
            raise Later(delivery.backoff(attempts - 1)) from None
        end("done", "notes")
        return True

    def note(self, store_id: str, claim_id: str, entry: dict[str, Any]) -> Note:
        """The note a queued message makes; its ref is the same on every attempt."""
        digest = hashlib.sha256(json.dumps([self.plugin, store_id, claim_id, entry["key"]]).encode()).hexdigest()
        created = entry.get("created_at")
        return Note(store_id=store_id, claim_id=claim_id, ref=f"opcore-note-{digest[:24]}", message=entry["message"],
                    claim_url=self.host.claim_url(claim_id), sender_type=entry.get("sender_type"),
                    author_name=entry.get("author_name"),
                    created_at=datetime.fromtimestamp(created, timezone.utc) if created is not None else None)

    # -- what is not written ------------------------------------------------------------------
    def _park(self, store_id: str, claim_id: str) -> None:
        """Credentials rejected: the writer waits in the store's parking for valid ones. The claim
        leaves the due set meanwhile (a sweep would only park it again); released, its writer
        sets the deadline anew."""
        self.records.hold(store_id, claim_id)
        self.delivery.parking.park(store_id, self.write_actor.actor_name, [store_id, claim_id])
        self.delivery.count("parked")

    def _drop(self, store_id: str, claim_id: str) -> None:
        """The store disabled this helpdesk or turned the mirror off: its waiting notes are not written."""
        waiting = self.records.waiting(store_id, claim_id)
        self.records.retire(store_id, claim_id, [entry["key"] for entry in waiting], "skipped", None)
        if waiting:
            log.info("%s: %d note(s) of claim %r of store %r not written: the note mirror is off",
                     self.plugin, len(waiting), claim_id, store_id)

    def _no_ticket(self, store_id: str, claim_id: str) -> None:
        """No ticket yet: messages past the deadline become dead letters; the rest wait for it."""
        now = time.time()
        waiting = self.records.waiting(store_id, claim_id)
        due = [e for e in waiting if now - float(e["received_at"]) >= self.deadline_seconds]
        rest = [float(e["received_at"]) for e in waiting if e not in due]
        self.records.retire(store_id, claim_id, [e["key"] for e in due], "dead",
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
