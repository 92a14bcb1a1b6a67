"""The Richpanel client against scripted answers: what a caller sees for each kind of answer."""

from __future__ import annotations

import json
import time
import traceback
from email.utils import formatdate

import httpx
import pytest

from opcore_hooks.delivery import parse_retry_after
from plugins.richpanel.client import (
    AuthError,
    ClientError,
    RateLimited,
    RateLimitInfo,
    RichpanelClient,
    RichpanelError,
    ServerError,
    Team,
    TransportError,
)

KEY = "rp_live_S3cretKeyValue_9f3a"


def scripted(handler, **kwargs) -> RichpanelClient:
    http = httpx.Client(transport=httpx.MockTransport(handler))
    return RichpanelClient("https://rp.example", KEY, http=http, **kwargs)


def answer(status: int, body=None, headers=None):
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body, headers=headers)
    return handler


def assert_no_key(exc: BaseException) -> None:
    text = str(exc) + repr(exc) + "".join(traceback.format_exception(exc))
    assert KEY not in text


@pytest.mark.parametrize(("status", "kind"), [
    (400, ClientError), (401, AuthError), (404, ClientError), (409, ClientError),
    (413, ClientError), (429, RateLimited), (492, RateLimited), (500, ServerError),
    (503, ServerError),
])
def test_each_status_raises_its_typed_error(status, kind):
    client = scripted(answer(status, {"error": f"problem {status}"}, {"Retry-After": "3"}))
    with pytest.raises(kind) as caught:
        client.get_ticket("t1")
    assert isinstance(caught.value, RichpanelError)
    assert caught.value.status == status
    assert caught.value.error == f"problem {status}"
    assert_no_key(caught.value)


def test_client_error_carries_richpanels_error_attribute():
    client = scripted(answer(400, {"error": "ticket.via is required"}))
    with pytest.raises(ClientError) as caught:
        client.create_ticket({"subject": "x"})
    assert caught.value.error == "ticket.via is required"
    assert "ticket.via is required" in str(caught.value)


def test_429_and_492_are_the_same_rate_limit_with_seconds():
    for status in (429, 492):
        with pytest.raises(RateLimited) as caught:
            scripted(answer(status, {}, {"Retry-After": "7"})).list_teams()
        assert caught.value.retry_after == 7.0


def test_retry_after_as_http_date():
    when = formatdate(time.time() + 90, usegmt=True)
    with pytest.raises(RateLimited) as caught:
        scripted(answer(492, {}, {"Retry-After": when})).list_teams()
    assert 85 <= caught.value.retry_after <= 91


@pytest.mark.parametrize("header", [None, "soon", ""])
def test_missing_or_garbled_retry_after_falls_back_to_30s(header):
    headers = {"Retry-After": header} if header is not None else {}
    with pytest.raises(RateLimited) as caught:
        scripted(answer(429, {}, headers)).list_teams()
    assert caught.value.retry_after == 30.0


def test_parse_retry_after_forms():
    now = 1_800_000_000.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("  ") is None
    assert parse_retry_after("not a date") is None
    assert parse_retry_after("12") == 12.0
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after("-4") is None  # not delta-seconds: ignored, and the caller's default waits
    assert parse_retry_after(formatdate(now + 42, usegmt=True), now=now) == 42.0
    assert parse_retry_after(formatdate(now - 42, usegmt=True), now=now) == 0.0  # never negative


@pytest.mark.parametrize("failure", [httpx.ReadTimeout, httpx.ConnectError,
                                     httpx.RemoteProtocolError])
def test_no_answer_is_a_transport_error_keeping_its_cause(failure):
    def handler(request: httpx.Request) -> httpx.Response:
        raise failure(f"boom with {request.headers['x-richpanel-key']}", request=request)

    with pytest.raises(TransportError) as caught:
        scripted(handler).create_ticket({"subject": "x"})
    assert caught.value.status is None
    assert isinstance(caught.value.__cause__, failure)
    assert KEY not in str(caught.value) and KEY not in repr(caught.value)


