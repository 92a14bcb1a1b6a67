"""The local Richpanel sandbox, driven through the real client where a user would."""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from starlette.testclient import TestClient

from plugins.richpanel.client import (
    AuthError,
    ClientError,
    RateLimited,
    RichpanelClient,
    ServerError,
    TransportError,
)
from plugins.richpanel.sandbox import SandboxConfig, create_sandbox, run_in_thread

KEY = "rp_sandbox_S3cretKey_77aa"
OTHER = "rp_sandbox_OtherKey_0b0b"


def ticket(email: str = "ana@example.com", **extra) -> dict:
    return {"subject": "Damaged claim for order #1001", "status": "OPEN",
            "customer_profile": {"firstName": "Ana", "lastName": "Lima"},
            "via": {"channel": "email", "source": {"from": {"address": email},
                                                   "to": {"address": "support@store.example"}}},
            "comment": {"sender_type": "customer", "body": "Order #1001", "public": True}, **extra}


@pytest.fixture
def make():
    """Builds an in-process sandbox with KEY registered; returns (state, http, client)."""
    opened = []

    def build(**config):
        app = create_sandbox(SandboxConfig(**config))
        app.state.sandbox.add_account(KEY)
        http = TestClient(app)
        http.__enter__()
        opened.append(http)
        return app.state.sandbox, http, RichpanelClient("http://testserver", KEY, http=http)

    yield build
    for http in opened:
        http.__exit__(None, None, None)


def test_default_account_has_two_teams_with_uuids(make):
    _, _, client = make()
    teams = client.list_teams()
    assert [t.name for t in teams] == ["Support", "Claims"]
    assert all(uuid.UUID(t.id) for t in teams)


def test_unknown_or_missing_key_is_401(make):
    _, http, _ = make()
    with pytest.raises(AuthError) as caught:
        RichpanelClient("http://testserver", "rp_not_registered_1234", http=http).list_teams()
    assert caught.value.status == 401
    answer = http.get("/v1/teams")
    assert answer.status_code == 401 and "error" in answer.json()


def test_quota_limits_the_51st_request_in_the_window(make):
    state, http, client = make(window=5.0)
    client.list_teams()
    assert (client.last_rate_limit.limit, client.last_rate_limit.remaining) == (50, 49)
    for _ in range(48):
        client.find_tickets_by_email("ana@example.com")  # reads count too
    client.create_ticket(ticket())
    assert client.last_rate_limit.remaining == 0
    with pytest.raises(RateLimited) as caught:
        client.list_teams()
    assert caught.value.status == 429
    assert 1 <= caught.value.retry_after <= 5
    assert client.last_rate_limit.remaining == 0
    assert state.rate_limited[KEY] == 1
    answer = http.get("/v1/teams", headers={"x-richpanel-key": KEY})
    assert answer.status_code == 429
    assert answer.headers["X-RateLimit-Limit"] == "50"
    assert answer.headers["X-RateLimit-Remaining"] == "0"
    assert answer.headers["Retry-After"].isdigit()
    assert state.rate_limited[KEY] == 2
    # the quota is per key: another account is unaffected
    state.add_account(OTHER)
    assert RichpanelClient("http://testserver", OTHER, http=http).list_teams()


def test_limited_answers_do_not_count_and_the_window_slides(make):
    _, _, client = make(quota=2, window=0.5)
    client.list_teams()
    client.list_teams()
    for _ in range(3):
        with pytest.raises(RateLimited) as caught:
            client.list_teams()
    assert caught.value.retry_after == 1  # ceil of the time left, at least 1 s
    time.sleep(0.55)
    client.list_teams()
    assert client.last_rate_limit.remaining == 1


