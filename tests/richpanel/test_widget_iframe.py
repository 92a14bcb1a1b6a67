"""The panel in a plain iframe, its revocation, and stores that cannot reach each other's customers.

A browser iframe sends no custom header, so the provisioned ``iframe_url`` carries the store's
token in its query, with ``{email}`` for the helpdesk to fill in. These tests open it the way
a helpdesk does: replace ``{email}``, GET it with no header at all.
"""

from __future__ import annotations

import logging
import time
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from click.testing import CliRunner
from starlette.endpoints import HTTPEndpoint
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from opcore_hooks import Panel, Routes, hookimpl, keys
from opcore_hooks.app import create_app
from opcore_hooks.events import ClaimCreated
from opcore_hooks.panel import GRACE_SECONDS
from opcore_hooks.panel import routes as panel_routes
from opcore_hooks.testing import ADMIN_TOKEN, WEBHOOK_SECRET, claim_created, feed

STORE = "shop"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
JSON = {"Accept": "application/json"}
WIDGET = "/internal/integrations/richpanel/stores/{}/widget"


def provision(client, store: str = STORE, **body) -> dict:
    answer = client.post(WIDGET.format(store), headers=ADMIN, json=body or None)
    assert answer.status_code == 200, answer.text
    return answer.json()


def framed(client, iframe_url: str, email: str = "ana@example.com", **headers):
    """What the helpdesk's iframe does: put the percent-encoded email in, GET with no custom header."""
    url = iframe_url.replace("{email}", quote(email, safe=""))
    return client.get(url.removeprefix("http://testserver"), headers=headers)


def test_the_iframe_url_shows_the_panel_to_a_plain_get(client, host):
    feed(host, claim_created(store_id=STORE, claim_id="c1"))
    made = provision(client)
    url = made["iframe_url"]
    assert url.startswith(f"http://testserver/widgets/richpanel/{STORE}?") and url.endswith("email={email}")
    assert made["signing_secret"] not in url  # the URL holds a token derived from it, never the secret
    page = framed(client, url)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "Ana" in page.text and "OP-1042" in page.text
    assert page.headers["referrer-policy"] == "no-referrer"
    assert '<meta name="referrer" content="no-referrer">' in page.text
    assert page.headers["cache-control"] == "no-store"
    body = framed(client, url, **JSON).json()
    assert body["store_id"] == STORE and [c["claim_id"] for c in body["claims"]] == ["c1"]
    assert framed(client, url, email="Ana@Example.com", **JSON).json() == body  # matched case-insensitively


def test_a_token_opens_its_own_store_only(client, host):
    feed(host, claim_created(store_id="other", claim_id="c9"))
    mine, theirs = provision(client)["iframe_url"], provision(client, "other")["iframe_url"]
    token = parse_qs(urlsplit(mine).query)["token"][0]
    stolen = theirs.replace(parse_qs(urlsplit(theirs).query)["token"][0], token)
    answer = framed(client, stolen)
    assert answer.status_code == 401 and "not valid for this store" in answer.json()["error"]
    assert framed(client, theirs).status_code == 200


@pytest.mark.parametrize("query", ["token=opi_guess&email=ana%40example.com",
                                   "token=&email=ana%40example.com",
                                   "token={t}&token={t}&email=ana%40example.com"])
def test_a_wrong_or_doubled_token_is_401(client, query):
    token = parse_qs(urlsplit(provision(client)["iframe_url"]).query)["token"][0]
    answer = client.get(f"/widgets/richpanel/{STORE}?" + query.format(t=token))
    assert answer.status_code == 401


def test_rotation_ends_the_old_iframe_url_after_the_grace_period(client, monkeypatch):
    old = provision(client)["iframe_url"]
    new = provision(client)["iframe_url"]
    assert new != old
    assert framed(client, old).status_code == 200 and framed(client, new).status_code == 200
    later = time.time() + GRACE_SECONDS + 60
    monkeypatch.setattr(panel_routes.time, "time", lambda: later)
    assert framed(client, old).status_code == 401
    assert framed(client, new).status_code == 200


