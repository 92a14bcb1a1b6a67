"""The ingress answers exactly as CONTRACT.md says, and enqueues only what it accepts."""

from __future__ import annotations

import json

import fakeredis
import pytest
from starlette.testclient import TestClient

from opcore_hooks.app import create_app
from opcore_hooks.events import event_from_json
from opcore_hooks.host import Host
from opcore_hooks.testing import CLAIM_CREATED, WEBHOOK_SECRET, approved, claim_created, state_changed

URL = "/webhooks/orderprotection"
HEADERS = {"x-webhook-secret": WEBHOOK_SECRET}


@pytest.fixture
def host(make_host) -> Host:
    return make_host()


@pytest.fixture
def client(host: Host):
    with TestClient(create_app(host)) as c:
        yield c


def queued(host: Host) -> list[dict]:
    """The messages waiting in the host's dispatch queue, decoded."""
    ns = host.broker.namespace
    return [json.loads(raw) for raw in host.redis.hvals(f"{ns}:opcore.msgs")]


def test_accepts_a_claim_and_enqueues_it_once(client, host):
    event = claim_created()
    answer = client.post(URL, json=event, headers=HEADERS)
    assert answer.status_code == 202
    assert answer.json() == {"status": "accepted", "event_id": event["id"]}
    [message] = queued(host)
    assert message["actor_name"] == "opcore.dispatch"
    body = message["args"][0]["body"]
    assert body["claim_id"] == event["body"]["claim_id"]
    assert body["customer"]["email"] == "ana@example.com"
    assert body["order"]["total"] == "32.08"


def test_same_event_id_twice_is_a_duplicate_and_not_enqueued_again(client, host):
    event = claim_created()
    assert client.post(URL, json=event, headers=HEADERS).status_code == 202
    again = client.post(URL, json=event, headers=HEADERS)
    assert again.status_code == 200
    assert again.json()["status"] == "duplicate"
    assert len(queued(host)) == 1


def test_event_ids_are_remembered_for_at_least_seven_days(client, host):
    event = claim_created()
    client.post(URL, json=event, headers=HEADERS)
    ttl = host.redis.ttl(host.key("seen", event["id"]))
    assert ttl >= 7 * 24 * 3600


@pytest.mark.parametrize("topic", ["claim/created", "claim.created", "CLAIM.CREATED"])
def test_both_topic_spellings_are_the_same_topic(client, host, topic):
    event = claim_created()
    event["topic"] = topic
    assert client.post(URL, json=event, headers=HEADERS).status_code == 202
    assert queued(host)[0]["args"][0]["topic"] == "claim.created"


def test_camelcase_approval_as_order_protection_documents_it(client, host):
    answer = client.post(URL, json=approved("claim-9"), headers=HEADERS)
    assert answer.status_code == 202
    event = event_from_json(queued(host)[0]["args"][0])  # what the worker makes of the message
    assert event.topic == "claim.approved"
    body = event.body.model_dump(mode="json")
    assert (body["claim_id"], body["store_id"], body["claim_state"]) == ("claim-9", "store_123", "APPROVED")
    assert body["resolutions"][0]["type"] == "RESHIP"


def test_unknown_extra_fields_are_kept(client, host):
    event = claim_created(brand_new_field={"nested": 1})
    event["body"]["customer"]["loyalty_tier"] = "gold"
    client.post(URL, json=event, headers=HEADERS)
    body = queued(host)[0]["args"][0]["body"]
    assert body["brand_new_field"] == {"nested": 1}
    assert body["customer"]["loyalty_tier"] == "gold"


@pytest.mark.parametrize("topic", ["protection.added", "something.else"])  # message/created is handled (#15)
def test_topics_nobody_handles_are_ignored(client, host, topic):
    answer = client.post(URL, json={**claim_created(), "topic": topic}, headers=HEADERS)
    assert answer.status_code == 200
    assert answer.json()["status"] == "ignored"
    assert queued(host) == []


@pytest.mark.parametrize("headers", [{}, {"x-webhook-secret": "wrong"}, {"x-webhook-secret": ""}])
def test_wrong_or_missing_secret_is_401(client, host, headers):
    answer = client.post(URL, json=claim_created(), headers=headers)
    assert answer.status_code == 401
    assert "x-webhook-secret" in answer.json()["error"]
    assert queued(host) == []


