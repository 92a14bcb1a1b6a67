"""The chaos run's workload: which claims exist, which events they produce, and when each is sent.

The plan is built from one seeded ``random.Random`` before anything is sent, so a seed names a
workload: the same seed gives the same claims, states, duplicate deliveries and timings (only
the event ids, from ``uuid4``, differ). The judge later compares what Richpanel received with
this plan, never with opcore's own bookkeeping.
"""

from __future__ import annotations

import random
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

#: States in which a claim's ticket must be snoozed.
FINISHED = ("APPROVED", "RESOLVED", "RESOLVED_BY_BRAND")
CLAIM_TYPES = ("DAMAGED", "DEFECTIVE_ITEM", "MISSING_ITEM", "WRONG_ITEM", "STOLEN",
               "ORDER_DELIVERED_NOT_RECEIVED", "RETURNED_TO_SENDER", "MULTIPLE")
CREATED_TOPICS = ("claim.created", "claim/created")
_DESCRIPTIONS = ["Arrived damaged", "Never arrived", "Wrong colour — größe L", "Box was empty", "パッケージが破損"]


@dataclass
class Claim:
    """One claim of the plan and the state it must end in."""

    claim_id: str
    store_id: str
    email: str
    created: dict[str, Any]
    changes: list[tuple[float, dict[str, Any]]]  # (offset in seconds from the creation, event)
    final_state: str
    finished: bool
    #: The claim's message.created events, in created_at order (the order their notes must have
    #: wherever they reached opcore within 2 s of each other).
    messages: list[dict[str, Any]] = field(default_factory=list)

    def message_token(self, message_id: str) -> str:
        """The text that finds a message's note on its ticket (in every rendering)."""
        return f"msg-{self.claim_id}-{message_id}"


@dataclass(order=True)
class Send:
    """One delivery of an event, ``at`` seconds after the plan's start (sorted by time)."""

    at: float
    seq: int
    event: dict[str, Any] = field(compare=False)
    claim_id: str = field(compare=False)


def iso(ts: float) -> str:
    """An epoch time as Order Protection writes it: UTC, milliseconds, ``Z``."""
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def is_creation(event: dict[str, Any]) -> bool:
    return event["topic"] in CREATED_TOPICS


