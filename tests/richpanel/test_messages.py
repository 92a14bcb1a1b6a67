"""message.created (CONTRACT.md, "Event ingress" and "Note mirror"): accepted and queued like any
event, and while the note mirror is off nothing is written (test_note_mirror.py: with it on)."""

from __future__ import annotations

import uuid

import pytest
from starlette.testclient import TestClient

from opcore_hooks.app import create_app
from opcore_hooks.testing import WEBHOOK_SECRET, claim_created, drain

from .test_delivery import delivering, requests, settle, tickets

HOOK = {"x-webhook-secret": WEBHOOK_SECRET}


@pytest.fixture
def rp(make_host, run_worker, sandbox, monkeypatch):
    return delivering(make_host, run_worker, sandbox, monkeypatch)


def message(claim_id: str, **body) -> dict:
    return {"id": str(uuid.uuid4()), "topic": "message/created", "created_at": "2026-11-27T10:01:00Z",
            "body": {"storeId": "store_123", "claimId": claim_id, "message": "<b>Where is my parcel?</b>",
                     "message_id": "m1", "sender_type": "customer", "author_name": "Ana", **body}}


def test_a_message_is_accepted_and_writes_nothing_while_the_mirror_is_off(rp):
    host, worker, sandbox = rp
    claim = claim_created()
    claim_id = claim["body"]["claim_id"]
    first = message(claim_id)
    with TestClient(create_app(host)) as client:
        assert client.post("/webhooks/orderprotection", json=claim, headers=HOOK).status_code == 202
        answer = client.post("/webhooks/orderprotection", json=first, headers=HOOK)
        assert answer.status_code == 202 and answer.json() == {"status": "accepted", "event_id": first["id"]}
        again = client.post("/webhooks/orderprotection", json=first, headers=HOOK)
        assert again.status_code == 200 and again.json()["status"] == "duplicate"
    settle(host, worker, lambda: tickets(sandbox))
    drain(host, worker)
    assert [(r["method"], r["path"]) for r in requests(sandbox)][-1][0] == "POST"  # the ticket, nothing after
    assert len(requests(sandbox, "PUT")) == 0
    context = host.readmodel.customer_context("store_123", "ana@example.com")
    assert [c.claim_id for c in context.claims] == [claim_id]  # the panel is untouched by the message


def test_a_message_without_text_or_with_a_bad_id_is_refused_naming_the_field(rp):
    host, *_ = rp
    with TestClient(create_app(host)) as client:
        for body, field in (({"message": ""}, "body.message"), ({"claimId": "a:b"}, "body.claimId")):
            answer = client.post("/webhooks/orderprotection", json=message("c1", **body), headers=HOOK)
            assert answer.status_code == 422, answer.text
            assert field in [d["field"] for d in answer.json()["details"]]
