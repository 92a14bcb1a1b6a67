"""Delivery to Richpanel: one ticket per claim, snoozes after tickets, nothing else written.

Richpanel is the sandbox on a real socket; the host is the real plugin with a real Dramatiq
worker, on fakeredis and (in CI) real Redis.
"""

from __future__ import annotations

import threading
import time
from email.utils import parsedate_to_datetime

import httpx
import pytest
from starlette.testclient import TestClient

from opcore_hooks.app import create_app
from opcore_hooks.testing import WEBHOOK_SECRET, approved, claim_created, drain, state_changed, wait_for
from plugins.richpanel import plugin, session, stores
from plugins.richpanel.stores import SettingsUpdate

KEY = "rp_test_DeliveryKey_0001"
TEAM = "0b5e6a3c-7d1f-4c2a-9e8b-1f2d3c4b5a69"
STORE = "store_123"


def delivering(make_host, run_worker, sandbox, monkeypatch, **settings):
    """A host running the real Richpanel plugin against the sandbox, store configured, a worker;
    ``settings`` override the host's (other test modules build theirs with this)."""
    monkeypatch.setenv("OPCORE_RICHPANEL_API_URL", sandbox.url)
    monkeypatch.setenv("OPCORE_RICHPANEL_TIMEOUT_SECONDS", "2")
    sandbox.state.add_account(KEY, teams=[{"id": TEAM, "name": "Claims"}])
    host = make_host({"richpanel": plugin}, **settings)
    stores.update(host, STORE, SettingsUpdate(api_key=KEY, default_team_id=TEAM, default_channel="email"))
    sandbox.state.requests.clear()  # the key check above is not delivery
    for name in ("richpanel.create_ticket", "richpanel.finish_ticket"):
        host.broker.get_actor(name).options.update(min_backoff=50, max_backoff=200)
    worker = run_worker(host, threads=4)
    return host, worker, sandbox


@pytest.fixture
def rp(make_host, run_worker, sandbox, monkeypatch):
    return delivering(make_host, run_worker, sandbox, monkeypatch)


def post(host, *events: dict) -> None:
    with TestClient(create_app(host)) as client:
        for event in events:
            answer = client.post("/webhooks/orderprotection", json=event, headers={"x-webhook-secret": WEBHOOK_SECRET})
            assert answer.status_code in (200, 202), answer.text


def tickets(sandbox) -> list[dict]:
    return sandbox.state.tickets(KEY)


def requests(sandbox, method: str | None = None, suffix: str = "") -> list[dict]:
    return [r for r in sandbox.state.view_requests()["requests"]
            if (method is None or r["method"] == method) and r["path"].endswith(suffix)]


def ticket_of(host, claim_id: str) -> str | None:
    return host.delivery("richpanel").ticket_id(STORE, claim_id)


def settle(host, worker, predicate, timeout: float = 20.0) -> None:
    wait_for(predicate, timeout=timeout)
    drain(host, worker, timeout=timeout)


def test_a_claim_opens_one_ticket_with_everything_an_agent_needs(rp):
    host, worker, sandbox = rp
    event = claim_created()
    post(host, event)
    settle(host, worker, lambda: tickets(sandbox))
    [ticket] = tickets(sandbox)
    [create] = requests(sandbox, "POST", "/v1/tickets")
    sent = create["body"]["ticket"]
    assert ticket["id"] == ticket_of(host, event["body"]["claim_id"])
    assert sent["subject"] == "Damaged claim OP-1042 for order #1001"
    assert sent["via"] == {"channel": "email", "source": {"from": {"address": "ana@example.com"}}}
    assert sent["customer_profile"] == {"firstName": "Ana", "lastName": "Lima", "email": "ana@example.com",
                                        "phone": "+15551230000"}
    assert sent["team_id"] == TEAM
    comment = sent["comment"]
    assert comment["sender_type"] == "customer"
    for text in ("#1001", "Wireless Mouse", "Subtotal: 24.99 USD", "Shipping: 4.99 USD", "Tax: 2.10 USD",
                 "Total: 32.08 USD", "Damaged", "New", "Add Note",
                 "https://app.orderprotection.com/claims/view/cm6v2zdt10002j20vqs7f74hc"):
        assert text in comment["body"], text
    # Nothing but the create went to Richpanel: no message, reply or comment.
    assert [(r["method"], r["path"]) for r in requests(sandbox)] == [("POST", "/v1/tickets")]


