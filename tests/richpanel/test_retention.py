"""Retention: a claim's records expire OPCORE_RETENTION_DAYS after its last event, and a late
event for an expired claim finds the ticket Richpanel still holds instead of opening another."""

from __future__ import annotations

import pytest

from opcore_hooks.events import event_from_json
from opcore_hooks.testing import approved, claim_created, drain, state_changed

from .test_delivery import STORE, delivering, post, requests, settle, tickets

DAY_MS = 86_400_000


@pytest.fixture
def rp(make_host, run_worker, sandbox, monkeypatch):
    """As test_delivery's, with a retention of 30 days."""
    return delivering(make_host, run_worker, sandbox, monkeypatch, retention_days=30)


def claim_keys(host, claim_id: str) -> dict[str, str]:
    """Every key that names the claim or its customer, by what it is."""
    found = {}
    for raw in host.redis.scan_iter(f"{host.settings.namespace}:*"):
        key = raw.decode()
        if claim_id in key or "ana@example.com" in key:
            found[key] = key
    return found


def test_a_claims_records_live_the_retention_period_after_its_last_event(rp):
    host, worker, sandbox = rp
    event = claim_created()
    claim_id = event["body"]["claim_id"]
    post(host, event, approved(claim_id))
    settle(host, worker, lambda: len(requests(sandbox, "PUT")) == 1)
    keys = claim_keys(host, claim_id)
    kinds = {key.split(":")[1] + ":" + key.split(":")[2] if key.split(":")[1] == "richpanel" else key.split(":")[1]
             for key in keys}
    assert {"richpanel:claim", "rm"} <= kinds  # the delivery record and the read model
    for key in keys:
        ttl = host.redis.pttl(key)
        assert 29 * DAY_MS < ttl <= 30 * DAY_MS, (key, ttl)  # none lives forever; each from its last write


def test_a_change_parked_while_its_claim_was_recorded_leaves_no_parked_state(make_host, monkeypatch):
    # The flake of the test above, made certain: the change (on one worker thread) reads the
    # claim's index before the claim is recorded (on another), parks itself after, sees the
    # index on its second look and applies itself. Its parked copy outlived it, with the parking
    # TTL (14 days) instead of the retention: a stray key naming the claim.
    host = make_host(retention_days=30)
    rm = host.readmodel
    claim = event_from_json(claim_created())
    claim_id = claim.body.claim_id
    change = event_from_json(state_changed(claim_id, "APPROVED"))
    park = rm._set_state
    looks = []

    def claim_recorded_meanwhile(*, keys, args):
        if not looks:  # between the change's first read of the index and its parking
            rm.record_claim(claim.body, claim.created_at)
        looks.append(keys[0])
        return park(keys=keys, args=args)

    monkeypatch.setattr(rm, "_set_state", claim_recorded_meanwhile)
    assert rm.record_state(change.body, change.created_at)
    assert len(looks) == 2  # parked, then applied on the second look
    [shown] = rm.customer_context(STORE, "ana@example.com").claims
    assert shown.claim_state == "APPROVED"
    keys = claim_keys(host, claim_id)
    assert not [key for key in keys if ":parked:" in key]
    for key in keys:
        assert 29 * DAY_MS < host.redis.pttl(key) <= 30 * DAY_MS, (key, host.redis.pttl(key))


def test_nothing_that_names_a_customer_or_a_claim_is_kept_forever(rp):
    host, worker, sandbox = rp
    post(host, claim_created(), state_changed("cm6v2zdt10002j20vqs7f74hc", "DENIED"))
    settle(host, worker, lambda: tickets(sandbox))
    forever = [raw.decode() for raw in host.redis.scan_iter(f"{host.settings.namespace}:*")
               if host.redis.pttl(raw) == -1]
    # What stays: settings and indexes of stores, widget secrets, counters, pacing, queues.
    allowed = ("richpanel:store:", "richpanel:stores", "richpanel:stats", "richpanel:latency",
               "richpanel:pace:", "metrics:", "dramatiq")
    strays = [k for k in forever if not k.split(":", 1)[1].startswith(allowed)]
    assert strays == []


