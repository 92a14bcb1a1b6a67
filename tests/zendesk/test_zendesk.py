"""Zendesk: one private ticket per claim, pending once finished, paced by the account's budget.

Zendesk is the sandbox on a real socket (``plugins/zendesk/sandbox.py``); the host runs the real
plugin with a real Dramatiq worker, on fakeredis and (in CI) real Redis, and every assertion reads
what the sandbox received.
"""

from __future__ import annotations

import time
from typing import Any, Iterator

import pytest
from starlette.testclient import TestClient

from opcore_hooks.app import create_app
from opcore_hooks.testing import ADMIN_TOKEN, WEBHOOK_SECRET, approved, claim_created, drain, state_changed, wait_for
from plugins.zendesk import plugin
from plugins.zendesk.sandbox import SandboxServer, run_in_thread

STORE, SUBDOMAIN, EMAIL, TOKEN = "store_123", "acme", "agent@acme.test", "zd_token_0123456789abcdef"
GROUP = 360001
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
URL = f"/internal/integrations/zendesk/stores/{STORE}"


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxServer]:
    with run_in_thread() as srv:
        yield srv


@pytest.fixture
def sandbox(server: SandboxServer, monkeypatch) -> SandboxServer:
    """The module's sandbox, emptied, with the account ``acme`` (700 a minute, one group)."""
    server.state.reset()
    server.state.add_account(SUBDOMAIN, EMAIL, TOKEN, groups=[{"id": GROUP, "name": "Claims"}])
    monkeypatch.setenv("OPCORE_ZENDESK_API_URL", server.url + "/{subdomain}")
    monkeypatch.setenv("OPCORE_ZENDESK_TIMEOUT_SECONDS", "2")
    return server


@pytest.fixture
def zd(make_host, run_worker, sandbox) -> Iterator[tuple[Any, Any, SandboxServer, TestClient]]:
    """A host with the Zendesk plugin, the store connected through the settings API, a worker."""
    host = make_host({"zendesk": plugin})
    for actor in (host.delivery("zendesk").create_actor, host.delivery("zendesk").finish_actor):
        actor.options.update(min_backoff=50, max_backoff=200)
    client = TestClient(create_app(host))
    answer = client.put(URL, headers=ADMIN, json={"subdomain": SUBDOMAIN, "email": EMAIL, "api_token": TOKEN,
                                                  "default_group_id": GROUP})
    assert answer.status_code == 200, answer.text
    sandbox.state.requests.clear()  # the credentials check is not delivery
    worker = run_worker(host, threads=4)
    yield host, worker, sandbox, client
    client.close()


def post(client: TestClient, *events: dict[str, Any]) -> None:
    for event in events:
        answer = client.post("/webhooks/orderprotection", json=event, headers={"x-webhook-secret": WEBHOOK_SECRET})
        assert answer.status_code in (200, 202), answer.text


def writes(sandbox: SandboxServer) -> list[tuple[str, str]]:
    return [(r["method"], r["path"].split("/api/v2/")[1]) for r in sandbox.state.view_requests()
            if r["method"] != "GET"]


def settle(host, worker, predicate, timeout: float = 20.0) -> None:
    wait_for(predicate, timeout=timeout)
    drain(host, worker, timeout=timeout)


def test_a_claim_opens_one_ticket_whose_first_comment_is_private(zd):
    host, worker, sandbox, client = zd
    event = claim_created()
    post(client, event)
    settle(host, worker, lambda: sandbox.state.tickets(SUBDOMAIN))
    [ticket] = sandbox.state.tickets(SUBDOMAIN)
    [create] = [r for r in sandbox.state.view_requests() if r["method"] == "POST"]
    sent = create["body"]["ticket"]
    assert sent["comment"]["public"] is False
    assert sent["external_id"] == event["body"]["claim_id"] and "order_protection" in sent["tags"]
    assert sent["requester"] == {"name": "Ana Lima", "email": "ana@example.com"} and sent["group_id"] == GROUP
    assert sent["subject"] == "Damaged claim OP-1042 for order #1001"
    for text in ("#1001", "Wireless Mouse", "Total: 32.08 USD", "Damaged", "New",
                 "https://app.orderprotection.com/claims/view/cm6v2zdt10002j20vqs7f74hc"):
        assert text in sent["comment"]["body"], text
    assert "<" not in sent["comment"]["body"], "a Zendesk body is shown as written: no markup"
    assert str(ticket["id"]) == host.delivery("zendesk").ticket_id(STORE, event["body"]["claim_id"])
    assert writes(sandbox) == [("POST", "tickets")]  # nothing else is written