def test_ticket_id_from_ticket_id_or_top_level_id():
    assert scripted(answer(201, {"ticket": {"id": "abc"}})).create_ticket({}) == "abc"
    assert scripted(answer(200, {"id": 1234})).create_ticket({}) == "1234"
    with pytest.raises(ClientError):
        scripted(answer(200, {"ticket": {"status": "OPEN"}})).create_ticket({})
    with pytest.raises(ClientError):
        scripted(answer(201)).create_ticket({})  # success without a body: no id to return


def test_create_ticket_request_shape():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"ticket": {"id": "t1"}})

    http = httpx.Client(transport=httpx.MockTransport(handler))
    RichpanelClient("https://rp.example/v1/", KEY, http=http).create_ticket({"subject": "Claim"})
    request = seen[0]
    assert (request.method, str(request.url)) == ("POST", "https://rp.example/v1/tickets")
    assert json.loads(request.content) == {"ticket": {"subject": "Claim"}}
    assert request.headers["x-richpanel-key"] == KEY
    assert "x-richpanel-key" not in http.headers  # the shared pool never holds a store's key


@pytest.mark.parametrize("base", ["https://rp.example", "https://rp.example/",
                                  "https://rp.example/v1", "https://rp.example/v1/"])
def test_base_url_forms(base):
    urls = []

    def handler(request):
        urls.append(str(request.url))
        return httpx.Response(200, json={"team": []})

    http = httpx.Client(transport=httpx.MockTransport(handler))
    RichpanelClient(base, KEY, http=http).list_teams()
    assert urls == ["https://rp.example/v1/teams"]


@pytest.mark.parametrize("body", [
    [{"id": "a"}, {"id": "b"}],
    {"tickets": [{"id": "a"}, {"id": "b"}]},
    {"ticket": [{"id": "a"}, {"id": "b"}]},
])
def test_find_by_email_accepts_list_shapes(body):
    found = scripted(answer(200, body)).find_tickets_by_email("a@x.com")
    assert [t["id"] for t in found] == ["a", "b"]


def test_find_by_email_single_object_404_and_unknown_shape():
    single = scripted(answer(200, {"ticket": {"id": "a"}}))
    assert single.find_tickets_by_email("a@x.com") == [{"id": "a"}]
    assert scripted(answer(200, {"tickets": []})).find_tickets_by_email("a@x.com") == []
    assert scripted(answer(404, {"error": "not found"})).find_tickets_by_email("a@x.com") == []
    with pytest.raises(ClientError):  # "none" must not be guessed: it could duplicate a ticket
        scripted(answer(200, {"data": []})).find_tickets_by_email("a@x.com")


def test_find_by_email_url_encodes_the_email():
    paths = []

    def handler(request):
        paths.append(request.url.raw_path.decode())
        return httpx.Response(200, json=[])

    scripted(handler).find_tickets_by_email("ana+claims/x@example.com")
    assert paths == ["/v1/tickets/email/ana%2Bclaims%2Fx@example.com"]


def test_snooze_sends_zero():
    seen = []

    def handler(request):
        seen.append((request.method, request.url.raw_path.decode(), json.loads(request.content)))
        return httpx.Response(200, text="OK")  # an unreadable success body is still a success

    assert scripted(handler).snooze_ticket("t 1") is None
    assert seen == [("PUT", "/v1/tickets/t%201/snooze", {"snoozed_till": "0"})]


def test_a_note_is_an_operators_private_comment_on_the_escaped_ticket():
    seen = []

    def handler(request):
        seen.append((request.method, request.url.raw_path.decode(), json.loads(request.content)))
        return httpx.Response(200, json={"ticket": {"id": "t 1/../x"}})

    assert scripted(handler).add_note("t 1/../x", "<p>Where is my parcel?</p>") is None
    assert seen == [("PUT", "/v1/tickets/t%201%2F..%2Fx", {"ticket": {"comment": {
        "body": "<p>Where is my parcel?</p>", "public": False, "sender_type": "operator"}}})]


@pytest.mark.parametrize(("status", "kind"), [(404, ClientError), (429, RateLimited), (492, RateLimited),
                                              (500, ServerError)])
