"""The note mirror's requests to Zendesk (CONTRACT.md, "Note mirror"), and what the Zendesk sandbox
records of them: each message is a private comment on its claim's ticket, in plain text, found
again among the ticket's comments by its ref when an answer was lost.

The plugin's ``add_note``/``find_note`` are called as the delivery engine calls them, against the
sandbox on a real socket; assertions read what the sandbox holds or what the engine is told.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

import httpx
import pytest
from pydantic import SecretStr

from opcore_hooks import Call, RateLimited, Refused, Transient
from opcore_hooks.summary import note_text
from opcore_hooks.testing import check_find_note, claim_note
from plugins.zendesk import plugin
from plugins.zendesk.client import ZendeskClient
from plugins.zendesk.sandbox import SandboxServer, run_in_thread
from plugins.zendesk.stores import StoreConfig

SUBDOMAIN, EMAIL, TOKEN = "acme", "agent@acme.test", "zd_token_notes_0123456789"
FIRST = {"subject": "Damaged claim", "comment": {"body": "Order #1001", "public": False}, "external_id": "claim-1"}


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxServer]:
    with run_in_thread() as srv:
        yield srv


@pytest.fixture
def zendesk(server, make_host, monkeypatch) -> Iterator[tuple[Any, Call, Any, ZendeskClient, list]]:
    """(the plugin's helpdesk, a Call for the store, the sandbox's state, a client, what the pacing was told)."""
    server.state.reset()
    server.state.add_account(SUBDOMAIN, EMAIL, TOKEN, plan=700)
    monkeypatch.setenv("OPCORE_ZENDESK_API_URL", server.url + "/{subdomain}")
    host = make_host({"zendesk": plugin})
    store = StoreConfig(store_id="store_123", subdomain=SUBDOMAIN, email=EMAIL, api_token=SecretStr(TOKEN))
    observed: list[tuple[int | None, int | None]] = []
    call = Call(store, SUBDOMAIN, lambda limit, remaining: observed.append((limit, remaining)))
    with httpx.Client(timeout=5) as http:
        yield (host.delivery("zendesk").helpdesk, call, server.state,
               ZendeskClient(f"{server.url}/{SUBDOMAIN}", EMAIL, TOKEN, http=http), observed)


def account(state) -> dict[str, Any]:
    return state.view_tickets()["accounts"][0]


def notes(state) -> list[dict[str, Any]]:
    return [n for t in account(state)["tickets"] for n in t["notes"]]


def failure_of(helpdesk, request) -> Any:
    with pytest.raises(Exception) as caught:
        request()
    return helpdesk.classify(caught.value)


def test_the_client_sends_a_private_plain_comment_to_the_escaped_ticket():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.raw_path.decode(), json.loads(request.content)))
        return httpx.Response(200, json={"ticket": {"id": 1}})

    client = ZendeskClient("https://acme.zendesk.com", EMAIL, TOKEN, http=httpx.Client(
        transport=httpx.MockTransport(handler)))
    client.add_note("12/../34", "Where is my parcel?")
    assert seen == [("PUT", "/api/v2/tickets/12%2F..%2F34",
                     {"ticket": {"comment": {"body": "Where is my parcel?", "public": False}}})]


def test_a_message_becomes_one_private_note_in_plain_text(zendesk):
    helpdesk, call, state, client, observed = zendesk
    assert helpdesk.writes_notes
    ticket_id = client.create_ticket(FIRST, "key-1")
    helpdesk.add_note(call, ticket_id, claim_note())
    sent = state.view_requests()[-1]
    assert (sent["method"], sent["path"]) == ("PUT", f"/{SUBDOMAIN}/api/v2/tickets/{ticket_id}")
    assert sent["body"] == {"ticket": {"comment": {"body": note_text(claim_note()), "public": False}}}
    [written] = notes(state)
    assert written["public"] is False and written["position"] == 1
    assert "<b>Where is my parcel?</b>" in written["body"]  # as written: Zendesk shows a body as text
    assert account(state)["public_comments_after_creation"] == 0
    assert observed[-1] == (700, 698)  # the account's budget headers reach the pacing


def test_a_note_is_found_by_its_ref_and_an_absent_one_is_not(zendesk):
    helpdesk, call, _, client, _ = zendesk
    check_find_note(helpdesk, call, client.create_ticket(FIRST, "key-1"),
                    client.create_ticket({**FIRST, "external_id": "c2"}, "key-2"))


def test_the_lookup_reads_newest_first_and_at_most_three_pages(zendesk):
    helpdesk, call, state, client, _ = zendesk
    ticket_id = client.create_ticket(FIRST, "key-1")
    helpdesk.add_note(call, ticket_id, claim_note("opcore-note-old"))

    def later(count: int) -> None:  # comments written straight into the sandbox, sparing the budget
        with state.lock:
            held = state.accounts[SUBDOMAIN]
            held.tickets[int(ticket_id)]["comments"] += [held.comment({"body": "later", "public": False}, 0.0)
                                                         for _ in range(count)]

    later(250)
    helpdesk.add_note(call, ticket_id, claim_note("opcore-note-new"))
    state.requests.clear()
    assert helpdesk.find_note(call, ticket_id, claim_note("opcore-note-new")) is True
    assert len(state.view_requests()) == 1  # the newest page holds it: no further page is read
    assert helpdesk.find_note(call, ticket_id, claim_note("opcore-note-old")) is True  # on the third page
    later(50)
    state.requests.clear()
    assert helpdesk.find_note(call, ticket_id, claim_note("opcore-note-old")) is False  # 301 newer: past the limit
    assert [r["query"].get("page", "1") for r in state.view_requests()] == ["1", "2", "3"]


def test_a_note_whose_answer_was_lost_is_found_instead_of_written_twice(zendesk):
    helpdesk, call, state, client, _ = zendesk
    ticket_id = client.create_ticket(FIRST, "key-1")
    state.update_config(drop_rate=1.0)
    assert isinstance(failure_of(helpdesk, lambda: helpdesk.add_note(call, ticket_id, claim_note())), Transient)
    state.update_config(drop_rate=0.0)
    assert helpdesk.find_note(call, ticket_id, claim_note()) is True
    assert len(notes(state)) == 1


def test_notes_spend_the_accounts_budget_and_a_limited_one_is_a_429_with_retry_after(zendesk):
    helpdesk, call, state, client, observed = zendesk
    state.add_account(SUBDOMAIN, EMAIL, TOKEN, plan=3)
    ticket_id = client.create_ticket(FIRST, "key-1")
    helpdesk.add_note(call, ticket_id, claim_note("opcore-note-1"))
    assert observed[-1] == (3, 1)
    helpdesk.find_note(call, ticket_id, claim_note("opcore-note-1"))
    seen = len(observed)
    failure = failure_of(helpdesk, lambda: helpdesk.add_note(call, ticket_id, claim_note("opcore-note-2")))
    assert isinstance(failure, RateLimited) and failure.retry_after >= 1
    assert len(observed) == seen  # a 429's remaining count of 0 says nothing of the other apps
    limited = state.view_requests()[-1]
    assert limited["status"] == 429 and limited["retry_after"] >= 1
    assert [n["body"] for n in notes(state)] == [note_text(claim_note("opcore-note-1"))]


def test_a_server_error_on_a_note_is_transient_and_writes_nothing(zendesk):
    helpdesk, call, state, client, _ = zendesk
    ticket_id = client.create_ticket(FIRST, "key-1")
    state.update_config(error_rate=1.0)
    assert isinstance(failure_of(helpdesk, lambda: helpdesk.add_note(call, ticket_id, claim_note())), Transient)
    assert isinstance(failure_of(helpdesk, lambda: helpdesk.find_note(call, ticket_id, claim_note())), Transient)
    assert notes(state) == []


def test_a_note_on_a_ticket_that_does_not_exist_is_refused_and_counted(zendesk):
    helpdesk, call, state, client, _ = zendesk
    client.create_ticket(FIRST, "key-1")
    assert isinstance(failure_of(helpdesk, lambda: helpdesk.add_note(call, "999", claim_note())), Refused)
    assert isinstance(failure_of(helpdesk, lambda: helpdesk.finish_ticket(call, "998")), Refused)
    assert notes(state) == [] and account(state)["writes_to_unknown_tickets"] == 2
    assert isinstance(failure_of(helpdesk, lambda: helpdesk.find_note(call, "999", claim_note())), Refused)
    assert account(state)["writes_to_unknown_tickets"] == 2  # a read is not a write


def test_the_sandbox_counts_a_comment_sent_without_public_as_public(zendesk, server):
    _, _, state, client, _ = zendesk
    ticket_id = client.create_ticket(FIRST, "key-1")
    client.update_ticket(ticket_id, {"comment": {"body": "a reply"}})
    client.add_note(ticket_id, "a note")
    shown = json.loads(httpx.get(f"{server.url}/_sandbox/tickets").text)["accounts"][0]
    assert [(n["position"], n["public"], n["body"]) for n in shown["tickets"][0]["notes"]] == [
        (1, True, "a reply"), (2, False, "a note")]
    assert shown["public_comments_after_creation"] == 1 and shown["writes_to_unknown_tickets"] == 0
    listed = list(client.comments(ticket_id))
    assert [c["body"] for c in listed] == ["a note", "a reply", "Order #1001"]  # newest first
    assert [c["public"] for c in listed] == [False, True, False]
    assert all(c["id"] and c["created_at"].endswith("Z") and c["plain_body"] == c["body"] for c in listed)
