"""Delivery to Richpanel: one ticket per claim, one snooze per finished claim, paced per key.

Guarantees, and where they hold:

- **One ticket per claim.** A per-claim record in Redis holds the ticket id once known, and a
  ``pending`` flag is set *before* every ``POST /v1/tickets``. A later attempt that finds
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
"""

from __future__ import annotations

import logging
import random
import secrets
import threading
import time
import weakref
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import dramatiq

from opcore_hooks import ClaimCreated, ClaimStatusChanged, Host

from . import parking, session, stores, tickets
from .client import AuthError, ClientError, RateLimited, RichpanelClient, RichpanelError

log = logging.getLogger("opcore.richpanel")

NAME = "richpanel"
#: A slot this close is taken now rather than rescheduled: the delay queue's own latency is larger.
EPSILON = 0.05
#: Transient failures (5xx, timeouts, lost connections) before the work becomes a dead letter.
MAX_ATTEMPTS = 15
BUSY_RETRY_SECONDS = 2.0

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_deliveries: weakref.WeakKeyDictionary[Host, Delivery] = weakref.WeakKeyDictionary()


class Rescheduled(Exception):
    """Internal: this run is over; the actor's entry point sends the message again for later,
    once the claim lock is released (sent under the lock, a message due at once can reach
    another thread before the release and lose BUSY_RETRY_SECONDS to the lock)."""

    def __init__(self, actor: dramatiq.Actor, args: list[Any], kwargs: dict[str, Any], delay: float) -> None:
        super().__init__()
        self.actor, self.args, self.kwargs, self.delay = actor, args, kwargs, delay


