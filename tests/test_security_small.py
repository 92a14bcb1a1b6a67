"""Findings of the security review, each pinned by what an operator or a caller would see."""

from __future__ import annotations

import base64
import json
import logging
import time
from typing import Any

import fakeredis
import pytest
from click.testing import CliRunner

from opcore_hooks import cli as cli_module
from opcore_hooks.cli import cli
from opcore_hooks.config import Settings
from opcore_hooks.crypto import generate_master_key
from opcore_hooks.host import Host
from opcore_hooks.testing import ADMIN_TOKEN, WEBHOOK_SECRET

# -- Finding 4: secrets that are empty, blank, short or malformed stop serve and worker at start --


@pytest.fixture
def started(monkeypatch) -> dict[str, Any]:
    """A valid environment; records what would have been served instead of serving it."""
    for name in ("REDIS_URL", "WEBHOOK_SECRET", "ADMIN_TOKEN", "MASTER_KEY", "PLUGINS"):
        monkeypatch.delenv(f"OPCORE_{name}", raising=False)
    monkeypatch.setenv("OPCORE_WEBHOOK_SECRET", WEBHOOK_SECRET)
    monkeypatch.setenv("OPCORE_ADMIN_TOKEN", ADMIN_TOKEN)
    monkeypatch.setenv("OPCORE_MASTER_KEY", generate_master_key())
    seen: dict[str, Any] = {}
    import uvicorn

    from opcore_hooks import worker

    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: seen.update(serve=vars(self.config)))
    monkeypatch.setattr(worker, "run_processes", lambda processes, threads, make: seen.update(worker=True) or 0)
    monkeypatch.setattr(cli_module, "_host", lambda **kwargs: Host(
        Settings(), redis_client=fakeredis.FakeRedis(server=fakeredis.FakeServer()), plugins={}))
    return seen


GOOD_KEY = generate_master_key()
BAD_VALUES = {
    "admin-token-empty": ("OPCORE_ADMIN_TOKEN", ""),
    "admin-token-blank": ("OPCORE_ADMIN_TOKEN", "   "),
    "admin-token-short": ("OPCORE_ADMIN_TOKEN", "short-token"),
    "admin-token-padded": ("OPCORE_ADMIN_TOKEN", "admin_test_token_0123456789 "),
    "webhook-secret-padded": ("OPCORE_WEBHOOK_SECRET", " whsec_test_0123456789"),
    "webhook-secret-blank": ("OPCORE_WEBHOOK_SECRET", " "),
    "webhook-secret-empty": ("OPCORE_WEBHOOK_SECRET", ""),
    "master-key-empty": ("OPCORE_MASTER_KEY", ""),
    "master-key-blank": ("OPCORE_MASTER_KEY", "\t"),
    "master-key-not-base64": ("OPCORE_MASTER_KEY", "notbase64"),
    "master-key-with-junk": ("OPCORE_MASTER_KEY", GOOD_KEY[:20] + "!*" + GOOD_KEY[20:]),  # the lax decoder skipped it
    "master-key-with-space": ("OPCORE_MASTER_KEY", GOOD_KEY[:20] + " " + GOOD_KEY[20:]),
    "master-key-second-bad": ("OPCORE_MASTER_KEY", f"{GOOD_KEY},not-a-key"),
    # 32 bytes of valid base64, and no secret at all (issue #23):
    "master-key-all-zero": ("OPCORE_MASTER_KEY", base64.urlsafe_b64encode(bytes(32)).decode()),
    "master-key-one-byte": ("OPCORE_MASTER_KEY", base64.urlsafe_b64encode(b"\xff" * 32).decode()),
    "master-key-pattern": ("OPCORE_MASTER_KEY", base64.urlsafe_b64encode(b"abcd" * 8).decode()),
}


CASES = {f"{command}-{name}": (command, *bad) for name, bad in BAD_VALUES.items()
         for command in ("serve", "worker") if command == "serve" or bad[0] == "OPCORE_MASTER_KEY"}


@pytest.mark.parametrize(("command", "variable", "value"), list(CASES.values()), ids=list(CASES))
def test_an_unusable_secret_stops_the_process_at_start_naming_it(started, monkeypatch, command, variable, value):
    monkeypatch.setenv("OPCORE_REDIS_URL", "redis://never-connected.invalid:6379/0")  # the worker needs one
    monkeypatch.setenv(variable, value)
    result = CliRunner().invoke(cli, [command])
    assert result.exit_code == 2, result.output
    assert variable in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    if variable == "OPCORE_MASTER_KEY" and value.strip():
        assert "opcore keys generate" in result.output
    assert not started  # neither uvicorn nor a worker process was started


def test_a_valid_environment_gets_past_the_checks(started, monkeypatch):
    assert CliRunner().invoke(cli, ["serve"]).exit_code == 0
    assert "serve" in started
    monkeypatch.setenv("OPCORE_REDIS_URL", "redis://never-connected.invalid:6379/0")
    monkeypatch.setenv("OPCORE_MASTER_KEY", f"{generate_master_key()},{GOOD_KEY.rstrip('=')}")  # padding optional
    assert CliRunner().invoke(cli, ["worker"]).exit_code == 0
    assert started["worker"]


