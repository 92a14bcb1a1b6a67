"""The widget's read model: each customer's recent orders and claims, per store.

Fed by every claim and order event whether or not any helpdesk is configured for the store
yet, so a store that connects later sees its history. Writes are idempotent (a redelivered
event rewrites the same values) and state changes are ordered by the event's time, so a late
redelivery of an older state never overwrites a newer one.

Times are kept in UTC: event times as fixed-width ``...T..:..:...ffffffZ`` stamps, so Lua can
order them as strings, and views sorted by the parsed datetime, so ``+02:00`` and ``Z`` offsets
(or a missing fraction of a second) never reorder a customer's history.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import redis
from pydantic import BaseModel

from .config import Settings
from .events import ClaimCreated, ClaimStatusChanged, Customer, Order, OrderUpserted

#: How many orders and claims are kept per customer; the oldest are dropped beyond it.
CAP = 100

# Apply a state change only when it is not older than the one applied last. Returns 1 when
# applied, 0 when stale, -1 when the claim is not known yet (the change is parked for it).
_SET_STATE = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then
  local parked = redis.call('GET', KEYS[2])
  if parked then
    local p = cjson.decode(parked)
    if (p['state_at'] or '') > ARGV[3] then return 0 end
  end
  redis.call('SET', KEYS[2], cjson.encode({claim_state=ARGV[2], state_at=ARGV[3]}), 'EX', 1209600)
  return -1
end
local claim = cjson.decode(raw)
if (claim['state_at'] or '') > ARGV[3] then return 0 end
claim['claim_state'] = ARGV[2]
claim['state_at'] = ARGV[3]
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(claim))
return 1
"""


# Record a created claim in one step, so a state change arriving meanwhile is never lost:
# keep a state already recorded for it, else take a parked (earlier-arrived) state when it is
# not older than the creation, then index the claim and drop the parked change.
_SET_CLAIM = """
local view = cjson.decode(ARGV[2])
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if raw then
  local old = cjson.decode(raw)
  view['claim_state'] = old['claim_state']
  view['state_at'] = old['state_at'] or ''
else
  view['state_at'] = ARGV[3]
  local parked = redis.call('GET', KEYS[3])
  if parked then
    local p = cjson.decode(parked)
    if (p['state_at'] or '') >= ARGV[3] then
      view['claim_state'] = p['claim_state']
      view['state_at'] = p['state_at'] or ''
    end
  end
end
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(view))
redis.call('SET', KEYS[2], ARGV[4])
redis.call('DEL', KEYS[3])
return 1
"""

# Write an order snapshot unless one from a later event is already recorded.
_SET_ORDER = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if raw and (cjson.decode(raw)['seen_at'] or '') > ARGV[3] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""


class OrderView(BaseModel):
    order_number: str | None = None
    placed_at: datetime | None = None
    currency: str | None = None
    total: str | None = None
    items: list[dict[str, Any]] = []


class ClaimView(BaseModel):
    claim_id: str
    claim_number: str | None = None
    claim_type: str
    claim_state: str
    order_number: str | None = None
    created_at: datetime | None = None
    claim_url: str


class CustomerView(BaseModel):
    email: str
    first_name: str | None = None
    last_name: str | None = None
    phone: str | None = None


class CustomerContext(BaseModel):
    """What the host knows of one customer in one store, newest first."""

    store_id: str
    customer: CustomerView
    orders: list[OrderView] = []
    claims: list[ClaimView] = []


