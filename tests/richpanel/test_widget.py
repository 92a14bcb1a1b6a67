"""The Richpanel widget: signed access per store, exact JSON, escaped HTML, strict CSP, rotation."""

from __future__ import annotations

import html
import re
import time
from urllib.parse import quote

import pytest
from pydantic import SecretStr
from starlette.testclient import TestClient

from opcore_hooks.app import create_app
from opcore_hooks.config import ConfigError
from opcore_hooks.panel import GRACE_SECONDS
from opcore_hooks.panel import routes as panel_routes
from opcore_hooks.signing import sign, sign_all
from opcore_hooks.testing import ADMIN_TOKEN, approved, claim_created, feed
from plugins.richpanel import plugin, widget

STORE = "store_123"
PATH = f"/widgets/richpanel/{STORE}"
QUERY = "email=ana%40example.com"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
JSON = {"Accept": "application/json"}
CSP = ("default-src 'none'; style-src 'self'; base-uri 'none'; form-action 'none'; "
       "frame-ancestors https://*.richpanel.com https://richpanel.com")


def provision(client, store: str = STORE) -> dict:
    answer = client.post(f"/internal/integrations/richpanel/stores/{store}/widget", headers=ADMIN)
    assert answer.status_code == 200, answer.text
    return answer.json()


def get(client, secret: str, path: str = PATH, query: str = QUERY, t: int | None = None, **headers):
    t = int(time.time()) if t is None else t
    target = f"{path}?{query}" if query else path
    return client.get(target, headers={"X-OP-Signature": sign(secret, target, t), **headers})


def test_provisioning_needs_the_admin_token_and_answers_url_and_secret(client, host):
    assert client.post(f"/internal/integrations/richpanel/stores/{STORE}/widget").status_code == 401
    answer = provision(client)
    assert answer["widget_url"] == f"http://testserver{PATH}"
    assert answer["signing_secret"].startswith("opw_") and len(answer["signing_secret"]) > 40
    assert answer["previous_secret_valid_until"] is None
    stored = b"".join(v for v in host.redis.hvals(host.key("richpanel", "widget", STORE)))
    assert answer["signing_secret"].encode() not in stored  # sealed, never plaintext in Redis


def test_a_signed_request_shows_that_store_and_customers_orders_and_claims(client, host):
    feed(host,
         claim_created(claim_id="c1", claim_number="OP-1", created_at="2026-11-20T10:00:00Z"),
         claim_created(claim_id="c2", claim_number="OP-2", created_at="2026-11-22T10:00:00Z",
                       claim_type="MISSING_ITEM",
                       order={"order_number": "#1002", "placed_at": "2026-11-21T08:00:00Z", "currency": "EUR",
                              "total": "12.50", "line_items": [{"item_name": "Cable", "quantity": 3}]}),
         approved("c1"),
         claim_created(claim_id="other-store", store_id="store_999"),
         claim_created(claim_id="other-customer", customer={"email": "bob@example.com"}))
    secret = provision(client)["signing_secret"]
    answer = get(client, secret, query="email=ANA%40Example.com", **JSON)
    assert answer.status_code == 200
    assert answer.json() == {
        "store_id": STORE,
        "customer": {"email": "ana@example.com", "first_name": "Ana", "last_name": "Lima", "phone": "+15551230000"},
        "orders": [
            {"order_number": "#1002", "placed_at": "2026-11-21T08:00:00Z", "currency": "EUR", "total": "12.50",
             "items": [{"item_name": "Cable", "quantity": 3}]},
            {"order_number": "#1001", "placed_at": "2026-11-20T08:00:00Z", "currency": "USD", "total": "32.08",
             "items": [{"item_name": "Wireless Mouse", "quantity": 1}]},
        ],
        "claims": [
            {"claim_id": "c2", "claim_number": "OP-2", "claim_type": "MISSING_ITEM", "claim_state": "NEW",
             "order_number": "#1002", "created_at": "2026-11-22T10:00:00Z",
             "claim_url": "https://app.orderprotection.com/claims/view/c2"},
            {"claim_id": "c1", "claim_number": "OP-1", "claim_type": "DAMAGED", "claim_state": "APPROVED",
             "order_number": "#1001", "created_at": "2026-11-20T10:00:00Z",
             "claim_url": "https://app.orderprotection.com/claims/view/c1"},
        ],
    }
    page = get(client, secret, query="email=ANA%40Example.com")
    assert page.headers["content-type"].startswith("text/html")
    assert page.text.index("OP-2") < page.text.index("OP-1")
    assert 'class="badge tone-green">Approved<' in page.text
    link = 'href="https://app.orderprotection.com/claims/view/c1" target="_blank" rel="noopener noreferrer"'
    assert link in page.text
    assert "3 ×</span> Cable" in page.text and "12.50 EUR" in page.text