def test_customer_text_is_escaped_in_the_ticket_body(rp):
    host, worker, sandbox = rp
    event = claim_created(claim_description='<img src=x onerror="alert(1)">')
    event["body"]["items"][0]["item_name"] = "<script>alert('x')</script>"
    post(host, event)
    settle(host, worker, lambda: tickets(sandbox))
    body = requests(sandbox, "POST", "/v1/tickets")[0]["body"]["ticket"]["comment"]["body"]
    assert "<script>" not in body and "<img" not in body
    assert "&lt;script&gt;" in body and "&lt;img" in body


def test_the_store_channel_and_no_team_are_honoured(rp):
    host, worker, sandbox = rp
    stores.update(host, STORE, SettingsUpdate(default_channel="twilio-sms", default_team_id=None))
    sandbox.state.requests.clear()
    post(host, claim_created())
    settle(host, worker, lambda: tickets(sandbox))
    sent = requests(sandbox, "POST", "/v1/tickets")[0]["body"]["ticket"]
    assert sent["via"]["channel"] == "twilio-sms"
    assert sent["via"]["source"]["from"] == {"address": "ana@example.com", "id": "+15551230000"}
    assert "team_id" not in sent


def test_a_store_without_richpanel_gets_no_ticket(rp):
    host, worker, sandbox = rp
    post(host, claim_created(store_id="store_other"))
    drain(host, worker)
    assert tickets(sandbox) == []


def test_duplicate_events_and_redeliveries_open_one_ticket(rp):
    host, worker, sandbox = rp
    first = claim_created()
    second = dict(first, id="another-event-id-for-the-same-claim")
    post(host, first, first, second)
    delivery = host.delivery("richpanel")
    for _ in range(3):  # Dramatiq redelivering the same message
        delivery.create_actor.send(STORE, first["body"] | {"customer": first["body"]["customer"]})
    settle(host, worker, lambda: tickets(sandbox))
    time.sleep(0.3)
    drain(host, worker)
    assert len(tickets(sandbox)) == 1
    assert len(requests(sandbox, "POST", "/v1/tickets")) == 1


def test_a_worker_killed_between_create_and_record_does_not_open_a_second_ticket(rp, monkeypatch):
    host, worker, sandbox = rp
    delivery = host.delivery("richpanel")
    real_finish, crashed = delivery.ledger.finish, threading.Event()

    def crash_before_recording(store_id, claim_id, turn, fields=None, *more):
        if fields and "ticket_id" in fields and not crashed.is_set():
            crashed.set()  # the POST succeeded; the process dies before the id is written
            raise SystemExit("worker killed")
        return real_finish(store_id, claim_id, turn, fields, *more)

    monkeypatch.setattr(delivery.ledger, "finish", crash_before_recording)
    event = claim_created()
    post(host, event)
    settle(host, worker, lambda: crashed.is_set() and ticket_of(host, event["body"]["claim_id"]))
    assert len(tickets(sandbox)) == 1
    assert ticket_of(host, event["body"]["claim_id"]) == tickets(sandbox)[0]["id"]
    assert requests(sandbox, "GET", "/v1/tickets/email/ana@example.com")
    assert delivery.stats()["adopted"] == 1


def test_a_lost_answer_is_found_by_email_instead_of_creating_again(rp):
    host, worker, sandbox = rp
    sandbox.state.update_config(drop_rate=1.0)
    event = claim_created()
    post(host, event)
    wait_for(lambda: requests(sandbox, "POST", "/v1/tickets"))
    sandbox.state.update_config(drop_rate=0.0)
    settle(host, worker, lambda: ticket_of(host, event["body"]["claim_id"]))
    assert len(tickets(sandbox)) == 1
    assert len(requests(sandbox, "POST", "/v1/tickets")) == 1


