"""The Zendesk client replayed from recorded cassettes (cassettes/zendesk/*.yaml).

Normal runs replay only (record_mode "none"): no network, and a request a cassette lacks fails.
They were recorded against the project's Zendesk sandbox (``OPCORE_CASSETTES_RECORD=1``; see
cassettes/README.md), whose paths carry the subdomain first, as ``OPCORE_ZENDESK_API_URL`` does
for it. The Authorization header is replaced before anything is written, and the last test
checks that no cassette holds the token, plain or base64-encoded.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import httpx
import pytest
import vcr

from opcore_hooks import ClaimCreated
from opcore_hooks.summary import note_text
from opcore_hooks.testing import claim_created, claim_note
from plugins.zendesk.client import ZendeskClient
from plugins.zendesk.tickets import build_ticket, has_note, idempotency_key

CASSETTES = Path(__file__).resolve().parents[2] / "cassettes" / "zendesk"
RECORDING = os.environ.get("OPCORE_CASSETTES_RECORD") == "1"
EMAIL, TOKEN, GROUP = "agent@acme.test", "zd_cassette_token_0123456789", 360001

recorder = vcr.VCR(
    cassette_library_dir=str(CASSETTES),
    record_mode="all" if RECORDING else "none",
    match_on=["method", "path", "query", "body"],
    filter_headers=[("authorization", "REDACTED")],
    decode_compressed_response=True,
)


@pytest.fixture(scope="module")
def base():
    """The account's API base: the sandbox when recording, a fixed base when replaying."""
    if not RECORDING:
        yield "http://zendesk.replay/acme"
        return
    from plugins.zendesk.sandbox import SandboxConfig, run_in_thread

    with run_in_thread(SandboxConfig(window=30)) as server:
        server.state.add_account("acme", EMAIL, TOKEN, plan=5, groups=[{"id": GROUP, "name": "Claims"}])
        yield server.url + "/acme"


@pytest.fixture(scope="module")
def notes_base(base):
    """The notes cassette's account: recording, one of its own, whose budget the other cassettes
    (the rate-limit one spends it all) have not touched."""
    if not RECORDING:
        yield base
        return
    from plugins.zendesk.sandbox import SandboxConfig, run_in_thread

    with run_in_thread(SandboxConfig(window=30)) as server:
        server.state.add_account("acme", EMAIL, TOKEN, plan=5, groups=[{"id": GROUP, "name": "Claims"}])
        yield server.url + "/acme"


def client(base: str, token: str = TOKEN) -> ZendeskClient:
    return ZendeskClient(base, EMAIL, token, http=httpx.Client(timeout=5))


def test_the_ticket_lifecycle_replays(base):
    seen = []
    zendesk = ZendeskClient(base, EMAIL, TOKEN, http=httpx.Client(timeout=5), observe=seen.append)
    with recorder.use_cassette("ticket_lifecycle.yaml"):
        assert [g.id for g in zendesk.list_groups()] == [GROUP]
        claim = ClaimCreated.model_validate(claim_created(claim_id="cassette-claim-1")["body"])
        body = build_ticket(claim, "https://app.orderprotection.com/claims/view/cassette-claim-1", group_id=GROUP)
        key = idempotency_key("store_123", claim.claim_id)
        ticket_id = zendesk.create_ticket(body, key)
        assert zendesk.create_ticket(body, key) == ticket_id  # the same key and body: the first ticket
        assert [str(t["id"]) for t in zendesk.find_by_external_id("cassette-claim-1")] == [ticket_id]
        zendesk.update_ticket(ticket_id, {"status": "pending"})
    assert seen and seen[0].limit == 5


def test_a_private_note_and_its_lookup_replay(notes_base):
    note = claim_note("opcore-note-cassette01", "Where is my parcel?", claim_id="cassette-claim-1",
                      claim_url="https://app.orderprotection.com/claims/view/cassette-claim-1")
    zendesk = client(notes_base)
    with recorder.use_cassette("notes.yaml"):
        claim = ClaimCreated.model_validate(claim_created(claim_id="cassette-claim-1")["body"])
        body = build_ticket(claim, "https://app.orderprotection.com/claims/view/cassette-claim-1", group_id=GROUP)
        ticket_id = zendesk.create_ticket(body, idempotency_key("store_123", claim.claim_id))
        zendesk.add_note(ticket_id, note_text(note))  # replayed only if sent private, as recorded
        comments = list(zendesk.comments(ticket_id))
    assert [c["public"] for c in comments] == [False, False]  # the note, then the ticket's first comment
    assert has_note(comments, note.ref) and not has_note(comments, "opcore-note-absent")


def test_a_rejected_token_and_a_rate_limit_replay_as_http_errors(base):
    with recorder.use_cassette("rejected_and_limited.yaml"):
        with pytest.raises(httpx.HTTPStatusError) as rejected:
            client(base, "zd_wrong_token_for_cassettes").list_groups()
        assert rejected.value.response.status_code == 401
        with pytest.raises(httpx.HTTPStatusError) as limited:
            for _ in range(10):  # the recording account allows 5 a window
                client(base).list_groups()
        assert limited.value.response.status_code == 429
        assert int(limited.value.response.headers["retry-after"]) >= 1


def test_no_cassette_holds_the_token():
    files = sorted(CASSETTES.glob("*.yaml"))
    assert files, "cassettes/zendesk is empty: record them (cassettes/README.md)"
    encoded = base64.b64encode(f"{EMAIL}/token:{TOKEN}".encode()).decode()
    for path in files:
        text = path.read_text()
        assert TOKEN not in text and encoded not in text and "REDACTED" in text, path.name
