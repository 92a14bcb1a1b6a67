"""The template tests itself, so a copied plugin starts with tests that pass and show the way."""

from __future__ import annotations

import json

from click.testing import CliRunner
from opcore_hooks.testing import claim_created, drain, state_changed
from starlette.testclient import TestClient

from opcore_hooks.testing import ADMIN_TOKEN, WEBHOOK_SECRET
from opcore_hooks.app import create_app
from opcore_hooks.cli import cli
from opcore_hooks.plugins import load_plugins
from plugins._template import plugin

NAME = plugin.NAME


def seen(host) -> list[dict]:
    return [json.loads(raw) for raw in host.redis.lrange(host.key(NAME, "seen"), 0, -1)]


def test_every_hook_has_a_spec():
    loaded = load_plugins({NAME: plugin})
    assert set(loaded.hooks_of(NAME)) == {
        "register_settings", "register_actors", "register_routes", "register_commands",
        "on_claim_created", "on_claim_status_changed", "widget_context",
        "validate_credentials", "store_status", "rotate_secrets",
    }


def test_claim_events_reach_the_hooks_and_the_actor(make_host, run_worker):
    host = make_host({NAME: plugin})
    worker = run_worker(host)
    event = claim_created()
    with TestClient(create_app(host)) as client:
        headers = {"x-webhook-secret": WEBHOOK_SECRET}
        assert client.post("/webhooks/orderprotection", json=event, headers=headers).status_code == 202
        client.post("/webhooks/orderprotection", json=state_changed(event["body"]["claim_id"], "APPROVED"),
                    headers=headers)
    drain(host, worker)
    kinds = sorted(entry["what"] for entry in seen(host))
    assert kinds == ["created", "status", "ticket"]


def test_its_route_is_mounted_behind_the_admin_token(make_host):
    host = make_host({NAME: plugin})
    with TestClient(create_app(host)) as client:
        url = f"/internal/integrations/{NAME}/stores/s1"
        assert client.get(url).status_code == 401
        answer = client.get(url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert answer.json() == {"plugin": NAME, "store_id": "s1", "seen": 0}


def test_its_settings_come_from_its_own_environment(make_host, monkeypatch):
    monkeypatch.setenv("OPCORE_TEMPLATE_API_URL", "https://desk.test")
    host = make_host({NAME: plugin})
    assert host.plugin_settings(NAME).api_url == "https://desk.test"


def test_its_command_joins_the_cli():
    loaded = load_plugins({NAME: plugin})
    loaded.pm.hook.register_commands(cli=cli)
    result = CliRunner().invoke(cli, ["stores", "set", NAME, "s1"])
    assert result.exit_code == 0, result.output
    assert "configured s1" in result.output