def test_an_approved_claim_is_snoozed_once_after_its_ticket(rp):
    host, worker, sandbox = rp
    event = claim_created()
    claim_id = event["body"]["claim_id"]
    post(host, event)
    settle(host, worker, lambda: ticket_of(host, claim_id))
    post(host, approved(claim_id), state_changed(claim_id, "RESOLVED"))
    settle(host, worker, lambda: requests(sandbox, "PUT", "/snooze"))
    [snooze] = requests(sandbox, "PUT", "/snooze")
    assert snooze["path"] == f"/v1/tickets/{ticket_of(host, claim_id)}/snooze"
    assert snooze["body"] == {"snoozed_till": "0"}
    assert tickets(sandbox)[0]["snoozed_till"] == "0"


@pytest.mark.parametrize("state", ["APPROVED", "RESOLVED", "RESOLVED_BY_BRAND"])
def test_approval_before_the_ticket_exists_snoozes_right_after_creation(rp, state):
    host, worker, sandbox = rp
    event = claim_created()
    claim_id = event["body"]["claim_id"]
    post(host, state_changed(claim_id, state), event)
    settle(host, worker, lambda: requests(sandbox, "PUT", "/snooze"))
    time.sleep(0.2)
    drain(host, worker)
    calls = [(r["method"], r["path"].split("/")[-1]) for r in requests(sandbox)]
    assert calls == [("POST", "tickets"), ("PUT", "snooze")]


@pytest.mark.parametrize("state", ["DENIED", "WAITING_FOR_CUSTOMER", "CLOSED"])
def test_other_states_write_nothing(rp, state):
    host, worker, sandbox = rp
    event = claim_created()
    post(host, event)
    settle(host, worker, lambda: tickets(sandbox))
    post(host, state_changed(event["body"]["claim_id"], state))
    drain(host, worker)
    assert [r["method"] for r in requests(sandbox)] == ["POST"]


def retry_after_seconds(record: dict) -> float:
    value = record["retry_after"]
    if value.isdigit():
        return float(value)
    return parsedate_to_datetime(value).timestamp() - record["time"]


@pytest.mark.parametrize("status,form", [(429, "seconds"), (492, "date")])
def test_rate_limits_are_honoured_across_every_request_of_the_key(rp, run_worker, status, form):
    host, worker, sandbox = rp
    # One thread, so that no request is already in flight when a rate limit arrives; the
    # block is shared through Redis, which test_pacing checks across pacers.
    worker.stop()
    worker = run_worker(host, threads=1)
    # Richpanel answers half the requests with a rate limit (Retry-After 1 s in either form).
    sandbox.state.update_config(rate_limit_rate=0.5, limit_status=status, retry_after_form=form, seed=7)
    events = [claim_created(claim_id=f"claim-{i}") for i in range(3)]
    post(host, *events)
    settle(host, worker, lambda: len(tickets(sandbox)) == 3, timeout=40)
    log = requests(sandbox)
    limited = [r for r in log if r["status"] == status]
    assert limited, "the test should have met the rate limit"
    for hit in limited:
        resume = hit["time"] + retry_after_seconds(hit) - 0.05
        early = [r for r in log if hit["time"] < r["time"] < resume]
        assert early == [], f"requests sent before Retry-After passed: {early}"
    assert len(requests(sandbox, "POST", "/v1/tickets")) - len(limited) == 3
    assert host.delivery("richpanel").stats()["rate_limited"] == len(limited)


def test_server_errors_are_retried_until_the_ticket_exists(rp):
    host, worker, sandbox = rp
    sandbox.state.update_config(error_rate=1.0)
    event = claim_created()
    post(host, event)
    wait_for(lambda: len(requests(sandbox)) >= 2, timeout=10)
    sandbox.state.update_config(error_rate=0.0)
    settle(host, worker, lambda: ticket_of(host, event["body"]["claim_id"]), timeout=30)
    assert len(tickets(sandbox)) == 1
    assert host.delivery("richpanel").stats()["transient_retries"] >= 2


