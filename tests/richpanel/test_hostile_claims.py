"""A 202 is a promise: every claim the ingress accepts becomes a ticket (issue #23).

Hypothesis posts claims with hostile values where a customer, a store or an attacker controls
them: exponents and junk in amounts, lone surrogates and control characters in names, times at
the ends of the calendar, huge quantities, long strings, unknown fields. Each one is either
refused at the door with a 422 naming a field, or delivered: the real Richpanel plugin opens its
ticket in the sandbox, on a real socket, through a real worker. What may never happen is a 202
followed by a failure in the worker, which Order Protection would never resend.
"""

from __future__ import annotations

import copy
import json
import uuid
from datetime import timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import event as event_
from hypothesis import strategies as st
from starlette.testclient import TestClient

from opcore_hooks.app import create_app
from opcore_hooks.samples import CLAIM_CREATED
from opcore_hooks.testing import WEBHOOK_SECRET, wait_for
from tests.richpanel.test_delivery import delivering, ticket_of

#: Examples per run; the closing note of #23 and docs/SECURITY.md quote it.
EXAMPLES = 300

_JUNK_TEXT = ["\udcff", "a\ud800b", "\x00", "\u202e\u0645", "😀" * 300, "x" * 70_000, "<script>", "\r\nX: y", ""]
texts = st.one_of(st.text(max_size=80), st.sampled_from(_JUNK_TEXT))
amounts = st.one_of(
    st.sampled_from(["1e20000000", "1e9", "-0", "  12.50 ", "0x10", "12,50", "١٢٣", "NaN", "Infinity", "9" * 40,
                     "0." + "1" * 30, "24.99", ".5", "5."]),
    st.decimals(allow_nan=True, allow_infinity=True).map(str),
    st.integers(min_value=-(10**20), max_value=10**20), st.floats(), st.booleans(), st.none(),
)
times = st.one_of(
    st.builds(lambda d, minutes: d.replace(tzinfo=timezone(timedelta(minutes=minutes))).isoformat(),
              st.datetimes(), st.integers(min_value=-1439, max_value=1439)),
    st.sampled_from(["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59", "2026-13-01T00:00:00Z", "yesterday"]),
    st.integers(min_value=-(10**12), max_value=10**12),
)
quantities = st.one_of(st.integers(min_value=-(10**20), max_value=10**20), st.sampled_from(["3", "1e3", None]))

#: Where each strategy may land in the sample claim: (path, strategy).
_FIELDS: list[tuple[tuple[Any, ...], Any]] = [
    (("customer", "first_name"), texts), (("customer", "last_name"), texts), (("customer", "phone"), texts),
    (("customer", "name"), texts),  # a field no model names: kept, carried, never validated by type
    (("claim_description",), texts), (("claim_number",), texts), (("source_order_id",), texts),
    (("order", "order_number"), texts), (("order", "currency"), texts),
    (("items", 0, "item_name"), texts), (("items", 0, "sku"), texts), (("items", 0, "quantity"), quantities),
    (("order", "line_items", 0, "item_name"), texts), (("order", "line_items", 0, "quantity"), quantities),
    (("order", "line_items", 0, "unit_price"), amounts),
    (("order", "subtotal"), amounts), (("order", "shipping"), amounts), (("order", "tax"), amounts),
    (("order", "total"), amounts), (("order", "placed_at"), times), (("created_at",), times),
]


@st.composite
def hostile_claims(draw: Any) -> dict[str, Any]:
    event = copy.deepcopy(CLAIM_CREATED)
    event["id"] = str(uuid.uuid4())  # fresh per example, replays included: never a "duplicate"
    body = event["body"]
    body["claim_id"] = f"claim-{uuid.uuid4().hex[:12]}"
    for index in sorted(draw(st.sets(st.integers(0, len(_FIELDS) - 1), min_size=1, max_size=6))):
        path, values = _FIELDS[index]
        parent = body
        for part in path[:-1]:
            parent = parent[part]
        parent[path[-1]] = draw(values)
    return event


@pytest.mark.parametrize(("sent", "accepted"), [
    ("2026-11-20T08:00:00-05:00", True), ("1970-01-01T00:00:00Z", True), ("2199-12-31T23:59:59+00:00", True),
    ("1970-01-01T00:30:00+01:00", False),  # 1969 in UTC
    ("2199-12-31T23:00:00-23:59", False),  # 2200 in UTC
    ("9999-12-31T23:59:59-23:59", False),  # no UTC at all: astimezone overflows
])
def test_a_time_is_refused_where_utc_puts_it_outside_1970_to_2200(sent, accepted):
    from pydantic import ValidationError

    from opcore_hooks.events import Order, utc

    try:
        order = Order.model_validate({"placed_at": sent})
    except ValidationError as exc:
        assert not accepted and exc.errors()[0]["loc"] == ("placed_at",)
    else:
        assert accepted and order.placed_at is not None
        utc(order.placed_at)  # what the worker does with it: never an OverflowError


# The worker's threads draw jitter from ``random`` while Hypothesis draws; it warns of that.
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                      HealthCheck.too_slow])
@given(data=st.data())
def test_every_claim_answered_202_becomes_a_ticket(make_host, run_worker, sandbox, monkeypatch, data):
    # One host and worker for every example of a run (Hypothesis keeps the fixtures across
    # examples): each example is a claim of its own.
    if id(make_host) not in _BUILT:
        _BUILT.clear()
        monkeypatch.setenv("OPCORE_RICHPANEL_QUOTA", "100000")  # Richpanel's 50 per 30 s would pace the examples
        _BUILT[id(make_host)] = delivering(make_host, run_worker, sandbox, monkeypatch)[0]
    host = _BUILT[id(make_host)]
    event = data.draw(hostile_claims())
    # json.dumps escapes a lone surrogate as \udcff, as a hostile sender would send it.
    with TestClient(create_app(host)) as client:
        answer = client.post("/webhooks/orderprotection", content=json.dumps(event).encode(),
                             headers={"x-webhook-secret": WEBHOOK_SECRET, "content-type": "application/json"})
    if answer.status_code in (413, 422):  # too large, or a field at fault
        assert answer.status_code == 413 or answer.json()["details"], answer.text  # a 422 names the field
        event_("refused")
        return
    event_("accepted")
    assert answer.status_code == 202, answer.text
    claim_id = event["body"]["claim_id"]
    wait_for(lambda: ticket_of(host, claim_id) or host.dead_letters.list(claim_id=claim_id), timeout=15)
    assert host.dead_letters.list(claim_id=claim_id) == [], "accepted, then failed for good in the worker"
    assert ticket_of(host, claim_id)


_BUILT: dict[int, Any] = {}
