"""The internal settings API as an admin tool uses it: JSON in, clear JSON errors out, no key leaked."""

from __future__ import annotations

from typing import Any, Iterator

import httpx
import pytest
from starlette.testclient import TestClient

from opcore_hooks.app import create_app
from opcore_hooks.testing import ADMIN_TOKEN
from plugins.richpanel import plugin, session
from plugins.richpanel.sandbox import SandboxConfig, create_sandbox

KEY = "rp_live_Sup3rSecretKeyValue_a1b2"
TEAM = "0b5e6a3c-7d1f-4c2a-9e8b-1f2d3c4b5a69"
URL = "/internal/integrations/richpanel/stores/store_123"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


class Recording:
    """The app's client, keeping every answer so one test can search them all for the key."""

    def __init__(self, client: TestClient) -> None:
        self.client, self.answers = client, []

    def __call__(self, method: str, url: str = URL, auth: bool = True, **kwargs: Any) -> httpx.Response:
        headers = {**(AUTH if auth else {}), **kwargs.pop("headers", {})}
        answer = self.client.request(method, url, headers=headers, **kwargs)
        self.answers.append(answer)
        return answer


@pytest.fixture
def sandbox():
    app = create_sandbox(SandboxConfig(quota=None))
    app.state.sandbox.add_account(KEY, teams=[{"id": TEAM, "name": "Claims"}, {"name": "Support"}])
    with TestClient(app) as http:
        yield app.state.sandbox, http


@pytest.fixture
def host(make_host, sandbox, monkeypatch):
    monkeypatch.setenv("OPCORE_RICHPANEL_API_URL", "http://testserver")
    host = make_host({"richpanel": plugin})
    session.set_http(host, sandbox[1])
    return host


@pytest.fixture
def call(host) -> Iterator[Recording]:
    with TestClient(create_app(host)) as client:
        recording = Recording(client)
        yield recording
    for answer in recording.answers:
        assert KEY not in answer.text and KEY not in str(answer.headers)


def test_put_saves_and_get_shows_the_masked_key_and_health(call):
    answer = call("PUT", json={"api_key": KEY, "default_team_id": TEAM, "default_channel": "email",
                               "enabled": True})
    assert answer.status_code == 200, answer.text
    body = call("GET").json()
    assert body["api_key"] == "rp_…a1b2"
    assert (body["default_team_id"], body["default_channel"], body["enabled"]) == (TEAM, "email", True)
    assert body["health"]["credentials"] == "valid" and body["health"]["last_error"] is None
    assert body["credentials"] == "valid" and body["health"]["checked_at"]


def test_get_of_a_store_never_configured_is_404(call):
    answer = call("GET")
    assert answer.status_code == 404 and "not configured" in answer.json()["error"]


def test_a_rejected_key_is_422_and_nothing_is_saved(call):
    answer = call("PUT", json={"api_key": "rp_live_NotAnAccountKey_0000"})
    assert answer.status_code == 422
    assert "Richpanel rejected this API key (401)" in answer.json()["error"]
    assert call("GET").status_code == 404


@pytest.mark.parametrize("limit_status", [429, 492])
def test_a_rate_limited_check_is_422_with_when_to_retry(call, sandbox, limit_status):
    sandbox[0].update_config(rate_limit_rate=1.0, limit_status=limit_status)
    answer = call("PUT", json={"api_key": KEY})
    assert answer.status_code == 422
    assert "Richpanel is rate limiting this API key, try again in 1 second" in answer.json()["error"]
    assert answer.headers["Retry-After"] == "1"
    assert call("GET").status_code == 404


def test_a_team_name_is_422_listing_the_teams(call):
    answer = call("PUT", json={"api_key": KEY, "default_team_id": "Claims"})
    assert answer.status_code == 422
    body = answer.json()
    assert f"Claims ({TEAM})" in body["error"] and "Support (" in body["error"]
    assert {"id": TEAM, "name": "Claims"} in body["details"][0]["teams"]