def test_an_approved_claim_goes_pending_never_solved_even_when_approved_first(zd):
    host, worker, sandbox, client = zd
    event = claim_created()
    claim_id = event["body"]["claim_id"]
    post(client, approved(claim_id), event, state_changed(claim_id, "RESOLVED"))
    settle(host, worker, lambda: any(m == "PUT" for m, _ in writes(sandbox)))
    time.sleep(0.2)
    drain(host, worker)
    [ticket] = sandbox.state.tickets(SUBDOMAIN)
    assert ticket["status"] == "pending"
    assert writes(sandbox) == [("POST", "tickets"), ("PUT", f"tickets/{ticket['id']}")]
    [update] = [r for r in sandbox.state.view_requests() if r["method"] == "PUT"]
    assert update["body"] == {"ticket": {"status": "pending"}}


def test_duplicate_events_and_redeliveries_open_one_ticket(zd):
    host, worker, sandbox, client = zd
    event = claim_created()
    post(client, event, event, dict(event, id="another-event-for-the-same-claim"))
    for _ in range(3):
        host.delivery("zendesk").create_actor.send(STORE, event["body"])
    settle(host, worker, lambda: sandbox.state.tickets(SUBDOMAIN))
    time.sleep(0.3)
    drain(host, worker)
    assert len(sandbox.state.tickets(SUBDOMAIN)) == 1
    creates = [r for r in sandbox.state.view_requests() if r["method"] == "POST"]
    assert len(creates) == 1 and creates[0]["idempotency"] == "miss", "a redelivery must not create again"


def test_a_lost_answer_is_found_again_instead_of_creating_a_second_ticket(zd):
    host, worker, sandbox, client = zd
    sandbox.state.update_config(drop_rate=1.0)  # Zendesk acts, the answer never arrives
    event = claim_created()
    post(client, event)
    wait_for(lambda: sandbox.state.tickets(SUBDOMAIN))
    sandbox.state.update_config(drop_rate=0.0)
    claim_id = event["body"]["claim_id"]
    settle(host, worker, lambda: host.delivery("zendesk").ticket_id(STORE, claim_id), timeout=30)
    [ticket] = sandbox.state.tickets(SUBDOMAIN)
    assert host.delivery("zendesk").ticket_id(STORE, claim_id) == str(ticket["id"])
    lookups = [r for r in sandbox.state.view_requests() if r["method"] == "GET" and r["query"]]
    assert lookups and lookups[0]["query"] == {"external_id": claim_id}


def test_a_repeated_create_with_the_same_key_gets_the_first_ticket_back(zd):
    # After Zendesk's lookup misses (its index lags), a second create is safe: same key, same body.
    host, worker, sandbox, client = zd
    from opcore_hooks import ClaimCreated
    from plugins.zendesk.tickets import build_ticket, idempotency_key

    claim = ClaimCreated.model_validate(claim_created()["body"])
    body, key = build_ticket(claim, host.claim_url(claim.claim_id), group_id=GROUP), idempotency_key(STORE, claim.claim_id)
    assert body == build_ticket(claim, host.claim_url(claim.claim_id), group_id=GROUP)
    delivery = host.delivery("zendesk")
    _, config = delivery.store(STORE, fresh=True)
    zendesk = delivery.helpdesk
    first = delivery.request(SUBDOMAIN, lambda call: zendesk.client(call, config).create_ticket(body, key), max_wait=1)
    again = delivery.request(SUBDOMAIN, lambda call: zendesk.client(call, config).create_ticket(body, key), max_wait=1)
    assert first == again and len(sandbox.state.tickets(SUBDOMAIN)) == 1


