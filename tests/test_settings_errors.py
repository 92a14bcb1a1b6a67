"""Every settings PUT refuses as the ingress does: one answer naming every fault, in one shape.

An admin tool that sends a store's settings gets 400 for a body that is not JSON, 413 for one
over the limit and 422 for anything it can fix, with ``{"error": <one line>, "details":
[{"field", "message", "type"}, ...]}`` listing every problem at once: the body's fields, the
store id in the path, and what the stored settings still lack. The helpdesk is not asked while
any of those stands, and nothing is saved. Checked for Richpanel, Zendesk and the template
(what a new plugin copies), against the ingress's answers to the same bodies.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

import pytest
from starlette.testclient import TestClient

from opcore_hooks import CredentialsRejected
from opcore_hooks.app import create_app
from opcore_hooks.testing import ADMIN_TOKEN, WEBHOOK_SECRET
from plugins._template import plugin as template
from plugins.richpanel import plugin as richpanel
from plugins.zendesk import plugin as zendesk

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
INGRESS = "/webhooks/orderprotection"
RP_SECRET = "sk_live_Sup3rSecretKeyValue_a1b2"  # not an rp_ key: refused by its shape
ZD_SECRET = "zd secret token 0123456789"  # spaces: refused by its shape

#: Per plugin: a body with three invalid fields, and a body with two invalid fields on a store
#: that has nothing saved yet (so the credentials it needs are missing too).
CASES: dict[str, dict[str, Any]] = {
    "richpanel": {
        "three": {"api_key": RP_SECRET, "default_channel": "sms", "enabled": "yes"},
        "lacking": ({"default_channel": "sms", "enabled": "yes"}, {"default_channel", "enabled", "api_key"}),
        "valid": {"api_key": "rp_live_WellFormedKey_0001", "default_channel": "email"},
    },
    "zendesk": {
        "three": {"subdomain": "acme.evil.com/x", "email": "no", "api_token": ZD_SECRET},
        "lacking": ({"email": "no", "enabled": "yes"}, {"email", "enabled", "subdomain", "api_token"}),
        "valid": {"subdomain": "acme", "email": "agent@acme.test", "api_token": "zd_token_0123456789"},
    },
    "template": {
        "three": {"api_token": 12345, "enabled": "yes", "colour": "red"},
        "lacking": ({"enabled": "yes", "colour": "red"}, {"enabled", "colour", "api_token"}),
        "valid": {"api_token": "tok_test_0123456789"},
    },
}
PLUGINS = list(CASES)


@pytest.fixture
def app(make_host) -> Iterator[tuple[Any, TestClient, list[str]]]:
    """All three plugins on one host; each one's helpdesk check is replaced by a recorder that
    refuses the credentials, so a test sees whether (and never reaches) a real helpdesk."""
    host = make_host({"richpanel": richpanel, "zendesk": zendesk, "template": template})
    asked: list[str] = []
    for name in PLUGINS:
        def refuse(scope: str, send: Any, *, max_wait: float, name: str = name) -> Any:
            asked.append(name)
            raise CredentialsRejected("refused by the test's stand-in")
        host.delivery(name).request = refuse  # type: ignore[method-assign]
    with TestClient(create_app(host)) as client:
        yield host, client, asked


def url(plugin: str, store: str = "store_123") -> str:
    return f"/internal/integrations/{plugin}/stores/{store}"


def assert_nothing_saved(host: Any, client: TestClient, plugin: str) -> None:
    assert client.get(url(plugin), headers=ADMIN).status_code == 404
    assert not host.redis.exists(host.key(plugin, "store", "store_123"))


def assert_ingress_shape(body: dict[str, Any]) -> None:
    """The ingress's 422: a one-line error and a field, message and type for every problem."""
    assert set(body) == {"error", "details"} and "\n" not in body["error"]
    for detail in body["details"]:
        assert {"field", "message", "type"} <= set(detail) and detail["message"], detail


@pytest.mark.parametrize("plugin", PLUGINS)
def test_three_invalid_fields_are_refused_in_one_answer_naming_each(app, plugin):
    host, client, asked = app
    body = CASES[plugin]["three"]
    answer = client.put(url(plugin), headers=ADMIN, json=body)
    assert answer.status_code == 422, answer.text
    refusal = answer.json()
    assert_ingress_shape(refusal)
    assert {d["field"] for d in refusal["details"]} == set(body)
    assert all(field in refusal["error"] for field in body)  # the summary names them all
    assert asked == [], "the helpdesk is not asked while a field is invalid"
    assert RP_SECRET not in answer.text and ZD_SECRET not in answer.text
    assert_nothing_saved(host, client, plugin)


@pytest.mark.parametrize("plugin", PLUGINS)
def test_the_bodys_faults_and_what_the_store_lacks_come_in_one_answer(app, plugin):
    host, client, asked = app
    body, expected = CASES[plugin]["lacking"]
    answer = client.put(url(plugin), headers=ADMIN, json=body)
    assert answer.status_code == 422, answer.text
    details = {d["field"]: d for d in answer.json()["details"]}
    assert set(details) == expected
    assert_ingress_shape(answer.json())
    missing = expected - set(body)
    assert all(details[f]["type"] == "missing" and "required" in details[f]["message"] for f in missing)
    assert asked == []
    assert_nothing_saved(host, client, plugin)


