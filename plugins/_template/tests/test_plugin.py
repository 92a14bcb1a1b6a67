"""The template tests itself, and a copy of the folder tests the copy.

The helpdesk is a stand-in (``Desk``, behind ``httpx.MockTransport``) that keeps its tickets
and every request, so each test reads what a helpdesk would really have seen. Replace it with
your helpdesk's behaviour as you change ``helpdesk.py``; keep the delivery tests: they are the
promises the engine makes your plugin, checked through your plugin.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from opcore_hooks.testing import (
    ADMIN_TOKEN,
    WEBHOOK_SECRET,
    approved,
    claim_created,
    cli,
    create_app,
    drain,
    load_plugins,
    message_created,
    plugin_beside,
    wait_for,
)

plugin = plugin_beside(__file__)
NAME = plugin.NAME
TOKEN = "tok_test_0123456789"
STORE = "store_123"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


class Desk:
    """The helpdesk stand-in: tickets, idempotency keys, rate limits and lost answers on demand."""

    def __init__(self) -> None:
        self.tickets: dict[str, dict[str, Any]] = {}
        self.keys: dict[str, str] = {}
        self.requests: list[dict[str, Any]] = []
        self.rate_limit_next = 0  # answer this many requests 429, Retry-After: 1
        self.lose_next_answer = False  # act on the next create, then drop the connection
        self.tokens = {TOKEN}  # the tokens it accepts
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            body = json.loads(request.content) if request.content else None
            self.requests.append({"method": request.method, "path": request.url.path, "body": body,
                                  "time": time.time(), "query": dict(request.url.params)})
            if request.headers.get("authorization", "").removeprefix("Bearer ") not in self.tokens:
                answer = httpx.Response(401, json={"error": "bad token"})
            elif self.rate_limit_next:
                self.rate_limit_next -= 1
                answer = httpx.Response(429, headers={"Retry-After": "1"})
            else:
                answer = self.answer(request, body)
            self.requests[-1]["status"] = answer.status_code
            return answer

    def answer(self, request: httpx.Request, body: Any) -> httpx.Response:
        path = request.url.path
        if request.method == "POST" and path == "/api/tickets":
            key = request.headers["idempotency-key"]
            if key not in self.keys:
                self.keys[key] = ticket_id = f"T{len(self.tickets) + 1}"
                self.tickets[ticket_id] = {**body["ticket"], "id": ticket_id, "status": "open"}
            if self.lose_next_answer:
                self.lose_next_answer = False
                raise httpx.ReadTimeout("the answer was lost", request=request)
            return httpx.Response(201, json={"id": self.keys[key]})
        if request.method == "GET" and path == "/api/tickets":
            wanted = request.url.params["external_id"]
            return httpx.Response(200, json={"tickets": [t for t in self.tickets.values()
                                                         if t["external_id"] == wanted]})
        if path.startswith("/api/tickets/") and path.endswith("/notes"):
            ticket = self.tickets.get(path.split("/")[3])
            if ticket is None:
                return httpx.Response(404, json={"error": "no such ticket"})
            if request.method == "POST":
                ticket.setdefault("notes", []).append(body["note"])
            return httpx.Response(200, json={"notes": ticket.get("notes", [])})
        if request.method == "PUT" and path.startswith("/api/tickets/"):
            self.tickets[path.rsplit("/", 1)[1]].update(body["ticket"])
            return httpx.Response(200, json={})
        if path == "/api/account":
            return httpx.Response(200, json={"ok": True})
        return httpx.Response(404, json={"error": "no such route"})

    def sent(self, method: str) -> list[dict[str, Any]]:
        """The requests of ``method`` the helpdesk acted on (a lost answer's included)."""
        return [r for r in self.requests if r["method"] == method and r.get("status", 200) < 300]


@pytest.fixture
def desk(make_host, run_worker):
    """A host with this plugin, a store connected through the settings API, a worker running."""
    host = make_host({NAME: plugin})
    stand_in = Desk()
    host.delivery(NAME).helpdesk.http = httpx.Client(transport=httpx.MockTransport(stand_in))
    for actor in (host.delivery(NAME).create_actor, host.delivery(NAME).finish_actor):
        actor.options.update(min_backoff=50, max_backoff=200)
    client = TestClient(create_app(host))
    answer = client.put(f"/internal/integrations/{NAME}/stores/{STORE}", json={"api_token": TOKEN}, headers=ADMIN)
    assert answer.status_code == 200, answer.text
    stand_in.requests.clear()  # the token check is not delivery
    worker = run_worker(host)
    yield host, worker, stand_in, client
    client.close()


def post(client: TestClient, *events: dict[str, Any]) -> None:
    for event in events:
        answer = client.post("/webhooks/orderprotection", json=event, headers={"x-webhook-secret": WEBHOOK_SECRET})
        assert answer.status_code in (200, 202), answer.text


def test_a_claim_opens_one_private_ticket(desk):
    host, worker, stand_in, client = desk
    event = claim_created()
    post(client, event)
    wait_for(lambda: stand_in.tickets)
    drain(host, worker)
    [ticket] = stand_in.tickets.values()
    assert ticket["external_id"] == event["body"]["claim_id"] and ticket["comment"]["public"] is False
    assert host.delivery(NAME).ticket_id(STORE, event["body"]["claim_id"]) == ticket["id"]


def test_duplicate_events_and_redeliveries_make_one_ticket(desk):
    host, worker, stand_in, client = desk
    event = claim_created()
    post(client, event, event, dict(event, id="another-event-for-the-same-claim"))
    for _ in range(3):  # Dramatiq delivering the same message again
        host.delivery(NAME).create_actor.send(STORE, event["body"])
    wait_for(lambda: stand_in.tickets)
    time.sleep(0.3)
    drain(host, worker)
    assert len(stand_in.tickets) == 1 and len(stand_in.sent("POST")) == 1


def test_a_lost_answer_is_found_again_not_created_twice(desk):
    host, worker, stand_in, client = desk
    stand_in.lose_next_answer = True
    event = claim_created()
    post(client, event)
    claim_id = event["body"]["claim_id"]
    wait_for(lambda: host.delivery(NAME).ticket_id(STORE, claim_id), timeout=15)
    drain(host, worker)
    assert len(stand_in.tickets) == 1 and len(stand_in.sent("POST")) == 1
    [lookup] = stand_in.sent("GET")
    assert lookup["query"] == {"external_id": claim_id}
    assert host.delivery(NAME).ticket_id(STORE, claim_id) == next(iter(stand_in.tickets))


def test_a_rate_limit_is_waited_out(desk):
    host, worker, stand_in, client = desk
    stand_in.rate_limit_next = 1
    post(client, claim_created())
    wait_for(lambda: stand_in.tickets, timeout=15)
    drain(host, worker)
    limited, created = stand_in.requests[0], stand_in.sent("POST")
    assert limited["status"] == 429 and len(created) == 1
    assert created[0]["time"] >= limited["time"] + 1.0 - 0.05, "sent again before Retry-After passed"
    assert host.delivery(NAME).stats()["rate_limited"] == 1


def test_a_finish_that_arrives_before_the_create_goes_out_after_it(desk):
    host, worker, stand_in, client = desk
    event = claim_created()
    post(client, approved(event["body"]["claim_id"]), event)
    wait_for(lambda: stand_in.sent("PUT"), timeout=15)
    drain(host, worker)
    assert [r["method"] for r in stand_in.requests] == ["POST", "PUT"]
    assert next(iter(stand_in.tickets.values()))["status"] == "pending"


def test_a_rejected_token_parks_the_work_until_a_valid_one_is_saved(desk):
    host, worker, stand_in, client = desk
    stand_in.tokens = {"tok_new_9876543210"}  # the helpdesk revoked the stored token
    post(client, claim_created(claim_id="claim-1"), claim_created(claim_id="claim-2"))
    wait_for(lambda: host.delivery(NAME).parked_count(STORE) == 2, timeout=15)
    url = f"/internal/integrations/{NAME}/stores/{STORE}"
    assert client.get(url, headers=ADMIN).json()["credentials"] == "invalid"
    assert stand_in.tickets == {}
    answer = client.put(url, json={"api_token": "tok_new_9876543210"}, headers=ADMIN)
    assert answer.status_code == 200 and answer.json()["credentials"] == "valid"
    wait_for(lambda: len(stand_in.tickets) == 2, timeout=15)
    drain(host, worker)
    assert host.delivery(NAME).parked_count(STORE) == 0 and len(stand_in.sent("POST")) == 2


def test_the_widget_panel_answers_its_iframe_url_and_signed_requests_only(desk):
    host, worker, stand_in, client = desk
    event = claim_created()
    post(client, event)
    wait_for(lambda: stand_in.tickets)
    provisioned = client.post(f"/internal/integrations/{NAME}/stores/{STORE}/widget", headers=ADMIN)
    assert provisioned.status_code == 200
    assert client.get(f"/widgets/{NAME}/{STORE}?email=ana@example.com").status_code == 401
    signed = host.panel(NAME).signed_request_example(STORE, "ana@example.com", "http://testserver")
    panel = client.get(signed["url"], headers={**signed["headers"], "Accept": "application/json"})
    assert panel.status_code == 200
    assert [c["claim_id"] for c in panel.json()["claims"]] == [event["body"]["claim_id"]]
    framed = provisioned.json()["iframe_url"].replace("{email}", "ana%40example.com")
    assert client.get(framed, headers={"Accept": "application/json"}).json() == panel.json()  # no header needed
    assert client.delete(f"/internal/integrations/{NAME}/stores/{STORE}", headers=ADMIN).status_code == 200
    assert client.get(framed).status_code == 401  # deleting the store's settings revoked its widget


def test_messages_become_private_notes_in_order_once_the_store_turns_the_mirror_on(desk):
    host, worker, stand_in, client = desk
    claim = claim_created()
    claim_id = claim["body"]["claim_id"]
    post(client, message_created(claim_id, "before the mirror", message_id="m0"))
    drain(host, worker)  # handled while the mirror is off: never written
    answer = client.put(f"/internal/integrations/{NAME}/stores/{STORE}", json={"mirror_messages": True}, headers=ADMIN)
    assert answer.status_code == 200 and answer.json()["mirror_messages"] is True
    later, earlier = (message_created(claim_id, text, message_id=mid, created_at=at) for text, mid, at in (
        ("second <b>", "m2", "2026-11-27T10:02:00Z"), ("first", "m1", "2026-11-27T10:01:00Z")))
    post(client, later, claim, earlier, earlier)  # the earlier message arrives last, and twice
    wait_for(lambda: len(next(iter(stand_in.tickets.values()), {}).get("notes", [])) >= 2)
    drain(host, worker)
    [ticket] = stand_in.tickets.values()
    assert [n["public"] for n in ticket["notes"]] == [False, False]
    assert ["first" in n["body"] for n in ticket["notes"]] == [True, False]
    assert "second <b>" in ticket["notes"][1]["body"]  # this API shows text as written
    assert not any("before the mirror" in n["body"] for n in ticket["notes"])


def test_a_store_without_this_helpdesk_gets_nothing(desk):
    host, worker, stand_in, client = desk
    post(client, claim_created(store_id="store_elsewhere"))
    drain(host, worker)
    assert stand_in.requests == []


def test_settings_are_behind_the_admin_token_and_show_the_token_masked(desk):
    host, worker, stand_in, client = desk
    url = f"/internal/integrations/{NAME}/stores/{STORE}"
    assert client.get(url).status_code == 401
    shown = client.get(url, headers=ADMIN).json()
    assert shown["api_token"] == "…" + TOKEN[-4:] and TOKEN not in json.dumps(shown)
    refused = client.put(url, json={"api_token": "tok_wrong"}, headers=ADMIN)
    assert refused.status_code == 422 and "rejected" in refused.json()["error"]
    assert client.get(url, headers=ADMIN).json()["api_token"] == "…" + TOKEN[-4:], "a refused token is not saved"


def test_the_note_mirror_setting_is_off_until_turned_on_and_kept_when_omitted(desk):
    host, worker, stand_in, client = desk
    url = f"/internal/integrations/{NAME}/stores/{STORE}"
    assert client.get(url, headers=ADMIN).json()["mirror_messages"] is False
    assert client.put(url, json={"mirror_messages": True}, headers=ADMIN).json()["mirror_messages"] is True
    assert client.put(url, json={"enabled": True}, headers=ADMIN).status_code == 200
    assert client.get(url, headers=ADMIN).json()["mirror_messages"] is True, "omitted keeps it"
    _, store = host.delivery(NAME).store(STORE, fresh=True)
    assert host.delivery(NAME).helpdesk.mirrors_messages(store), "the delivery engine sees it on"
    refused = client.put(url, json={"mirror_messages": "yes"}, headers=ADMIN)
    assert refused.status_code == 422 and [d["field"] for d in refused.json()["details"]] == ["mirror_messages"]
    assert client.put(url, json={"mirror_messages": False}, headers=ADMIN).json()["mirror_messages"] is False
    assert client.get(url, headers=ADMIN).json()["mirror_messages"] is False


def test_the_note_mirror_is_set_from_the_command_line(desk, monkeypatch):
    from opcore_hooks import Host

    host, worker, stand_in, client = desk
    monkeypatch.setattr(Host, "from_env", classmethod(lambda cls, **kw: host))
    monkeypatch.setenv("OPCORE_REDIS_URL", "redis://the-test-host.invalid:6379/0")  # never dialled
    load_plugins({NAME: plugin}).pm.hook.register_commands(cli=cli)

    def mirrored(*flags: str) -> bool:
        done = CliRunner().invoke(cli, ["stores", "set", NAME, STORE, *flags])
        assert done.exit_code == 0, done.output
        shown = CliRunner().invoke(cli, ["stores", "show", STORE])
        return json.loads(shown.stdout)[NAME]["mirror_messages"]

    assert mirrored("--mirror-messages") is True
    assert mirrored("--disable") is True, "a change without the flag keeps the choice"
    assert mirrored("--no-mirror-messages") is False


def test_its_settings_come_from_its_own_environment(make_host, monkeypatch):
    monkeypatch.setenv(f"OPCORE_{NAME.upper()}_API_URL", "https://desk.test")
    host = make_host({NAME: plugin})
    assert host.plugin_settings(NAME).api_url == "https://desk.test"


def test_every_hook_has_a_spec_and_its_command_joins_the_cli():
    loaded = load_plugins({NAME: plugin})
    assert set(loaded.hooks_of(NAME)) == {
        "register_settings", "register_helpdesk", "register_panel", "register_routes", "register_commands",
        "on_claim_created", "on_claim_status_changed", "on_claim_message", "widget_context",
        "validate_credentials", "store_status", "rotate_secrets",
    }
    loaded.pm.hook.register_commands(cli=cli)
    result = CliRunner().invoke(cli, ["stores", "set", NAME, "--help"])
    assert result.exit_code == 0 and "--api-token" in result.output, result.output