class Delivery:
    """The plugin's actors and shared state for one host."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.redis = host.redis
        self.pacer = session.pacer_for(host)
        self._admitted = threading.local()
        # Held across at most a lookup and a create, each bounded by the request timeout; a
        # killed worker's lock must not hold its claim back much longer than that.
        self.lock_ms = int((2 * session.settings_of(host).timeout_seconds + 5) * 1000)
        self._release = host.redis.register_script(_RELEASE)
        options = {"max_retries": 20, "min_backoff": 1000, "max_backoff": 600_000, "on_retry_exhausted": "opcore.exhausted"}
        self.create_actor = host.actor(self.create_ticket, plugin=NAME, **options)
        self.snooze_actor = host.actor(self.snooze_ticket, plugin=NAME, **options)

    # -- state ---------------------------------------------------------------------------
    def claim_key(self, store_id: str, claim_id: str) -> str:
        return self.host.key(NAME, "claim", store_id, claim_id)

    def ticket_id(self, store_id: str, claim_id: str) -> str | None:
        raw = self.redis.hget(self.claim_key(store_id, claim_id), "ticket_id")
        return raw.decode() if raw else None

    def count(self, stat: str, by: int = 1) -> None:
        self.redis.hincrby(self.host.key(NAME, "stats"), stat, by)

    def record(self, claim_key: str, fields: dict[str, str], stat: str) -> None:
        """Write an outcome and count it in one transaction, so the counts never drift from it."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(claim_key, mapping=fields)
        pipe.hincrby(self.host.key(NAME, "stats"), stat, 1)
        pipe.execute()

    def stats(self) -> dict[str, int]:
        return {k.decode(): int(v) for k, v in self.redis.hgetall(self.host.key(NAME, "stats")).items()}

    @contextmanager
    def claim_lock(self, store_id: str, claim_id: str) -> Iterator[bool]:
        key = self.host.key(NAME, "lock", store_id, claim_id)
        token = secrets.token_hex(8)
        got = bool(self.redis.set(key, token, nx=True, px=self.lock_ms))
        try:
            yield got
        finally:
            if got:
                self._release(keys=[key], args=[token])

    # -- scheduling ----------------------------------------------------------------------
    def schedule(self, actor: dramatiq.Actor, args: list[Any], api_key: str, *, attempt: int = 0) -> None:
        """Reserve the key's next slot and send ``actor`` to run at it."""
        slot = self.pacer.reserve(api_key)
        self._send(actor, args, {"slot": slot.at, "attempt": attempt}, slot.wait())

    def _send(self, actor: dramatiq.Actor, args: list[Any], kwargs: dict[str, Any], delay: float) -> None:
        if delay > EPSILON:
            actor.send_with_options(args=tuple(args), kwargs=kwargs, delay=int(delay * 1000) + 1)
        else:
            actor.send_with_options(args=tuple(args), kwargs=kwargs)

    def reschedule(self, actor: dramatiq.Actor, args: list[Any], *, delay: float, attempt: int, stat: str,
                   slot: float | None = None) -> None:
        self.count(stat)
        raise Rescheduled(actor, args, {"slot": slot, "attempt": attempt}, delay)

    def take_turn(self, actor: dramatiq.Actor, args: list[Any], api_key: str, slot: float | None, attempt: int) -> None:
        """Return when this message may send a request now; otherwise reschedule it.

        The slot booked at scheduling time brings the message back at about the right time;
        the request itself is admitted against the requests really sent in the window (and
        any Retry-After block), so a late run never makes the next window start early, and a
        refused message keeps its place instead of going behind the whole backlog.
        """
        now = time.time()
        if slot is None:
            slot = self.pacer.reserve(api_key, now).at
        if slot - now <= EPSILON:
            member, retry_at = self.pacer.admit(api_key, now)
            if member is not None:
                self._admitted.member = member
                return
            slot = retry_at
        self.count("paced_waits")
        raise Rescheduled(actor, args, {"slot": slot, "attempt": attempt}, slot - now)

    def call(self, api_key: str, request: Callable[[RichpanelClient], Any]) -> Any:
        try:
            return session.call(self.host, api_key, request)
        except RateLimited:
            self.count("rate_limited")
            raise
        finally:
            member, self._admitted.member = getattr(self._admitted, "member", None), None
            if member is not None:
                self.pacer.answered(api_key, member)

    def transient(self, actor: dramatiq.Actor, args: list[Any], attempt: int, exc: RichpanelError,
                  store_id: str, claim_id: str) -> None:
        """5xx, timeout or lost connection: back off with jitter, or give up into dead letters."""
        if attempt + 1 >= MAX_ATTEMPTS:
            self.dead(actor, args, store_id, claim_id, f"gave up after {attempt + 1} attempts: {exc}")
            return
        delay = min(2.0 ** attempt, 600.0) * random.uniform(0.5, 1.0)
        self.reschedule(actor, args, delay=delay, attempt=attempt + 1, stat="transient_retries")

    def dead(self, actor: dramatiq.Actor, args: list[Any], store_id: str, claim_id: str, reason: str) -> None:
        self.count("dead_letters")
        log.error("richpanel: %s for claim %s of store %s is a dead letter: %s", actor.actor_name, claim_id, store_id, reason)
        self.host.dead_letters.add(actor.actor_name, args, reason=reason, store_id=store_id, claim_id=claim_id)

    def park(self, actor: dramatiq.Actor, args: list[Any], store_id: str) -> None:
        parking.park(self.host, store_id, actor.actor_name, args)
        self.count("parked")

    def usable_config(self, actor: dramatiq.Actor, args: list[Any], store_id: str) -> stores.StoreConfig | None:
        """The store's settings with a usable key, or None after parking the work (store
        disconnected or key rejected)."""
        config = stores.load(self.host, store_id)
        if config is None or not config.enabled or config.api_key is None or config.credentials == "invalid":
            self.park(actor, args, store_id)
            return None
        return config

    # -- actors --------------------------------------------------------------------------
    def create_ticket(self, store_id: str, claim: dict[str, Any], slot: float | None = None, attempt: int = 0) -> None:
        try:
            self._create(store_id, ClaimCreated.model_validate(claim), [store_id, claim], slot, attempt)
        except Rescheduled as again:
            self._send(again.actor, again.args, again.kwargs, again.delay)

    def _create(self, store_id: str, claim: ClaimCreated, args: list[Any], slot: float | None, attempt: int) -> None:
        if self.ticket_id(store_id, claim.claim_id):
            self.after_create(store_id, claim.claim_id)
            return
        config = self.usable_config(self.create_actor, args, store_id)
        if config is None:
            return
        with self.claim_lock(store_id, claim.claim_id) as locked:
            if not locked:
                self.reschedule(self.create_actor, args, delay=BUSY_RETRY_SECONDS, attempt=attempt, stat="lock_waits")
            ticket_id = self.ticket_id(store_id, claim.claim_id) or self._create_locked(
                store_id, claim, args, config, slot, attempt)
        if ticket_id is not None:
            self.after_create(store_id, claim.claim_id)

    def _create_locked(self, store_id: str, claim: ClaimCreated, args: list[Any], config: stores.StoreConfig,
                       slot: float | None, attempt: int) -> str | None:
        actor, key = self.create_actor, self.claim_key(store_id, claim.claim_id)
        api_key = config.api_key.get_secret_value()
        url = self.host.claim_url(claim.claim_id)
        self.take_turn(actor, args, api_key, slot, attempt)
        step = "lookup" if self.redis.hget(key, "pending") == b"1" else "create"
        try:
            if step == "lookup":
                self.count("lookups")
                found = self.call(api_key, lambda c: c.find_tickets_by_email(claim.customer.email))
                existing = next((t for t in found if tickets.is_ticket_for(t, url)), None)
                if existing is not None:
                    ticket_id = str(existing.get("id"))
                    self.record(key, {"ticket_id": ticket_id, "pending": "0"}, "adopted")
                    return ticket_id
                self.redis.hset(key, "pending", "0")
                step = "create"
                self.take_turn(actor, args, api_key, None, attempt)
            body = tickets.build_ticket(claim, url, channel=config.default_channel, team_id=config.default_team_id)
            self.redis.hset(key, "pending", "1")
            ticket_id = self.call(api_key, lambda c: c.create_ticket(body))
        except RateLimited:
            if step == "create":  # a rate-limited request was not processed
                self.redis.hset(key, "pending", "0")
            blocked = self.pacer.blocked_until(api_key)
            self.reschedule(actor, args, delay=blocked - time.time(), attempt=attempt, stat="rate_limit_waits",
                            slot=blocked)
        except AuthError as exc:
            stores.mark_invalid(self.host, store_id, str(exc), api_key=api_key)
            self.park(actor, args, store_id)
            return None
        except ClientError as exc:
            self.redis.hset(key, "pending", "0")
            self.dead(actor, args, store_id, claim.claim_id, f"Richpanel refused the ticket: {exc}")
            return None
        except RichpanelError as exc:  # server errors and transport failures: the outcome is unknown
            self.transient(actor, args, attempt, exc, store_id, claim.claim_id)
            return None
        self.record(key, {"ticket_id": ticket_id, "pending": "0", "created_at": repr(time.time())}, "tickets")
        return ticket_id

    def after_create(self, store_id: str, claim_id: str) -> None:
        if self.redis.hget(self.claim_key(store_id, claim_id), "snooze") == b"wanted":
            self.request_snooze(store_id, claim_id)

    def request_snooze(self, store_id: str, claim_id: str) -> None:
        config = stores.load(self.host, store_id)
        if config is None or config.api_key is None:
            self.park(self.snooze_actor, [store_id, claim_id], store_id)
            return
        self.schedule(self.snooze_actor, [store_id, claim_id], config.api_key.get_secret_value())

    def snooze_ticket(self, store_id: str, claim_id: str, slot: float | None = None, attempt: int = 0) -> None:
        try:
            self._snooze(store_id, claim_id, [store_id, claim_id], slot, attempt)
        except Rescheduled as again:
            self._send(again.actor, again.args, again.kwargs, again.delay)

    def _snooze(self, store_id: str, claim_id: str, args: list[Any], slot: float | None, attempt: int) -> None:
        actor, key = self.snooze_actor, self.claim_key(store_id, claim_id)
        ticket_id = self.ticket_id(store_id, claim_id)
        if ticket_id is None or self.redis.hget(key, "snooze") == b"done":
            return  # never before the ticket exists; the create path sends it then
        config = self.usable_config(actor, args, store_id)
        if config is None:
            return
        api_key = config.api_key.get_secret_value()
        with self.claim_lock(store_id, claim_id) as locked:
            if not locked:
                self.reschedule(actor, args, delay=BUSY_RETRY_SECONDS, attempt=attempt, stat="lock_waits")
            if self.redis.hget(key, "snooze") == b"done":
                return
            self.take_turn(actor, args, api_key, slot, attempt)
            try:
                self.call(api_key, lambda c: c.snooze_ticket(ticket_id))
            except RateLimited:
                blocked = self.pacer.blocked_until(api_key)
                self.reschedule(actor, args, delay=blocked - time.time(), attempt=attempt,
                                stat="rate_limit_waits", slot=blocked)
            except AuthError as exc:
                stores.mark_invalid(self.host, store_id, str(exc), api_key=api_key)
                self.park(actor, args, store_id)
                return
            except ClientError as exc:
                self.dead(actor, args, store_id, claim_id, f"Richpanel refused the snooze: {exc}")
                return
            except RichpanelError as exc:
                self.transient(actor, args, attempt, exc, store_id, claim_id)
                return
            self.record(key, {"snooze": "done", "snoozed_at": repr(time.time())}, "snoozes")


