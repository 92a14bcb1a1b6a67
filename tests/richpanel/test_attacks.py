"""Bad actors get nowhere: widget signature attacks, HTML/script injection, and dead letters an operator can replay.

- Widget: a signature replayed for another customer or another store, expired (either side of the
  300 s window), tampered, malformed or missing is refused with a JSON error and shows no data.
- Injection: HTML and script in every customer-supplied field stays inert text, both in the ticket
  body Richpanel receives (parsed: only the body's own tags, only the claim link) and in the widget
  panel (parsed: only the template's tags, no event handlers, no foreign links; CSP forbids scripts).
- Dead letters: ``opcore dead-letters list`` shows why a ticket failed; ``replay --claim C`` after the
  cause is fixed opens exactly one ticket, and replaying again, or a stale copy, never opens a second.
"""

from __future__ import annotations

import re
import time
from html.parser import HTMLParser
from typing import Any, Iterator

import httpx
import pytest
from click.testing import CliRunner
from starlette.exceptions import HTTPException
from starlette.testclient import TestClient

from opcore_hooks.app import create_app
from opcore_hooks.signing import sign
from opcore_hooks.testing import ADMIN_TOKEN, WEBHOOK_SECRET, claim_created, drain, feed, wait_for
from plugins.richpanel import plugin
from plugins.richpanel.sandbox import Account

STORE, OTHER = "store_123", "store_other"
KEY = "rp_test_AttacksKey_0001"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
HOOK = {"x-webhook-secret": WEBHOOK_SECRET}
DASHBOARD = "https://app.orderprotection.com"


def widget_path(store: str = STORE) -> str:
    return f"/widgets/richpanel/{store}"


def assert_refused(answer: httpx.Response, status: int = 401) -> None:
    assert answer.status_code == status, (answer.status_code, answer.text[:300])
    assert answer.headers["content-type"].startswith("application/json")
    assert answer.json()["error"]
    for private in ("OP-1042", "OP-7777", "Lima", "#1001", "ana@example.com"):
        assert private not in answer.text


# -- widget signatures ------------------------------------------------------------------------------

@pytest.fixture
def widget_host(make_host):
    host = make_host({"richpanel": plugin})
    feed(host, claim_created(), claim_created(store_id=OTHER, claim_id="claim-of-the-other-store",
                                              claim_number="OP-7777"))
    return host


@pytest.fixture
def wclient(widget_host) -> Iterator[TestClient]:
    with TestClient(create_app(widget_host)) as c:
        yield c


@pytest.fixture
def secrets_(wclient) -> dict[str, str]:
    return {store: wclient.post(f"/internal/integrations/richpanel/stores/{store}/widget", headers=ADMIN)
            .json()["signing_secret"] for store in (STORE, OTHER)}


def signed_get(client, secret: str, target: str, t: int | None = None, sent: str | None = None, **headers):
    """Sign ``target`` at ``t`` and send ``sent`` (``target`` unless told): a replay when they differ."""
    t = int(time.time()) if t is None else t
    return client.get(sent or target, headers={"X-OP-Signature": sign(secret, target, t), "Accept": "application/json",
                                                **headers})


def test_an_honest_request_is_served(wclient, secrets_):
    answer = signed_get(wclient, secrets_[STORE], f"{widget_path()}?email=ana%40example.com")
    assert answer.status_code == 200
    assert [c["claim_number"] for c in answer.json()["claims"]] == ["OP-1042"]


@pytest.mark.parametrize("sent", [
    "?email=bob%40example.com",  # the same signature replayed for another customer
    "?email=ana%40example.com&email=bob%40example.com",  # a parameter appended
    "?email=bob%40example.com&email=ana%40example.com",
    "?email=ANA%40example.com",  # the same customer, spelled differently: a different request
    "?email=ana@example.com",  # decoded: not the bytes that were signed
    "?email=ana%40example.com&x=1",
    "",
])
def test_a_signature_replayed_with_another_query_is_refused(wclient, secrets_, sent):
    target = f"{widget_path()}?email=ana%40example.com"
    assert signed_get(wclient, secrets_[STORE], target).status_code == 200
    assert_refused(signed_get(wclient, secrets_[STORE], target, sent=widget_path() + sent))


