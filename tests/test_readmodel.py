"""The widget's read model: per store and customer, newest first, idempotent, ordered by event time."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from starlette.testclient import TestClient

from opcore_hooks import hookimpl, readmodel
from opcore_hooks.app import create_app
from opcore_hooks.testing import WEBHOOK_SECRET, approved, claim_created, drain, feed, state_changed

STORE = "store_123"


def order_upserted(number: str, placed_at: str, *, email: str = "ana@example.com", store: str = STORE,
                   created_at: str = "2026-11-27T10:00:00Z", total: str = "10.00", **order: Any) -> dict:
    return {
        "id": str(uuid.uuid4()), "topic": "order.upserted", "created_at": created_at,
        "body": {"store_id": store, "customer": {"email": email, "first_name": "Ana"},
                 "order": {"order_number": number, "placed_at": placed_at, "currency": "USD", "total": total,
                           "line_items": [{"item_name": "Mug", "quantity": 2}], **order}},
    }


def snapshot(host) -> dict:
    r = host.redis
    out = {}
    for key in sorted(r.scan_iter(match=host.key("rm") + ":*")):
        kind = r.type(key)
        out[key] = r.hgetall(key) if kind == b"hash" else r.get(key)
    return out


@pytest.fixture
def host(make_host):
    return make_host()


def test_events_through_ingress_and_worker_fill_the_read_model(make_host, run_worker):
    host = make_host()
    worker = run_worker(host)
    claim = claim_created(claim_id="c1", claim_number="OP-1")
    with TestClient(create_app(host)) as client:
        headers = {"x-webhook-secret": WEBHOOK_SECRET}
        for event in (claim, order_upserted("#1002", "2026-11-25T08:00:00Z"), approved("c1")):
            assert client.post("/webhooks/orderprotection", json=event, headers=headers).status_code == 202
            drain(host, worker)
    ctx = host.readmodel.customer_context(STORE, "ana@example.com")
    assert ctx.customer.first_name == "Ana"
    assert [o.order_number for o in ctx.orders] == ["#1002", "#1001"]
    assert [(c.claim_number, c.claim_state, c.order_number) for c in ctx.claims] == [("OP-1", "APPROVED", "#1001")]
    assert ctx.claims[0].claim_url == "https://app.orderprotection.com/claims/view/c1"


def test_a_plugin_finds_the_claim_in_the_read_model_before_it_acts(make_host):
    """The write rides on the plugin's first Redis command (write-behind), never after it."""
    seen = []

    class Helpdesk:
        @hookimpl
        def on_claim_created(self, host, event, claim):
            context = host.readmodel.customer_context(claim.store_id, claim.customer.email)
            seen.append([c.claim_id for c in context.claims])

    host = make_host({"helpdesk": Helpdesk()})
    feed(host, claim_created(claim_id="c1"))
    assert seen == [["c1"]]


def test_email_is_matched_case_insensitively(host):
    feed(host, claim_created(customer={"email": "Ana.Lima@Example.COM", "first_name": "Ana"}))
    for asked in ("ana.lima@example.com", "ANA.LIMA@EXAMPLE.COM", "  Ana.Lima@example.com "):
        ctx = host.readmodel.customer_context(STORE, asked)
        assert len(ctx.claims) == 1 and len(ctx.orders) == 1
    assert ctx.customer.email == "Ana.Lima@Example.COM"


def test_stores_and_customers_are_kept_apart(host):
    feed(host, claim_created(claim_id="a"), claim_created(claim_id="b", store_id="store_999"),
         claim_created(claim_id="c", customer={"email": "bob@example.com"}))
    assert [c.claim_id for c in host.readmodel.customer_context(STORE, "ana@example.com").claims] == ["a"]
    assert [c.claim_id for c in host.readmodel.customer_context("store_999", "ana@example.com").claims] == ["b"]
    assert host.readmodel.customer_context("store_404", "ana@example.com").claims == []


def test_newest_first_even_across_time_zones(host):
    feed(host,
         order_upserted("#A", "2026-11-20T09:00:00Z"),
         order_upserted("#B", "2026-11-20T10:30:00+02:00"),   # 08:30Z: older than #A
         order_upserted("#C", "2026-11-20T09:00:00.500000Z"),  # half a second after #A
         order_upserted("#D", "2026-11-20T05:00:00-05:00"),    # 10:00Z: newest
         claim_created(claim_id="old", created_at="2026-11-21T12:00:00+03:00"),
         claim_created(claim_id="new", created_at="2026-11-21T10:00:00Z"))
    ctx = host.readmodel.customer_context(STORE, "ana@example.com")
    assert [o.order_number for o in ctx.orders] == ["#D", "#C", "#A", "#B", "#1001"]
    assert [c.claim_id for c in ctx.claims] == ["new", "old"]


def test_a_state_change_shows_the_new_state(host):
    claim = claim_created(claim_id="c1")
    feed(host, claim, state_changed("c1", "WAITING_FOR_BRAND", created_at="2026-11-27T10:01:00Z"))
    assert host.readmodel.customer_context(STORE, "ana@example.com").claims[0].claim_state == "WAITING_FOR_BRAND"
    feed(host, approved("c1"))
    assert host.readmodel.customer_context(STORE, "ana@example.com").claims[0].claim_state == "APPROVED"


