"""The note mirror end to end (CONTRACT.md, "Note mirror"): webhooks in, the sandbox's tickets out.

Each test posts Order Protection events to the ingress, lets a real worker run the delivery
engine against the Richpanel sandbox, and reads what the sandbox holds: the notes on each
ticket, their visibility and order, and every request it received.
"""

from __future__ import annotations

import time

from starlette.testclient import TestClient

from opcore_hooks import Refused, Transient
from opcore_hooks.app import create_app
from opcore_hooks.testing import claim_created, drain, message_created, wait_for
from plugins.richpanel import stores
from plugins.richpanel.helpdesk import Richpanel
from plugins.richpanel.store_config import SettingsUpdate

from .test_delivery import STORE, delivering, post, requests, settle, tickets
from .test_metrics import scrape

EARLY, MIDDLE, LATE = "2026-11-27T10:01:00Z", "2026-11-27T10:02:00Z", "2026-11-27T10:03:00Z"


def notes_of(sandbox) -> list[dict]:
    """Every note on every ticket, in the order written."""
    return [n for account in sandbox.state.view_tickets()["accounts"] for t in account["tickets"] for n in t["notes"]]


def texts(sandbox) -> list[str]:
    return [n["body"].split("</p>\n<p>", 1)[1].split("</p>", 1)[0] for n in notes_of(sandbox)]


def fresh_claim() -> tuple[dict, str]:
    claim = claim_created()
    return claim, claim["body"]["claim_id"]


def note_puts(sandbox) -> list[dict]:
    return [r for r in requests(sandbox, "PUT") if not r["path"].endswith("/snooze")]


def test_messages_become_private_notes_in_the_order_they_were_written_once_each(mirror):
    host, worker, sandbox = mirror
    claim, cid = fresh_claim()
    second = message_created(cid, "second", message_id="m2", created_at=MIDDLE)
    first = message_created(cid, "first <script>", message_id="m1", created_at=EARLY)
    third = message_created(cid, "third", message_id="m3", created_at=LATE)
    # the second message reaches opcore first, the first one within the 2 s; one arrives twice
    post(host, claim, second, third, first, first)
    post(host, message_created(cid, "first <script>", message_id="m1", created_at=EARLY))  # same id, new event
    settle(host, worker, lambda: len(notes_of(sandbox)) >= 3)
    drain(host, worker)
    assert texts(sandbox) == ["first &lt;script&gt;", "second", "third"]
    assert [n["public"] for n in notes_of(sandbox)] == [False, False, False]
    assert all(r["body"]["ticket"]["comment"]["sender_type"] == "operator" for r in note_puts(sandbox))
    assert len(tickets(sandbox)) == 1
    body = notes_of(sandbox)[0]["body"]
    assert "Ana Lima (Customer)" in body and f"/claims/view/{cid}" in body
    assert sandbox.state.view_tickets()["accounts"][0]["public_comments_after_creation"] == 0
    assert host.delivery("richpanel").stats()["notes"] == 3
    with TestClient(create_app(host)) as client:
        found = scrape(client)
    assert found[("opcore_deliveries_total", (("kind", "note"), ("outcome", "done"), ("plugin", "richpanel")))] == 3


def test_a_message_before_its_claim_waits_for_the_ticket_and_nothing_is_written_before_it(mirror):
    host, worker, sandbox = mirror
    claim, cid = fresh_claim()
    post(host, message_created(cid, "sent before the claim", message_id="m1"))
    drain(host, worker)
    assert requests(sandbox) == []  # no ticket: nothing at all
    post(host, claim)
    settle(host, worker, lambda: notes_of(sandbox))
    [create] = requests(sandbox, "POST", "/v1/tickets")
    [note] = note_puts(sandbox)
    assert note["time"] > create["time"]
    assert texts(sandbox) == ["sent before the claim"]
    assert sandbox.state.view_tickets()["accounts"][0]["writes_to_unknown_tickets"] == 0


def test_a_straggler_arriving_later_than_the_hold_is_written_anyway(mirror):
    host, worker, sandbox = mirror
    claim, cid = fresh_claim()
    post(host, claim, message_created(cid, "later", message_id="m2", created_at=LATE))
    settle(host, worker, lambda: notes_of(sandbox))
    post(host, message_created(cid, "earlier, but late", message_id="m1", created_at=EARLY))
    settle(host, worker, lambda: len(notes_of(sandbox)) == 2)
    assert texts(sandbox) == ["later", "earlier, but late"]


def test_with_the_mirror_off_nothing_is_written_and_turning_it_off_drops_what_waits(mirror):
    host, worker, sandbox = mirror
    claim, cid = fresh_claim()
    post(host, message_created(cid, "waits for a ticket", message_id="m1"))
    drain(host, worker)
    stores.update(host, STORE, SettingsUpdate(mirror_messages=False))
    sandbox.state.requests.clear()  # the key check of that update
    post(host, claim, message_created(cid, "sent while off", message_id="m2"))
    settle(host, worker, lambda: tickets(sandbox))
    time.sleep(2.5)  # past the hold: a note would have gone by now
    drain(host, worker)
    assert note_puts(sandbox) == [] and notes_of(sandbox) == []
    assert [r["method"] for r in requests(sandbox)] == ["POST"]  # the ticket, and nothing else on the wire