def test_only_recent_orders_but_every_claim_is_shown(client, host):
    feed(host, *[claim_created(claim_id=f"c{n}", created_at=f"2026-10-{n:02d}T00:00:00Z",
                               order={"order_number": f"#{n}", "placed_at": f"2026-09-{n:02d}T00:00:00Z"})
                 for n in range(1, 26)])
    body = get(client, provision(client)["signing_secret"], **JSON).json()
    assert len(body["claims"]) == 25
    assert [o["order_number"] for o in body["orders"]] == [f"#{n}" for n in range(25, 25 - widget.RECENT_ORDERS, -1)]


def test_an_unknown_customer_gets_a_clear_empty_state(client):
    secret = provision(client)
    page = get(client, secret["signing_secret"], query="email=nobody%40example.com")
    assert page.status_code == 200
    assert "Nothing here yet" in page.text and "nobody@example.com" in page.text
    assert get(client, secret["signing_secret"], query="email=nobody%40example.com", **JSON).json() == {
        "store_id": STORE, "customer": {"email": "nobody@example.com", "first_name": None, "last_name": None,
                                        "phone": None}, "orders": [], "claims": []}


def test_the_email_parameter_is_required(client):
    secret = provision(client)["signing_secret"]
    for query in ("", "email=", "name=ana"):
        answer = get(client, secret, query=query)
        assert answer.status_code == 400
        assert "email" in answer.json()["error"]


@pytest.mark.parametrize("case", ["unsigned", "malformed", "expired_past", "expired_future", "future_skew",
                                  "other_query",
                                  "other_store", "wrong_secret", "other_path_spelling"])
def test_bad_signatures_are_refused_with_401(client, case):
    secret = provision(client)["signing_secret"]
    other_secret = provision(client, "store_999")["signing_secret"]
    now = int(time.time())
    target = f"{PATH}?{QUERY}"
    header = {
        "unsigned": None,
        "malformed": f"t={now},v1=nothex",
        "expired_past": sign(secret, target, now - 301),
        "expired_future": sign(secret, target, now + 301),
        "future_skew": sign(secret, target, now + 60),  # finding 7: good for 360 s if accepted
        "other_query": sign(secret, f"{PATH}?email=bob%40example.com", now),
        "other_store": sign(other_secret, target, now),
        "wrong_secret": sign("opw_guess", target, now),
        "other_path_spelling": sign(secret, f"/widgets/richpanel/store%5F123?{QUERY}", now),
    }[case]
    answer = client.get(target, headers={"X-OP-Signature": header} if header else {})
    assert answer.status_code == 401
    assert "X-OP-Signature" in answer.json()["error"] or "iframe_url" in answer.json()["error"]
    assert secret not in answer.text
    assert answer.headers["content-security-policy"] == CSP


def test_the_other_stores_secret_cannot_read_this_store_even_signed_for_this_path(client):
    provision(client)
    other_secret = provision(client, "store_999")["signing_secret"]
    assert get(client, other_secret).status_code == 401
    assert get(client, other_secret, path="/widgets/richpanel/store_999").status_code == 200


def test_an_unprovisioned_store_answers_exactly_as_a_wrong_credential(client):
    # Finding 3: 404 for unknown stores and 401 for provisioned ones told which stores exist.
    provision(client)
    never = "/widgets/richpanel/store_never"
    for request in (lambda path: get(client, "opw_whatever", path=path),
                    lambda path: client.get(f"{path}?{QUERY}"),
                    lambda path: client.get(f"{path}?token=opi_guess&{QUERY}")):
        known, unknown = request(PATH), request(never)
        assert (known.status_code, known.json()) == (unknown.status_code, unknown.json())
        assert unknown.status_code == 401
        assert dict(known.headers) == dict(unknown.headers)


def test_the_query_is_verified_exactly_as_sent(client):
    secret = provision(client)["signing_secret"]
    assert get(client, secret, query="email=ana@example.com&x=%20y+z").status_code == 200