# -- Finding 5: a JSON integer past Python's 4,300-digit cap is a 400, not a 500 with a traceback --

HUGE = "1" + "0" * 4400  # one digit past the cap is enough; this is plainly past it


@pytest.fixture
def app_client(make_host):
    from starlette.testclient import TestClient

    from opcore_hooks.app import create_app
    from plugins.richpanel import plugin as richpanel
    from plugins.zendesk import plugin as zendesk

    host = make_host({"richpanel": richpanel, "zendesk": zendesk})
    with TestClient(create_app(host)) as client:
        yield host, client


def test_a_webhook_with_a_huge_integer_is_a_400_and_nothing_is_enqueued(app_client, caplog):
    from opcore_hooks.testing import claim_created

    host, client = app_client
    event = json.dumps(claim_created())
    raw = event[:-1] + f', "amount": {HUGE}}}'
    answer = client.post("/webhooks/orderprotection", content=raw.encode(),
                         headers={"x-webhook-secret": WEBHOOK_SECRET, "content-type": "application/json"})
    assert answer.status_code == 400
    assert answer.json()["error"] == "body is not usable JSON: a number has more than 4300 digits"
    assert host.redis.hlen(f"{host.broker.namespace}:opcore.msgs") == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize(("helpdesk", "body"), [
    ("richpanel", '{"api_key": "rp_live_0123456789abcdef", "default_team_id": %s}'),
    ("zendesk", '{"subdomain": "acme", "email": "a@acme.test", "api_token": "t", "default_group_id": %s}'),
], ids=["richpanel", "zendesk"])
def test_a_settings_put_with_a_huge_integer_is_refused_and_nothing_is_saved(app_client, caplog, helpdesk, body):
    _, client = app_client
    url = f"/internal/integrations/{helpdesk}/stores/store_123"
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}", "content-type": "application/json"}
    answer = client.put(url, content=(body % HUGE).encode(), headers=auth)
    assert answer.status_code == 400  # as the ingress answers
    assert "body is not usable JSON: a number has more than 4300 digits" in answer.json()["error"]
    assert client.get(url, headers=auth).status_code == 404
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# -- Finding 6: serve starts uvicorn with limits an operator can rely on, and can change ------------


def test_serve_limits_concurrency_and_idle_connections_by_default(started):
    assert CliRunner().invoke(cli, ["serve"]).exit_code == 0
    limits = started["serve"]  # as uvicorn's Config holds them: every limit is one uvicorn knows
    assert limits["limit_concurrency"] == 200  # the 201st connection or request at once is a 503
    assert limits["timeout_keep_alive"] == 5  # an idle keep-alive connection closes after 5 s
    assert limits["h11_max_incomplete_event_size"] == 16 * 1024  # headers past 16 KiB are refused


def test_serve_limits_follow_the_options_and_the_environment(started, monkeypatch):
    result = CliRunner().invoke(cli, ["serve", "--limit-concurrency", "50", "--timeout-keep-alive", "2",
                                      "--max-header-bytes", "8192"])
    assert result.exit_code == 0, result.output
    assert (started["serve"]["limit_concurrency"], started["serve"]["timeout_keep_alive"],
            started["serve"]["h11_max_incomplete_event_size"]) == (50, 2, 8192)
    monkeypatch.setenv("OPCORE_LIMIT_CONCURRENCY", "75")
    assert CliRunner().invoke(cli, ["serve"]).exit_code == 0
    assert started["serve"]["limit_concurrency"] == 75
    assert CliRunner().invoke(cli, ["serve", "--limit-concurrency", "0"]).exit_code == 2  # no "unlimited"


# -- Finding 8: outside values are logged with %r, so a newline in one cannot forge a log line ------

FORGED = "\nERROR opcore.delivery: forged line"


def _one_line(caplog, logger: str) -> str:
    [record] = [r for r in caplog.records if r.name == logger]
    message = record.getMessage()
    assert "\n" not in message and "\r" not in message
    return message


def test_an_event_id_with_a_newline_is_logged_on_one_line(app_client, caplog, monkeypatch):
    from redis.exceptions import ConnectionError as RedisConnectionError

    from opcore_hooks.testing import claim_created

    host, client = app_client

    async def unavailable(*args: Any, **kwargs: Any) -> bool:
        raise RedisConnectionError("gone")

    monkeypatch.setattr(host.dispatcher, "accept", unavailable)
    event = claim_created()
    event["id"] = "evt-1\r" + FORGED  # event ids are free text in the envelope
    answer = client.post("/webhooks/orderprotection", json=event, headers={"x-webhook-secret": WEBHOOK_SECRET})
    assert answer.status_code == 503
    assert "evt-1" in _one_line(caplog, "opcore.ingress")