@pytest.mark.parametrize("raw", [b"{not json", b"\xff\xfe", b""])
def test_body_that_is_not_json_is_400(client, host, raw):
    answer = client.post(URL, content=raw, headers={**HEADERS, "content-type": "application/json"})
    assert answer.status_code == 400
    assert "JSON" in answer.json()["error"]
    assert queued(host) == []


@pytest.mark.parametrize(
    "path",
    [("store_id",), ("claim_id",), ("claim_type",), ("claim_state",), ("customer", "email"), ("customer",)],
)
def test_each_required_field_missing_is_422_naming_it(client, host, path):
    event = claim_created()
    parent = event["body"]
    for part in path[:-1]:
        parent = parent[part]
    del parent[path[-1]]
    answer = client.post(URL, json=event, headers=HEADERS)
    assert answer.status_code == 422
    fields = [d["field"] for d in answer.json()["details"]]
    assert "body." + ".".join(path) in fields
    assert queued(host) == []


@pytest.mark.parametrize("field,value", [("claim_type", "BROKEN"), ("claim_state", "PENDING")])
def test_wrong_enum_value_is_422_naming_field_and_choices(client, host, field, value):
    answer = client.post(URL, json=claim_created(**{field: value}), headers=HEADERS)
    assert answer.status_code == 422
    [detail] = answer.json()["details"]
    assert detail["field"] == f"body.{field}"
    assert "DAMAGED" in detail["message"] or "NEW" in detail["message"]


def test_money_must_be_a_decimal_string(client, host):
    event = claim_created()
    event["body"]["order"]["total"] = "thirty"
    answer = client.post(URL, json=event, headers=HEADERS)
    assert answer.status_code == 422
    assert answer.json()["details"][0]["field"] == "body.order.total"


@pytest.mark.parametrize("event", [{"topic": "claim.created", "body": {}}, {"id": "x", "body": {}},
                                   {"id": "x", "topic": "claim.created"}, [1, 2]])
def test_a_broken_envelope_is_422(client, host, event):
    answer = client.post(URL, json=event, headers=HEADERS)
    assert answer.status_code == 422
    assert answer.json()["details"]


def test_body_over_256_kib_is_413(client, host):
    event = claim_created(claim_description="x" * (256 * 1024))
    answer = client.post(URL, json=event, headers=HEADERS)
    assert answer.status_code == 413
    assert queued(host) == []


def test_body_over_256_kib_without_content_length_is_413(client, host):
    def chunks():
        yield b'{"id": "a", "topic": "claim.created", "body": {"x": "'
        for _ in range(300):
            yield b"y" * 1024
        yield b'"}}'

    answer = client.post(URL, content=chunks(), headers=HEADERS)
    assert answer.status_code == 413


def test_state_change_needs_its_fields(client, host):
    event = state_changed("c1", "APPROVED")
    del event["body"]["claim_state"]
    answer = client.post(URL, json=event, headers=HEADERS)
    assert answer.status_code == 422
    assert "body.claim_state" in answer.json()["error"]


def test_broker_down_is_503_and_the_event_is_not_marked_seen(settings):
    server = fakeredis.FakeServer()
    host = Host(settings, redis_client=fakeredis.FakeRedis(server=server), plugins={})
    with TestClient(create_app(host)) as client:
        server.connected = False
        event = claim_created()
        answer = client.post(URL, json=event, headers=HEADERS)
        assert answer.status_code == 503
        assert "retry" in answer.json()["error"]
        server.connected = True
        assert queued(host) == [] and not host.redis.exists(host.key("seen", event["id"]))
        assert client.post(URL, json=event, headers=HEADERS).status_code == 202
        assert len(queued(host)) == 1


def test_the_contract_example_is_accepted_verbatim(client, host):
    assert client.post(URL, json=CLAIM_CREATED, headers=HEADERS).status_code == 202


@pytest.mark.parametrize("field,value", [("store_id", "shop:eu"), ("store_id", "s" * 129), ("store_id", "shop 1"),
                                         ("claim_id", "claim\nforged log line"), ("claim_id", "c/../../x"),
                                         ("claim_id", "")])
def test_ids_outside_the_id_rule_are_422_naming_the_field_and_nothing_is_queued(client, host, field, value):
    # Ids become parts of Redis keys, URLs and log lines: 'shop:eu' would share keys with store 'shop'.
    event = claim_created(**{field: value})
    answer = client.post(URL, json=event, headers=HEADERS)
    assert answer.status_code == 422
    assert field in json.dumps(answer.json()["details"])
    assert queued(host) == []
