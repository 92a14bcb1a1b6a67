"""The ingress's group commit: concurrent events are each accepted exactly once, a Redis outage
is a 503 for every event of the batch, and stopping finishes the work already handed over."""

from __future__ import annotations

import asyncio
import json
import uuid

import fakeredis
import httpx
import pytest
from starlette.testclient import TestClient

from opcore_hooks.app import create_app
from opcore_hooks.committer import Committer
from opcore_hooks.host import Host
from opcore_hooks.testing import WEBHOOK_SECRET, claim_created, state_changed

URL = "/webhooks/orderprotection"
HEADERS = {"x-webhook-secret": WEBHOOK_SECRET}


def queued(host: Host) -> list[dict]:
    """Messages waiting in both dispatch lanes (past 20 in flight, a store's go to the bulk one)."""
    ns = host.broker.namespace
    return [json.loads(raw) for lane in ("opcore", "opcore.bulk") for raw in host.redis.hvals(f"{ns}:{lane}.msgs")]


async def _post_all(host: Host, events: list[dict]) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=create_app(host))
    async with httpx.AsyncClient(transport=transport, base_url="http://opcore") as client:
        return await asyncio.gather(*(client.post(URL, json=event, headers=HEADERS) for event in events))


def test_concurrent_events_and_redeliveries_are_each_accepted_exactly_once(make_host):
    host = make_host()
    events = [claim_created() for _ in range(40)]
    # every event three times, interleaved, all in flight together
    answers = asyncio.run(_post_all(host, events * 3))
    by_id: dict[str, list[int]] = {}
    for answer in answers:
        by_id.setdefault(answer.json()["event_id"], []).append(answer.status_code)
    assert sorted(by_id) == sorted(e["id"] for e in events)
    assert all(sorted(codes) == [200, 200, 202] for codes in by_id.values())
    assert sorted(m["args"][0]["id"] for m in queued(host)) == sorted(e["id"] for e in events)


def test_redis_down_is_503_for_every_concurrent_event_and_none_is_marked_seen(settings):
    server = fakeredis.FakeServer()
    host = Host(settings, redis_client=fakeredis.FakeRedis(server=server), plugins={})
    try:
        events = [claim_created() for _ in range(10)]
        server.connected = False
        answers = asyncio.run(_post_all(host, events))
        assert [a.status_code for a in answers] == [503] * 10
        server.connected = True
        assert queued(host) == []
        assert not any(host.redis.exists(host.key("seen", e["id"])) for e in events)
        answers = asyncio.run(_post_all(host, events))
        assert [a.status_code for a in answers] == [202] * 10
    finally:
        host.close()


def test_accepts_after_redis_forgot_the_script(make_host):
    host = make_host()
    with TestClient(create_app(host)) as client:
        assert client.post(URL, json=claim_created(), headers=HEADERS).status_code == 202
        host.redis.script_flush()
        assert client.post(URL, json=claim_created(), headers=HEADERS).status_code == 202
    assert len(queued(host)) == 2


def test_stop_finishes_every_call_handed_over_before_it(redis_client):
    committer = Committer(redis_client, "return redis.call('INCR', KEYS[1])")

    async def hand_over_then_stop() -> list[int]:
        futures = [committer.call(["optest:counter"], []) for _ in range(200)]
        await asyncio.to_thread(committer.stop)
        assert all(f.done() for f in futures)  # answered before stop() returned
        return await asyncio.gather(*futures)

    results = asyncio.run(hand_over_then_stop())
    assert sorted(results) == list(range(1, 201))
    assert not committer.running
    assert int(redis_client.get("optest:counter")) == 200


def test_a_stopped_committer_starts_again_on_the_next_call(redis_client):
    committer = Committer(redis_client, "return ARGV[1]")

    async def one(value: str) -> bytes:
        return await committer.call([], [value])

    assert asyncio.run(one("a")) == b"a"
    committer.stop()
    assert not committer.running
    assert asyncio.run(one("b")) == b"b"
    committer.stop()