@pytest.mark.parametrize("skew", [-301, -600, -10 ** 6, 31, 290, 301, 600, 10 ** 6])
def test_an_expired_or_future_signature_is_refused(wclient, secrets_, skew):
    target = f"{widget_path()}?email=ana%40example.com"
    assert_refused(signed_get(wclient, secrets_[STORE], target, t=int(time.time()) + skew))


@pytest.mark.parametrize("skew", [-290, 25])
def test_a_signature_just_inside_the_window_is_served(wclient, secrets_, skew):
    target = f"{widget_path()}?email=ana%40example.com"
    assert signed_get(wclient, secrets_[STORE], target, t=int(time.time()) + skew).status_code == 200


def _tampered(header: str) -> list[str]:
    t, mac = re.fullmatch(r"t=(\d+),v1=([0-9a-f]{64})", header).groups()
    flip = lambda s, i: s[:i] + ("0" if s[i] != "0" else "1") + s[i + 1:]  # noqa: E731
    return [
        f"t={t},v1={flip(mac, 0)}", f"t={t},v1={flip(mac, 63)}",  # one digit changed
        f"t={int(t) + 1},v1={mac}",  # the time moved, the MAC kept
        f"t={t},v1={mac[:-2]}",  # truncated
        f"t={t},v1={mac}00",  # lengthened
        f"t={t},v0={mac}",  # another scheme only
        f"t={t},v1={'0' * 64}",
        f"t={t},t={t},v1={mac}",  # two times
        f"t=+{t},v1={mac}", f"t= {t},v1={flip(mac, 5)}", f"t={t}.0,v1={mac}",
        f"t={''.join(chr(0x660 + int(d)) for d in t)},v1={mac}",  # Arabic-Indic digits: not ASCII
        f"v1={mac}",  # no time
        f"t={t}",  # no MAC
        f"t={t},v1={mac}," + ",".join(f"v1={'a' * 64}" for _ in range(30)),  # a kilobyte of guesses
        "", " ", "garbage", "t=,v1=", f"{mac}",
    ]


def test_a_tampered_or_malformed_signature_is_refused(wclient, secrets_):
    target = f"{widget_path()}?email=ana%40example.com"
    header = sign(secrets_[STORE], target, int(time.time()))
    for forged in _tampered(header):
        answer = wclient.get(target, headers={"X-OP-Signature": forged.encode("utf-8"), "Accept": "application/json"})
        assert answer.status_code == 401, forged
        assert_refused(answer)


def test_a_missing_signature_is_refused(wclient, secrets_):
    assert_refused(wclient.get(f"{widget_path()}?email=ana%40example.com", headers={"Accept": "application/json"}))
    assert_refused(wclient.get(f"{widget_path()}?email=ana%40example.com"))  # the HTML panel too


def test_another_stores_secret_or_signature_is_refused(wclient, secrets_):
    mine, theirs = f"{widget_path()}?email=ana%40example.com", f"{widget_path(OTHER)}?email=ana%40example.com"
    assert signed_get(wclient, secrets_[OTHER], theirs).status_code == 200
    # the other store's secret, signing this store's request
    assert_refused(signed_get(wclient, secrets_[OTHER], mine))
    # a signature the other store's widget made, replayed against this store
    assert_refused(signed_get(wclient, secrets_[OTHER], theirs, sent=mine))
    # this store's signature replayed against the other store
    assert_refused(signed_get(wclient, secrets_[STORE], mine, sent=theirs))


def test_a_store_without_a_widget_is_refused_like_a_bad_credential_and_shows_nothing(wclient, secrets_):
    target = f"{widget_path('store_never_provisioned')}?email=ana%40example.com"
    assert_refused(signed_get(wclient, secrets_[STORE], target), 401)


