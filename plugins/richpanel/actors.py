"""Delivery to Richpanel: one ticket per claim, one snooze per finished claim, paced per key.

Guarantees, and where they hold:

- **One ticket per claim.** A per-claim record in Redis (``ledger.py``) holds the ticket id
  once known, and a ``pending`` flag is set *before* every ``POST /v1/tickets``. A later attempt that finds
  ``pending`` set (the worker died, the answer was lost, a 5xx came back after Richpanel may
  have acted) first looks the customer's tickets up by email and adopts the one that carries
  this claim's link, and only creates when none does. A per-claim lock keeps duplicate
  messages (Dramatiq delivers at least once) from racing each other. What remains is
  Richpanel's own window between creating a ticket and listing it by email.
- **Snooze after creation, once.** A finished claim sets ``snooze=wanted`` and the create
  path checks it right after recording the ticket id; whichever of the two runs second sends
  the snooze, and ``snooze=done`` makes repeats no-ops. A worker killed between the PUT and
  recording it repeats the (idempotent) PUT once.
- **Nothing is dropped.** Rate limits and transient failures reschedule the message (a new
  delayed message, so Dramatiq's retry budget is never spent on waiting); 400/404/413 go to
  the dead letters with the reason; a 401 marks the key invalid and parks the work until a
  valid key is saved.

A new claim's first turn runs right in the thread that dispatched the event: a second
Dramatiq message per ticket would cost more than the ticket's own work. Only what must wait
(a paced slot, a held lock, a retry) becomes a message for the create or snooze actor.
"""

from __future__ import annotations

import logging
import random
import time
import weakref
from dataclasses import dataclass, replace
from typing import Any, Callable

import dramatiq

from opcore_hooks import ClaimCreated, ClaimStatusChanged, Host

from . import parking, session, stores, tickets
from .client import AuthError, ClientError, RateLimited, RichpanelClient, RichpanelError
from .ledger import EPSILON, Kind, Ledger, Snapshot, Turn, snapshot

log = logging.getLogger("opcore.richpanel")

NAME = "richpanel"
#: Transient failures (5xx, timeouts, lost connections) before the work becomes a dead letter.
MAX_ATTEMPTS = 15
BUSY_RETRY_SECONDS = 2.0

_deliveries: weakref.WeakKeyDictionary[Host, Delivery] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class Job:
    """One piece of delivery work: create a claim's ticket, or snooze it."""

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

    @property
    def args(self) -> list[Any]:
        """The actor's positional arguments, as a message or a parked entry carries them."""
        if self.kind == "snooze":
            return [self.store_id, self.claim_id]
        assert self.claim is not None
        return [self.store_id, self.raw if self.raw is not None else self.claim.model_dump(mode="json")]


class Rescheduled(Exception):
    """Internal: this run is over; ``run`` sends the job again for later, once the claim lock
    is released (sent under the lock, a message due at once can reach another thread before
    the release and lose BUSY_RETRY_SECONDS to the lock)."""

    def __init__(self, job: Job, delay: float) -> None:
        super().__init__()
        self.job, self.delay = job, delay


def _usable(config: stores.StoreConfig | None) -> bool:
    return (config is not None and config.enabled and config.api_key is not None
            and config.credentials != "invalid")