def test_a_refused_note_raises_the_typed_error_naming_the_route_only(status, kind):
    client = scripted(answer(status, {"error": "nope"}, {"Retry-After": "4"}))
    with pytest.raises(kind) as caught:
        client.add_note("ana@example.com", "<p>hi</p>")
    assert caught.value.status == status
    assert "PUT /v1/tickets/{id}" in str(caught.value) and "ana@example.com" not in str(caught.value)
    if kind is RateLimited:
        assert caught.value.retry_after == 4.0


def test_list_teams_returns_models():
    body = {"team": [{"id": "6f1c1f1e-1111-4a4a-9b9b-000000000001", "name": "Claims", "extra": 1}]}
    teams = scripted(answer(200, body)).list_teams()
    assert teams == [Team(id=body["team"][0]["id"], name="Claims")]


def test_rate_limit_info_and_on_response_on_every_answer():
    def limits(remaining: str) -> dict[str, str]:
        return {"X-RateLimit-Limit": "50", "X-RateLimit-Remaining": remaining}

    answers = iter([httpx.Response(200, json={"team": []}, headers=limits("49")),
                    httpx.Response(500, headers=limits("48")),
                    httpx.Response(200, json={"team": []})])
    seen = []
    client = scripted(lambda request: next(answers),
                      on_response=lambda response: seen.append(response.status_code))
    assert client.last_rate_limit is None
    client.list_teams()
    assert client.last_rate_limit == RateLimitInfo(limit=50, remaining=49)
    with pytest.raises(ServerError):
        client.list_teams()
    assert client.last_rate_limit == RateLimitInfo(limit=50, remaining=48)
    client.list_teams()
    assert client.last_rate_limit == RateLimitInfo(limit=None, remaining=None)
    assert seen == [200, 500, 200]


def test_key_never_shown():
    client = scripted(answer(401, {"error": f"invalid key {KEY}"}))
    assert KEY not in repr(client) and "rp_…9f3a" in repr(client)
    with pytest.raises(AuthError) as caught:
        client.list_teams()
    assert_no_key(caught.value)
    assert KEY not in (caught.value.error or "")


def test_closing_does_not_close_a_shared_pool():
    http = httpx.Client(transport=httpx.MockTransport(answer(200, {"team": []})))
    with RichpanelClient("https://rp.example", KEY, http=http) as client:
        client.list_teams()
    assert not http.is_closed
    http.close()


def test_every_request_names_opcore_as_its_user_agent():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("user-agent", ""))
        return httpx.Response(200, json={"team": []})

    RichpanelClient("https://rp.example", KEY, http=httpx.MockTransport(handler)).list_teams()
    assert seen and seen[0].startswith("opcore/")


def test_an_answer_carries_its_request_as_httpx_clients_do():
    answers = []
    client = RichpanelClient("https://rp.example", KEY, http=httpx.MockTransport(answer(200, {"team": []})),
                             on_response=answers.append)
    client.list_teams()
    assert answers[0].request.url == "https://rp.example/v1/teams"
    answers[0].raise_for_status()  # needs the request; raises nothing for a 200


@pytest.mark.parametrize(("env", "url", "expected"), [
    ({}, "https://api.richpanel.com", None),
    ({"HTTPS_PROXY": "http://proxy.local:3128"}, "https://api.richpanel.com", "http://proxy.local:3128"),
    ({"ALL_PROXY": "http://proxy.local:3128"}, "https://api.richpanel.com", "http://proxy.local:3128"),
    ({"HTTPS_PROXY": "http://proxy.local:3128", "NO_PROXY": "richpanel.com"}, "https://api.richpanel.com", None),
    ({"HTTPS_PROXY": "http://proxy.local:3128"}, "http://127.0.0.1:8080", None),  # plain http: HTTP_PROXY only
])
def test_the_richpanel_transport_takes_its_proxy_from_the_environment(monkeypatch, env, url, expected):
    from opcore_hooks.http import proxy_for

    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY", "https_proxy", "http_proxy", "all_proxy",
                 "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert proxy_for(url) == expected
