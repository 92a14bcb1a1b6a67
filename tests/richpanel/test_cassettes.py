"""The Richpanel client replayed from recorded cassettes (cassettes/richpanel/*.yaml).

Normal runs replay only (record_mode "none"): no network, and a request the cassette lacks
fails. To record again, see cassettes/README.md: against the sandbox by default, or against
the real API with a real key. The key header is replaced before anything is written, and
the test below checks no cassette holds a key.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import vcr

from opcore_hooks.events import ClaimCreated
from opcore_hooks.summary import note_html
from opcore_hooks.testing import claim_created, claim_note
from plugins.richpanel.client import AuthError, RateLimited, RichpanelClient
from plugins.richpanel.tickets import build_ticket, has_note

CASSETTES = Path(__file__).resolve().parents[2] / "cassettes" / "richpanel"
RECORDING = os.environ.get("OPCORE_CASSETTES_RECORD") == "1"
REAL_API = os.environ.get("OPCORE_CASSETTES_API_URL")  # set with a real key to record the real API
KEY_PATTERN = re.compile(r"rp_[A-Za-z0-9_\-]{8,}")

recorder = vcr.VCR(
    cassette_library_dir=str(CASSETTES),
    record_mode="all" if RECORDING else "none",
    match_on=["method", "path", "query", "body"],
    filter_headers=[("x-richpanel-key", "REDACTED")],
    decode_compressed_response=True,
)


@pytest.fixture(scope="module")
def api():
    """(base_url, key, bad_key): the sandbox when recording locally, a fixed base when replaying."""
    if RECORDING and REAL_API:
        yield REAL_API, os.environ["OPCORE_CASSETTES_API_KEY"], "rp_invalid_key_for_cassettes"
        return
    if RECORDING:
        from plugins.richpanel.sandbox import SandboxConfig, run_in_thread

        with run_in_thread(SandboxConfig(quota=5, window=30)) as server:
            key = "rp_cassette_recording_key_0001"
            server.state.add_account(key, teams=[{"id": "0b5e6a3c-7d1f-4c2a-9e8b-1f2d3c4b5a69", "name": "Claims"}])
            yield server.url, key, "rp_invalid_key_for_cassettes"
        return
    yield "https://api.richpanel.com", "rp_replay_placeholder_key", "rp_invalid_key_for_cassettes"


@pytest.fixture(scope="module")
def notes_api(api):
    """(base_url, key) for the notes cassette: recording locally, a sandbox of its own, whose quota
    the other cassettes (the rate-limit one spends it all) have not touched."""
    base, key, _ = api
    if RECORDING and not REAL_API:
        from plugins.richpanel.sandbox import SandboxConfig, run_in_thread

        with run_in_thread(SandboxConfig(quota=50, window=30)) as server:
            server.state.add_account(key)
            yield server.url, key
        return
    yield base, key


def ticket() -> dict:
    event = claim_created(claim_id="cassette-claim-1", claim_number="OP-4242")
    return build_ticket(ClaimCreated.model_validate(event["body"]), "https://app.orderprotection.com/claims/view/cassette-claim-1")


def test_the_ticket_lifecycle_replays(api):
    base, key, _ = api
    with recorder.use_cassette("ticket_lifecycle.yaml"), RichpanelClient(base, key) as client:
        teams = client.list_teams()
        assert teams and all(t.id for t in teams)
        ticket_id = client.create_ticket(ticket())
        assert client.get_ticket(ticket_id)["id"] == ticket_id
        found = client.find_tickets_by_email("ana@example.com")
        assert ticket_id in [t["id"] for t in found]
        client.snooze_ticket(ticket_id)
        assert client.last_rate_limit is not None


def test_a_private_note_and_its_lookup_replay(notes_api):
    base, key = notes_api
    note = claim_note("opcore-note-cassette01", "Where is my parcel?", claim_id="cassette-claim-1",
                      claim_url="https://app.orderprotection.com/claims/view/cassette-claim-1")
    with recorder.use_cassette("notes.yaml"), RichpanelClient(base, key) as client:
        ticket_id = client.create_ticket(ticket())
        client.add_note(ticket_id, note_html(note))  # replayed only if sent private, by an operator, as recorded
        found = client.get_ticket(ticket_id)
        assert has_note(found, note.ref) and not has_note(found, "opcore-note-absent")


def test_a_rejected_key_replays_as_auth_error(api):
    base, _, bad = api
    with recorder.use_cassette("rejected_key.yaml"), RichpanelClient(base, bad) as client:
        with pytest.raises(AuthError):
            client.list_teams()


def test_a_rate_limit_replays_with_its_retry_after(api):
    base, key, _ = api
    with recorder.use_cassette("rate_limited.yaml"), RichpanelClient(base, key) as client:
        with pytest.raises(RateLimited) as caught:
            for _ in range(60):  # the recording sandbox allows 5 per window; the real API 50
                client.list_teams()
        assert caught.value.retry_after >= 1


def test_no_cassette_holds_a_key():
    files = sorted(CASSETTES.glob("*.yaml"))
    assert files, "cassettes/richpanel is empty: record them (cassettes/README.md)"
    for path in files:
        text = path.read_text()
        assert KEY_PATTERN.search(text) is None, f"{path.name} contains something shaped like a key"
        assert "REDACTED" in text
