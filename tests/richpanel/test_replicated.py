"""With OPCORE_REDIS_REPLICAS=1: nothing reaches Richpanel, and no settings change is answered,
before a replica holds what it depends on. On a real primary and replica (``redis_pair``)."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from opcore_hooks.app import create_app
from opcore_hooks.host import Host
from opcore_hooks.testing import ADMIN_TOKEN, claim_created, drain, wait_for
from plugins.richpanel import plugin, stores

from .test_delivery import KEY, STORE, TEAM, post, requests, ticket_of, tickets

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def replicated(redis_pair, settings, sandbox, monkeypatch):
    monkeypatch.setenv("OPCORE_RICHPANEL_API_URL", sandbox.url)
    monkeypatch.setenv("OPCORE_RICHPANEL_TIMEOUT_SECONDS", "2")
    sandbox.state.add_account(KEY, teams=[{"id": TEAM, "name": "Claims"}])
    host = Host(settings.model_copy(update={"redis_url": redis_pair.url, "redis_replicas": 1,
                                            "redis_replica_timeout_ms": 200}), plugins={"richpanel": plugin})
    yield host
    host.close()


def put_settings(host: Host) -> int:
    with TestClient(create_app(host)) as client:
        return client.put(f"/internal/integrations/richpanel/stores/{STORE}", headers=ADMIN,
                          json={"api_key": KEY, "default_team_id": TEAM, "default_channel": "email"}).status_code


def test_a_settings_change_is_answered_once_a_replica_holds_it(redis_pair, replicated):
    redis_pair.replica.pause()
    with TestClient(create_app(replicated)) as client:
        answer = client.put(f"/internal/integrations/richpanel/stores/{STORE}", headers=ADMIN,
                            json={"api_key": KEY, "default_team_id": TEAM, "default_channel": "email"})
    redis_pair.replica.resume()
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "2"
    assert "send the same request again" in answer.json()["error"]
    assert KEY not in answer.text
    assert put_settings(replicated) == 200  # the same request again, once the replica is back
    assert redis_pair.replica.client.exists(stores.settings_key(replicated, STORE)) == 1  # answered, so held


def test_no_ticket_is_asked_for_before_a_replica_holds_the_claims_record(redis_pair, replicated, run_worker,
                                                                         sandbox):
    assert put_settings(replicated) == 200
    sandbox.state.requests.clear()
    event = claim_created(claim_id="claim-replicated")
    post(replicated, event)  # 202: the replica holds the event
    redis_pair.replica.pause()
    worker = run_worker(replicated, threads=2)
    delivery = replicated.delivery("richpanel")
    wait_for(lambda: delivery.stats().get("replica_waits", 0) >= 1, timeout=20)
    assert requests(sandbox, "POST", "/v1/tickets") == []  # the record could still die with the primary
    redis_pair.replica.resume()
    wait_for(lambda: ticket_of(replicated, "claim-replicated"), timeout=20)
    drain(replicated, worker)
    assert len(tickets(sandbox)) == 1 and len(requests(sandbox, "POST", "/v1/tickets")) == 1
    assert int(replicated.redis.hget(replicated.metrics.refusals_key, "delivery")) >= 1