def test_the_account_budget_is_followed_and_its_429s_honoured(zd, run_worker):
    host, worker, sandbox, client = zd
    # One thread, so that no request is already in flight when a 429 arrives; the block itself is
    # shared through Redis, which tests/test_pacing.py checks across pacers.
    worker.stop()
    worker = run_worker(host, threads=1)
    # A 4-request budget per 2 s, half of it spent by the merchant's other apps.
    sandbox.state.update_config(window=2.0, other_apps=0.5)
    sandbox.state.accounts[SUBDOMAIN].plan = 4
    delivery = host.delivery("zendesk")
    delivery.pacer.window = 2.0
    post(client, *[claim_created(claim_id=f"claim-{i}") for i in range(6)])
    settle(host, worker, lambda: len(sandbox.state.tickets(SUBDOMAIN)) == 6, timeout=40)
    log = sandbox.state.view_requests()
    limited = [r for r in log if r["status"] == 429]
    for hit in limited:
        early = [r for r in log if hit["time"] < r["time"] < hit["time"] + hit["retry_after"] - 0.05]
        assert early == [], "a request went out before Retry-After passed"
    assert len(limited) <= 2, f"pacing should follow the budget the answers advertise: {len(limited)} limited"
    assert len(sandbox.state.tickets(SUBDOMAIN)) == 6


def test_rejected_credentials_park_the_work_until_valid_ones_are_saved(zd):
    host, worker, sandbox, client = zd
    sandbox.state.accounts[SUBDOMAIN].token = "zd_token_rotated_by_the_merchant"
    post(client, claim_created(claim_id="claim-1"), claim_created(claim_id="claim-2"))
    wait_for(lambda: host.delivery("zendesk").parked_count(STORE) == 2, timeout=15)
    assert client.get(URL, headers=ADMIN).json()["credentials"] == "invalid"
    answer = client.put(URL, headers=ADMIN, json={"api_token": "zd_token_rotated_by_the_merchant"})
    assert answer.status_code == 200, answer.text
    settle(host, worker, lambda: len(sandbox.state.tickets(SUBDOMAIN)) == 2)
    assert host.delivery("zendesk").parked_count(STORE) == 0


def test_settings_are_checked_masked_and_refused_whole(make_host, sandbox):
    host = make_host({"zendesk": plugin})
    with TestClient(create_app(host)) as client:
        assert client.get(URL, headers=ADMIN).status_code == 404
        bad = client.put(URL, headers=ADMIN, json={"subdomain": "acme.evil.com/x", "email": "no", "api_token": "a b"})
        assert bad.status_code == 422
        assert {d["field"] for d in bad.json()["details"]} == {"subdomain", "email", "api_token"}
        wrong = client.put(URL, headers=ADMIN, json={"subdomain": SUBDOMAIN, "email": EMAIL, "api_token": "zd_wrong_token_000"})
        assert wrong.status_code == 422 and "rejected" in wrong.json()["error"]
        unknown_group = client.put(URL, headers=ADMIN, json={"subdomain": SUBDOMAIN, "email": EMAIL, "api_token": TOKEN,
                                                             "default_group_id": 42})
        assert unknown_group.status_code == 422 and "Claims (360001)" in unknown_group.json()["error"]
        assert client.get(URL, headers=ADMIN).status_code == 404, "a refused change saves nothing"
        saved = client.put(URL, headers=ADMIN, json={"subdomain": "ACME", "email": EMAIL, "api_token": TOKEN})
        assert saved.status_code == 200
        shown = client.get(URL, headers=ADMIN).json()
        assert shown["subdomain"] == "acme" and shown["api_token"] == "…" + TOKEN[-4:] and shown["credentials"] == "valid"
        stored = b"".join(v for v in host.redis.hvals(host.key("zendesk", "store", STORE)))
        assert b"api_token" in b"".join(host.redis.hkeys(host.key("zendesk", "store", STORE)))
        assert TOKEN.encode() not in stored, "the token is sealed at rest"
        assert client.get(URL + "/groups", headers=ADMIN).json() == {"groups": [{"id": GROUP, "name": "Claims"}]}
        assert client.delete(URL, headers=ADMIN).json()["api_token"] is None