# -- what the plugin's hooks call ------------------------------------------------------------
def declare(host: Host) -> Delivery:
    delivery = Delivery(host)
    _deliveries[host] = delivery
    return delivery


def delivery_for(host: Host) -> Delivery:
    return _deliveries[host]


def claim_created(host: Host, claim: ClaimCreated) -> None:
    """Schedule the ticket at the key's next free slot; stores without Richpanel are skipped."""
    config = stores.load(host, claim.store_id)
    if config is None or not config.enabled:
        return
    delivery = delivery_for(host)
    args = [claim.store_id, claim.model_dump(mode="json")]
    if config.api_key is None or config.credentials == "invalid":
        delivery.park(delivery.create_actor, args, claim.store_id)
        return
    delivery.schedule(delivery.create_actor, args, config.api_key.get_secret_value())


def claim_status_changed(host: Host, change: ClaimStatusChanged) -> None:
    """A finished claim's ticket is snoozed: now if it exists, else right after it is created."""
    if change.claim_state.value not in tickets.SNOOZE_STATES or stores.load(host, change.store_id) is None:
        return
    delivery = delivery_for(host)
    key = delivery.claim_key(change.store_id, change.claim_id)
    host.redis.hsetnx(key, "snooze", "wanted")  # "done" stays done
    if host.redis.hget(key, "snooze") == b"wanted" and delivery.ticket_id(change.store_id, change.claim_id):
        delivery.request_snooze(change.store_id, change.claim_id)
