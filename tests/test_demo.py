"""`opcore demo`'s verdict on the note mirror: the plan sends what the mirror must cope with, and
the judge fails a run whose notes are missing, doubled, out of order, public or unreadable."""

from __future__ import annotations

from opcore_hooks.demo import Outcome, Plan, SeenNote, _problems, plan
from opcore_hooks.summary import note_html
from opcore_hooks.testing import claim_note
from plugins.richpanel.demo import RichpanelDemo, _as_read


def _perfect(p: Plan) -> Outcome:
    """What a stand-in holds when everything went right."""
    notes = {claim: [SeenNote(f"Order Protection message ...\n{text}\nRef opcore-note-1", False) for text in texts]
             for claim, texts in p.messages.items()}
    return Outcome({claim: [f"t-{claim}"] for claim in p.claims}, set(p.finished), {"POST /v1/tickets"}, 0, notes, 0, 0)


def test_the_plan_sends_messages_early_late_twice_and_out_of_order():
    p = plan("s", 8)
    assert sorted(p.messages) == ["s-claim-000", "s-claim-004"]
    topics = [(e["topic"], e["body"]["claim_id"]) for e in p.events]
    sent = [e for e in p.events if e["topic"] == "message.created"]
    # The 2nd messaged claim: one message before the claim exists.
    assert topics.index(("message.created", "s-claim-004")) < topics.index(("claim.created", "s-claim-004"))
    # The later-dated message is sent first, so the mirror has to order them.
    first = [e for e in sent if e["body"]["claim_id"] == "s-claim-004"]
    assert first[0]["body"]["created_at"] > first[1]["body"]["created_at"]
    # The 1st: one message redelivered (same event), the other sent again under a new event id.
    ids = [e["id"] for e in sent if e["body"]["claim_id"] == "s-claim-000"]
    message_ids = [e["body"]["message_id"] for e in sent if e["body"]["claim_id"] == "s-claim-000"]
    assert len(ids) == 4 and len(set(ids)) == 3 and len(set(message_ids)) == 2
    # Recorded in created_at order, and none is part of another (the judge matches by text).
    asked, answered = p.messages["s-claim-000"]
    assert "<photo attached>" in asked and asked not in answered and answered not in asked
    assert _problems(RichpanelDemo(), p, _perfect(p)) == []


def test_the_judge_fails_missing_doubled_disordered_public_and_stray_notes():
    p, part = plan("s", 8), RichpanelDemo()
    claim = "s-claim-000"
    seen = _perfect(p)
    asked, answered = seen.notes[claim]

    def problems(notes: list[SeenNote], **counts: int) -> list[str]:
        return _problems(part, p, Outcome(**{**seen.__dict__, "notes": {**seen.notes, claim: notes}, **counts}))

    assert problems([asked]) == [f"{claim}: message 2 is 0 notes"]
    assert problems([asked, answered, answered]) == [f"{claim}: message 2 is 2 notes"]
    assert problems([answered, asked]) == [f"{claim}: notes out of created_at order (messages [2, 1])"]
    assert problems([asked, answered, SeenNote("something else", False)]) == [
        f"{claim}: 1 notes that show none of its messages"]
    assert problems([asked, answered], public_comments_after_creation=1) == [
        "1 public comments after a ticket's creation (each could have emailed the customer)"]
    assert problems([asked, answered], writes_to_unknown_tickets=2) == ["2 writes to tickets that did not exist"]
    stray = {**seen.notes, "s-claim-001": [asked]}
    assert _problems(part, p, Outcome(**{**seen.__dict__, "notes": stray})) == [
        "s-claim-001: 1 notes that show none of its messages"]


def test_a_richpanel_note_reads_as_its_message_only_when_its_html_is_escaped():
    message = "The box came crushed <photo attached> & it does not work."
    escaped = note_html(claim_note(message=message))
    assert message in _as_read(escaped)
    unescaped = escaped.replace("&lt;photo attached&gt; &amp;", "<photo attached> &")  # a note that let markup in
    assert message not in _as_read(unescaped)
