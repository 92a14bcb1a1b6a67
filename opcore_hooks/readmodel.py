"""The widget's read model: each customer's recent orders and claims, per store.

Fed by every claim and order event whether or not any helpdesk is configured for the store
yet, so a store that connects later sees its history. Writes are idempotent (a redelivered
event rewrites the same values) and state changes are ordered by the event's time, so a late
redelivery of an older state never overwrites a newer one. Every write that changes what a
customer's context shows bumps that customer's version (``version_key``), and only such a
write: a redelivery leaves the version alone, so views derived from a context can be cached
against it.

Times are kept in UTC: event times as fixed-width ``...T..:..:...ffffffZ`` stamps, so Lua can
order them as strings, and views sorted by the parsed datetime, so ``+02:00`` and ``Z`` offsets
(or a missing fraction of a second) never reorder a customer's history.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any

import redis
from pydantic import BaseModel

from . import keys
from .config import Settings
from .events import ClaimCreated, ClaimStatusChanged, Customer, Order, OrderUpserted, utc
from .store import pinned

#: How many orders and claims are kept per customer; the oldest are dropped beyond it.
CAP = 100

#: Flat tables (a claim view) equal field by field; cjson's key order is not stable.
_SAME = """
local function same(a, b)
  for k, v in pairs(a) do if b[k] ~= v then return false end end
  for k, v in pairs(b) do if a[k] ~= v then return false end end
  return true
end
"""

#: Every script's last argument is the retention in ms: each write keeps the keys it touches
#: for that long again, so a customer's records go the retention period after their last event.
_KEEP = """
local TTL = ARGV[#ARGV]
local function keep(...)
  for _, key in ipairs({...}) do redis.call('PEXPIRE', key, TTL) end
end
"""

# Apply a state change only when it is not older than the one applied last. Returns 1 when
# applied, 0 when stale, -1 when the claim is not known yet (the change is parked for it).
# A recorded claim drops any change parked for it: set_claim took what it needed, and a change
# that parked itself while its claim was being recorded (record_state) applies itself here on
# its second look. Left, that copy would outlive the claim's records on the parking TTL.
# KEYS: claims, parked state, version, claim index. ARGV: claim id, state, event time, now (ms), retention.
_SET_STATE = _KEEP + """
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
redis.call('DEL', KEYS[2])
local claim = cjson.decode(raw)
if (claim['state_at'] or '') > ARGV[3] then return 0 end
if claim['claim_state'] == ARGV[2] and claim['state_at'] == ARGV[3] then return 1 end
claim['claim_state'] = ARGV[2]
claim['state_at'] = ARGV[3]
claim['touched'] = tonumber(ARGV[4])
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(claim))
redis.call('INCR', KEYS[3])
keep(KEYS[1], KEYS[3], KEYS[4])
return 1
"""


# The writes as Lua functions, so a claim, its customer's profile and its order are recorded
# in one round trip (_RECORD_CLAIM) by the very code that records each alone.
#
# set_claim records a created claim in one step, so a state change arriving meanwhile is never
# lost: keep a state already recorded for it, else take a parked (earlier-arrived) state when
# it is not older than the creation, then index the claim and drop the parked change.
# set_order writes an order snapshot unless one from a later event is already recorded;
# snapshots are compared as the bytes Python wrote, which json.dumps keeps in a stable key order.
# set_profile updates the profile fields that differ (pairs from ARGV[first]); the version is
# bumped only if one did.
_WRITES = _SAME + _KEEP + """
local function set_claim(claims, index, parked_key, version, claim_id, view_json, at, email)
  local view = cjson.decode(view_json)
  local raw = redis.call('HGET', claims, claim_id)
  if raw then
    local old = cjson.decode(raw)
    view['claim_state'] = old['claim_state']
    view['state_at'] = old['state_at'] or ''
  else
    view['state_at'] = at
    local parked = redis.call('GET', parked_key)
    if parked then
      local p = cjson.decode(parked)
      if (p['state_at'] or '') >= at then
        view['claim_state'] = p['claim_state']
        view['state_at'] = p['state_at'] or ''
      end
    end
  end
  redis.call('SET', index, email)
  redis.call('DEL', parked_key)
  if raw then  -- the same event again changes nothing, its row's time included
    local was = cjson.decode(raw)
    was['touched'] = view['touched']
    if same(was, view) then return 0 end
  end
  redis.call('HSET', claims, claim_id, cjson.encode(view))
  redis.call('INCR', version)
  return 1
end

local function set_order(orders, version, ident, row, at)
  local raw = redis.call('HGET', orders, ident)
  if raw and (raw == row or (cjson.decode(raw)['seen_at'] or '') > at) then return 0 end
  redis.call('HSET', orders, ident, row)
  redis.call('INCR', version)
  return 1
end

local function set_profile(profile, version, args, first)
  local changed = 0
  for i = first, #args - 1, 2 do
    if redis.call('HGET', profile, args[i]) ~= args[i + 1] then
      redis.call('HSET', profile, args[i], args[i + 1])
      changed = 1
    end
  end
  if changed == 1 then redis.call('INCR', version) end
  return changed