def test_a_rotated_out_secret_of_another_store_never_opens_this_one(wclient, secrets_):
    old_other = secrets_[OTHER]
    wclient.post(f"/internal/integrations/richpanel/stores/{OTHER}/widget", headers=ADMIN)
    assert_refused(signed_get(wclient, old_other, f"{widget_path()}?email=ana%40example.com"))


# -- HTML and script in every customer-supplied field ------------------------------------------------

def payload(field: str) -> str:
    return f'"><script>alert("{field}")</script><img src=x onerror=alert("{field}")>'


def email_payload() -> str:
    # the contract's email pattern allows no whitespace: this is as hostile as a valid address gets
    return '"><svg/onload=alert("email")><script>alert("email")</script>@example.com'


def hostile_claim() -> dict[str, Any]:
    event = claim_created(claim_id="claim-hostile")
    body = event["body"]
    body["claim_number"] = payload("claim_number")
    body["claim_description"] = payload("claim_description")
    body["source_order_id"] = payload("source_order_id")
    body["items"] = [{"item_id": "i1", "item_name": payload("item_name"), "sku": payload("sku"), "quantity": 2},
                     {"item_id": "i2", "sku": payload("sku_only"), "quantity": 1}]
    body["customer"] = {"email": email_payload(), "first_name": payload("first_name"),
                        "last_name": payload("last_name"), "phone": payload("phone")}
    body["order"] = {"order_number": payload("order_number"), "currency": payload("currency"),
                     "placed_at": "2026-11-20T08:00:00Z",
                     "line_items": [{"item_id": "i1", "item_name": payload("line_item_name"),
                                     "sku": payload("line_item_sku"), "quantity": 1, "unit_price": "24.99"}],
                     "subtotal": "24.99", "shipping": "4.99", "tax": "2.10", "total": "32.08"}
    return event