def test_492_with_http_date_and_mixed_forms(make):
    _, http, client = make(quota=1, window=5.0)
    answer = http.put("/_sandbox/config", json={"limit_status": 492, "retry_after_form": "date"})
    assert answer.status_code == 200 and answer.json()["limit_status"] == 492
    client.list_teams()
    with pytest.raises(RateLimited) as caught:
        client.list_teams()
    assert caught.value.status == 492
    assert 0 < caught.value.retry_after <= 6
    http.put("/_sandbox/config", json={"retry_after_form": "mixed"})
    forms = {http.get("/v1/teams", headers={"x-richpanel-key": KEY}).headers["Retry-After"].isdigit()
             for _ in range(2)}
    assert forms == {True, False}


def test_config_update_is_validated(make):
    _, http, _ = make()
    answer = http.put("/_sandbox/config", json={"limit_status": 418})
    assert answer.status_code == 422
    assert http.get("/_sandbox/config").json()["limit_status"] == 429


def test_create_get_and_unique_client_supplied_id(make):
    state, _, client = make()
    first = client.create_ticket(ticket(id="claim-1"))
    assert first == "claim-1"
    second = client.create_ticket(ticket(id="claim-1"))
    assert second != first  # a taken id is made unique instead of overwriting
    stored = client.get_ticket(first)
    assert stored["status"] == "OPEN" and stored["subject"].startswith("Damaged")
    assert stored["comments"][0]["body"] == "Order #1001"
    assert stored["comments"][0]["sender_type"] == "customer"
    assert len(state.tickets(KEY)) == 2
    with pytest.raises(ClientError) as caught:
        client.get_ticket("missing")
    assert caught.value.status == 404


def test_bad_bodies_400_and_413(make):
    _, http, client = make()
    answer = http.post("/v1/tickets", json={"subject": "not wrapped"},
                       headers={"x-richpanel-key": KEY})
    assert answer.status_code == 400 and "ticket" in answer.json()["error"]
    with pytest.raises(ClientError) as caught:
        client.create_ticket(ticket(comment={"body": "x" * (1024 * 1024 + 1)}))
    assert caught.value.status == 413


def test_snooze_is_recorded(make):
    state, _, client = make()
    ticket_id = client.create_ticket(ticket())
    client.snooze_ticket(ticket_id)
    stored = state.accounts[KEY].tickets[ticket_id]
    assert stored["snoozed_till"] == "0" and stored["snoozed_at"]
    with pytest.raises(ClientError) as caught:
        client.snooze_ticket("missing")
    assert caught.value.status == 404


def test_lookup_by_email_is_case_insensitive_and_per_account(make):
    state, http, client = make()
    client.create_ticket(ticket("Ana@Example.com"))
    client.create_ticket(ticket("bo@example.com"))
    client.create_ticket(ticket("ana+vip@example.com"))
    state.add_account(OTHER)
    RichpanelClient("http://testserver", OTHER, http=http).create_ticket(ticket("ana@example.com"))
    found = client.find_tickets_by_email("ana@EXAMPLE.com")
    assert [t["via"]["source"]["from"]["address"] for t in found] == ["Ana@Example.com"]
    assert len(client.find_tickets_by_email("ana+vip@example.com")) == 1
    assert client.find_tickets_by_email("nobody@example.com") == []


def test_tags(make):
    _, http, client = make()
    key = {"x-richpanel-key": KEY}
    tag = http.post("/v1/tags", json={"tag": {"name": "claim"}}, headers=key).json()["tag"]
    assert http.post("/v1/tags", json={"name": "Claim"}, headers=key).status_code == 409
    assert http.get("/v1/tags", headers=key).json() == {"tag": [tag]}
    ticket_id = client.create_ticket(ticket())
    http.put(f"/v1/tickets/{ticket_id}/add-tags", json={"tags": [tag["id"]]}, headers=key)
    assert client.get_ticket(ticket_id)["tags"] == [tag["id"]]
    http.put(f"/v1/tickets/{ticket_id}/remove-tags", json={"tags": [tag["id"]]}, headers=key)
    assert client.get_ticket(ticket_id)["tags"] == []