def test_richpanel_and_zendesk_stores_are_served_side_by_side(make_host, run_worker, sandbox, monkeypatch):
    from plugins.richpanel import plugin as richpanel
    from plugins.richpanel import session
    from plugins.richpanel.sandbox import SandboxConfig, create_sandbox
    from plugins.richpanel.stores import SettingsUpdate, update

    rp_app = create_sandbox(SandboxConfig(quota=None))
    rp_app.state.sandbox.add_account("rp_side_by_side_key_0001")
    monkeypatch.setenv("OPCORE_RICHPANEL_API_URL", "http://testserver")
    host = make_host({"richpanel": richpanel, "zendesk": plugin})
    with TestClient(rp_app) as rp_http, TestClient(create_app(host)) as client:
        session.set_http(host, rp_http)
        update(host, "store_rp", SettingsUpdate(api_key="rp_side_by_side_key_0001"))
        answer = client.put("/internal/integrations/zendesk/stores/store_zd", headers=ADMIN,
                            json={"subdomain": SUBDOMAIN, "email": EMAIL, "api_token": TOKEN})
        assert answer.status_code == 200
        worker = run_worker(host)
        post(client, claim_created(store_id="store_rp", claim_id="claim-rp"),
             claim_created(store_id="store_zd", claim_id="claim-zd"))
        settle(host, worker, lambda: sandbox.state.tickets(SUBDOMAIN) and rp_app.state.sandbox.tickets(
            "rp_side_by_side_key_0001"))
        time.sleep(0.2)
        drain(host, worker)
        [zd_ticket] = sandbox.state.tickets(SUBDOMAIN)
        [rp_ticket] = rp_app.state.sandbox.tickets("rp_side_by_side_key_0001")
    assert zd_ticket["external_id"] == "claim-zd"
    assert "/claims/view/claim-rp" in rp_ticket["comments"][0]["body"]
    assert host.delivery("richpanel").ticket_id("store_zd", "claim-zd") is None
    assert host.delivery("zendesk").ticket_id("store_rp", "claim-rp") is None


def test_a_store_that_adds_zendesk_gets_its_next_claims_there_though_earlier_ones_were_skipped(
        make_host, run_worker, sandbox, monkeypatch):
    # Each dispatch reads the settings of a helpdesk the store did not use, riding on the
    # dispatch's first command; what it read must never outlive that dispatch.
    from plugins.richpanel import plugin as richpanel
    from plugins.richpanel import session
    from plugins.richpanel.sandbox import SandboxConfig, create_sandbox
    from plugins.richpanel.stores import SettingsUpdate, update

    rp_key = "rp_adds_zendesk_key_0001"
    rp_app = create_sandbox(SandboxConfig(quota=None))
    rp_app.state.sandbox.add_account(rp_key)
    monkeypatch.setenv("OPCORE_RICHPANEL_API_URL", "http://testserver")
    host = make_host({"richpanel": richpanel, "zendesk": plugin})
    with TestClient(rp_app) as rp_http, TestClient(create_app(host)) as client:
        session.set_http(host, rp_http)
        update(host, STORE, SettingsUpdate(api_key=rp_key))
        worker = run_worker(host)
        post(client, claim_created(claim_id="before-zendesk"))
        settle(host, worker, lambda: rp_app.state.sandbox.tickets(rp_key))
        assert sandbox.state.tickets(SUBDOMAIN) == []
        answer = client.put(URL, headers=ADMIN, json={"subdomain": SUBDOMAIN, "email": EMAIL, "api_token": TOKEN})
        assert answer.status_code == 200
        post(client, claim_created(claim_id="after-zendesk"))
        settle(host, worker, lambda: sandbox.state.tickets(SUBDOMAIN) and len(rp_app.state.sandbox.tickets(rp_key)) == 2)
        drain(host, worker)
    assert [t["external_id"] for t in sandbox.state.tickets(SUBDOMAIN)] == ["after-zendesk"]