def test_revoke_previous_ends_the_old_url_and_secret_at_once(client):
    first = provision(client)
    second = provision(client, revoke_previous=True)
    assert second["previous_secret_valid_until"] is None
    assert framed(client, first["iframe_url"]).status_code == 401
    assert framed(client, second["iframe_url"]).status_code == 200
    example = client.app.state.host.panel("richpanel").signed_request_example(STORE, "ana@example.com", "")
    assert client.get(example["url"], headers=example["headers"]).status_code == 200


@pytest.mark.parametrize("body", [b'{"revoke_previous": "maybe"}', b'{"revoke": true}', b"not json"])
def test_a_bad_provisioning_body_is_refused_and_nothing_rotates(client, body):
    first = provision(client)
    answer = client.post(WIDGET.format(STORE), headers={**ADMIN, "content-type": "application/json"}, content=body)
    assert answer.status_code in (400, 422) and "revoke_previous" in answer.json()["error"]
    assert framed(client, first["iframe_url"]).status_code == 200


def test_deleting_the_widget_ends_every_way_in_at_once(client, host):
    made = provision(client)
    signer = host.panel("richpanel")
    example = signer.signed_request_example(STORE, "ana@example.com", "")
    answer = client.delete(WIDGET.format(STORE), headers=ADMIN)
    assert answer.status_code == 200 and answer.json() == {"store_id": STORE, "revoked": True}
    assert framed(client, made["iframe_url"]).status_code == 401
    assert client.get(example["url"], headers=example["headers"]).status_code == 401
    assert client.delete(WIDGET.format(STORE), headers=ADMIN).json()["revoked"] is False
    assert client.delete(WIDGET.format(STORE)).status_code == 401  # behind the admin token
    assert framed(client, provision(client)["iframe_url"]).status_code == 200  # provisioning starts afresh


def test_deleting_the_store_settings_revokes_its_widget(client):
    # Finding 2: after the store's DELETE a signed request still answered 200 with customer data.
    made = provision(client)
    answer = client.delete("/internal/integrations/richpanel/stores/shop", headers=ADMIN)
    assert answer.status_code == 404  # Richpanel was never configured for it; the widget goes anyway
    assert framed(client, made["iframe_url"]).status_code == 401


def test_the_iframe_credential_never_reaches_a_log(client, host, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    url = provision(client)["iframe_url"]
    token = parse_qs(urlsplit(url).query)["token"][0]
    framed(client, url)
    framed(client, url.replace(token, token[:-2] + "xx"))
    ours = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("httpx"))  # the test's client
    assert token[:20] not in ours
    # `opcore serve` runs uvicorn without its access log, which prints query strings.
    import uvicorn

    from opcore_hooks import cli

    seen = {}
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: seen.update(vars(self.config)))
    for name, value in {"OPCORE_WEBHOOK_SECRET": WEBHOOK_SECRET, "OPCORE_ADMIN_TOKEN": ADMIN_TOKEN,
                        "OPCORE_MASTER_KEY": host.settings.master_key.get_secret_value()}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("OPCORE_REDIS_URL", raising=False)
    result = CliRunner().invoke(cli.cli, ["serve"])
    assert result.exit_code == 0, result.output
    assert seen["access_log"] is False


# -- finding 1: a ':' in an id or an email must not name another store's keys ------------------

def test_a_colon_in_a_store_id_is_refused_at_the_ingress_and_the_widget(client):
    event = claim_created(store_id="shop:eu")
    answer = client.post("/webhooks/orderprotection", json=event, headers={"x-webhook-secret": WEBHOOK_SECRET})
    assert answer.status_code == 422 and "store_id" in answer.text
    assert client.get("/widgets/richpanel/shop%3Aeu?email=ana%40example.com").status_code == 422