end
"""

_SET_ORDER = _WRITES + """
local changed = set_order(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3])
keep(KEYS[1], KEYS[2])
return changed
"""
_SET_PROFILE = _WRITES + """
local changed = set_profile(KEYS[1], KEYS[2], ARGV, 1)
keep(KEYS[1], KEYS[2])
return changed
"""

# KEYS: claims, claim index, parked state, version, profile, orders.
# ARGV: claim id, claim view, event time, email, order ident ('' for none), order row, profile pairs...,
#       retention. Returns how many claims and orders the customer has, for the trim.
_RECORD_CLAIM = _WRITES + """
set_claim(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
set_profile(KEYS[5], KEYS[4], ARGV, 7)
local orders = 0
if ARGV[5] ~= '' then
  set_order(KEYS[6], KEYS[4], ARGV[5], ARGV[6], ARGV[3])
  orders = redis.call('HLEN', KEYS[6])
end
keep(KEYS[1], KEYS[2], KEYS[4], KEYS[5], KEYS[6])
return {redis.call('HLEN', KEYS[1]), orders}
"""


# Read a customer as one JSON document built inside Redis: a single round trip and a single
# parse by pydantic-core, instead of a hundred small values through the Python RESP parser.
_READ = """
local profile = redis.call('HGETALL', KEYS[1])
local fields = {}
for i = 1, #profile, 2 do fields[profile[i]] = profile[i + 1] end
if not fields['email'] or fields['email'] == '' then fields['email'] = ARGV[1] end
local orders = redis.call('HVALS', KEYS[2])
local claims = {}
for _, row in ipairs(redis.call('HVALS', KEYS[3])) do  -- a claim's row goes with its own retention
  local touched = tonumber(string.match(row, '"touched":%s*([%d.e+]+)'))
  if not touched or touched >= tonumber(ARGV[3]) then claims[#claims + 1] = row end
end
return '{"store_id":' .. cjson.encode(ARGV[2]) .. ',"customer":' .. cjson.encode(fields) ..
  ',"orders":[' .. table.concat(orders, ',') .. '],"claims":[' .. table.concat(claims, ',') .. ']}'
"""


class ItemView(BaseModel):
    item_name: str | None = None
    quantity: int = 1


class OrderView(BaseModel):
    order_number: str | None = None
    placed_at: datetime | None = None
    currency: str | None = None
    total: str | None = None
    items: list[ItemView] = []


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
    """What the host knows of one customer in one store, newest first.

    Field for field the widget JSON of CONTRACT.md, so a plugin can hand it out as it is.
    """

    store_id: str
    customer: CustomerView
    orders: list[OrderView] = []
    claims: list[ClaimView] = []


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else utc(value)


def _touched(view_json: str) -> str:
    """A claim row with ``touched``, the time (ms) of its last event: the customer's hash lives as
    long as any of their claims is active, so each row's own retention is judged on read."""
    return f'{view_json[:-1]},"touched":{int(time.time() * 1000)}}}'


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
        self.redis = client = pinned(client)
        self.prefix = prefix
        self.settings = settings
        #: How long a customer's records live after their last write (OPCORE_RETENTION_DAYS).
        self.retention_ms = int(settings.retention_days * 86_400_000)
        self._set_state = client.register_script(_SET_STATE)
        self._record_claim = client.register_script(_RECORD_CLAIM)
        self._set_order = client.register_script(_SET_ORDER)
        self._set_profile = client.register_script(_SET_PROFILE)
        self._read = client.register_script(_READ)

    def _k(self, store_id: str, *parts: str) -> str:
        return keys.join(self.prefix, store_id, *parts)

    def version_key(self, store_id: str, email: str) -> str:
        """The counter every change to this customer's context bumps (absent until the first).

        Public so a reader can fetch it in the same round trip as its own keys and cache what
        it derives from the context against it.
        """
        return self._k(store_id, email.strip().lower(), "v")

    # -- writes --------------------------------------------------------------------------
    def record_claim(self, claim: ClaimCreated, event_time: datetime | None) -> None:
        """Record the claim, its customer and its order in one script (_RECORD_CLAIM).

        Deferred (``PinnedRedis.defer``): inside the dispatcher's write-behind block it travels
        with the worker's next command, so it is in Redis before the ticket is asked for.
        """
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
        store, version = claim.store_id, self.version_key(claim.store_id, email)
        claims_key, orders_key = self._k(store, email, "claims"), self._k(store, email, "orders")
        ident, row = self._order_row(claim.order, event_time) if claim.order is not None else ("", "")

        def trim(counts: list[Any]) -> None:
            if int(counts[0]) > CAP:
                self._trim(claims_key, "created_at", version)
            if int(counts[1]) > CAP:
                self._trim(orders_key, "placed_at", version)

        self.redis.defer(
            self._record_claim,
            keys=[claims_key, self._k(store, "claim", claim.claim_id), self._k(store, "parked", claim.claim_id),
                  version, self._k(store, email, "profile"), orders_key],
            args=[claim.claim_id, _touched(view.model_dump_json()), _iso(event_time), email, ident, row,
                  *self._profile_pairs(claim.customer), self.retention_ms],
            then=trim,
        )

    def record_state(self, change: ClaimStatusChanged, event_time: datetime | None) -> bool:
        """Apply a state change; False when it is older than what is recorded.

        A change for a claim not recorded yet is parked for it. The claim may be recorded
        between reading its index and parking (a claim approved within a second of its
        creation, on two workers: found by bench/chaos.py), so a parked change looks at the
        index once more and applies itself if the claim has arrived meanwhile.
        """
        index = self._k(change.store_id, "claim", change.claim_id)
        parked = self._k(change.store_id, "parked", change.claim_id)
        for _ in range(2):
            email = self.redis.get(index)
            claims_key = self._k(change.store_id, email.decode(), "claims") if email else self._k("-", "-")
            version = self.version_key(change.store_id, email.decode()) if email else self._k("-", "-", "v")
            applied = self._set_state(keys=[claims_key, parked, version, index],
                                      args=[change.claim_id, change.claim_state.value, _iso(event_time),
                                            int(time.time() * 1000), self.retention_ms])
            if applied != -1 or email is not None or not self.redis.exists(index):
                return applied != 0
        return True

    def record_order(self, event: OrderUpserted, event_time: datetime | None = None) -> None:
        """Record an order snapshot; with ``event_time``, an older snapshot never replaces a newer one."""
        self._record_customer(event.store_id, event.customer)
        self._record_order(event.store_id, event.customer.email.lower(), event.order, event_time)

    @staticmethod
    def _profile_pairs(customer: Customer) -> list[str]:
        fields = {k: v for k, v in customer.model_dump(include={"first_name", "last_name", "phone"}).items() if v}
        fields["email"] = customer.email or ""
        return [part for pair in fields.items() for part in pair]

    def _record_customer(self, store_id: str, customer: Customer) -> None:
        email = customer.email.lower()
        self._set_profile(keys=[self._k(store_id, email, "profile"), self.version_key(store_id, email)],
                          args=[*self._profile_pairs(customer), self.retention_ms])

    @staticmethod
    def _order_row(order: Order, event_time: datetime | None) -> tuple[str, str]:
        """The order's field in the customer's orders hash, and its snapshot there."""
        view = OrderView(
            order_number=order.order_number,
            placed_at=_utc(order.placed_at),
            currency=order.currency,
            total=order.total,
            items=[ItemView(item_name=li.item_name, quantity=li.quantity) for li in order.line_items],
        )
        ident = order.order_number or _iso(order.placed_at) or "unknown"
        return ident, json.dumps({**view.model_dump(mode="json"), "seen_at": _iso(event_time)})

    def _record_order(self, store_id: str, email: str, order: Order, event_time: datetime | None) -> None:
        key, version = self._k(store_id, email, "orders"), self.version_key(store_id, email)
        ident, row = self._order_row(order, event_time)
        self._set_order(keys=[key, version], args=[ident, row, _iso(event_time), self.retention_ms])
        self._trim(key, "placed_at", version)

    def _trim(self, key: str, by: str, version: str) -> None:
        if self.redis.hlen(key) <= CAP:
            return
        rows = sorted(
            ((field, json.loads(raw)) for field, raw in self.redis.hgetall(key).items()),
            key=lambda row: _when(row[1].get(by)),
        )
        pipe = self.redis.pipeline()
        pipe.hdel(key, *[field for field, _ in rows[: len(rows) - CAP]])
        pipe.incr(version)
        pipe.execute()

    # -- reads ---------------------------------------------------------------------------
    def customer_context(self, store_id: str, email: str) -> CustomerContext:
        email = email.strip().lower()
        raw = self._read(
            keys=[self._k(store_id, email, part) for part in ("profile", "orders", "claims")],
            args=[email, store_id, int(time.time() * 1000) - self.retention_ms],
        )
        context = CustomerContext.model_validate_json(raw)
        try:  # times are stored in UTC, so they compare as they are ...
            context.orders.sort(key=lambda o: (o.placed_at or _OLDEST, o.order_number or ""), reverse=True)
            context.claims.sort(key=lambda c: (c.created_at or _OLDEST, c.claim_id), reverse=True)
        except TypeError:  # ... unless one was stored without an offset by an older version
            context.orders.sort(key=lambda o: (_utc(o.placed_at) or _OLDEST, o.order_number or ""), reverse=True)
            context.claims.sort(key=lambda c: (_utc(c.created_at) or _OLDEST, c.claim_id), reverse=True)
        return context

    def claim_identity(self, store_id: str, claim_id: str) -> tuple[str, ClaimView] | None:
        """The claim's customer email and its row, or None before the claim is recorded: what a
        delivery needs to look for the claim's ticket when the ticket's id was lost."""
        email = self.redis.get(self._k(store_id, "claim", claim_id))
        if email is None:
            return None
        raw = self.redis.hget(self._k(store_id, email.decode(), "claims"), claim_id)
        return None if raw is None else (email.decode(), ClaimView.model_validate_json(raw))