@pytest.mark.parametrize("store", ["store 1ü", "shop:eu", "a" * 129])
def test_a_store_id_outside_the_id_rule_is_422_naming_the_field(client, store):
    # Ids become parts of Redis keys and URLs: 'shop:eu' would share keys with store 'shop'.
    answer = client.post(f"/internal/integrations/richpanel/stores/{quote(store, safe='')}/widget", headers=ADMIN)
    assert answer.status_code == 422 and "store_id must be 1 to 128 characters" in answer.json()["error"]
    panel = client.get(f"/widgets/richpanel/{quote(store, safe='')}?email=ana%40example.com")
    assert panel.status_code == 422 and "store_id" in panel.json()["error"]


def test_rotation_keeps_the_old_secret_for_the_grace_period_only(client, host, monkeypatch):
    old = provision(client)["signing_secret"]
    rotated = provision(client)
    new = rotated["signing_secret"]
    assert new != old
    until = rotated["previous_secret_valid_until"]
    assert until is not None
    assert get(client, old).status_code == 200
    assert get(client, new).status_code == 200
    later = time.time() + GRACE_SECONDS + 60
    monkeypatch.setattr(panel_routes.time, "time", lambda: later)
    assert get(client, old, t=int(later)).status_code == 401
    assert get(client, new, t=int(later)).status_code == 200


def test_a_second_rotation_retires_the_first_secret(client):
    first = provision(client)["signing_secret"]
    second = provision(client)["signing_secret"]
    third = provision(client)["signing_secret"]
    assert get(client, first).status_code == 401
    assert get(client, second).status_code == 200 and get(client, third).status_code == 200


def test_several_v1_entries_in_one_header(client):
    old = provision(client)["signing_secret"]
    target = f"{PATH}?{QUERY}"
    header = sign_all(["opw_not_ours", old], target, int(time.time()))
    assert client.get(target, headers={"X-OP-Signature": header}).status_code == 200


def test_customer_text_is_escaped_in_the_panel(client, host):
    evil = "<script>alert(1)</script>"
    feed(host, claim_created(claim_id="c1", claim_description='c"><img src=x onerror=alert(1)>', claim_number=evil,
                             customer={"email": "ana@example.com", "first_name": evil, "last_name": "<b>x</b>",
                                       "phone": "\"'><svg onload=alert(1)>"},
                             order={"order_number": evil, "currency": "<i>", "total": "1.00",
                                    "line_items": [{"item_name": evil, "quantity": 1}]}))
    page = get(client, provision(client)["signing_secret"])
    assert page.status_code == 200
    assert "<script" not in page.text and "<img" not in page.text and "<svg" not in page.text
    assert "<b>x" not in page.text and "<i>" not in page.text
    assert html.escape(evil) in page.text or "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text


def test_the_panel_has_a_strict_csp_and_no_script(client, host):
    feed(host, claim_created())
    page = get(client, provision(client)["signing_secret"])
    assert page.headers["content-security-policy"] == CSP
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "<script" not in page.text and " style=" not in page.text and "<style" not in page.text
    assert not re.search(r"\son[a-z]+=", page.text)
    css = re.search(r'<link rel="stylesheet" href="([^"]+)"', page.text).group(1)
    sheet = client.get(f"/widgets/richpanel/{css}")
    assert sheet.status_code == 200 and sheet.headers["content-type"].startswith("text/css")


def test_frame_ancestors_follow_the_setting(make_host, monkeypatch):
    monkeypatch.setenv("OPCORE_RICHPANEL_FRAME_ANCESTORS", "https://desk.example.com")
    host = make_host({"richpanel": plugin})
    with TestClient(create_app(host)) as client:
        page = get(client, provision(client)["signing_secret"])
    assert page.headers["content-security-policy"].endswith("; frame-ancestors https://desk.example.com")


def test_a_frame_ancestors_setting_cannot_inject_directives(make_host, monkeypatch):
    monkeypatch.setenv("OPCORE_RICHPANEL_FRAME_ANCESTORS", "https://x.com; script-src *")
    with pytest.raises(ConfigError, match="OPCORE_RICHPANEL_FRAME_ANCESTORS has invalid sources"):
        make_host({"richpanel": plugin})  # the host does not start: serve and worker say why