def test_operators_connect_a_store_from_the_command_line(make_host, sandbox, monkeypatch):
    import json

    from click.testing import CliRunner

    from opcore_hooks.cli import cli
    from opcore_hooks.host import Host
    from plugins.zendesk import commands

    host = make_host({"zendesk": plugin})
    monkeypatch.setattr(Host, "from_env", classmethod(lambda cls, **kw: host))
    monkeypatch.setenv("OPCORE_REDIS_URL", "redis://the-test-host.invalid:6379/0")  # never dialled: from_env is the host
    commands.register(cli)
    run = CliRunner().invoke
    done = run(cli, ["stores", "set", "zendesk", STORE, "--subdomain", SUBDOMAIN, "--email", EMAIL,
                     "--api-token", "-", "--group", str(GROUP)], input=TOKEN + "\n")
    assert done.exit_code == 0, done.output
    assert TOKEN not in done.output
    assert json.loads(done.stdout)["zendesk"]["default_group_id"] == GROUP
    assert run(cli, ["stores", "groups", STORE]).stdout.splitlines() == [f"{GROUP}\tClaims"]
    refused = run(cli, ["stores", "set", "zendesk", STORE, "--group", "42"])
    assert refused.exit_code == 2 and "not a group of this account" in refused.stderr
    mirrored = run(cli, ["stores", "set", "zendesk", STORE, "--mirror-messages"])
    assert mirrored.exit_code == 0, mirrored.output
    assert json.loads(run(cli, ["stores", "show", STORE]).stdout)["zendesk"]["mirror_messages"] is True
    assert run(cli, ["stores", "set", "zendesk", STORE, "--disable"]).exit_code == 0
    assert json.loads(run(cli, ["stores", "show", STORE]).stdout)["zendesk"]["mirror_messages"] is True
    assert run(cli, ["stores", "set", "zendesk", STORE, "--no-mirror-messages"]).exit_code == 0
    assert json.loads(run(cli, ["stores", "show", STORE]).stdout)["zendesk"]["mirror_messages"] is False


def test_a_group_changed_between_a_lost_answer_and_its_retry_still_gives_one_ticket(zd):
    # The retry's body differs (another group), so Zendesk refuses the key with a 400: the ticket
    # it already made is looked up instead of the claim becoming a dead letter.
    host, worker, sandbox, client = zd
    sandbox.state.update_config(drop_rate=1.0)
    event = claim_created()
    post(client, event)
    wait_for(lambda: sandbox.state.tickets(SUBDOMAIN))
    sandbox.state.accounts[SUBDOMAIN].groups.append({"id": 360002, "name": "Escalations"})
    sandbox.state.update_config(drop_rate=0.0)
    assert client.put(URL, headers=ADMIN, json={"default_group_id": 360002}).status_code == 200
    claim_id = event["body"]["claim_id"]
    settle(host, worker, lambda: host.delivery("zendesk").ticket_id(STORE, claim_id), timeout=30)
    assert len(sandbox.state.tickets(SUBDOMAIN)) == 1 and host.dead_letters.count() == 0


def test_the_contracts_example_body_is_accepted_and_the_mirror_is_turned_on_and_off(make_host, sandbox):
    host = make_host({"zendesk": plugin})
    with TestClient(create_app(host)) as client:
        body = {"subdomain": SUBDOMAIN, "email": EMAIL, "api_token": TOKEN, "default_group_id": None,
                "enabled": True, "mirror_messages": False}
        saved = client.put(URL, headers=ADMIN, json=body)
        assert saved.status_code == 200 and saved.json()["mirror_messages"] is False
        on = client.put(URL, headers=ADMIN, json={"mirror_messages": True})  # no credentials sent again
        assert on.status_code == 200, on.text
        assert client.get(URL, headers=ADMIN).json()["mirror_messages"] is True
        _, store = host.delivery("zendesk").store(STORE, fresh=True)
        assert host.delivery("zendesk").helpdesk.mirrors_messages(store), "the delivery engine sees it on"
        assert client.put(URL, headers=ADMIN, json={"default_group_id": GROUP}).status_code == 200
        assert client.put(URL, headers=ADMIN, json={"mirror_messages": None}).status_code == 200
        shown = client.get(URL, headers=ADMIN).json()
        assert (shown["mirror_messages"], shown["default_group_id"]) == (True, GROUP), "omitted or null keeps it"
        for bad in ("yes", 1):
            refused = client.put(URL, headers=ADMIN, json={"mirror_messages": bad, "enabled": False})
            assert refused.status_code == 422
            assert [d["field"] for d in refused.json()["details"]] == ["mirror_messages"]
        shown = client.get(URL, headers=ADMIN).json()
        assert (shown["mirror_messages"], shown["enabled"]) == (True, True), "a refused change saves nothing"
        off = client.put(URL, headers=ADMIN, json={"mirror_messages": False})
        assert off.status_code == 200 and client.get(URL, headers=ADMIN).json()["mirror_messages"] is False


