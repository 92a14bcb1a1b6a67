"""`opcore stores set richpanel`, `stores teams` and `stores show` as an operator runs them."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from opcore_hooks import Host
from opcore_hooks.cli import cli
from plugins.richpanel import commands, plugin, session, stores
from plugins.richpanel.sandbox import SandboxConfig, create_sandbox

KEY = "rp_live_Sup3rSecretKeyValue_a1b2"
TEAM = "0b5e6a3c-7d1f-4c2a-9e8b-1f2d3c4b5a69"


@pytest.fixture
def host(make_host, monkeypatch):
    """Every `Host.from_env()` of the commands gets this test's host, Richpanel being the sandbox.

    The host stands for the deployment's Redis, so OPCORE_REDIS_URL is set as an operator's would
    be (operator commands refuse the embedded store); it is never dialled: from_env returns the host.
    """
    app = create_sandbox(SandboxConfig(quota=None))
    app.state.sandbox.add_account(KEY, teams=[{"id": TEAM, "name": "Claims"}, {"name": "Support"}])
    monkeypatch.setenv("OPCORE_RICHPANEL_API_URL", "http://testserver")
    monkeypatch.setenv("OPCORE_REDIS_URL", "redis://the-test-host.invalid:6379/0")
    host = make_host({"richpanel": plugin})
    with TestClient(app) as http:
        session.set_http(host, http)
        monkeypatch.setattr(Host, "from_env", classmethod(lambda cls, **kw: host))
        yield host


@pytest.fixture
def run(host):
    commands.register(cli)

    def invoke(*args: str, input: str | None = None):
        result = CliRunner().invoke(cli, list(args), input=input)
        assert KEY not in result.output and KEY not in result.stderr
        return result
    return invoke


def test_set_checks_saves_and_prints_the_masked_settings(run, host):
    result = run("stores", "set", "richpanel", "store_123", "--api-key", KEY, "--team", TEAM,
                 "--channel", "message")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)["richpanel"]
    assert (shown["api_key"], shown["default_team_id"], shown["default_channel"]) == ("rp_…a1b2", TEAM, "message")
    assert stores.load(host, "store_123").api_key.get_secret_value() == KEY


def test_the_key_can_come_from_stdin(run, host):
    result = run("stores", "set", "richpanel", "store_123", "--api-key", "-", input=KEY + "\n")
    assert result.exit_code == 0, result.stderr
    assert stores.load(host, "store_123").api_key.get_secret_value() == KEY
    assert run("stores", "set", "richpanel", "s2", "--api-key", "-", input="").exit_code == 2


def test_set_merges_and_toggles(run, host):
    run("stores", "set", "richpanel", "store_123", "--api-key", KEY, "--team", TEAM)
    assert run("stores", "set", "richpanel", "store_123", "--disable").exit_code == 0
    config = stores.load(host, "store_123")
    assert (config.enabled, config.default_team_id, config.api_key.get_secret_value()) == (False, TEAM, KEY)
    assert run("stores", "set", "richpanel", "store_123", "--enable", "--clear-team").exit_code == 0
    config = stores.load(host, "store_123")
    assert (config.enabled, config.default_team_id) == (True, None)


def test_the_mirror_flag_turns_the_note_mirror_on_and_off_and_show_shows_it(run, host):
    def shown() -> bool:
        return json.loads(run("stores", "show", "store_123").stdout)["richpanel"]["mirror_messages"]

    on = run("stores", "set", "richpanel", "store_123", "--api-key", KEY, "--mirror-messages")
    assert on.exit_code == 0, on.output
    assert json.loads(on.stdout)["richpanel"]["mirror_messages"] is True and shown() is True
    assert run("stores", "set", "richpanel", "store_123", "--channel", "message").exit_code == 0
    assert shown() is True, "a change without the flag keeps the choice"
    assert run("stores", "set", "richpanel", "store_123", "--no-mirror-messages").exit_code == 0
    assert shown() is False
    assert stores.load(host, "store_123").api_key.get_secret_value() == KEY


@pytest.mark.parametrize(("args", "expected"), [
    (["--api-key", "rp_live_NotAnAccountKey_0000"], "Richpanel rejected this API key (401)"),
    (["--api-key", KEY, "--team", "Claims"], f"Claims ({TEAM})"),
    (["--api-key", KEY, "--channel", "sms"], "email, message, twilio-sms"),
    (["--api-key", KEY[3:]], "starts with 'rp_'"),
    (["--channel", "email"], "api_key is required"),
    (["--api-key", KEY, "--team", TEAM, "--clear-team"], "cannot be used together"),
])
def test_refusals_exit_2_with_the_message_on_stderr(run, host, args, expected):
    result = run("stores", "set", "richpanel", "store_123", *args)
    assert result.exit_code == 2
    assert expected in result.stderr
    assert KEY[3:] not in result.stderr
    assert stores.load(host, "store_123") is None


def test_teams_lists_ids_and_names(run):
    assert run("stores", "teams", "store_123").exit_code == 2
    run("stores", "set", "richpanel", "store_123", "--api-key", KEY)
    result = run("stores", "teams", "store_123")
    assert result.exit_code == 0
    assert result.stdout.splitlines()[0] == f"{TEAM}\tClaims"


def test_show_prints_the_masked_settings_through_the_hook(run):
    run("stores", "set", "richpanel", "store_123", "--api-key", KEY)
    result = run("stores", "show", "store_123")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)["richpanel"]
    assert shown["api_key"] == "rp_…a1b2" and shown["credentials"] == "valid" and shown["parked"] == 0
    assert run("stores", "show", "unknown").exit_code == 2


def test_show_counts_the_work_parked_on_a_rejected_key(run, host):
    run("stores", "set", "richpanel", "store_123", "--api-key", KEY)
    parking = host.delivery("richpanel").parking
    for claim in ("claim-1", "claim-2"):
        parking.park("store_123", "richpanel.finish_ticket", ["store_123", claim])
    shown = json.loads(run("stores", "show", "store_123").stdout)["richpanel"]
    assert shown["parked"] == 2


def test_cli_and_http_share_one_validate_and_save_path(run, monkeypatch):
    calls = []
    real = stores.update
    monkeypatch.setattr(stores, "update", lambda *a: calls.append(a[1]) or real(*a))
    run("stores", "set", "richpanel", "store_123", "--api-key", KEY)
    assert calls == ["store_123"]


def test_keys_rotate_reseals_keys_and_widget_secrets_under_the_new_master_key(run, host, monkeypatch):
    from pydantic import SecretStr

    from opcore_hooks.crypto import Vault

    assert run("stores", "set", "richpanel", "store_a", "--api-key", KEY).exit_code == 0
    host.panel("richpanel").provision("store_a")
    new = run("keys", "generate").output.strip()
    old = host.settings.master_key.get_secret_value()
    assert len(Vault.from_setting(new)._keys) == 1
    host.settings = host.settings.model_copy(update={"master_key": SecretStr(f"{new},{old}")})
    del host.__dict__["vault"]  # the vault is cached; the operator restarts with the new setting
    result = run("keys", "rotate")
    assert result.exit_code == 0, result.output
    assert "re-encrypted 2 secret(s)" in result.output
    host.settings = host.settings.model_copy(update={"master_key": SecretStr(new)})
    del host.__dict__["vault"]
    assert stores.load(host, "store_a").api_key.get_secret_value() == KEY
    assert host.panel("richpanel").active_secrets("store_a", now=0)
