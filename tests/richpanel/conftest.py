"""The Richpanel sandbox on a real socket, shared by the delivery and attack tests of a module;
a plain Richpanel host and its app for the widget tests (modules that need a sandbox behind
the host define their own ``host``)."""

from __future__ import annotations

from typing import Any, Iterator

import pytest
from starlette.testclient import TestClient

from opcore_hooks.app import create_app
from plugins.richpanel import plugin
from plugins.richpanel.sandbox import SandboxConfig, SandboxServer, run_in_thread


@pytest.fixture
def host(make_host):
    return make_host({"richpanel": plugin})


@pytest.fixture
def client(host):
    with TestClient(create_app(host)) as c:
        yield c


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxServer]:
    with run_in_thread(SandboxConfig(quota=None)) as srv:
        yield srv


@pytest.fixture
def sandbox(server: SandboxServer) -> Any:
    """The module's sandbox, emptied, without faults and without accounts (each test adds its own)."""
    server.state.reset()
    server.state.update_config(quota=None, error_rate=0, rate_limit_rate=0, drop_rate=0, latency_ms=(0, 0),
                               limit_status=429, retry_after_form="seconds", window=30.0)
    return server


@pytest.fixture
def mirror(make_host, run_worker, sandbox, monkeypatch):
    """A delivering Richpanel host (``test_delivery.delivering``) whose store mirrors messages as notes."""
    from plugins.richpanel import stores
    from plugins.richpanel.store_config import SettingsUpdate

    from .test_delivery import STORE, delivering

    host, worker, sandbox = delivering(make_host, run_worker, sandbox, monkeypatch)
    stores.update(host, STORE, SettingsUpdate(mirror_messages=True))
    sandbox.state.requests.clear()
    notes = host.delivery("richpanel").notes
    notes.write_actor.options.update(min_backoff=50, max_backoff=200)
    return host, worker, sandbox
