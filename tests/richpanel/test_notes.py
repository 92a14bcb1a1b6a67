"""The note mirror's requests to Richpanel (CONTRACT.md, "Note mirror"): each message becomes an
operator's private comment on its claim's ticket, found again by its ref when an answer was lost.

The plugin's ``add_note``/``find_note`` are called as the delivery engine calls them, against the
sandbox in process; every assertion reads what the sandbox holds or what the engine is told.
"""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from opcore_hooks import Call, RateLimited, Refused, Transient
from opcore_hooks.summary import note_html
from opcore_hooks.testing import check_find_note, claim_note
from plugins.richpanel import plugin, session
from plugins.richpanel.client import RichpanelClient
from plugins.richpanel.sandbox import SandboxConfig, create_sandbox

from .test_sandbox import ticket

KEY = "rp_test_NotesKey_0001"


@pytest.fixture
def richpanel(make_host, monkeypatch):
    """(the plugin's helpdesk, the sandbox's state, a client, what the pacing was told), in process."""
    monkeypatch.setenv("OPCORE_RICHPANEL_API_URL", "http://testserver")
    app = create_sandbox(SandboxConfig(quota=50, window=30))
    app.state.sandbox.add_account(KEY)
    with TestClient(app) as http:
        host = make_host({"richpanel": plugin})
        session.set_http(host, http)
        observed: list[tuple[int | None, int | None]] = []
        call = Call(None, KEY, lambda limit, remaining: observed.append((limit, remaining)))
        yield host.delivery("richpanel").helpdesk, call, app.state.sandbox, RichpanelClient("http://testserver", KEY,
                                                                                            http=http), observed


def notes(state) -> list[dict]:
    return [n for a in state.view_tickets()["accounts"] for t in a["tickets"] for n in t["notes"]]


def test_a_message_becomes_one_private_operator_note_showing_it_escaped(richpanel):
    helpdesk, call, state, client, observed = richpanel
    assert helpdesk.writes_notes
    ticket_id = client.create_ticket(ticket())
    helpdesk.add_note(call, ticket_id, claim_note())
    sent = state.requests[-1]
    assert (sent["method"], sent["path"]) == ("PUT", f"/v1/tickets/{ticket_id}")
    assert sent["body"] == {"ticket": {"comment": {"body": note_html(claim_note()), "public": False,
                                                   "sender_type": "operator"}}}
    [written] = notes(state)
    assert written["public"] is False and written["position"] == 1
    assert "&lt;b&gt;Where is my parcel?&lt;/b&gt;<br>It is late." in written["body"]  # text, never markup
    assert "Ana (Customer)" in written["body"] and "https://dash.example/claims/view/claim-1" in written["body"]
    assert state.view_tickets()["accounts"][0]["public_comments_after_creation"] == 0
    assert observed[-1] == (50, 48)  # Richpanel's quota headers reach the pacing


def test_a_note_is_found_by_its_ref_and_an_absent_one_is_not(richpanel):
    helpdesk, call, _, client, _ = richpanel
    check_find_note(helpdesk, call, client.create_ticket(ticket()), client.create_ticket(ticket()))


def test_a_note_whose_answer_was_lost_is_found_instead_of_written_twice(richpanel):
    helpdesk, call, state, client, _ = richpanel
    ticket_id = client.create_ticket(ticket())
    state.update_config(drop_rate=1.0)
    with pytest.raises(Exception) as caught:
        helpdesk.add_note(call, ticket_id, claim_note())
    assert isinstance(helpdesk.classify(caught.value), Transient)
    state.update_config(drop_rate=0.0)
    assert helpdesk.find_note(call, ticket_id, claim_note()) is True
    assert len(notes(state)) == 1


def test_a_rate_limited_note_waits_its_retry_after_and_a_ticket_that_is_not_there_is_refused(richpanel):
    helpdesk, call, state, client, observed = richpanel
    ticket_id = client.create_ticket(ticket())
    state.update_config(rate_limit_rate=1.0, limit_status=492)
    seen = len(observed)
    with pytest.raises(Exception) as caught:
        helpdesk.add_note(call, ticket_id, claim_note())
    failure = helpdesk.classify(caught.value)
    assert isinstance(failure, RateLimited) and failure.retry_after >= 1
    assert len(observed) == seen  # a limited answer's remaining count says nothing of the window
    state.update_config(rate_limit_rate=0.0)
    with pytest.raises(Exception) as caught:
        helpdesk.add_note(call, "no such ticket", claim_note())
    assert isinstance(helpdesk.classify(caught.value), Refused)
    assert notes(state) == [] and state.view_tickets()["accounts"][0]["writes_to_unknown_tickets"] == 1