def _utc(value: datetime | None) -> datetime | None:
    """``value`` in UTC; a time without an offset is taken to be UTC already."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def _iso(value: datetime | None) -> str:
    """A fixed-width UTC stamp whose string order is its time order; "" when unknown."""
    utc = _utc(value)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if utc else ""


_OLDEST = datetime.min.replace(tzinfo=timezone.utc)


def _when(value: Any) -> datetime:
    """Sort key of a stored ISO time; unknown or unreadable times sort as the oldest."""
    if not value:
        return _OLDEST
    try:
        return _utc(datetime.fromisoformat(value)) or _OLDEST
    except (TypeError, ValueError):
        return _OLDEST


class ReadModel:
    def __init__(self, client: redis.Redis, prefix: str, settings: Settings) -> None:
        self.redis = client
        self.prefix = prefix
        self.settings = settings
        self._set_state = client.register_script(_SET_STATE)
        self._set_claim = client.register_script(_SET_CLAIM)
        self._set_order = client.register_script(_SET_ORDER)

    def _k(self, store_id: str, *parts: str) -> str:
        return ":".join((self.prefix, store_id, *parts))

    # -- writes --------------------------------------------------------------------------
    def record_claim(self, claim: ClaimCreated, event_time: datetime | None) -> None:
        email = claim.customer.email.lower()
        order_number = claim.order.order_number if claim.order else None
        view = ClaimView(
            claim_id=claim.claim_id,
            claim_number=claim.claim_number,
            claim_type=claim.claim_type.value,
            claim_state=claim.claim_state.value,
            order_number=order_number or claim.source_order_id,
            created_at=_utc(claim.created_at or event_time),
            claim_url=self.settings.claim_url(claim.claim_id),
        )
        claims_key = self._k(claim.store_id, email, "claims")
        self._set_claim(
            keys=[
                claims_key,
                self._k(claim.store_id, "claim", claim.claim_id),
                self._k(claim.store_id, "parked", claim.claim_id),
            ],
            args=[claim.claim_id, view.model_dump_json(), _iso(event_time), email],
        )
        self._record_customer(claim.store_id, claim.customer)
        if claim.order is not None:
            self._record_order(claim.store_id, email, claim.order, event_time)
        self._trim(claims_key, "created_at")

    def record_state(self, change: ClaimStatusChanged, event_time: datetime | None) -> bool:
        """Apply a state change; False when it is older than what is recorded."""
        email = self.redis.get(self._k(change.store_id, "claim", change.claim_id))
        claims_key = self._k(change.store_id, email.decode(), "claims") if email else self._k("-", "-")
        applied = self._set_state(
            keys=[claims_key, self._k(change.store_id, "parked", change.claim_id)],
            args=[change.claim_id, change.claim_state.value, _iso(event_time)],
        )
        return applied != 0

    def record_order(self, event: OrderUpserted, event_time: datetime | None = None) -> None:
        """Record an order snapshot; with ``event_time``, an older snapshot never replaces a newer one."""
        self._record_customer(event.store_id, event.customer)
        self._record_order(event.store_id, event.customer.email.lower(), event.order, event_time)

    def _record_customer(self, store_id: str, customer: Customer) -> None:
        fields = {k: v for k, v in customer.model_dump(include={"first_name", "last_name", "phone"}).items() if v}
        fields["email"] = customer.email or ""
        self.redis.hset(self._k(store_id, customer.email.lower(), "profile"), mapping=fields)

    def _record_order(self, store_id: str, email: str, order: Order, event_time: datetime | None) -> None:
        view = OrderView(
            order_number=order.order_number,
            placed_at=_utc(order.placed_at),
            currency=order.currency,
            total=order.total,
            items=[{"item_name": li.item_name, "quantity": li.quantity} for li in order.line_items],
        )
        key = self._k(store_id, email, "orders")
        ident = order.order_number or _iso(order.placed_at) or "unknown"
        row = {**view.model_dump(mode="json"), "seen_at": _iso(event_time)}
        self._set_order(keys=[key], args=[ident, json.dumps(row), _iso(event_time)])
        self._trim(key, "placed_at")

    def _trim(self, key: str, by: str) -> None:
        if self.redis.hlen(key) <= CAP:
            return
        rows = sorted(
            ((field, json.loads(raw)) for field, raw in self.redis.hgetall(key).items()),
            key=lambda row: _when(row[1].get(by)),
        )
        self.redis.hdel(key, *[field for field, _ in rows[: len(rows) - CAP]])

    # -- reads ---------------------------------------------------------------------------
    def customer_context(self, store_id: str, email: str) -> CustomerContext:
        email = email.strip().lower()
        pipe = self.redis.pipeline()
        pipe.hgetall(self._k(store_id, email, "profile"))
        pipe.hvals(self._k(store_id, email, "orders"))
        pipe.hvals(self._k(store_id, email, "claims"))
        profile, orders, claims = pipe.execute()
        profile = {k.decode(): v.decode() for k, v in profile.items()}
        order_rows = sorted((json.loads(raw) for raw in orders), key=lambda o: (_when(o.get("placed_at")), o.get("order_number") or ""), reverse=True)
        claim_rows = sorted((json.loads(raw) for raw in claims), key=lambda c: (_when(c.get("created_at")), c["claim_id"]), reverse=True)
        return CustomerContext(
            store_id=store_id,
            customer=CustomerView(**{**profile, "email": profile.get("email") or email}),
            orders=[OrderView.model_validate(o) for o in order_rows],
            claims=[ClaimView.model_validate(c) for c in claim_rows],
        )