def build_plan(n: int, stores: list[str], rng: random.Random, run_id: str, rate: float,
               t0: float) -> tuple[list[Claim], list[Send]]:
    """N claims spread over the stores at ``rate`` claims/s; the events and when to send each.

    Half the claims are finished (approved or resolved) within a second of their creation, one
    in ten of those just *before* it, as Order Protection's auto-approval does; 30% of the others
    (15% of all claims) move to a state that must not snooze. About one delivery in ten is repeated with the same
    event id, as Order Protection redelivers. The order of the ``rng`` calls is part of what a
    seed means: keep it when changing this.
    """
    claims: list[Claim] = []
    sends: list[Send] = []
    customers = max(1, (n * 3) // 4)  # a quarter of the customers have two claims
    for i in range(n):
        store = stores[i % len(stores)]
        cust = i % customers
        email = f"chaos.{run_id}.{cust}@example.com"
        claim_id = f"chaos-{run_id}-{i:05d}"
        at = i / rate
        created = _created_event(i, store, claim_id, email, cust, t0 + at, rng)
        finished = i % 2 == 0
        if finished:
            final, changes = _finishing_change(i, store, claim_id, t0 + at, rng)
        else:
            final, changes = _other_change(store, claim_id, t0 + at, rng)
        claims.append(Claim(claim_id, store, email, created, changes, final, finished))
        _schedule(sends, at, claim_id, [(0.0, created), *changes], rng)
    # Messages draw from their own generator, seeded from the plan's, so that the claims and
    # events a seed gave before messages existed are still the ones it gives.
    mrng = random.Random(rng.random())
    for i, claim in enumerate(claims):
        if mrng.random() < 0.4:
            _schedule(sends, i / rate, claim.claim_id, _messages(claim, t0 + i / rate, mrng), mrng)
    sends.sort()
    return claims, sends


def _messages(claim: Claim, when: float, rng: random.Random) -> list[tuple[float, dict[str, Any]]]:
    """One to three messages of the claim's conversation, written 20 s apart, sent within 1.5 s
    of each other in any order (so their notes must be put in order), one in ten before the claim.
    Their text holds markup, which a note must show as text."""
    count = rng.randint(1, 3)
    start = rng.uniform(-0.5, 0.0) if rng.random() < 0.1 else rng.uniform(0.1, 2.0)
    out = []
    for j in range(count):
        message_id = f"m{j}"
        event = {"id": str(uuid.uuid4()), "topic": rng.choice(("message.created", "message/created")),
                 "created_at": iso(when + 1), "body": {
                     "store_id": claim.store_id, "claim_id": claim.claim_id, "message_id": message_id,
                     "message": f"{claim.message_token(message_id)} <i>where is my parcel?</i> & thanks",
                     "sender_type": rng.choice(("customer", "brand", "op")), "author_name": "Cust Chaos",
                     "created_at": iso(when - 60 + 20 * j)}}
        claim.messages.append(event)
        out.append((start + rng.uniform(0.0, 1.5), event))
    return out


def _schedule(sends: list[Send], at: float, claim_id: str, events: list[tuple[float, dict[str, Any]]],
              rng: random.Random) -> None:
    """Append a claim's deliveries, one in ten sent twice (the same event id again, soon)."""
    for offset, event in events:
        sends.append(Send(at + offset, len(sends), event, claim_id))
        if rng.random() < 0.1:
            sends.append(Send(at + offset + rng.uniform(0.0, 2.0), len(sends), event, claim_id))


#: What a planned customer's email, first name and phone look like (``_created_event``): the
#: chaos run looks for them in opcore's own logs, where they must never appear.
CUSTOMER_DATA = re.compile(rb"chaos\.[A-Za-z0-9]+\.[0-9]+@example\.com|\+1555[0-9]{7}|\bCust[0-9]+\b")


def _created_event(i: int, store: str, claim_id: str, email: str, cust: int, when: float,
                   rng: random.Random) -> dict[str, Any]:
    """A full ``claim.created`` webhook (either topic spelling), with unicode text and an order."""
    claim_type = CLAIM_TYPES[i % len(CLAIM_TYPES)]
    price = f"{rng.randint(5, 300)}.{rng.randint(0, 99):02d}"
    topic = rng.choice(CREATED_TOPICS)
    description = rng.choice(_DESCRIPTIONS)
    return {
        "id": str(uuid.uuid4()), "topic": topic, "created_at": iso(when),
        "body": {
            "store_id": store, "claim_id": claim_id, "claim_number": f"OP-{100000 + i}",
            "order_id": f"order-{i}", "source_order_id": str(500000 + i), "created_at": iso(when - 2),
            "claim_description": description, "claim_type": claim_type, "claim_state": "NEW",
            "items": [{"item_id": f"i{i}", "item_name": f"Item {i}", "sku": f"SKU-{i}", "quantity": 1 + i % 3}],
            "customer": {"email": email, "first_name": f"Cust{cust}", "last_name": "Chaos",
                         "phone": f"+1555{cust:07d}"},
            "order": {"order_number": f"#{10000 + i}", "currency": "USD", "placed_at": iso(when - 86400),
                      "line_items": [{"item_id": f"i{i}", "item_name": f"Item {i}", "quantity": 1,
                                      "unit_price": price}],
                      "subtotal": price, "shipping": "4.99", "tax": "1.00",
                      "total": f"{float(price) + 5.99:.2f}"},
        },
    }


def _finishing_change(i: int, store: str, claim_id: str, when: float,
                      rng: random.Random) -> tuple[str, list[tuple[float, dict[str, Any]]]]:
    """An approval or resolution within a second of the creation; one in ten arrives just before it."""
    final = rng.choice(FINISHED + ("APPROVED_CAMEL",))
    offset = rng.uniform(-0.3, 0.0) if rng.random() < 0.1 else rng.uniform(0.05, 1.0)
    event_time = iso(when + 0.5 + max(offset, 0.0))
    if final == "APPROVED_CAMEL":  # Order Protection's camelCase ``claim/approved``
        event = {"id": str(uuid.uuid4()), "topic": "claim/approved", "created_at": event_time,
                 "body": {"claimId": claim_id, "storeId": store,
                          "resolutions": [{"type": "RESHIP", "itemId": f"i{i}", "quantity": 1}]}}
        return "APPROVED", [(offset, event)]
    event = {"id": str(uuid.uuid4()), "topic": "claim.state_changed", "created_at": event_time,
             "body": {"store_id": store, "claim_id": claim_id, "claim_state": final, "previous_state": "NEW"}}
    return final, [(offset, event)]


def _other_change(store: str, claim_id: str, when: float,
                  rng: random.Random) -> tuple[str, list[tuple[float, dict[str, Any]]]]:
    """For 30% of the unfinished claims, a move to a state that must not snooze; else nothing."""
    if rng.random() >= 0.3:
        return "NEW", []
    if rng.random() < 0.5:
        event = {"id": str(uuid.uuid4()), "topic": "claim.denied", "created_at": iso(when + 1.5),
                 "body": {"claim_id": claim_id, "store_id": store}}
        final = "DENIED"
    else:
        final = "WAITING_FOR_BRAND"
        event = {"id": str(uuid.uuid4()), "topic": "claim.state_changed", "created_at": iso(when + 1.5),
                 "body": {"store_id": store, "claim_id": claim_id, "claim_state": final}}
    return final, [(rng.uniform(0.1, 1.0), event)]