class Delivery:
    """The plugin's actors and shared state for one host."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.redis = host.redis
        self.pacer = session.pacer_for(host)
        # Held across at most a lookup and a create, each bounded by the request timeout; a
        # killed worker's lock must not hold its claim back much longer than that.
        lock_ms = int((2 * session.settings_of(host).timeout_seconds + 5) * 1000)
        self.ledger = Ledger(host, self.pacer, lock_ms)
        #: Each store's settings as this process last read them, with their snapshot; taking a
        #: turn checks the snapshot against Redis, so a change is seen at the next request.
        self._stores: dict[str, tuple[Snapshot, stores.StoreConfig | None]] = {}
        options = {"max_retries": 20, "min_backoff": 1000, "max_backoff": 600_000, "on_retry_exhausted": "opcore.exhausted"}
        self.create_actor = host.actor(self.create_ticket, plugin=NAME, **options)
        self.snooze_actor = host.actor(self.snooze_ticket, plugin=NAME, **options)
        self._actors = {"create": self.create_actor, "snooze": self.snooze_actor}

    # -- state ---------------------------------------------------------------------------
    def claim_key(self, store_id: str, claim_id: str) -> str:
        return self.ledger.claim_key(store_id, claim_id)

    def ticket_id(self, store_id: str, claim_id: str) -> str | None:
        return self.ledger.ticket_id(store_id, claim_id)

    def count(self, stat: str, by: int = 1) -> None:
        self.redis.hincrby(self.host.key(NAME, "stats"), stat, by)

    def stats(self) -> dict[str, int]:
        return {k.decode(): int(v) for k, v in self.redis.hgetall(self.host.key(NAME, "stats")).items()}

    def store(self, store_id: str, *, fresh: bool = False) -> tuple[Snapshot, stores.StoreConfig | None]:
        """The store's settings (key decrypted) and their snapshot; from this process's cache
        unless ``fresh``. None when the store never configured Richpanel."""
        cached = None if fresh else self._stores.get(store_id)
        return cached or self._remember(store_id, stores.stored_fields(self.host, store_id))

    def _remember(self, store_id: str, fields: dict[str, str]) -> tuple[Snapshot, stores.StoreConfig | None]:
        entry = (snapshot(fields), stores.from_fields(self.host, store_id, fields) if fields else None)
        self._stores[store_id] = entry
        return entry

    # -- actors --------------------------------------------------------------------------
    def create_ticket(self, store_id: str, claim: dict[str, Any], slot: float | None = None, attempt: int = 0) -> None:
        model = ClaimCreated.model_validate(claim)
        self.run(Job("create", store_id, model.claim_id, slot, attempt, model, claim))

    def snooze_ticket(self, store_id: str, claim_id: str, slot: float | None = None, attempt: int = 0) -> None:
        self.run(Job("snooze", store_id, claim_id, slot, attempt))

    def request_snooze(self, store_id: str, claim_id: str) -> None:
        self.run(Job("snooze", store_id, claim_id))

    def run(self, job: Job) -> None:
        """Take one turn at ``job``; what must happen later is sent as a new message."""
        try:
            self._run(job)
        except Rescheduled as again:
            actor, later = self._actors[again.job.kind], again.job
            kwargs = {"slot": later.slot, "attempt": later.attempt}
            if again.delay > EPSILON:
                actor.send_with_options(args=tuple(later.args), kwargs=kwargs, delay=int(again.delay * 1000) + 1)
            else:
                actor.send_with_options(args=tuple(later.args), kwargs=kwargs)

    def _run(self, job: Job) -> None:
        for _ in range(3):
            snap, config = self.store(job.store_id)
            if not _usable(config):
                snap, config = self.store(job.store_id, fresh=True)
                if not _usable(config):
                    self._unusable(job, config)
                    return
            assert config is not None and config.api_key is not None
            turn = self.ledger.begin(job.kind, job.store_id, job.claim_id, config.api_key.get_secret_value(),
                                     snap, job.slot)
            if turn.outcome != "stale":
                break
            assert turn.fields is not None
            self._remember(job.store_id, turn.fields)  # an unusable store is handled above, afresh
        else:
            raise RuntimeError(f"the Richpanel settings of store {job.store_id} kept changing; retrying later")
        if turn.outcome == "ticket":  # created already: only a wanted snooze is left
            if turn.snooze == "wanted":
                self.request_snooze(job.store_id, job.claim_id)
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
            snooze = self._create(job, config, turn) if job.kind == "create" else self._snooze(job, turn)
        finally:
            if not turn.finished:
                self.ledger.finish(job.store_id, job.claim_id, turn)
        if snooze == "wanted":
            self.request_snooze(job.store_id, job.claim_id)

    def _unusable(self, job: Job, config: stores.StoreConfig | None) -> None:
        """No usable key (store disconnected, or its key rejected): park what is still to do."""
        if job.first and (config is None or not config.enabled):
            return
        ticket_id, snooze = (v.decode() if v else None for v in self.redis.hmget(
            self.claim_key(job.store_id, job.claim_id), "ticket_id", "snooze"))
        if job.kind == "create" and ticket_id is not None:
            if snooze == "wanted":
                self.request_snooze(job.store_id, job.claim_id)
            return
        if job.kind == "snooze" and (ticket_id is None or snooze == "done"):
            return
        self.park(job)

    # -- the requests ----------------------------------------------------------------------
    def _create(self, job: Job, config: stores.StoreConfig, turn: Turn) -> str | None:
        """Create (or adopt) the claim's ticket; returns the claim's snooze field once recorded."""
        claim, ledger, api_key = job.claim, self.ledger, turn.api_key
        assert claim is not None
        url = self.host.claim_url(claim.claim_id)
        step = "lookup" if turn.pending else "create"
        try:
            if step == "lookup":
                self.count("lookups")
                found = self.call(api_key, lambda c: c.find_tickets_by_email(claim.customer.email))
                existing = next((t for t in found if tickets.is_ticket_for(t, url)), None)
                if existing is not None:
                    return ledger.finish(job.store_id, job.claim_id, turn,
                                         {"ticket_id": str(existing.get("id")), "pending": "0"}, "adopted")
                self._next_request(job, turn)
                step = "create"
            body = tickets.build_ticket(claim, url, channel=config.default_channel, team_id=config.default_team_id)
            ticket_id = self.call(api_key, lambda c: c.create_ticket(body))
        except RateLimited:
            if step == "create":  # a rate-limited request was not processed
                ledger.finish(job.store_id, job.claim_id, turn, {"pending": "0"})
            blocked = self.pacer.blocked_until(api_key)
            self.reschedule(replace(job, slot=blocked), delay=blocked - time.time(), stat="rate_limit_waits")
        except AuthError as exc:
            stores.mark_invalid(self.host, job.store_id, str(exc), api_key=api_key)
            self.park(job)
            return None
        except ClientError as exc:  # a refused lookup leaves pending set: a replay looks up again
            ledger.finish(job.store_id, job.claim_id, turn, {"pending": "0"} if step == "create" else None)
            self.dead(job, f"Richpanel refused the ticket: {exc}")
            return None
        except RichpanelError as exc:  # server errors and transport failures: the outcome is unknown
            self.transient(job, exc)
            return None
        return ledger.finish(job.store_id, job.claim_id, turn,
                             {"ticket_id": ticket_id, "pending": "0", "created_at": repr(time.time())}, "tickets")

    def _next_request(self, job: Job, turn: Turn) -> None:
        """After a lookup found nothing: clear ``pending`` and be admitted for the create."""
        self.pacer.answered(turn.api_key, turn.member)
        self.ledger.set(job.store_id, job.claim_id, pending="0")
        turn.member, retry_at = self.pacer.admit(turn.api_key)
        if turn.member is None:
            turn.member = ""
            assert retry_at is not None
            self.count("paced_waits")
            raise Rescheduled(replace(job, slot=retry_at), retry_at - time.time())
        self.ledger.set(job.store_id, job.claim_id, pending="1")

    def _snooze(self, job: Job, turn: Turn) -> None:
        api_key, ticket_id = turn.api_key, turn.ticket_id
        assert ticket_id is not None
        try:
            self.call(api_key, lambda c: c.snooze_ticket(ticket_id))
        except RateLimited:
            blocked = self.pacer.blocked_until(api_key)
            self.reschedule(replace(job, slot=blocked), delay=blocked - time.time(), stat="rate_limit_waits")
        except AuthError as exc:
            stores.mark_invalid(self.host, job.store_id, str(exc), api_key=api_key)
            self.park(job)
            return
        except ClientError as exc:
            self.dead(job, f"Richpanel refused the snooze: {exc}")
            return
        except RichpanelError as exc:
            self.transient(job, exc)
            return
        self.ledger.finish(job.store_id, job.claim_id, turn, {"snooze": "done", "snoozed_at": repr(time.time())},
                           "snoozes")

    def call(self, api_key: str, request: Callable[[RichpanelClient], Any]) -> Any:
        try:
            return session.call(self.host, api_key, request)
        except RateLimited:
            self.count("rate_limited")
            raise

    # -- outcomes other than success -------------------------------------------------------
    def reschedule(self, job: Job, *, delay: float, stat: str) -> None:
        self.count(stat)
        raise Rescheduled(job, delay)

    def transient(self, job: Job, exc: RichpanelError) -> None:
        """5xx, timeout or lost connection: back off with jitter, or give up into dead letters."""
        if job.attempt + 1 >= MAX_ATTEMPTS:
            self.dead(job, f"gave up after {job.attempt + 1} attempts: {exc}")
            return
        delay = min(2.0 ** job.attempt, 600.0) * random.uniform(0.5, 1.0)
        self.reschedule(replace(job, slot=None, attempt=job.attempt + 1), delay=delay, stat="transient_retries")

    def dead(self, job: Job, reason: str) -> None:
        actor = self._actors[job.kind].actor_name
        self.count("dead_letters")
        log.error("richpanel: %s for claim %s of store %s is a dead letter: %s", actor, job.claim_id, job.store_id, reason)
        self.host.dead_letters.add(actor, job.args, reason=reason, store_id=job.store_id, claim_id=job.claim_id)

    def park(self, job: Job) -> None:
        parking.park(self.host, job.store_id, self._actors[job.kind].actor_name, job.args)
        self.count("parked")


# -- what the plugin's hooks call ------------------------------------------------------------
def declare(host: Host) -> Delivery:
    delivery = Delivery(host)
    _deliveries[host] = delivery
    return delivery


def delivery_for(host: Host) -> Delivery:
    return _deliveries[host]


def _configured(delivery: Delivery, store_id: str, *, enabled: bool) -> bool:
    """Whether the store uses Richpanel; a negative answer from the cache is checked afresh."""
    for fresh in (False, True):
        _, config = delivery.store(store_id, fresh=fresh)
        if config is not None and (config.enabled or not enabled):
            return True
    return False


def claim_created(host: Host, claim: ClaimCreated) -> None:
    """Open the claim's ticket now if its key's pacing allows, else at its slot; stores
    without Richpanel are skipped."""
    delivery = delivery_for(host)
    if _configured(delivery, claim.store_id, enabled=True):
        delivery.run(Job("create", claim.store_id, claim.claim_id, claim=claim, first=True))


def claim_status_changed(host: Host, change: ClaimStatusChanged) -> None:
    """A finished claim's ticket is snoozed: now if it exists, else right after it is created."""
    if change.claim_state.value not in tickets.SNOOZE_STATES:
        return
    delivery = delivery_for(host)
    if _configured(delivery, change.store_id, enabled=False) and delivery.ledger.want_snooze(
            change.store_id, change.claim_id):
        delivery.request_snooze(change.store_id, change.claim_id)