def test_the_mirror_of_a_disabled_store_is_switched_without_asking_zendesk(make_host, sandbox):
    host = make_host({"zendesk": plugin})
    with TestClient(create_app(host)) as client:
        client.put(URL, headers=ADMIN, json={"subdomain": SUBDOMAIN, "email": EMAIL, "api_token": TOKEN,
                                             "enabled": False})
        sandbox.state.requests.clear()
        assert client.put(URL, headers=ADMIN, json={"mirror_messages": True}).status_code == 200
        assert sandbox.state.view_requests() == [], "the mirror alone asks Zendesk nothing"
        assert client.get(URL, headers=ADMIN).json()["mirror_messages"] is True


def test_the_zendesk_panel_opens_in_a_plain_iframe_until_the_store_is_deleted(zd):
    host, worker, sandbox, client = zd
    post(client, claim_created())
    made = client.post(f"{URL}/widget", headers=ADMIN).json()
    url = made["iframe_url"].replace("{email}", "ana%40example.com").removeprefix("http://testserver")
    assert url.startswith(f"/widgets/zendesk/{STORE}?token=")
    csp = client.get(url).headers["content-security-policy"]  # an app's page, inside Zendesk, frames it
    assert csp.endswith("frame-ancestors https://*.zendesk.com https://*.zdusercontent.com")
    wait_for(lambda: client.get(url, headers={"Accept": "application/json"}).json()["claims"])
    page = client.get(url, headers={"Accept": "application/json"})
    assert page.status_code == 200 and page.json()["claims"][0]["claim_number"] == "OP-1042"
    assert client.delete(URL, headers=ADMIN).status_code == 200
    assert client.get(url).status_code == 401


def test_with_the_mirror_on_messages_become_private_plain_text_notes_in_order_after_the_ticket(zd):
    from opcore_hooks.testing import message_created

    host, worker, sandbox, client = zd
    assert client.put(URL, headers=ADMIN, json={"mirror_messages": True}).json()["mirror_messages"] is True
    sandbox.state.requests.clear()
    claim = claim_created()
    cid = claim["body"]["claim_id"]
    early = message_created(cid, "<b>first</b>", message_id="m1", created_at="2026-11-27T10:01:00Z")
    late = message_created(cid, "second", message_id="m2", created_at="2026-11-27T10:02:00Z")
    post(client, late, claim, early, early)  # before the claim, out of order, one twice

    def notes() -> list[dict[str, Any]]:
        return [n for a in sandbox.state.view_tickets()["accounts"] for t in a["tickets"] for n in t["notes"]]

    settle(host, worker, lambda: len(notes()) >= 2)
    drain(host, worker)
    assert [n["public"] for n in notes()] == [False, False]
    assert "<b>first</b>" in notes()[0]["body"] and "second" in notes()[1]["body"]  # text, shown as written
    assert writes(sandbox) == [("POST", "tickets"), ("PUT", f"tickets/{sandbox.state.tickets(SUBDOMAIN)[0]['id']}"),
                               ("PUT", f"tickets/{sandbox.state.tickets(SUBDOMAIN)[0]['id']}")]
    assert sandbox.state.view_tickets()["accounts"][0]["writes_to_unknown_tickets"] == 0


@pytest.mark.parametrize("subdomain", ["acme\n.zendesk.com", "acme\n\n.zendesk.com"])
def test_a_subdomain_with_a_line_break_is_a_422_naming_it_not_a_500(make_host, sandbox, subdomain):
    """Whitespace around the value is trimmed; a line break left inside reached the regex, whose
    ``$`` matched before it, and then httpx (InvalidURL: a 500)."""
    host = make_host({"zendesk": plugin})
    with TestClient(create_app(host)) as client:
        answer = client.put(URL, headers=ADMIN, json={"subdomain": subdomain, "email": EMAIL, "api_token": TOKEN})
    assert answer.status_code == 422, answer.text
    assert [d["field"] for d in answer.json()["details"]] == ["subdomain"]