@pytest.mark.parametrize("plugin", PLUGINS)
def test_a_bad_store_id_is_named_together_with_the_bodys_faults(app, plugin):
    host, client, asked = app
    body = CASES[plugin]["three"]
    answer = client.put(url(plugin, "store:other"), headers=ADMIN, json=body)
    assert answer.status_code == 422, answer.text
    assert {d["field"] for d in answer.json()["details"]} == {"store_id", *body}
    assert_ingress_shape(answer.json())
    assert asked == []


@pytest.mark.parametrize("plugin", PLUGINS)
def test_the_helpdesk_is_asked_only_once_every_local_field_is_right(app, plugin):
    host, client, asked = app
    answer = client.put(url(plugin), headers=ADMIN, json=CASES[plugin]["valid"])
    assert asked == [plugin]  # the check happens, and its refusal is one more 422 in the same shape
    assert answer.status_code == 422 and "rejected" in answer.json()["error"]
    assert_ingress_shape(answer.json())
    assert_nothing_saved(host, client, plugin)


def _chunks(size: int) -> Iterator[bytes]:
    """A body without Content-Length (sent chunked): only counting what arrives can refuse it."""
    for _ in range(size // 4096 + 1):
        yield b" " * 4096


#: Bodies the ingress refuses before reading any field; each settings PUT must answer as it does.
BAD_BODIES = {
    "not JSON": b"{api_key: rp_",
    "empty": b"",
    "not UTF-8": b'{"api_key": "\xff\xfe"}',
    "a 5000-digit number": b'{"enabled": ' + b"1" * 5000 + b"}",
    "an array": b'["api_key"]',
    "a string": b'"rp_key"',
    "nested too deep": b'{"enabled": ' + b"[" * 40 + b"]" * 40 + b"}",
    "over every limit": b'{"x": "' + b"a" * (300 * 1024) + b'"}',
    "over every limit, chunked": None,
}


@pytest.mark.parametrize("kind", list(BAD_BODIES))
def test_every_settings_put_answers_a_bad_body_as_the_ingress_does(app, kind):
    host, client, asked = app

    def send(path: str, headers: dict[str, str]) -> Any:
        raw = BAD_BODIES[kind]
        content = _chunks(300 * 1024) if raw is None else raw
        return client.request("POST" if path == INGRESS else "PUT", path, content=content,
                              headers={**headers, "content-type": "application/json"})

    at_ingress = send(INGRESS, {"x-webhook-secret": WEBHOOK_SECRET})
    expected = {"not JSON": 400, "empty": 400, "not UTF-8": 400, "a 5000-digit number": 400, "an array": 422,
                "a string": 422, "nested too deep": 422, "over every limit": 413, "over every limit, chunked": 413}
    assert at_ingress.status_code == expected[kind], at_ingress.text
    for plugin in PLUGINS:
        answer = send(url(plugin), ADMIN)
        assert answer.status_code == at_ingress.status_code, (plugin, answer.text)
        refusal = answer.json()
        assert isinstance(refusal["error"], str) and "\n" not in refusal["error"]
        # details come exactly when the ingress gives them, naming the same fields
        assert ("details" in refusal) == ("details" in at_ingress.json()), (plugin, refusal)
        assert [d["field"] for d in refusal.get("details", [])] == [d["field"] for d in
                                                                    at_ingress.json().get("details", [])]
        assert_nothing_saved(host, client, plugin)
    assert asked == []


def test_the_shape_is_the_ingress_s_byte_for_byte_in_its_keys(app):
    """A client that reads the ingress's 422 reads every plugin's: same keys, same order."""
    host, client, asked = app
    ingress = client.post(INGRESS, headers={"x-webhook-secret": WEBHOOK_SECRET}, json={"id": 1})
    shapes = {"ingress": [list(ingress.json()), [list(d) for d in ingress.json()["details"]][:1]]}
    for plugin in PLUGINS:
        answer = client.put(url(plugin), headers=ADMIN, json=CASES[plugin]["three"]).json()
        shapes[plugin] = [list(answer), [list(d) for d in answer["details"]][:1]]
    assert all(shape == shapes["ingress"] for shape in shapes.values()), json.dumps(shapes)


@pytest.mark.parametrize("plugin", PLUGINS)
def test_widget_provisioning_refuses_in_the_same_shape(app, plugin):
    host, client, asked = app
    bad_field = client.post(url(plugin) + "/widget", headers=ADMIN, json={"revoke_previous": "maybe"})
    assert bad_field.status_code == 422
    assert [d["field"] for d in bad_field.json()["details"]] == ["revoke_previous"]
    assert_ingress_shape(bad_field.json())
    bad_id = client.post(url(plugin, "store:other") + "/widget", headers=ADMIN)
    assert bad_id.status_code == 422
    assert_ingress_shape(bad_id.json())
    assert not host.redis.exists(host.key(plugin, "widget", "store_123"))


@pytest.mark.parametrize("method,suffix", [("GET", ""), ("DELETE", ""), ("GET", "/teams"), ("DELETE", "/widget")])
def test_a_malformed_store_id_is_422_on_every_route_of_every_plugin(make_host, method, suffix):
    # Review of #13: GET and DELETE answered 404 "not configured for store 'a:b'".
    host = make_host({"richpanel": richpanel, "zendesk": zendesk})
    with TestClient(create_app(host)) as client:
        for name in ("richpanel", "zendesk"):
            answer = client.request(method, f"/internal/integrations/{name}/stores/a%3Ab{suffix}",
                                    headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
            assert answer.status_code == 422, (name, answer.text)
            assert answer.json()["details"][0]["field"] == "store_id"