def test_a_late_event_for_an_expired_claim_adopts_the_ticket_richpanel_holds(rp):
    host, worker, sandbox = rp
    event = claim_created(created_at="2026-01-01T00:00:00Z")  # older than the retention period
    claim_id = event["body"]["claim_id"]
    post(host, event)
    settle(host, worker, lambda: tickets(sandbox))
    for key in claim_keys(host, claim_id):  # as if the retention period had passed
        host.redis.delete(key)
    late = claim_created(created_at="2026-01-01T00:00:00Z")  # redelivered by Order Protection, new event id
    post(host, late)
    settle(host, worker, lambda: host.delivery("richpanel").ticket_id(STORE, claim_id))
    drain(host, worker)
    assert len(tickets(sandbox)) == 1
    assert len(requests(sandbox, "POST", "/v1/tickets")) == 1
    assert requests(sandbox, "GET")  # it looked the ticket up
    assert host.delivery("richpanel").stats()["adopted"] == 1


def test_a_young_claim_is_not_looked_up_first(rp):
    host, worker, sandbox = rp
    post(host, claim_created())  # created a few days ago
    settle(host, worker, lambda: tickets(sandbox))
    assert [r["method"] for r in requests(sandbox)] == ["POST"]


@pytest.mark.parametrize("created_at", [None, "2099-01-01T00:00:00Z"])
def test_an_undated_or_future_dated_late_event_also_looks_its_ticket_up(rp, created_at):
    # Review of #14: without a date (or dated ahead) the claim could not be known young.
    host, worker, sandbox = rp
    event = claim_created(created_at=created_at)
    claim_id = event["body"]["claim_id"]
    post(host, event)
    settle(host, worker, lambda: tickets(sandbox))
    for key in claim_keys(host, claim_id):
        host.redis.delete(key)
    post(host, claim_created(created_at=created_at))
    settle(host, worker, lambda: host.delivery("richpanel").ticket_id(STORE, claim_id))
    drain(host, worker)
    assert len(tickets(sandbox)) == 1 and len(requests(sandbox, "POST", "/v1/tickets")) == 1


def test_an_event_that_needs_no_delivery_still_keeps_the_record_alive(rp):
    # Review of #14: only delivery steps refreshed the record, so it could expire under a live claim.
    host, worker, sandbox = rp
    event = claim_created()
    claim_id = event["body"]["claim_id"]
    post(host, event)
    settle(host, worker, lambda: tickets(sandbox))
    record = host.delivery("richpanel").ledger.claim_key(STORE, claim_id)
    host.redis.pexpire(record, DAY_MS)  # as if its last event were 29 days ago
    post(host, state_changed(claim_id, "WAITING_FOR_CUSTOMER"))
    settle(host, worker, lambda: host.redis.pttl(record) > 29 * DAY_MS)
    post(host, approved(claim_id))
    settle(host, worker, lambda: len(requests(sandbox, "PUT")) == 1)


@pytest.mark.parametrize("days", ["inf", "nan", "0.5", "1e300"])
def test_a_retention_that_would_break_expiry_is_refused(days, monkeypatch):
    from opcore_hooks.config import ConfigError, Settings

    monkeypatch.setenv("OPCORE_RETENTION_DAYS", days)
    with pytest.raises(ConfigError, match="OPCORE_RETENTION_DAYS"):
        Settings()


def test_a_claim_leaves_its_customers_panel_with_its_own_retention(rp):
    # Review of #14: the customer's hash lived on with a newer claim, keeping an expired one shown.
    import json

    host, worker, sandbox = rp
    rm = host.readmodel
    post(host, claim_created(claim_id="old1"))
    settle(host, worker, lambda: tickets(sandbox))
    claims_key = rm._k(STORE, "ana@example.com", "claims")
    row = json.loads(host.redis.hget(claims_key, "old1"))
    row["touched"] = row["touched"] - 31 * DAY_MS  # its last event, 31 days ago
    host.redis.hset(claims_key, "old1", json.dumps(row))
    post(host, claim_created(claim_id="new1"))
    settle(host, worker, lambda: len(tickets(sandbox)) == 2)
    shown = [c.claim_id for c in rm.customer_context(STORE, "ana@example.com").claims]
    assert shown == ["new1"]