def test_injected_server_errors(make):
    _, _, client = make(error_rate=1.0)
    with pytest.raises(ServerError) as caught:
        client.list_teams()
    assert caught.value.status == 500


def test_control_api_and_views_mask_the_key(make):
    state, http, _ = make()
    state.reset()
    created = http.post("/_sandbox/accounts", json={"api_key": KEY, "teams": [{"name": "Claims"}]})
    assert created.status_code == 201 and created.json()["account"] == "rp_…77aa"
    client = RichpanelClient("http://testserver", KEY, http=http)
    assert [t.name for t in client.list_teams()] == ["Claims"]
    client.create_ticket(ticket())
    requests_view = http.get("/_sandbox/requests")
    tickets_view = http.get("/_sandbox/tickets")
    assert KEY not in requests_view.text and KEY not in tickets_view.text
    records = requests_view.json()["requests"]
    assert [(r["method"], r["path"], r["status"]) for r in records] == [
        ("POST", "/_sandbox/accounts", 201), ("GET", "/v1/teams", 200), ("POST", "/v1/tickets", 200)]
    assert records[0]["body"]["api_key"] == "rp_…77aa" and records[1]["account"] == "rp_…77aa"
    assert records[2]["body"]["ticket"]["subject"].startswith("Damaged")
    assert tickets_view.json()["accounts"][0]["account"] == "rp_…77aa"
    assert len(tickets_view.json()["accounts"][0]["tickets"]) == 1
    assert KEY not in repr(state.accounts[KEY])
    assert http.post("/_sandbox/reset").status_code == 200
    assert state.accounts == {}


def test_dropped_answer_in_process_is_a_transport_error_too(make):
    state, _, client = make(drop_rate=1.0)
    with pytest.raises(TransportError):
        client.create_ticket(ticket())
    assert len(state.tickets(KEY)) == 1


def test_dropped_answer_still_creates_the_ticket_under_uvicorn():
    with run_in_thread(SandboxConfig(drop_rate=1.0)) as server, httpx.Client() as http:
        server.state.add_account(KEY)
        client = RichpanelClient(server.url, KEY, http=http, timeout=5)
        with pytest.raises(TransportError) as caught:
            client.create_ticket(ticket())
        assert caught.value.status is None and KEY not in str(caught.value)
        assert len(server.state.tickets(KEY)) == 1  # processed, though the answer was lost
        assert server.state.requests[-1]["dropped"] is True
        # the lost ticket is found by the customer's email, as a retrying caller would
        http.put(f"{server.url}/_sandbox/config", json={"drop_rate": 0})
        assert len(client.find_tickets_by_email("ana@example.com")) == 1


def test_slow_answer_times_out_as_transport_error():
    with run_in_thread(SandboxConfig(latency_ms=(400, 400))) as server:
        server.state.add_account(KEY)
        with RichpanelClient(server.url, KEY, timeout=0.1) as client:
            with pytest.raises(TransportError) as caught:
                client.list_teams()
        assert isinstance(caught.value.__cause__, httpx.TimeoutException)


def test_quota_holds_under_concurrent_requests():
    with run_in_thread(SandboxConfig(quota=50, window=30)) as server, httpx.Client() as http:
        server.state.add_account(KEY)
        client = RichpanelClient(server.url, KEY, http=http)

        def call(_):
            try:
                client.list_teams()
                return "ok"
            except RateLimited:
                return "limited"

        with ThreadPoolExecutor(8) as pool:
            outcomes = list(pool.map(call, range(60)))
        assert outcomes.count("ok") == 50 and outcomes.count("limited") == 10
        assert server.state.rate_limited[KEY] == 10
        view = json.loads(http.get(f"{server.url}/_sandbox/tickets").text)
        assert view["accounts"][0]["rate_limited"] == 10


# -- notes: comments written on an existing ticket --------------------------------------------

