"""GET /metrics: one web process reports the whole deployment, in Prometheus text format."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from opcore_hooks.app import create_app
from opcore_hooks.testing import ADMIN_TOKEN, WEBHOOK_SECRET, approved, claim_created, drain, wait_for
from plugins.richpanel import plugin, stores
from plugins.richpanel.stores import SettingsUpdate

from .test_delivery import KEY, STORE, TEAM, requests, tickets

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
HOOK = {"x-webhook-secret": WEBHOOK_SECRET}


@pytest.fixture
def deployment(make_host, run_worker, sandbox, monkeypatch):
    """A web host and a worker host: two processes' worth of opcore on one Redis."""
    monkeypatch.setenv("OPCORE_RICHPANEL_API_URL", sandbox.url)
    sandbox.state.add_account(KEY, teams=[{"id": TEAM, "name": "Claims"}])
    web, worker_host = make_host({"richpanel": plugin}), make_host({"richpanel": plugin})
    stores.update(web, STORE, SettingsUpdate(api_key=KEY, default_team_id=TEAM, default_channel="email"))
    with TestClient(create_app(web)) as client:  # no worker threads in the web process
        yield web, worker_host, run_worker, client, sandbox


def scrape(client) -> dict[tuple[str, tuple], float]:
    answer = client.get("/metrics", headers=ADMIN)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain; version=")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(answer.text) for sample in family.samples}


def test_metrics_need_the_admin_token(deployment):
    *_, client, _ = deployment
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_one_web_process_reports_the_work_of_workers_elsewhere(deployment):
    web, worker_host, run_worker, client, sandbox = deployment
    events = [claim_created(claim_id=f"c{i}") for i in range(3)]
    for event in events:
        assert client.post("/webhooks/orderprotection", json=event, headers=HOOK).status_code == 202
    assert client.post("/webhooks/orderprotection", json=events[0], headers=HOOK).json()["status"] == "duplicate"
    assert client.post("/webhooks/orderprotection", json={**events[0], "id": "x", "topic": "refund.created"},
                       headers=HOOK).json()["status"] == "ignored"
    assert client.post("/webhooks/orderprotection", json=events[0], headers={}).status_code == 401
    before = scrape(client)
    assert before[("opcore_queue_messages", (("queue", "opcore"),))] == 3  # waiting for a worker
    worker = run_worker(worker_host)  # the worker runs in another host, as on another machine
    assert client.post("/webhooks/orderprotection", json=approved("c0"), headers=HOOK).status_code == 202
    wait_for(lambda: len(tickets(sandbox)) == 3 and len(requests(sandbox, "PUT")) == 1, timeout=20)
    drain(worker_host, worker)
    found = scrape(client)
    assert found[("opcore_events_total", (("outcome", "accepted"), ("topic", "claim.created")))] == 3
    assert found[("opcore_events_total", (("outcome", "accepted"), ("topic", "claim.approved")))] == 1
    assert found[("opcore_events_total", (("outcome", "duplicate"), ("topic", "claim.created")))] == 1
    assert found[("opcore_events_total", (("outcome", "ignored"), ("topic", "other")))] == 1
    assert found[("opcore_events_total", (("outcome", "refused"), ("topic", "other")))] == 1
    done = (("kind", "create"), ("outcome", "done"), ("plugin", "richpanel"))
    assert found[("opcore_deliveries_total", done)] == 3
    assert found[("opcore_deliveries_total", (("kind", "finish"), ("outcome", "done"), ("plugin", "richpanel")))] == 1
    assert found[("opcore_claim_to_ticket_seconds_count", (("plugin", "richpanel"),))] == 3
    assert found[("opcore_claim_to_ticket_seconds_bucket", (("le", "+Inf"), ("plugin", "richpanel")))] == 3
    assert 0 < found[("opcore_claim_to_ticket_seconds_sum", (("plugin", "richpanel"),))] < 60
    assert found[("opcore_rate_limited_total", (("plugin", "richpanel"),))] == 0
    assert found[("opcore_dead_letters", (("plugin", "richpanel"),))] == 0
    assert found[("opcore_queue_messages", (("queue", "opcore"),))] == 0
    assert found[("opcore_stores", (("credentials", "valid"), ("plugin", "richpanel")))] == 1


def test_rejected_credentials_name_the_store_and_count_its_parked_work(deployment):
    web, worker_host, run_worker, client, sandbox = deployment
    sandbox.state.accounts.pop(KEY)  # Richpanel now answers 401 to the stored key
    worker = run_worker(worker_host)
    assert client.post("/webhooks/orderprotection", json=claim_created(), headers=HOOK).status_code == 202
    wait_for(lambda: scrape(client).get(("opcore_parked_messages", (("plugin", "richpanel"),))) == 1, timeout=20)
    drain(worker_host, worker)
    found = scrape(client)
    assert found[("opcore_store_credentials_invalid", (("plugin", "richpanel"), ("store", STORE)))] == 1
    assert found[("opcore_stores", (("credentials", "invalid"), ("plugin", "richpanel")))] == 1


def test_dead_letters_and_refusals_are_counted_by_plugin(deployment):
    web, worker_host, run_worker, client, sandbox = deployment
    web.dead_letters.add("richpanel.create_ticket", [STORE, {}], reason="refused", store_id=STORE, claim_id="c1")
    web.dead_letters.add("opcore.dispatch", [{}], reason="exhausted", store_id=STORE, claim_id="c2")
    found = scrape(client)
    assert found[("opcore_dead_letters", (("plugin", "richpanel"),))] == 1
    assert found[("opcore_dead_letters", (("plugin", "opcore"),))] == 1


def test_a_delayed_message_waits_from_its_due_time_not_from_when_it_was_sent(deployment):
    # Review of #14: a paced or rate-limited wait read as a backlog of its whole delay.
    import json
    import time

    web, *_, client, _ = deployment
    now_ms = int(time.time() * 1000)
    message = {"queue_name": "richpanel", "actor_name": "richpanel.create_ticket", "args": [], "kwargs": {},
               "options": {"eta": now_ms}, "message_id": "m1", "message_timestamp": now_ms - 600_000}
    namespace = web.broker.namespace
    web.broker.declare_queue("richpanel")
    web.redis.hset(f"{namespace}:richpanel.msgs", "m1", json.dumps(message))
    web.redis.rpush(f"{namespace}:richpanel", "m1")
    age = scrape(client)[("opcore_queue_oldest_message_age_seconds", (("queue", "richpanel"),))]
    assert 0 <= age < 60


def test_work_out_of_retries_counts_as_a_dead_delivery(deployment):
    web, *_, client, _ = deployment
    exhausted = web.broker.get_actor("opcore.exhausted")
    exhausted.fn({"actor_name": "richpanel.create_ticket", "args": [STORE, {"claim_id": "c1"}], "options": {}},
                 {"retries": 20})
    found = scrape(client)
    assert found[("opcore_deliveries_total", (("kind", "create"), ("outcome", "dead"), ("plugin", "richpanel")))] == 1
    assert found[("opcore_dead_letters", (("plugin", "richpanel"),))] == 1
