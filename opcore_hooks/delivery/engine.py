"""Delivery to a helpdesk: one ticket per claim, one finishing call per finished claim, paced.

The host builds one :class:`Delivery` per plugin whose ``register_helpdesk`` hook returns a
:class:`~.helpdesk.Helpdesk`; the plugin's claim hooks hand claims to it. Guarantees, and
where they hold:

- **One ticket per claim.** A per-claim record in Redis (``ledger.py``) holds the ticket id
  once known, and a ``pending`` flag is set *before* every create. A later attempt that finds
  ``pending`` set (the worker died, the answer was lost, a 5xx came back after the helpdesk may
  have acted) first asks the helpdesk's ``find_ticket`` and adopts what it finds, and only
  creates when it finds nothing. A per-claim lock keeps duplicate messages (Dramatiq delivers
  at least once) from racing each other. What remains is the helpdesk's own window between
  creating a ticket and finding it.
- **Finish after creation, once.** A finished claim sets ``finish=wanted`` and the create
  path checks it right after recording the ticket id; whichever of the two runs second sends
  the finish, and ``finish=done`` makes repeats no-ops. A worker killed between the request
  and recording it repeats the (idempotent) finish once.
- **Nothing is dropped.** Rate limits and transient failures reschedule the message (a new
  delayed message, so Dramatiq's retry budget is never spent on waiting); a refusal goes to
  the dead letters with the reason; rejected credentials are recorded in the store's health
  and park the work until valid ones are saved.

A new claim's first turn runs right in the thread that dispatched the event: a second
Dramatiq message per ticket would cost more than the ticket's own work. Only what must wait
(a paced slot, a held lock, a retry) becomes a message for the create or finish actor.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, Literal, TypeVar

from ..deadletters import retry_options
from ..events import ClaimCreated, ClaimStatusChanged, Event, MessageCreated, utc
from ..replication import NotReplicated
from .helpdesk import Call, CredentialsRejected, Helpdesk, HelpdeskError, RateLimited, Refused
from .ledger import EPSILON, Kind, Ledger, Snapshot, Turn
from .notes import NoteMirror
from .pacing import Pacer
from .parking import Parking
from .store_cache import StoreCache

if TYPE_CHECKING:
    from ..host import Host

log = logging.getLogger("opcore.delivery")

T = TypeVar("T")
BUSY_RETRY_SECONDS = 2.0
#: A finish wanted for a claim whose ticket id is unknown looks for the ticket this many times,
#: FINISH_LOOKUP_SECONDS after the change and doubling (at most an hour apart), then becomes a
#: dead letter: a failover can lose a ticket's id, never the finish (docs/RELIABILITY.md).
FINISH_LOOKUPS = 8
FINISH_LOOKUP_SECONDS = 60.0


@dataclass(frozen=True)
class Job:
    """One piece of delivery work: create a claim's ticket, or finish it."""

    kind: Kind
    store_id: str
    claim_id: str
    slot: float | None = None
    attempt: int = 0
    claim: ClaimCreated | None = None
    raw: dict[str, Any] | None = None
    #: Straight from the event: a store found disconnected meanwhile is skipped, as the hook
    #: skips it, rather than parked (parked work would be sent once the store reconnects).
    first: bool = False
    #: When the ingress accepted the claim (unix seconds), for the claim-to-ticket histogram.
    accepted_at: float | None = None
    #: A wanted finish whose ticket id is unknown: the how-manieth look at the helpdesk for the
    #: ticket (None for every other job).
    lookup: int | None = None

    @property
    def args(self) -> list[Any]:
        """The actor's positional arguments, as a message or a parked entry carries them."""
        if self.kind == "finish":
            return [self.store_id, self.claim_id]
        assert self.claim is not None
        return [self.store_id, self.raw if self.raw is not None else self.claim.model_dump(mode="json")]


@dataclass(frozen=True)
class StoreHealth:
    store_id: str
    credentials: str  # valid, invalid or unchecked
    parked: int


class Rescheduled(Exception):
    """Internal: this run is over; ``run`` sends the job again for later, once the claim lock
    is released (sent under the lock, a message due at once can reach another thread before
    the release and lose BUSY_RETRY_SECONDS to the lock)."""

    def __init__(self, job: Job, delay: float) -> None:
        super().__init__()
        self.job, self.delay = job, delay