class Elements(HTMLParser):
    """Every start tag and its attributes, as a browser's tokenizer would see them."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.texts: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    handle_startendtag = handle_starttag

    def handle_data(self, data: str) -> None:
        self.texts.append(data)

    @property
    def text(self) -> str:
        return "".join(self.texts)


def assert_inert(markup: str, allowed_tags: set[str], allowed_href: callable) -> None:
    for tag, attrs in Elements(markup).tags:
        assert tag in allowed_tags, (tag, attrs)
        for name, value in attrs.items():
            assert not name.startswith("on"), (tag, name)
            assert name not in ("src", "srcdoc", "formaction", "style"), (tag, name)
            if name == "href":
                assert allowed_href(value), (tag, value)
    assert "<script" not in markup.lower() and "<img" not in markup.lower() and "<svg" not in markup.lower()


@pytest.fixture
def rp(make_host, run_worker, sandbox, monkeypatch):
    """The real plugin with a real worker against the sandbox; the store configured through the API."""
    monkeypatch.setenv("OPCORE_RICHPANEL_API_URL", sandbox.url)
    monkeypatch.setenv("OPCORE_RICHPANEL_TIMEOUT_SECONDS", "2")
    sandbox.state.add_account(KEY)
    host = make_host({"richpanel": plugin})
    client = TestClient(create_app(host))
    answer = client.put(f"/internal/integrations/richpanel/stores/{STORE}", headers=ADMIN,
                        json={"api_key": KEY, "default_channel": "email"})
    assert answer.status_code == 200, answer.text
    sandbox.state.requests.clear()
    for name in ("richpanel.create_ticket", "richpanel.finish_ticket"):
        host.broker.get_actor(name).options.update(min_backoff=50, max_backoff=200)
    worker = run_worker(host, threads=4)
    yield host, worker, sandbox, client
    client.close()


def posts(sandbox) -> list[dict[str, Any]]:
    return [r for r in sandbox.state.view_requests()["requests"] if r["method"] == "POST" and r["path"] == "/v1/tickets"]


def test_html_in_every_customer_field_is_inert_in_the_ticket_body(rp):
    host, worker, sandbox, client = rp
    event = hostile_claim()
    assert client.post("/webhooks/orderprotection", json=event, headers=HOOK).status_code == 202
    wait_for(lambda: sandbox.state.tickets(KEY), timeout=15)
    drain(host, worker)
    [ticket] = sandbox.state.tickets(KEY)
    body = ticket["comments"][0]["body"]
    claim_url = f"{DASHBOARD}/claims/view/claim-hostile"
    assert_inert(body, {"p", "strong", "ul", "li", "a", "em"}, lambda href: href == claim_url)
    # what the body shows of the customer's text, it shows as text
    shown = Elements(body).text
    for field in ("claim_number", "claim_description", "item_name", "sku", "sku_only", "order_number", "currency",
                  "line_item_name"):
        assert payload(field) in shown, field  # shown to the agent as text...
        assert payload(field) not in body, field  # ...because it was escaped
    # names, phone and email travel as data fields, never as markup of the body
    sent = posts(sandbox)[0]["body"]["ticket"]
    assert sent["customer_profile"]["firstName"] == payload("first_name")
    assert sent["via"]["source"]["from"]["address"] == email_payload()
    for field in ("first_name", "last_name", "phone"):
        assert payload(field) not in body


def test_html_in_every_customer_field_is_inert_in_the_widget_panel(make_host):
    host = make_host({"richpanel": plugin})
    event = hostile_claim()
    feed(host, event)
    with TestClient(create_app(host)) as client:
        secret = client.post(f"/internal/integrations/richpanel/stores/{STORE}/widget", headers=ADMIN).json()["signing_secret"]
        query = str(httpx.QueryParams({"email": email_payload()}))
        target = f"{widget_path()}?{query}"
        answer = client.get(target, headers={"X-OP-Signature": sign(secret, target, int(time.time())),
                                             "Accept": "text/html"})
        data = client.get(target, headers={"X-OP-Signature": sign(secret, target, int(time.time())),
                                           "Accept": "application/json"})
    assert answer.status_code == 200, answer.text
    page = answer.text
    css = re.search(r'href="(static/widget\.css\?v=[0-9a-f]+)"', page).group(1)
    allowed = {"html", "head", "meta", "title", "link", "body", "main", "header", "p", "h1", "h2", "section", "span",
               "ul", "li", "div", "time", "a", "strong"}
    assert_inert(page, allowed, lambda href: href in (css, f"{DASHBOARD}/claims/view/claim-hostile"))
    shown = Elements(page).text
    for field in ("first_name", "last_name", "phone", "claim_number", "order_number", "line_item_name", "currency"):
        assert payload(field) in shown, field
        assert payload(field) not in page, field
    assert email_payload() in shown and email_payload() not in page
    csp = answer.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp  # no script may run even if escaping failed
    assert answer.headers["x-content-type-options"] == "nosniff"
    # the JSON answer carries the text as data, exactly
    shown = data.json()
    assert shown["customer"]["first_name"] == payload("first_name")
    assert shown["claims"][0]["claim_number"] == payload("claim_number")


# -- dead letters: see why, fix, replay, never twice ---------------------------------------------------

@pytest.fixture
def cli(monkeypatch, redis_client, settings, sandbox):
    """``opcore`` as an operator runs it, on the test's Redis and settings."""
    from opcore_hooks import cli as cli_module
    from opcore_hooks import host as host_module

    monkeypatch.setattr(host_module, "connect_settings", lambda *a, **kw: redis_client)
    monkeypatch.setenv("OPCORE_NAMESPACE", settings.namespace)
    monkeypatch.setenv("OPCORE_MASTER_KEY", settings.master_key.get_secret_value())
    monkeypatch.setenv("OPCORE_RICHPANEL_API_URL", sandbox.url)
    monkeypatch.setenv("OPCORE_REDIS_URL", "redis://the-test-redis.invalid:6379/0")  # never dialled: connect is patched
    monkeypatch.delenv("OPCORE_PLUGINS", raising=False)
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(cli_module.build_cli(), list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    return run


@pytest.fixture
def refusing(monkeypatch):
    """Richpanel refuses new tickets with a 400 while ``refusing.on`` is true."""
    real = Account.create_ticket

    class Switch:
        on = True

    def create_ticket(self, body):
        if Switch.on:
            raise HTTPException(400, "ticket.subject is longer than Richpanel allows")
        return real(self, body)

    monkeypatch.setattr(Account, "create_ticket", create_ticket)
    return Switch


def test_a_refused_ticket_is_listed_with_its_reason_and_replayed_once_fixed(rp, cli, refusing):
    host, worker, sandbox, client = rp
    event = claim_created(claim_id="claim-refused")
    assert client.post("/webhooks/orderprotection", json=event, headers=HOOK).status_code == 202
    wait_for(lambda: host.dead_letters.count() == 1, timeout=15)
    drain(host, worker)

    listed = cli("dead-letters", "list")
    assert "claim=claim-refused" in listed and f"store={STORE}" in listed
    assert "400" in listed and "ticket.subject is longer than Richpanel allows" in listed
    assert "1 dead letter(s)" in listed
    assert "claim-refused" in cli("dead-letters", "list", "--store", STORE)
    assert "0 dead letter(s)" in cli("dead-letters", "list", "--store", "store_nobody")
    assert sandbox.state.tickets(KEY) == []

    refusing.on = False  # the cause is fixed
    assert "replayed 1 dead letter(s)" in cli("dead-letters", "replay", "--claim", "claim-refused")
    wait_for(lambda: sandbox.state.tickets(KEY), timeout=15)
    drain(host, worker)
    assert len(sandbox.state.tickets(KEY)) == 1
    assert "0 dead letter(s)" in cli("dead-letters", "list")

    # replaying again finds nothing to send; a stale copy of the entry is harmless too
    assert "replayed 0 dead letter(s)" in cli("dead-letters", "replay", "--claim", "claim-refused")
    delivery = host.delivery("richpanel")
    host.dead_letters.add(delivery.create_actor.actor_name, [STORE, event["body"]], reason="stale copy",
                          store_id=STORE, claim_id="claim-refused")
    assert "replayed 1 dead letter(s)" in cli("dead-letters", "replay", "--store", STORE)
    time.sleep(0.5)
    drain(host, worker)
    assert len(sandbox.state.tickets(KEY)) == 1
    assert len(posts(sandbox)) == 2  # the refused one and the one that worked: never a third


def test_a_replay_after_a_lost_answer_adopts_the_ticket_instead_of_creating_another(rp, cli, monkeypatch):
    host, worker, sandbox, client = rp
    monkeypatch.setattr(host.delivery("richpanel"), "max_attempts", 2)
    sandbox.state.update_config(drop_rate=1.0)  # Richpanel acts, every answer is lost
    event = claim_created(claim_id="claim-lost-answers")
    assert client.post("/webhooks/orderprotection", json=event, headers=HOOK).status_code == 202
    wait_for(lambda: host.dead_letters.count() == 1, timeout=20)
    drain(host, worker)
    assert len(sandbox.state.tickets(KEY)) == 1  # created, but opcore never heard back
    listed = cli("dead-letters", "list", "--claim", "claim-lost-answers")
    assert "gave up after 2 attempts" in listed and "no answer" in listed

    sandbox.state.update_config(drop_rate=0.0)
    assert "replayed 1 dead letter(s)" in cli("dead-letters", "replay", "--claim", "claim-lost-answers")
    delivery = host.delivery("richpanel")
    wait_for(lambda: delivery.ticket_id(STORE, "claim-lost-answers"), timeout=15)
    drain(host, worker)
    assert len(sandbox.state.tickets(KEY)) == 1
    assert len(posts(sandbox)) == 1
    assert delivery.ticket_id(STORE, "claim-lost-answers") == sandbox.state.tickets(KEY)[0]["id"]