@pytest.mark.parametrize("status", [400, 404, 413])
def test_client_errors_are_dead_lettered_with_the_reason_and_not_retried(rp, status):
    host, worker, sandbox = rp
    seen = []

    def refuse(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, json={"error": f"refused with {status}"})

    session.set_http(host, httpx.Client(transport=httpx.MockTransport(refuse)))
    event = claim_created()
    post(host, event)
    settle(host, worker, lambda: host.dead_letters.count() == 1)
    [entry] = host.dead_letters.list()
    assert entry.claim_id == event["body"]["claim_id"] and entry.store_id == STORE
    assert str(status) in entry.reason and f"refused with {status}" in entry.reason
    assert len(seen) == 1


def test_a_rejected_key_parks_the_work_until_a_valid_key_is_saved(rp):
    host, worker, sandbox = rp
    sandbox.state.reset()  # Richpanel no longer knows the key: every call answers 401
    events = [claim_created(claim_id=f"claim-{i}") for i in range(3)]
    post(host, *events)
    settle(host, worker, lambda: host.delivery("richpanel").parked_count(STORE) == 3)
    assert stores.load(host, STORE).credentials == "invalid"
    assert tickets_count(sandbox) == 0
    new_key = "rp_test_ReplacementKey_0002"
    sandbox.state.add_account(new_key, teams=[{"id": TEAM, "name": "Claims"}])
    stores.update(host, STORE, SettingsUpdate(api_key=new_key))
    settle(host, worker, lambda: len(sandbox.state.tickets(new_key)) == 3)
    assert host.delivery("richpanel").parked_count(STORE) == 0


def tickets_count(sandbox) -> int:
    return sum(len(a["tickets"]) for a in sandbox.state.view_tickets()["accounts"])


def test_paced_delivery_keeps_under_the_quota_without_meeting_it(rp, monkeypatch):
    host, worker, sandbox = rp
    delivery = host.delivery("richpanel")
    delivery.pacer.quota, delivery.pacer.window = 4, 1.0
    sandbox.state.update_config(quota=4, window=1.0)
    post(host, *[claim_created(claim_id=f"claim-{i}") for i in range(10)])
    settle(host, worker, lambda: len(tickets(sandbox)) == 10, timeout=30)
    assert sandbox.state.rate_limited[KEY] == 0
    assert delivery.stats()["tickets"] == 10


def test_a_store_disconnected_since_this_process_read_it_gets_no_ticket_and_nothing_parked(rp):
    host, worker, sandbox = rp
    first = claim_created(claim_id="before-disconnect")
    post(host, first)
    settle(host, worker, lambda: ticket_of(host, "before-disconnect"))  # the store's settings are now cached
    assert stores.disconnect(host, STORE)  # as the settings API does, from another process
    post(host, claim_created(claim_id="after-disconnect"))
    drain(host, worker)
    assert ticket_of(host, "after-disconnect") is None
    assert len(requests(sandbox, "POST", "/v1/tickets")) == 1
    assert host.delivery("richpanel").parked_count(STORE) == 0


def test_a_turn_whose_answer_was_lost_and_is_asked_again_goes_on(rp, monkeypatch):
    """redis-py sends a command again when its answer is lost; the rerun must not find its own
    lock held by someone else and wait the lock out."""
    host, worker, sandbox = rp
    from opcore_hooks.delivery import ledger as ledger_module

    delivery = host.delivery("richpanel")
    snap, config = delivery.store(STORE, fresh=True)
    monkeypatch.setattr(ledger_module.secrets, "token_hex", lambda n: "same-token")
    monkeypatch.setattr(ledger_module.uuid, "uuid4", lambda: type("U", (), {"hex": "same-member"})())
    key = config.api_key.get_secret_value()  # Richpanel's pacing scope
    first = delivery.ledger.begin("create", STORE, "lost-answer", key, snap, None)
    again = delivery.ledger.begin("create", STORE, "lost-answer", key, snap, None)
    assert (first.outcome, again.outcome) == ("go", "go")
    monkeypatch.setattr(ledger_module.secrets, "token_hex", lambda n: "another-worker")
    assert delivery.ledger.begin("create", STORE, "lost-answer", key, snap, None).outcome == "busy"