def test_an_email_holding_a_colon_neither_reads_nor_writes_another_stores_customer(client, host):
    # Before the id rule, a store 'shop:eu' could exist; keep one as such a deployment would hold it.
    legacy = ClaimCreated.model_validate(claim_created(store_id="shop", claim_id="eu1")["body"])
    legacy = legacy.model_copy(update={"store_id": "shop:eu"})
    host.readmodel.record_claim(legacy, None)
    host.redis.execute_command("PING")  # the deferred write is flushed with the next command
    before = host.readmodel.customer_context("shop:eu", "ana@example.com").model_dump(mode="json")
    assert [c["claim_id"] for c in before["claims"]] == ["eu1"]

    # Read: shop's own iframe URL, with the email that once spelled shop:eu's customer keys.
    url = provision(client)["iframe_url"]
    read = framed(client, url, email="eu:ana@example.com", **JSON).json()
    assert read["claims"] == [] and read["orders"] == [] and read["customer"]["phone"] is None

    # Write: a claim for shop whose email is that same spelling.
    event = claim_created(store_id="shop", claim_id="c2", customer={"email": "eu:ana@example.com",
                                                                     "first_name": "Eve", "phone": "+1000"})
    answer = client.post("/webhooks/orderprotection", json=event, headers={"x-webhook-secret": WEBHOOK_SECRET})
    assert answer.status_code == 202
    feed(host, event)
    assert host.readmodel.customer_context("shop:eu", "ana@example.com").model_dump(mode="json") == before
    mine = framed(client, url, email="eu:ana@example.com", **JSON).json()
    assert [c["claim_id"] for c in mine["claims"]] == ["c2"] and mine["customer"]["first_name"] == "Eve"


def test_key_parts_cannot_run_into_each_other():
    assert keys.join("ns", "a:b", "c") != keys.join("ns", "a", "b:c")
    assert keys.join("ns", "a%3Ab") != keys.join("ns", "a:b")
    assert keys.join("ns", "store_123", "c-1.x") == "ns:store_123:c-1.x"  # valid ids keep their keys
    assert keys.join("ns", "ana+tag@example.com") == "ns:ana+tag@example.com"  # so do ordinary emails
    assert keys.join("ns", "josé@example.com") == "ns:josé@example.com"  # non-ASCII ones too (review)
    assert keys.part("a%3A:b") == "a%253A%3Ab"


class ClassBasedPlugin:
    """A helpdesk plugin whose settings route is one class serving GET and DELETE."""

    @hookimpl
    def register_panel(self, host):
        return Panel(frame_ancestors="'self'")

    @hookimpl
    def register_routes(self, host):
        class StoreSettings(HTTPEndpoint):
            async def get(self, request):
                return JSONResponse({"store_id": request.path_params["store_id"]})

            async def delete(self, request):
                return JSONResponse({"deleted": request.path_params["store_id"]})

        return Routes(internal=[Route("/stores/{store_id}", StoreSettings)])


def test_any_plugins_store_delete_revokes_its_widget_and_leaves_its_other_methods(make_host):
    # Review: a route wrapper missed class-based endpoints and dropped a route's other methods.
    host = make_host({"acme": ClassBasedPlugin()})
    with TestClient(create_app(host)) as client:
        made = client.post("/internal/integrations/acme/stores/shop/widget", headers=ADMIN).json()
        assert framed(client, made["iframe_url"]).status_code == 200
        assert client.get("/internal/integrations/acme/stores/shop", headers=ADMIN).json() == {"store_id": "shop"}
        assert client.delete("/internal/integrations/acme/stores/shop", headers=ADMIN).json() == {"deleted": "shop"}
        assert framed(client, made["iframe_url"]).status_code == 401
        assert client.get("/internal/integrations/acme/stores/shop", headers=ADMIN).status_code == 200


@pytest.mark.parametrize("value", ["shop\n", ".", ".."])
def test_ids_that_no_url_or_log_line_can_carry_are_refused(value):
    from opcore_hooks.ids import id_problem

    assert id_problem("store_id", value) is not None
    with pytest.raises(ValueError):
        ClaimCreated.model_validate({**claim_created()["body"], "store_id": value})