def test_an_unknown_team_id_is_422(call):
    answer = call("PUT", json={"api_key": KEY, "default_team_id": "11111111-2222-4333-8444-555555555555"})
    assert answer.status_code == 422 and "not a team of this Richpanel account" in answer.json()["error"]


@pytest.mark.parametrize(("body", "expected"), [
    ({"api_key": KEY, "default_channel": "sms"}, "email, message, twilio-sms, attentive, aircall, "
                                                  "facebook_message, instagram, facebook_feed_comment"),
    ({"api_key": KEY[3:]}, "starts with 'rp_'"),
    ({"api_key": KEY, "enabled": "yes"}, "enabled"),
    ({"api_key": KEY, "team": "Claims", "extra": 1}, "2 fields need fixing: team, extra"),
    ({"default_channel": "email"}, "api_key is required"),
    (["not", "an", "object"], "must be a JSON object"),
])
def test_bad_bodies_are_422_with_a_clear_message(call, body, expected):
    answer = call("PUT", json=body)
    assert answer.status_code == 422
    assert expected in answer.json()["error"]
    assert KEY[3:] not in answer.text
    assert call("GET").status_code == 404


def test_a_body_that_is_not_json_is_400(call):
    answer = call("PUT", content=b"{api_key: rp_", headers={"content-type": "application/json"})
    assert answer.status_code == 400 and "not valid JSON" in answer.json()["error"]  # as the ingress answers


def test_put_merges_over_the_stored_settings(call):
    call("PUT", json={"api_key": KEY, "default_team_id": TEAM, "default_channel": "message"})
    answer = call("PUT", json={"default_channel": "aircall"})
    assert answer.status_code == 200, answer.text
    body = call("GET").json()
    assert (body["api_key"], body["default_team_id"], body["default_channel"]) == ("rp_…a1b2", TEAM, "aircall")
    assert call("PUT", json={"default_team_id": None}).json()["default_team_id"] is None


def test_delete_disables_and_forgets_the_key(call):
    call("PUT", json={"api_key": KEY})
    answer = call("DELETE")
    assert answer.status_code == 200
    body = call("GET").json()
    assert (body["api_key"], body["enabled"], body["connected"]) == (None, False, False)
    assert call("PUT", json={"enabled": True}).status_code == 422
    assert call("DELETE", "/internal/integrations/richpanel/stores/never").status_code == 404


def test_teams_come_straight_from_richpanel(call, sandbox):
    assert call("GET", URL + "/teams").status_code == 404
    call("PUT", json={"api_key": KEY})
    answer = call("GET", URL + "/teams")
    assert answer.status_code == 200
    assert answer.json()["teams"][0] == {"id": TEAM, "name": "Claims"}
    assert [t["name"] for t in answer.json()["teams"]] == ["Claims", "Support"]
    sandbox[0].update_config(rate_limit_rate=1.0)
    limited = call("GET", URL + "/teams")
    assert limited.status_code == 502 and "rate limiting" in limited.json()["error"]
    assert limited.headers["Retry-After"] == "1"


def test_teams_with_a_rejected_or_missing_key_is_422(call, sandbox):
    call("PUT", json={"api_key": KEY})
    sandbox[0].reset()
    rejected = call("GET", URL + "/teams")
    assert rejected.status_code == 422 and "rejected the stored API key" in rejected.json()["error"]
    assert call("GET").json()["health"]["credentials"] == "invalid"
    call("DELETE")
    missing = call("GET", URL + "/teams")
    assert missing.status_code == 422 and "no Richpanel API key is stored" in missing.json()["error"]


def test_an_undecryptable_key_answers_409_and_a_new_key_repairs_it(call, host):
    call("PUT", json={"api_key": KEY})
    host.redis.hset(host.key("richpanel", "store", "store_123"), "api_key",
                    host.vault.encrypt("another_store", "api_key", KEY))
    for method, url in (("GET", URL), ("GET", URL + "/teams")):
        answer = call(method, url)
        assert answer.status_code == 409 and "enter the secret again" in answer.json()["error"]
    assert call("PUT", json={"enabled": True}).status_code == 422
    assert call("PUT", json={"api_key": KEY}).status_code == 200
    assert call("GET").json()["api_key"] == "rp_…a1b2"