def test_a_disabled_store_writes_no_notes(mirror):
    host, worker, sandbox = mirror
    claim, cid = fresh_claim()
    post(host, claim)
    settle(host, worker, lambda: tickets(sandbox))
    stores.update(host, STORE, SettingsUpdate(enabled=False))
    post(host, message_created(cid, "to a disabled store", message_id="m1"))
    time.sleep(2.5)
    drain(host, worker)
    assert note_puts(sandbox) == []


def test_a_note_whose_answer_was_lost_is_found_by_its_ref_not_written_twice(mirror, monkeypatch):
    host, worker, sandbox = mirror
    real, lost = Richpanel.add_note, []

    def add_then_lose_the_answer(self, call, ticket_id, note):
        real(self, call, ticket_id, note)
        if not lost:
            lost.append(note.ref)
            raise Transient("ReadTimeout: no answer")

    monkeypatch.setattr(Richpanel, "add_note", add_then_lose_the_answer)
    claim, cid = fresh_claim()
    post(host, claim, message_created(cid, "only once", message_id="m1", created_at=EARLY),
         message_created(cid, "and then me", message_id="m2", created_at=LATE))
    settle(host, worker, lambda: len(notes_of(sandbox)) >= 2)
    drain(host, worker)
    assert texts(sandbox) == ["only once", "and then me"]
    assert [r["method"] for r in requests(sandbox) if "/v1/tickets/" in r["path"]] == ["PUT", "GET", "PUT"]
    assert host.delivery("richpanel").stats()["notes_adopted"] == 1


def test_a_refused_note_is_a_dead_letter_with_its_reason_and_the_next_one_still_goes(mirror, monkeypatch):
    host, worker, sandbox = mirror
    real = Richpanel.add_note

    def refuse_the_first(self, call, ticket_id, note):
        if "refuse me" in note.message:
            raise Refused("PUT answered 400")
        real(self, call, ticket_id, note)

    monkeypatch.setattr(Richpanel, "add_note", refuse_the_first)
    claim, cid = fresh_claim()
    post(host, claim, message_created(cid, "refuse me", message_id="m1", created_at=EARLY),
         message_created(cid, "after it", message_id="m2", created_at=LATE))
    settle(host, worker, lambda: notes_of(sandbox))
    [dead] = host.dead_letters.list(claim_id=cid)
    assert dead.actor == "richpanel.add_note" and "refused the note: PUT answered 400" in dead.reason
    assert texts(sandbox) == ["after it"]
    monkeypatch.setattr(Richpanel, "add_note", real)  # fixed: the operator replays it
    host.dead_letters.replay(host.broker, dead)
    settle(host, worker, lambda: len(notes_of(sandbox)) == 2)
    assert texts(sandbox) == ["after it", "refuse me"]


def test_a_message_whose_claim_never_gets_a_ticket_is_a_dead_letter_after_the_deadline(mirror):
    host, worker, sandbox = mirror
    notes = host.delivery("richpanel").notes
    post(host, message_created("never-created", "lost claim", message_id="m1"))
    drain(host, worker)
    assert notes.sweep() == 0  # not due yet
    notes.deadline_seconds = 0.0  # as if 7 days went by
    assert notes.sweep(now=time.time() + 7 * 86_400 + 1) == 1
    wait_for(lambda: host.dead_letters.list(claim_id="never-created"))
    [dead] = host.dead_letters.list(claim_id="never-created")
    assert "had no ticket" in dead.reason and requests(sandbox) == []
    drain(host, worker)
    assert notes.sweep(now=time.time() + 30 * 86_400) == 0  # handled: the claim left the due set


def test_creations_go_before_notes_when_the_quota_binds(make_host, run_worker, sandbox, monkeypatch):
    monkeypatch.setenv("OPCORE_RICHPANEL_QUOTA", "3")
    monkeypatch.setenv("OPCORE_RICHPANEL_WINDOW_SECONDS", "1.5")
    host, worker, sandbox = delivering(make_host, run_worker, sandbox, monkeypatch)
    stores.update(host, STORE, SettingsUpdate(mirror_messages=True))
    time.sleep(1.6)  # the settings check leaves the window
    sandbox.state.requests.clear()
    claims = [claim_created(claim_id=f"claim-q{i}", claim_number=f"OP-{i}") for i in range(12)]
    first = claims[0]["body"]["claim_id"]
    post(host, claims[0], message_created(first, "for the first claim", message_id="m1"), *claims[1:9])
    time.sleep(2.5)  # the note may go now, but creations are booked ahead of it; more arrive
    post(host, *claims[9:])
    settle(host, worker, lambda: notes_of(sandbox) and len(tickets(sandbox)) == 12, timeout=40)
    creates = requests(sandbox, "POST", "/v1/tickets")
    [note] = note_puts(sandbox)
    assert len(creates) == 12 and note["time"] >= max(r["time"] for r in creates)
    assert sandbox.state.view_tickets()["accounts"][0]["rate_limited"] == 0