def test_redelivered_events_change_nothing(host):
    claim = claim_created(claim_id="c1")
    change = state_changed("c1", "APPROVED", created_at="2026-11-27T10:05:00Z")
    order = order_upserted("#2000", "2026-11-26T08:00:00Z")
    feed(host, claim, change, order)
    before = snapshot(host)
    feed(host, claim, change, order, claim, change)
    assert snapshot(host) == before


def test_a_stale_state_change_is_ignored(host):
    feed(host, claim_created(claim_id="c1"),
         state_changed("c1", "APPROVED", created_at="2026-11-27T10:05:00Z"),
         state_changed("c1", "WAITING_FOR_OP", created_at="2026-11-27T10:03:00Z"),
         state_changed("c1", "OPEN", created_at="2026-11-27T12:04:00+02:00"))  # 10:04Z, still older
    assert host.readmodel.customer_context(STORE, "ana@example.com").claims[0].claim_state == "APPROVED"


def test_a_state_change_before_the_creation_is_applied_when_the_claim_arrives(host):
    feed(host, approved("c1"))  # 10:06Z, before claim.created (10:00Z) arrives
    assert host.readmodel.customer_context(STORE, "ana@example.com").claims == []
    feed(host, claim_created(claim_id="c1"))
    assert host.readmodel.customer_context(STORE, "ana@example.com").claims[0].claim_state == "APPROVED"


def test_an_early_state_change_older_than_the_creation_loses(host):
    feed(host, state_changed("c1", "OPEN", created_at="2026-11-27T09:00:00Z"), claim_created(claim_id="c1"))
    assert host.readmodel.customer_context(STORE, "ana@example.com").claims[0].claim_state == "NEW"


def test_a_redelivered_creation_keeps_the_later_state(host):
    claim = claim_created(claim_id="c1")
    feed(host, claim, approved("c1"), claim)
    assert host.readmodel.customer_context(STORE, "ana@example.com").claims[0].claim_state == "APPROVED"


def test_an_older_order_snapshot_never_replaces_a_newer_one(host):
    newer = order_upserted("#1", "2026-11-01T00:00:00Z", total="20.00", created_at="2026-11-27T11:00:00Z")
    # 12:30 at +02:00 is 10:30Z: older than the 11:00Z snapshot, though it reads later.
    older = order_upserted("#1", "2026-11-01T00:00:00Z", total="15.00", created_at="2026-11-27T12:30:00+02:00")
    feed(host, newer, older)
    [order] = host.readmodel.customer_context(STORE, "ana@example.com").orders
    assert order.total == "20.00"


def test_each_customer_keeps_only_the_newest_orders_and_claims(host, monkeypatch):
    monkeypatch.setattr(readmodel, "CAP", 5)
    feed(host, *[order_upserted(f"#{n}", f"2026-11-{n:02d}T00:00:00Z") for n in range(1, 9)])
    feed(host, *[claim_created(claim_id=f"c{n}", created_at=f"2026-10-{n:02d}T00:00:00Z", order=None)
                 for n in (3, 1, 8, 2, 7, 6, 5, 4)])
    ctx = host.readmodel.customer_context(STORE, "ana@example.com")
    assert [o.order_number for o in ctx.orders] == ["#8", "#7", "#6", "#5", "#4"]
    assert [c.claim_id for c in ctx.claims] == ["c8", "c7", "c6", "c5", "c4"]


def test_the_default_cap_is_a_hundred(host):
    assert readmodel.CAP == 100
    for n in range(101):
        placed = f"2026-{1 + n // 60:02d}-01T00:00:{n % 60:02d}Z"
        feed(host, order_upserted(f"#{n}", placed))
    orders = host.readmodel.customer_context(STORE, "ana@example.com").orders
    assert len(orders) == 100 and "#0" not in {o.order_number for o in orders}


def test_the_version_moves_on_every_change_and_only_then(host):
    rm = host.readmodel
    claim = claim_created(claim_id="c1")
    order = order_upserted("#2", "2026-11-26T08:00:00Z")
    steps = [
        ("created", claim, True), ("created again", claim, False), ("approved", approved("c1"), True),
        ("approved again", approved("c1"), False), ("order", order, True), ("order again", order, False),
        ("order changed", order_upserted("#2", "2026-11-26T08:00:00Z", total="11.00",
                                         created_at="2026-11-27T11:00:00Z"), True),
        ("new phone", claim_created(claim_id="c1", customer={"email": "ana@example.com", "first_name": "Ana",
                                                             "last_name": "Lima", "phone": "+15550000000"}), True),
    ]
    for name, envelope, moves in steps:
        before = host.redis.get(rm.version_key(STORE, "ANA@example.com"))
        feed(host, envelope)
        after = host.redis.get(rm.version_key(STORE, "ANA@example.com"))
        assert (after != before) is moves, name


def test_a_time_stored_without_an_offset_still_sorts(host):
    feed(host, order_upserted("#new", "2026-11-25T08:00:00Z"))
    host.redis.hset(host.readmodel._k(STORE, "ana@example.com", "orders"), "#naive",
                    '{"order_number": "#naive", "placed_at": "2026-11-24T08:00:00", "items": []}')
    assert [o.order_number for o in host.readmodel.customer_context(STORE, "ana@example.com").orders] == [
        "#new", "#naive"]
