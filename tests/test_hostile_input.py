"""What the ingress refuses, and what becomes of an accepted event that still fails (issue #23).

Each refusal below is a finding of the security review: the event got a 202 and then could not
be delivered, or built a ticket a million times its size. The property test beside the Richpanel
tests (tests/richpanel/test_hostile_claims.py) generates many more.
"""

from __future__ import annotations

import json
import logging

import httpx
import pytest
from starlette.testclient import TestClient

from opcore_hooks import Refused, classify_http, header_count, hookimpl, parse_retry_after
from opcore_hooks.app import create_app
from opcore_hooks.deadletters import retry_options
from opcore_hooks.delivery import helpdesk as delivery_helpdesk
from opcore_hooks.testing import ADMIN_TOKEN, WEBHOOK_SECRET, claim_created, drain, wait_for

CUSTOMER = {"email": "zoltana.quixby@example.com", "first_name": "Zoltana", "last_name": "Quixby",
            "phone": "+15559871234"}


def post(client: TestClient, event: dict) -> tuple[int, dict]:
    answer = client.post("/webhooks/orderprotection", content=json.dumps(event).encode(),
                         headers={"x-webhook-secret": WEBHOOK_SECRET, "content-type": "application/json"})
    return answer.status_code, answer.json()


def _with(path: tuple, value: object) -> dict:
    event = claim_created()
    parent = event
    for part in path[:-1]:
        parent = parent[part]
    parent[path[-1]] = value
    return event


@pytest.mark.parametrize(("path", "value", "field"), [
    (("body", "order", "total"), "1e20000000", "body.order.total"),  # a 20 MB ticket from a 392-byte webhook
    (("body", "order", "total"), "1e9", "body.order.total"),
    (("body", "order", "line_items", 0, "unit_price"), "9" * 16, "body.order.line_items.0.unit_price"),
    (("body", "order", "tax"), 10 ** 15, "body.order.tax"),
    (("body", "order", "placed_at"), "9999-12-31T23:59:59-23:59", "body.order.placed_at"),  # OverflowError later
    (("body", "created_at"), "0001-01-01T00:00:00+23:59", "body.created_at"),
    (("body", "customer", "first_name"), "\udcff", "body.customer.first_name"),  # UnicodeEncodeError later
    (("body", "customer", "name"), "Ana \ud800", "body.customer.name"),  # a field no model names
    (("body", "customer", "first_name"), "x" * 257, "body.customer.first_name"),
    (("body", "items", 0, "quantity"), 10 ** 12, "body.items.0.quantity"),
    (("body", "order", "line_items"), [{"item_name": "pin"}] * 501, "body.order.line_items"),
    (("body", "claim_description"), "x" * 65_537, "body.claim_description"),
])
def test_a_value_the_worker_could_not_deliver_is_refused_naming_its_field(make_host, path, value, field):
    host = make_host({})
    with TestClient(create_app(host)) as client:
        status, answer = post(client, _with(path, value))
    assert status == 422, answer
    assert field in [d["field"] for d in answer["details"]], answer
    assert host.redis.llen(f"{host.broker.namespace}:opcore") == 0  # nothing queued


@pytest.mark.parametrize("value", ["24.99", " 24.99 ", 25, "-3.50", "0.12345678", "999999999999999.99"])
def test_plain_amounts_are_accepted(make_host, value):
    host = make_host({})
    with TestClient(create_app(host)) as client:
        status, answer = post(client, _with(("body", "order", "total"), value))
    assert status == 202, answer


class Poisoned:
    """A plugin that fails on every claim the way a value no request can carry fails."""

    def __init__(self) -> None:
        self.calls = 0

    @hookimpl
    def on_claim_created(self, host, event, claim):
        self.calls += 1
        (claim.customer.first_name + "\udcff").encode("utf-8")  # UnicodeEncodeError, every time


def test_an_accepted_event_that_fails_for_good_is_a_dead_letter_at_once_and_logs_no_customer_data(
        make_host, run_worker, caplog):
    caplog.set_level(logging.DEBUG)  # whatever opcore and its libraries log, at any level
    plugin = Poisoned()
    host = make_host({"poisoned": plugin})
    host.broker.get_actor("opcore.deliver").options.update(min_backoff=10, max_backoff=50)
    worker = run_worker(host)
    event = claim_created(customer=CUSTOMER)
    with TestClient(create_app(host)) as client:
        assert post(client, event)[0] == 202
        wait_for(lambda: host.dead_letters.count() == 1)
        drain(host, worker)
        metrics = client.get("/metrics", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}).text
    [entry] = host.dead_letters.list()
    assert entry.claim_id == event["body"]["claim_id"]
    assert entry.reason.startswith("failed permanently after 1 attempt(s): UnicodeEncodeError"), entry.reason
    assert plugin.calls == 2  # the dispatch, then its own delivery once: never retried for days
    assert 'opcore_dead_letters{plugin="opcore"} 1.0' in metrics
    assert "is a dead letter (failed permanently: UnicodeEncodeError)" in caplog.text
    for value in CUSTOMER.values():
        assert value not in caplog.text, f"{value!r} reached the log"


