"""The web tier's own routes and the processes' refusal to start half-configured."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from opcore_hooks.app import create_app
from opcore_hooks.cli import cli
from opcore_hooks.testing import ADMIN_TOKEN


def test_healthz_reports_the_store_and_plugins(make_host):
    host = make_host()
    with TestClient(create_app(host)) as client:
        answer = client.get("/healthz")
    assert answer.status_code == 200
    assert answer.json()["status"] == "ok"


def test_healthz_is_503_when_redis_is_gone(settings):
    import fakeredis

    from opcore_hooks.host import Host

    server = fakeredis.FakeServer()
    host = Host(settings, redis_client=fakeredis.FakeRedis(server=server), plugins={})
    with TestClient(create_app(host)) as client:
        server.connected = False
        assert client.get("/healthz").status_code == 503


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": ADMIN_TOKEN},
                                     {"Authorization": f"Basic {ADMIN_TOKEN}"}])
@pytest.mark.parametrize("path", ["/internal/anything", "/internal/integrations/x/stores/s"])
def test_every_internal_path_needs_the_admin_token(make_host, headers, path):
    with TestClient(create_app(make_host())) as client:
        answer = client.get(path, headers=headers)
    assert answer.status_code == 401
    assert "OPCORE_ADMIN_TOKEN" in answer.json()["error"]


def test_internal_paths_answer_with_the_token(make_host):
    with TestClient(create_app(make_host())) as client:
        answer = client.get("/internal/anything", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert answer.status_code == 404


@pytest.fixture
def bare_env(monkeypatch):
    for name in ("REDIS_URL", "WEBHOOK_SECRET", "ADMIN_TOKEN", "MASTER_KEY"):
        monkeypatch.delenv(f"OPCORE_{name}", raising=False)


def test_serve_refuses_to_start_naming_every_missing_variable(bare_env):
    result = CliRunner().invoke(cli, ["serve"])
    assert result.exit_code == 2
    for name in ("OPCORE_WEBHOOK_SECRET", "OPCORE_ADMIN_TOKEN", "OPCORE_MASTER_KEY"):
        assert name in result.output


def test_worker_refuses_to_start_without_redis(bare_env, monkeypatch):
    monkeypatch.setenv("OPCORE_MASTER_KEY", "x")
    result = CliRunner().invoke(cli, ["worker"])
    assert result.exit_code == 2
    assert "OPCORE_REDIS_URL" in result.output
    assert "OPCORE_MASTER_KEY" not in result.output