class Delivery:
    """One plugin's delivery: its actors, claim records, pacing and parking on one host."""

    #: Transient failures (5xx, timeouts, lost connections) before the work becomes a dead letter.
    max_attempts = 15
    #: Dramatiq options of every delivery actor (the note mirror's too): its retries are for
    #: bugs and outages only, since waits are new delayed messages.
    actor_options: dict[str, Any] = {**retry_options(20), "min_backoff": 1000, "max_backoff": 600_000,
                                     "on_retry_exhausted": "opcore.exhausted"}

    def __init__(self, host: Host, plugin: str, helpdesk: Helpdesk[Any]) -> None:
        self.host, self.plugin, self.helpdesk = host, plugin, helpdesk
        self.redis = host.redis
        pacing = helpdesk.pacing
        self.pacer = Pacer(host.redis, host.key(plugin, "pace"), secret=lambda: host.vault.derive("pacing"),
                           quota=pacing.quota, window=pacing.window, follow_server_limit=pacing.follow_server_limit)
        # Held across at most a lookup and a create, each bounded in total by the request timeout
        # (the transport's deadline, http.py), and the replica confirmation before each; a killed
        # worker's lock must not hold its claim back much longer than that.
        lock_ms = self.lock_ms(helpdesk.request_timeout, host.replication.timeout_ms / 1000)
        self.ledger = Ledger(host, plugin, self.pacer, lock_ms, helpdesk.settings_key)
        self.parking = Parking(host, plugin)
        #: Each store's settings as this process last read them, with their snapshot; taking a
        #: turn checks the snapshot against Redis, so a change is seen at the next request.
        self.stores = StoreCache(host.redis, helpdesk)
        #: Finishes wanted while no ticket id was known, by when to look for the ticket (a zset).
        self.finish_waits_key = host.key(plugin, "finishwait")
        self.create_actor = host.actor(self.create_ticket, plugin=plugin, **self.actor_options)
        self.finish_actor = host.actor(self.finish_ticket, plugin=plugin, **self.actor_options)
        self._actors = {"create": self.create_actor, "finish": self.finish_actor}
        #: The note mirror (``notes.py``), for a helpdesk that writes notes.
        self.notes = NoteMirror(self) if helpdesk.writes_notes else None

    @staticmethod
    def lock_ms(request_timeout: float, replica_timeout: float) -> int:
        """How long a claim's lock lives: longer than everything one turn does under it, two
        requests and two replica confirmations, with five seconds for Redis and the process."""
        return int((2 * request_timeout + 2 * replica_timeout + 5) * 1000)

    # -- what the plugin's hooks call ------------------------------------------------------
    def claim_created(self, claim: ClaimCreated, event: Event | None = None) -> None:
        """Open the claim's ticket now if its pacing allows, else at its slot; stores that
        do not use this helpdesk are skipped. ``event`` (the hook's) dates the claim's arrival."""
        if self.stores.uses(claim.store_id, enabled=True):
            self.run(Job("create", claim.store_id, claim.claim_id, claim=claim, first=True,
                         accepted_at=event.received_at if event else None))

    def claim_status_changed(self, change: ClaimStatusChanged) -> None:
        """A finished claim's ticket is finished: now if it exists, else right after it is created.
        Any other state still counts as the claim's last event: its record lives on from now."""
        if change.claim_state.value not in self.helpdesk.finish_states:
            self.ledger.touch(change.store_id, change.claim_id)
            return
        if not self.stores.uses(change.store_id, enabled=False):
            return
        finish, ticket_id = self.ledger.want_finish(change.store_id, change.claim_id)
        if finish != "wanted":
            return
        if ticket_id is not None:
            self.request_finish(change.store_id, change.claim_id)
        else:  # created later (then the create sends it), or created and its record lost: look later
            self.redis.zadd(self.finish_waits_key, {json.dumps([change.store_id, change.claim_id]):
                                                    time.time() + FINISH_LOOKUP_SECONDS}, nx=True)

    def message_created(self, message: MessageCreated, event: Event) -> None:
        """Mirror a claim's message as a private note, for stores that turned the mirror on."""
        if self.notes is not None:
            self.notes.message_created(message, event)

    def tick(self) -> None:
        """Periodic work a worker's ticker runs: the note mirror's deadlines, and the finishes
        that waited FINISH_LOOKUP_SECONDS for a ticket id."""
        if self.notes is not None:
            self.notes.sweep()
        self.sweep_finish_waits()

    def sweep_finish_waits(self, now: float | None = None, limit: int = 500) -> int:
        """Send a lookup for each finish due to be looked for; returns how many were sent. Each
        entry goes to the ticker whose ZREM takes it, so several workers share the work. Most
        find their ticket id recorded by then (the claim was approved before its creation)."""
        now = time.time() if now is None else now
        sent = 0
        for member in self.redis.zrangebyscore(self.finish_waits_key, 0, now, start=0, num=limit):
            if self.redis.zrem(self.finish_waits_key, member):
                store_id, claim_id = json.loads(member)
                self.finish_actor.send_with_options(args=(store_id, claim_id), kwargs={"lookup": 0})
                sent += 1
        return sent

    def release_parked(self, store_id: str) -> int:
        """Send the store's parked work again (its credentials were fixed); returns how many."""
        return self.parking.release(store_id)

    def request(self, scope: str, send: Callable[[Call[None]], T], *, max_wait: float) -> T:
        """One request outside delivery (a settings check), paced as delivery is.

        It waits for the scope's next slot up to ``max_wait`` seconds, else raises RateLimited
        without sending; a rate limit it meets blocks delivery too. Errors come back as
        ``classify`` names them (HelpdeskError subclasses), the original as their cause.
        """
        pacer = self.pacer
        wait = pacer.blocked_until(scope) - time.time()
        if wait <= 0:
            wait = pacer.reserve(scope).wait()
            if wait <= max_wait:
                time.sleep(wait)
                _, retry_at = pacer.admit(scope)  # counted among the requests really sent
                wait = 0 if retry_at is None else retry_at - time.time()
        if wait > 0:
            raise RateLimited("rate limited by opcore's own pacing", wait)
        return self._send(Call(None, scope, self._observer(scope)), send)

    # -- state -----------------------------------------------------------------------------
    def ticket_id(self, store_id: str, claim_id: str) -> str | None:
        return self.ledger.ticket_id(store_id, claim_id)

    def parked_count(self, store_id: str) -> int:
        return self.parking.count(store_id)

    def store_health(self) -> list[StoreHealth]:
        """Each configured store's credential state and parked work, in one round trip."""
        ids = sorted(self.helpdesk.store_ids())
        pipe = self.redis.pipeline(transaction=False)
        for store_id in ids:
            pipe.hget(self.helpdesk.settings_key(store_id), "credentials")
            pipe.llen(self.parking.key(store_id))
        replies = pipe.execute() if ids else []
        return [StoreHealth(store_id, (state or b"unchecked").decode(), int(parked))
                for store_id, state, parked in zip(ids, replies[::2], replies[1::2], strict=True)]

    def count(self, stat: str, by: int = 1) -> None:
        self.redis.hincrby(self.ledger.stats_key, stat, by)

    def stats(self) -> dict[str, int]:
        """Counters since the deployment began: tickets, finishes, adopted, notes, rate_limited,
        dead_create, dead_finish, dead_note (and dead_letters, their sum), ..."""
        found = {k.decode(): int(v) for k, v in self.redis.hgetall(self.ledger.stats_key).items()}
        dead = found.get("dead_create", 0) + found.get("dead_finish", 0) + found.get("dead_note", 0)
        return {**found, "dead_letters": dead} if dead else found

    def store(self, store_id: str, *, fresh: bool = False) -> tuple[Snapshot, Any]:
        """The store's settings and their snapshot; from this process's cache unless ``fresh``.
        None when the store never configured this helpdesk."""
        return self.stores.get(store_id, fresh=fresh)

    def _usable(self, config: Any) -> bool:
        return config is not None and self.helpdesk.usable(config)

    def settings_kept_changing(self, store_id: str) -> RuntimeError:
        """What a turn raises when the store's settings changed under it three times running."""
        return RuntimeError(f"the {self.plugin} settings of store {store_id!r} kept changing; retrying later")

    @staticmethod
    def backoff(attempt: int) -> float:
        """Seconds before transient failure number ``attempt`` (from 0) is tried again: doubling,
        at most 10 minutes, with jitter so that failures that came together do not retry together."""
        return min(2.0 ** attempt, 600.0) * random.uniform(0.5, 1.0)

    # -- actors ----------------------------------------------------------------------------
    def create_ticket(self, store_id: str, claim: dict[str, Any], slot: float | None = None, attempt: int = 0,
                      accepted_at: float | None = None) -> None:
        model = ClaimCreated.model_validate(claim)
        self.run(Job("create", store_id, model.claim_id, slot, attempt, model, claim, accepted_at=accepted_at))

    def finish_ticket(self, store_id: str, claim_id: str, slot: float | None = None, attempt: int = 0,
                      lookup: int | None = None) -> None:
        self.run(Job("finish", store_id, claim_id, slot, attempt, lookup=lookup))

    @staticmethod
    def lookup_delay(lookup: int) -> float:
        return min(FINISH_LOOKUP_SECONDS * 2.0 ** lookup, 3600.0)

    def request_finish(self, store_id: str, claim_id: str) -> None:
        self.run(Job("finish", store_id, claim_id))

    def run(self, job: Job) -> None:
        """Take one turn at ``job``; what must happen later is sent as a new message."""
        try:
            self._run(job)
        except Rescheduled as again:
            actor, later = self._actors[again.job.kind], again.job
            kwargs: dict[str, Any] = {"slot": later.slot, "attempt": later.attempt}
            if later.kind == "create" and later.accepted_at is not None:
                kwargs["accepted_at"] = later.accepted_at
            if later.lookup is not None:
                kwargs["lookup"] = later.lookup
            if again.delay > EPSILON:
                actor.send_with_options(args=tuple(later.args), kwargs=kwargs, delay=int(again.delay * 1000) + 1)
            else:
                actor.send_with_options(args=tuple(later.args), kwargs=kwargs)

    def _run(self, job: Job) -> None:
        helpdesk = self.helpdesk
        if job.kind == "create" and job.slot is None and self._may_have_expired(job.claim):
            self.ledger.look_up_first(job.store_id, job.claim_id)
        if job.lookup is not None and job.claim is None:
            claim = self._claim_to_look_for(job)
            if claim is None:
                return
            job = replace(job, claim=claim)
        kind: Kind = "create" if job.lookup is not None else job.kind  # a lookup takes a create's turn
        for _ in range(3):
            snap, config = self.store(job.store_id)
            if not self._usable(config):
                snap, config = self.store(job.store_id, fresh=True)
                if not self._usable(config):
                    self._unusable(job, config)
                    return
            turn = self.ledger.begin(kind, job.store_id, job.claim_id, helpdesk.pacing_scope(config),
                                     snap, job.slot)
            if turn.outcome != "stale":
                break
            assert turn.fields is not None
            self.stores.remember(job.store_id, turn.fields)  # an unusable store is handled above, afresh
        else:
            raise self.settings_kept_changing(job.store_id)
        if turn.outcome == "ticket":  # created already: only a wanted finish (and waiting notes) are left
            self._follow_up(job, turn.finish, turn)
            return
        if turn.outcome == "skip":
            return
        if turn.outcome == "busy":
            self.reschedule(job, delay=BUSY_RETRY_SECONDS, stat="lock_waits")
        if turn.outcome == "wait":
            assert turn.at is not None
            self.count("paced_waits")
            raise Rescheduled(replace(job, slot=turn.at), turn.at - time.time())
        try:
            self._replicated(job, turn)
            finish = self._create(job, config, turn) if kind == "create" else self._finish(job, config, turn)
        finally:
            if not turn.finished:
                self.ledger.finish(job.store_id, job.claim_id, turn)
        self._follow_up(job, finish, turn)

    def _follow_up(self, job: Job, finish: str | None, turn: Turn) -> None:
        """Once the claim's ticket is known: its wanted finish, and the messages that came before it.
        A finish wanted before the ticket was also put down to be looked for (``finish_waits_key``):
        it is on its way now, so nothing is left for the ticker to send a minute later."""
        if finish == "wanted":
            self.request_finish(job.store_id, job.claim_id)
            self.redis.zrem(self.finish_waits_key, json.dumps([job.store_id, job.claim_id]))
        if turn.notes_waiting and self.notes is not None:
            self.notes.wake(job.store_id, job.claim_id)

    def _claim_to_look_for(self, job: Job) -> ClaimCreated | None:
        """What ``find_ticket`` needs of a claim whose finish waits for a ticket id nobody recorded,
        from the read model (the claim's dispatch wrote it before asking for the ticket); None
        when the finish needs no lookup (done, or its ticket id known now: sent as a plain
        finish), or the claim has not arrived yet (looked for later)."""
        ticket_id, finish = self.ledger.record(job.store_id, job.claim_id)
        if finish != "wanted":
            return None
        if ticket_id is not None:
            self.request_finish(job.store_id, job.claim_id)
            return None
        found = self.host.readmodel.claim_identity(job.store_id, job.claim_id)
        if found is None:
            self._look_later(job, "its claim.created has not been delivered")
            return None
        email, view = found
        return ClaimCreated.model_validate({"store_id": job.store_id, "claim_id": job.claim_id,
                                            "claim_type": view.claim_type, "claim_state": view.claim_state,
                                            "claim_number": view.claim_number, "customer": {"email": email}})

    def _look_later(self, job: Job, why: str) -> None:
        """The wanted finish's next lookup, or a dead letter naming ``why`` once they are spent."""
        assert job.lookup is not None
        if job.lookup + 1 >= FINISH_LOOKUPS:
            self.dead(replace(job, lookup=None), f"the claim was finished but {why} after {FINISH_LOOKUPS} "
                      "lookups; replay this once its ticket exists")
            return
        later = replace(job, slot=None, claim=None, lookup=job.lookup + 1)
        raise Rescheduled(later, self.lookup_delay(later.lookup or 0))

    def _may_have_expired(self, claim: ClaimCreated | None) -> bool:
        """Whether the claim's record may have expired, so its create must ask the helpdesk first.

        A claim younger than the retention period (with a day to spare) still has its record if
        it ever had a ticket: the record lives that long after the claim's last event. A claim
        that is older, undated, or dated ahead of the clock (by more than a day of skew) cannot
        be known young, and costs one lookup rather than risk a second ticket.
        """
        if claim is None:
            return False
        if claim.created_at is None:
            return True
        age = time.time() - utc(claim.created_at).timestamp()
        return age > self.ledger.retention_ms / 1000 - 86_400 or age < -86_400

    def _unusable(self, job: Job, config: Any) -> None:
        """No usable credentials (store disconnected, or rejected): park what is still to do."""
        if job.first and (config is None or not self.helpdesk.enabled(config)):
            return
        ticket_id, finish = self.ledger.record(job.store_id, job.claim_id)
        if job.kind == "create" and ticket_id is not None:
            if finish == "wanted":
                self.request_finish(job.store_id, job.claim_id)
            return
        if job.kind == "finish" and (ticket_id is None or finish == "done"):
            return
        self.park(job)

    # -- the requests ----------------------------------------------------------------------
    def _create(self, job: Job, config: Any, turn: Turn) -> str | None:
        """Create (or adopt) the claim's ticket; returns the claim's finish field once recorded."""
        claim, ledger, helpdesk = job.claim, self.ledger, self.helpdesk
        assert claim is not None
        call = Call(config, turn.scope, self._observer(turn.scope))
        step: Literal["lookup", "create"] = "lookup" if turn.pending or job.lookup is not None else "create"
        try:
            if step == "lookup":
                self.count("lookups")
                existing = self._send(call, lambda c: helpdesk.find_ticket(c, claim), count=True)
                if existing is not None:
                    return ledger.finish(job.store_id, job.claim_id, turn,
                                         {"ticket_id": str(existing), "pending": "0"}, "adopted", self._since(job))
                if job.lookup is not None:  # only looking: the claim's own create has not run yet
                    ledger.finish(job.store_id, job.claim_id, turn, None if turn.pending else {"pending": "0"})
                    self._look_later(job, f"no {helpdesk.title} ticket was found for it")
                    return None
                self._next_request(job, turn)
                step = "create"
            ticket_id = self._send(call, lambda c: helpdesk.create_ticket(c, claim), count=True)
        except RateLimited:
            if step == "create":  # a rate-limited request was not processed
                ledger.finish(job.store_id, job.claim_id, turn, {"pending": "0"})
            blocked = self.pacer.blocked_until(turn.scope)
            self.reschedule(replace(job, slot=blocked), delay=blocked - time.time(), stat="rate_limit_waits")
        except CredentialsRejected as exc:
            helpdesk.credentials_rejected(config, str(exc))
            self.park(job)
            return None
        except Refused as exc:  # a refused lookup leaves pending set: a replay looks up again
            ledger.finish(job.store_id, job.claim_id, turn, {"pending": "0"} if step == "create" else None)
            self.dead(job, f"{helpdesk.title} refused the ticket: {exc}")
            return None
        except HelpdeskError as exc:  # transient: the outcome is unknown
            self.transient(job, exc)
            return None
        return ledger.finish(job.store_id, job.claim_id, turn,
                             {"ticket_id": str(ticket_id), "pending": "0", "created_at": repr(time.time())}, "tickets",
                             self._since(job))

    @staticmethod
    def _since(job: Job) -> float | None:
        """Seconds from the claim's acceptance to now, when the job knows it."""
        return None if job.accepted_at is None else time.time() - job.accepted_at

    def _next_request(self, job: Job, turn: Turn) -> None:
        """After a lookup found nothing: clear ``pending`` and be admitted for the create."""
        self.pacer.answered(turn.scope, turn.member)
        self.ledger.set(job.store_id, job.claim_id, pending="0")
        turn.member, retry_at = self.pacer.admit(turn.scope)
        if turn.member is None:
            turn.member = ""
            assert retry_at is not None
            self.count("paced_waits")
            raise Rescheduled(replace(job, slot=retry_at), retry_at - time.time())
        self.ledger.set(job.store_id, job.claim_id, pending="1")
        self._replicated(job, turn)

    def _replicated(self, job: Job, turn: Turn) -> None:
        """Before a request to the helpdesk: the claim's record (``pending`` for a create) is on
        the replicas ``OPCORE_REDIS_REPLICAS`` asks for, so no failover can forget that the
        request may have acted; a create it forgot would be sent twice. Short of them, nothing
        is sent and the job tries again in a few seconds (``replica_waits``)."""
        try:
            self.host.replication.confirm(self.redis)
        except NotReplicated as exc:
            log.warning("%s: %s for claim %r waits: %s", self.plugin, job.kind, job.claim_id, exc)
            self.host.metrics.count_refusal("delivery")
            took_create = job.kind == "create" or job.lookup is not None  # its turn set ``pending``
            unmark = {"pending": "0"} if took_create and not turn.pending else None
            self.ledger.finish(job.store_id, job.claim_id, turn, unmark)  # nothing was sent
            self.reschedule(replace(job, slot=None), delay=random.uniform(1.0, 3.0), stat="replica_waits")

    def _finish(self, job: Job, config: Any, turn: Turn) -> None:
        ticket_id, helpdesk = turn.ticket_id, self.helpdesk
        assert ticket_id is not None
        call = Call(config, turn.scope, self._observer(turn.scope))
        try:
            self._send(call, lambda c: helpdesk.finish_ticket(c, ticket_id), count=True)
        except RateLimited:
            blocked = self.pacer.blocked_until(turn.scope)
            self.reschedule(replace(job, slot=blocked), delay=blocked - time.time(), stat="rate_limit_waits")
        except CredentialsRejected as exc:
            helpdesk.credentials_rejected(config, str(exc))
            self.park(job)
            return
        except Refused as exc:
            self.dead(job, f"{helpdesk.title} refused the {helpdesk.finish_name}: {exc}")
            return
        except HelpdeskError as exc:
            self.transient(job, exc)
            return
        self.ledger.finish(job.store_id, job.claim_id, turn, {"finish": "done", "finished_at": repr(time.time())},
                           "finishes")

    def _observer(self, scope: str) -> Callable[[int | None, int | None], None]:
        return lambda limit, remaining: self.pacer.observe(scope, limit, remaining)

    def _send(self, call: Call[Any], send: Callable[[Call[Any]], T], *, count: bool = False) -> T:
        """Make one request; its exception comes back classified, and a rate limit blocks the scope."""
        try:
            return send(call)
        except Exception as exc:  # noqa: BLE001 - classified below; what is not a helpdesk answer re-raises
            failure = self.helpdesk.classify(exc)
            if failure is None:
                raise
            if isinstance(failure, RateLimited):
                self.pacer.block(call.scope, failure.retry_after)
                if count:
                    self.count("rate_limited")
            if failure is exc:
                raise
            raise failure from exc

    # -- outcomes other than success -------------------------------------------------------
    def reschedule(self, job: Job, *, delay: float, stat: str) -> None:
        self.count(stat)
        raise Rescheduled(job, delay)

    def transient(self, job: Job, exc: HelpdeskError) -> None:
        """5xx, timeout or lost connection: back off with jitter, or give up into dead letters."""
        if job.attempt + 1 >= self.max_attempts:
            self.dead(job, f"gave up after {job.attempt + 1} attempts: {exc}")
            return
        self.reschedule(replace(job, slot=None, attempt=job.attempt + 1), delay=self.backoff(job.attempt),
                        stat="transient_retries")

    def dead(self, job: Job, reason: str) -> None:
        actor = self._actors[job.kind].actor_name
        self.count(f"dead_{job.kind}")
        log.error("%s: %s for claim %r of store %r is a dead letter: %r", self.plugin, actor, job.claim_id,
                  job.store_id, reason)
        self.host.dead_letters.add(actor, job.args, reason=reason, store_id=job.store_id, claim_id=job.claim_id)

    def park(self, job: Job) -> None:
        self.parking.park(job.store_id, self._actors[job.kind].actor_name, job.args)
        self.count("parked")