def test_json_is_chosen_only_when_asked_for(client):
    secret = provision(client)["signing_secret"]
    assert get(client, secret, Accept="text/html,application/json").headers["content-type"].startswith("text/html")
    assert get(client, secret, Accept="application/json, text/html").headers["content-type"] == "application/json"
    assert get(client, secret, Accept="*/*").headers["content-type"].startswith("text/html")


def test_rotate_reseals_secrets_under_the_newest_master_key(make_host, settings):
    from opcore_hooks.crypto import generate_master_key

    host = make_host({"richpanel": plugin})
    with TestClient(create_app(host)) as client:
        old = provision(client)["signing_secret"]
        new = provision(client)["signing_secret"]
    assert host.panel("richpanel").rotate() == 0  # already under the newest key
    newer_key = generate_master_key()
    both = f"{newer_key},{settings.master_key.get_secret_value()}"
    rotated_host = make_host({"richpanel": plugin}, master_key=SecretStr(both))
    assert rotated_host.panel("richpanel").rotate() == 2
    assert rotated_host.panel("richpanel").rotate() == 0
    only_new = make_host({"richpanel": plugin}, master_key=SecretStr(newer_key))
    assert only_new.panel("richpanel").active_secrets(STORE, time.time()) == [new, old]


def test_signed_request_example_is_a_request_that_works(client, host):
    provision(client)
    example = host.panel("richpanel").signed_request_example(STORE, "ana@example.com", "http://testserver")
    assert example["url"] == f"http://testserver{PATH}?{QUERY}"
    assert client.get(example["url"], headers=example["headers"]).status_code == 200
    with pytest.raises(LookupError):
        host.panel("richpanel").signed_request_example("store_never", "ana@example.com", "http://testserver")


def test_a_change_shows_on_the_next_request_although_answers_are_cached(client, host):
    feed(host, claim_created(claim_id="c1"))
    secret = provision(client)["signing_secret"]
    assert "tone-blue" in get(client, secret).text
    first = get(client, secret, **JSON).json()
    assert get(client, secret, **JSON).json() == first
    feed(host, approved("c1"))
    assert get(client, secret, **JSON).json()["claims"][0]["claim_state"] == "APPROVED"
    assert "tone-green" in get(client, secret).text


def test_a_secret_the_vault_cannot_open_is_a_401_that_names_no_secret(client, host, make_host, caplog):
    from opcore_hooks.crypto import generate_master_key

    secret = provision(client)["signing_secret"]
    other = make_host({"richpanel": plugin}, master_key=SecretStr(generate_master_key()))
    with TestClient(create_app(other)) as stranger:
        answer = get(stranger, secret)
    assert answer.status_code == 401  # finding 3: a 503 told this store exists
    assert "not in OPCORE_MASTER_KEY" in caplog.text  # the operator still learns why
    assert secret not in answer.text and secret not in caplog.text


@pytest.mark.parametrize("query", [f"email={'a' * 320}%40example.com", "email=ana", "email=a%20b%40example.com",
                                   "email=ana%40example.com%0Aeve%40example.com"])
def test_an_email_that_is_no_address_is_422_naming_it(client, query):
    secret = provision(client)["signing_secret"]
    answer = get(client, secret, query=query)
    assert answer.status_code == 422 and "email must be one email address" in answer.json()["error"]


def test_a_repeated_email_is_refused_rather_than_guessed(client):
    # Finding 10: "last wins" let a proxy and the panel disagree on whose panel this is.
    secret = provision(client)["signing_secret"]
    answer = get(client, secret, query="email=ana%40example.com&email=bob%40example.com")
    assert answer.status_code == 400 and "email" in answer.json()["error"]


def test_head_is_not_served(client):
    secret = provision(client)["signing_secret"]
    target = f"{PATH}?{QUERY}"
    answer = client.head(target, headers={"X-OP-Signature": sign(secret, target, int(time.time()))})
    assert answer.status_code == 405 and answer.headers["allow"] == "GET"


def test_the_real_plugin_wires_the_widget(make_host):
    from plugins.richpanel import plugin

    host = make_host({"richpanel": plugin})
    feed(host, claim_created(claim_id="c1"))
    with TestClient(create_app(host)) as client:
        body = get(client, provision(client)["signing_secret"], **JSON).json()
    assert [c["claim_id"] for c in body["claims"]] == ["c1"]
    assert plugin.rotate_secrets(host=host) >= 0