def test_a_script_error_fails_only_its_own_call(redis_client):
    committer = Committer(redis_client, "if ARGV[1] == 'bad' then return redis.error_reply('no') end return ARGV[1]")

    async def mixed() -> list:
        return await asyncio.gather(*(committer.call([], [v]) for v in ("a", "bad", "c")),
                                    return_exceptions=True)

    try:
        a, bad, c = asyncio.run(mixed())
    finally:
        committer.stop()
    assert (a, c) == (b"a", b"c")
    assert isinstance(bad, Exception)


def test_the_app_and_the_host_stop_the_thread(make_host):
    host = make_host()
    with TestClient(create_app(host)) as client:
        assert client.post(URL, json=claim_created(), headers=HEADERS).status_code == 202
        assert host.dispatcher.committer.running
    assert not host.dispatcher.committer.running  # the app's shutdown stopped it
    with TestClient(create_app(host)) as client:
        assert client.post(URL, json=claim_created(), headers=HEADERS).status_code == 202
    host.close()
    assert not host.dispatcher.committer.running


@pytest.mark.parametrize("data", [
    claim_created(),
    claim_created(claim_description="Écran cassé — 壊れた 📦", extra={"n": 1.5, "big": 10**20, "none": None}),
])
def test_the_dispatch_message_is_byte_for_byte_what_dramatiq_encodes(make_host, data):
    from opcore_hooks.dispatch import _random_uuid
    from opcore_hooks.events import Envelope, Event, parse_body

    host = make_host()
    envelope = Envelope.model_validate(data)
    event = Event(id=envelope.id, topic="claim.created", created_at=envelope.created_at,
                  body=parse_body("claim.created", envelope.body))
    args = event.model_dump(mode="json")
    ours = host.dispatcher._encode_dispatch(args, "rid-1", 'opcore:inflight:store "1"')
    decoded = json.loads(ours)
    theirs = host.dispatcher.dispatch.message_with_options(args=(args,), redis_message_id="rid-1",
                                                           opcore_releases='opcore:inflight:store "1"')
    theirs = type(theirs)(**{**theirs.asdict(), "message_id": decoded["message_id"],
                             "message_timestamp": decoded["message_timestamp"]})
    assert ours == theirs.encode()
    assert type(theirs).decode(ours) == theirs
    ids = {_random_uuid() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(str(uuid.UUID(i)) == i for i in ids)
    assert {(uuid.UUID(i).version, uuid.UUID(i).variant) for i in ids} == {(4, uuid.RFC_4122)}


@pytest.mark.parametrize("data", [
    claim_created(),
    claim_created(created_at="2026-11-27T10:00:00.123456+02:00", extra={"nested": [1, 2.5, None]}),
    state_changed("c1", "APPROVED", previous_state="NEW", note="é"),
    {**state_changed("c2", "DENIED"), "topic": "claim.denied", "created_at": None},
    {"id": "o1", "topic": "order.upserted", "created_at": 1764237600,
     "body": {"storeId": "s1", "customer": {"email": "a@b.c"}, "order": {"total": 12, "line_items": []}}},
])
def test_the_broker_form_of_an_event_rebuilds_the_event_the_ingress_validated(data):
    from opcore_hooks.events import Envelope, Event, event_from_json, normalize_topic, parse_body, received_form

    envelope = Envelope.model_validate(data)
    topic = normalize_topic(envelope.topic)
    event = Event(id=envelope.id, topic=topic, created_at=envelope.created_at, body=parse_body(topic, envelope.body))
    for form in (received_form(data, event), event.model_dump(mode="json")):
        rebuilt = event_from_json(json.loads(json.dumps(form)))  # through the broker's JSON
        assert json.dumps(rebuilt.model_dump(mode="json")) == json.dumps(event.model_dump(mode="json"))


@pytest.mark.parametrize("status", [200, 202])
def test_the_event_answers_are_what_jsonresponse_renders(status):
    from starlette.responses import JSONResponse

    from opcore_hooks.ingress import _json

    payload = {"status": "accepted", "event_id": 'é "x" \u2028 \\ 📦'}
    ours, theirs = _json(payload, status), JSONResponse(payload, status_code=status)
    assert (ours.body, ours.status_code, ours.raw_headers) == (theirs.body, theirs.status_code, theirs.raw_headers)