def test_a_dead_letter_whose_reason_holds_a_newline_is_logged_on_one_line(app_client, caplog):
    from opcore_hooks.delivery.engine import Job
    from opcore_hooks.delivery.helpdesk import Transient

    host, _ = app_client
    delivery = host.delivery("richpanel")
    # The helpdesk's own answer text ends up in the reason of work that gave up.
    delivery.transient(Job("finish", "store_123", "claim-1", attempt=delivery.max_attempts - 1),
                       Transient("502 from Richpanel: bad gateway" + FORGED))
    assert "is a dead letter" in _one_line(caplog, "opcore.delivery")
    assert host.dead_letters.list(claim_id="claim-1")


# -- Finding 9: the claim id is one percent-encoded path segment of the claim link -----------------

ODD_ID = "a/../b?next=x#frag ment"
ENCODED = "a%2F..%2Fb%3Fnext%3Dx%23frag%20ment"


def test_the_claim_link_encodes_the_id_as_one_path_segment(settings):
    base = "https://app.orderprotection.com/claims/view/"
    assert settings.claim_url(ODD_ID) == base + ENCODED
    assert settings.claim_url("cm6v2zdt1.0002_j20-vqs") == base + "cm6v2zdt1.0002_j20-vqs"  # valid ids unchanged


def test_the_summary_an_agent_reads_links_to_the_encoded_claim(settings):
    from opcore_hooks.events import ClaimCreated
    from opcore_hooks.samples import CLAIM_CREATED
    from opcore_hooks.summary import summary_html, summary_text

    # Built without validation: the doors refuse such an id, the link must not depend on that.
    claim = ClaimCreated.model_validate(CLAIM_CREATED["body"]).model_copy(update={"claim_id": ODD_ID})
    url = settings.claim_url(claim.claim_id)
    html, text = summary_html(claim, url, "note"), summary_text(claim, url, "note")
    assert f'<a href="https://app.orderprotection.com/claims/view/{ENCODED}">' in html
    assert f"Claim in Order Protection: https://app.orderprotection.com/claims/view/{ENCODED}" in text
    assert ODD_ID not in html and ODD_ID not in text


# -- Finding 10: pacing keys are named by an HMAC under the master key, not a plain hash ------------

API_KEY = "rp_live_PacingFingerprint_0001"


def test_pacing_keys_cannot_confirm_a_guessed_api_key(make_host, redis_client):
    import hashlib

    from pydantic import SecretStr

    from plugins.richpanel import plugin as richpanel

    first_key, second_key = generate_master_key(), generate_master_key()
    pacer = make_host({"richpanel": richpanel}, master_key=SecretStr(first_key)).delivery("richpanel").pacer
    now = time.time()
    slots = [pacer.reserve(API_KEY, now=now).at for _ in range(pacer.quota + 1)]
    pacer.block(API_KEY, 5, now=now)
    names = [k.decode() for k in redis_client.keys("*:pace:*")]
    assert names
    for guess in (hashlib.sha256(API_KEY.encode()).hexdigest(),
                  hashlib.sha256(b"opcore-pacing:" + API_KEY.encode()).hexdigest()):  # what named them before
        assert all(guess[:8] not in name for name in names), names
    # Every process with the same master key paces together; another master key names other keys.
    same = make_host({"richpanel": richpanel}, master_key=SecretStr(first_key)).delivery("richpanel").pacer
    other = make_host({"richpanel": richpanel}, master_key=SecretStr(second_key)).delivery("richpanel").pacer
    assert same.keys(API_KEY) == pacer.keys(API_KEY) and same.blocked_until(API_KEY) == pytest.approx(now + 5)
    assert set(other.keys(API_KEY)).isdisjoint(pacer.keys(API_KEY))
    # And pacing still paces: the quota fits in a window, the next request waits for the next one.
    assert slots[:-1] == [pytest.approx(now)] * pacer.quota and slots[-1] >= now + pacer.window


# -- Finding 10: the dependency floors stay past the advisories the review named ------------------

def test_dependency_floors_exclude_releases_with_known_advisories():
    import tomllib
    from pathlib import Path

    from packaging.requirements import Requirement
    from packaging.version import Version

    fixed_in = {"starlette": "1.3.1", "jinja2": "3.1.6", "cryptography": "50.0.0", "h11": "0.16"}
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    floors = {}
    for line in pyproject["project"]["dependencies"]:
        requirement = Requirement(line)
        for spec in requirement.specifier:
            if spec.operator == ">=":
                floors[requirement.name.lower()] = Version(spec.version)
    for name, version in fixed_in.items():
        assert name in floors and floors[name] >= Version(version), (name, floors.get(name))


def test_key_parts_can_never_pose_as_other_parts():
    from opcore_hooks.keys import join, part

    for parts in (("shop", "ana@example.com"), ("shop:eu", "ana"), ("shop", "eu:ana"), ("a%3Ab",), ("%",), ("",),
                  ("x", "", "y"), ("ünï", "コード"), ()):
        assert join("ns", *parts) == ":".join(("ns", *(part(p) for p in parts)))
    assert join("ns", "shop:eu", "ana") != join("ns", "shop", "eu:ana")
    assert join("ns", "a%3Ab") != join("ns", "a:b")