def note(body: str = "<p>Where is my parcel?</p>", **fields) -> dict:
    return {"ticket": {"comment": {"body": body, "public": False, "sender_type": "operator", **fields}}}


def view(http) -> dict:
    return http.get("/_sandbox/tickets").json()["accounts"][0]


def test_notes_are_kept_in_order_with_their_visibility_and_public_ones_are_counted(make):
    _, http, client = make()
    key = {"x-richpanel-key": KEY}
    ticket_id = client.create_ticket(ticket())
    client.add_note(ticket_id, "<p>first</p>")
    http.put(f"/v1/tickets/{ticket_id}", json={"ticket": {"comment": {"body": "no public flag",
                                                                      "sender_type": "operator"}}}, headers=key)
    http.put(f"/v1/tickets/{ticket_id}", json=note("a customer's", sender_type="customer"), headers=key)
    client.add_note(ticket_id, "<p>last</p>")
    bodies = [c["body"] for c in client.get_ticket(ticket_id)["comments"]]
    assert bodies == ["Order #1001", "<p>first</p>", "no public flag", "a customer's", "<p>last</p>"]
    account = view(http)
    notes = account["tickets"][0]["notes"]
    assert [(n["position"], n["public"], n["body"]) for n in notes] == [
        (1, False, "<p>first</p>"), (2, True, "no public flag"), (3, True, "a customer's"), (4, False, "<p>last</p>")]
    assert all(n["created_at"] for n in notes)
    assert account["public_comments_after_creation"] == 2  # the creation comment is not one of them
    assert account["writes_to_unknown_tickets"] == 0


def test_a_write_to_an_unknown_ticket_is_404_writes_nothing_and_is_counted(make):
    _, http, client = make()
    ticket_id = client.create_ticket(ticket())
    for write in (lambda: client.add_note("missing", "<p>early</p>"), lambda: client.snooze_ticket("missing")):
        with pytest.raises(ClientError) as caught:
            write()
        assert caught.value.status == 404
    account = view(http)
    assert account["writes_to_unknown_tickets"] == 2
    assert [t["id"] for t in account["tickets"]] == [ticket_id] and account["tickets"][0]["notes"] == []
    assert http.get("/v1/tickets/missing", headers={"x-richpanel-key": KEY}).status_code == 404
    assert view(http)["writes_to_unknown_tickets"] == 2  # a read is not a write


def test_notes_count_against_the_quota_and_a_limited_note_is_a_429_with_retry_after(make):
    state, http, client = make(quota=3, window=5.0)
    ticket_id = client.create_ticket(ticket())
    client.add_note(ticket_id, "<p>one</p>")
    assert client.last_rate_limit.remaining == 1
    client.get_ticket(ticket_id)
    with pytest.raises(RateLimited) as caught:
        client.add_note(ticket_id, "<p>two</p>")
    assert caught.value.status == 429 and 1 <= caught.value.retry_after <= 5
    answer = http.put(f"/v1/tickets/{ticket_id}", json=note(), headers={"x-richpanel-key": KEY})
    assert answer.status_code == 429 and answer.headers["Retry-After"].isdigit()
    assert [n["body"] for n in view(http)["tickets"][0]["notes"]] == ["<p>one</p>"]
    assert state.rate_limited[KEY] == 2


def test_injected_faults_reach_notes_and_their_lookups(make):
    state, http, client = make()
    ticket_id = client.create_ticket(ticket())
    state.update_config(error_rate=1.0)
    with pytest.raises(ServerError):
        client.add_note(ticket_id, "<p>failed</p>")
    with pytest.raises(ServerError):
        client.get_ticket(ticket_id)
    state.update_config(error_rate=0.0, drop_rate=1.0)
    with pytest.raises(TransportError):
        client.add_note(ticket_id, "<p>answer lost</p>")
    state.update_config(drop_rate=0.0)
    assert [n["body"] for n in view(http)["tickets"][0]["notes"]] == ["<p>answer lost</p>"]  # written all the same