@pytest.mark.parametrize(("method", "path"), [
    ("PUT", ""), ("GET", ""), ("DELETE", ""), ("GET", "/teams"),
])
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": ADMIN_TOKEN}])
def test_every_route_refuses_a_missing_or_wrong_token(call, method, path, headers):
    answer = call.client.request(method, URL + path, headers=headers, json={"api_key": KEY})
    assert answer.status_code == 401
    assert call("GET").status_code == 404  # the refused PUT saved nothing


def test_mirror_messages_is_off_until_turned_on_and_a_put_that_omits_it_keeps_it(call, host):
    answer = call("PUT", json={"api_key": KEY, "default_channel": "email", "enabled": True})
    assert answer.status_code == 200 and answer.json()["mirror_messages"] is False  # off by default
    assert call("PUT", json={"api_key": KEY, "mirror_messages": True}).json()["mirror_messages"] is True
    assert call("GET").json()["mirror_messages"] is True
    _, store = host.delivery("richpanel").store("store_123", fresh=True)
    assert host.delivery("richpanel").helpdesk.mirrors_messages(store), "the delivery engine sees it on"
    assert call("PUT", json={"default_channel": "message"}).status_code == 200
    assert call("PUT", json={"mirror_messages": None}).status_code == 200  # null keeps it too
    body = call("GET").json()
    assert (body["mirror_messages"], body["default_channel"], body["api_key"]) == (True, "message", "rp_…a1b2")
    assert call("PUT", json={"mirror_messages": False}).json()["mirror_messages"] is False
    assert call("GET").json()["mirror_messages"] is False
    _, store = host.delivery("richpanel").store("store_123", fresh=True)
    assert not host.delivery("richpanel").helpdesk.mirrors_messages(store)


def test_the_mirror_is_turned_on_without_sending_the_key_again(call, sandbox):
    call("PUT", json={"api_key": KEY, "enabled": False})
    teams_calls = len(sandbox[0].requests)
    answer = call("PUT", json={"mirror_messages": True})
    assert answer.status_code == 200, answer.text
    assert len(sandbox[0].requests) == teams_calls, "the mirror alone asks Richpanel nothing"
    assert call("PUT", json={"enabled": True}).status_code == 200  # enabling checks the stored key, as always
    body = call("GET").json()
    assert (body["mirror_messages"], body["enabled"], body["api_key"]) == (True, True, "rp_…a1b2")
    assert call("PUT", json={"mirror_messages": False}).json()["mirror_messages"] is False


def test_the_mirror_alone_cannot_configure_a_store(call):
    answer = call("PUT", json={"mirror_messages": True})
    assert answer.status_code == 422 and "api_key is required" in answer.json()["error"]
    assert call("GET").status_code == 404


@pytest.mark.parametrize("value", ["yes", "true", 1, 0, [], {}])
def test_a_mirror_messages_that_is_not_a_boolean_is_422_naming_it(call, value):
    call("PUT", json={"api_key": KEY, "mirror_messages": True})
    answer = call("PUT", json={"mirror_messages": value, "default_channel": "message"})
    assert answer.status_code == 422
    assert [d["field"] for d in answer.json()["details"]] == ["mirror_messages"]
    assert "mirror_messages" in answer.json()["error"]
    body = call("GET").json()
    assert (body["mirror_messages"], body["default_channel"]) == (True, "email"), "nothing was saved"


def test_a_team_id_with_a_trailing_newline_is_a_422_naming_it(call):
    answer = call("PUT", json={"api_key": KEY, "default_team_id": TEAM + "\n"})
    assert answer.status_code == 422, answer.text
    assert [d["field"] for d in answer.json()["details"]] == ["default_team_id"]