def test_the_retry_budget_still_holds_for_an_outage(make_host, run_worker):
    """A RuntimeError (an outage, a bug) is retried, within the budget, before its dead letter."""

    class Down:
        calls = 0

        @hookimpl
        def on_claim_created(self, host, event, claim):
            Down.calls += 1
            raise RuntimeError("helpdesk SDK is down")

    host = make_host({"down": Down()})
    host.broker.get_actor("opcore.deliver").options.update(min_backoff=1, max_backoff=5, **retry_options(3))
    worker = run_worker(host)
    with TestClient(create_app(host)) as client:
        assert post(client, claim_created())[0] == 202
    wait_for(lambda: host.dead_letters.count() == 1)
    drain(host, worker)
    [entry] = host.dead_letters.list()
    assert entry.reason.startswith("retries exhausted after 4 attempt(s): RuntimeError"), entry.reason
    assert Down.calls == 1 + 4


JUNK_NUMBERS = ["inf", "nan", "²", "١٢", "1e3", "-1", "+5", "5 5", "0x10", "99999999999999", "", " ", "5\x00"]


@pytest.mark.parametrize("junk", JUNK_NUMBERS)
def test_a_rate_limit_header_that_is_not_plain_digits_is_ignored_by_every_plugin(junk, caplog):
    from plugins.richpanel.client import RateLimitInfo
    from plugins.zendesk.client import RateLimit

    delivery_helpdesk._junk_seen.clear()
    raw = junk.encode()  # as a server sends it: bytes, which httpx decodes
    richpanel = RateLimitInfo.from_headers(httpx.Headers([(b"x-ratelimit-limit", raw), (b"x-ratelimit-remaining", b"7")]))
    zendesk = RateLimit.of(httpx.Response(200, headers=[(b"x-rate-limit", raw), (b"x-rate-limit-remaining", b"7")]))
    assert (richpanel.limit, richpanel.remaining) == (None, 7)
    assert (zendesk.limit, zendesk.remaining) == (None, 7)
    if junk.strip():
        assert "not a plain number" in caplog.text


def test_junk_is_logged_once_per_header_not_once_per_answer(caplog):
    delivery_helpdesk._junk_seen.clear()
    for _ in range(50):
        assert header_count({"x-ratelimit-limit": "inf"}, "x-ratelimit-limit") is None
    assert caplog.text.count("not a plain number") == 1
    assert header_count({"x-ratelimit-limit": " 50 "}, "x-ratelimit-limit") == 50


@pytest.mark.parametrize("junk", ["inf", "nan", "1e400", "²", "-5", "86401", "Mon, 99 Foo 2026 00:00:00 GMT",
                                  "Fri, 31 Dec 9999 23:59:59 GMT", "\x00"])
def test_a_retry_after_that_is_junk_or_past_a_day_is_ignored(junk):
    assert parse_retry_after(junk, now=1_800_000_000.0) is None


def test_a_retry_after_in_seconds_or_as_a_date_is_read():
    assert parse_retry_after("30") == 30.0 and parse_retry_after("1.5") == 1.5
    assert parse_retry_after("Thu, 15 Jan 2027 08:00:30 GMT", now=1_800_000_000.0) is not None


def test_a_request_no_url_or_header_can_carry_is_refused_not_retried():
    failure = classify_http(httpx.InvalidURL("Invalid non-printable ASCII character in URL"))
    assert isinstance(failure, Refused)
    assert isinstance(classify_http(httpx.LocalProtocolError("a header holds a line break")), Refused)


def test_a_queued_event_the_worker_cannot_read_is_a_dead_letter_naming_the_field(make_host, run_worker):
    """A message an older opcore queued, which today's rules refuse: at once, with the field."""
    host = make_host({})
    worker = run_worker(host)
    event = claim_created(customer=CUSTOMER)
    event["body"]["order"]["total"] = "1e9"
    host.dispatcher.dispatch.send({**event, "received_at": 0.0})
    wait_for(lambda: host.dead_letters.count() == 1)
    drain(host, worker)
    [entry] = host.dead_letters.list()
    assert entry.actor == "opcore.dispatch" and entry.claim_id == event["body"]["claim_id"]
    assert entry.reason.startswith("failed permanently after 1 attempt(s): "), entry.reason
    assert "order.total" in entry.reason and "plain decimal" in entry.reason, entry.reason
    assert CUSTOMER["email"] not in entry.reason


def test_a_helpdesk_request_logged_by_httpx_shows_its_origin_not_its_path(make_host, caplog):
    """A Richpanel lookup is ``GET /v1/tickets/email/{email}``: httpx logs its URL at INFO."""
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="httpx")  # the CLI caps httpx's own level; an app may not
    make_host({})
    client = httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(200)))
    client.get(f"https://api.richpanel.example/v1/tickets/email/{CUSTOMER['email']}?phone={CUSTOMER['phone']}")
    assert "HTTP Request: GET https://api.richpanel.example/…" in caplog.text
    assert CUSTOMER["email"] not in caplog.text and CUSTOMER["phone"] not in caplog.text
