"""Plugin loading and isolation: one broken plugin never breaks the others."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from opcore_hooks import hookimpl
from opcore_hooks.app import create_app
from opcore_hooks.cli import cli
from opcore_hooks.deadletters import retry_options
from opcore_hooks.plugins import PluginLoadError, load_plugins
from opcore_hooks.testing import WEBHOOK_SECRET, claim_created, drain, wait_for


class Recorder:
    """A plugin that records every claim it sees in Redis and can be told to fail N times."""

    def __init__(self, name: str, failures: int = 0) -> None:
        self.name = name
        self.failures = failures

    @hookimpl
    def on_claim_created(self, host, event, claim):
        calls = host.redis.incr(host.key("test", self.name, "calls"))
        if calls <= self.failures:
            raise RuntimeError(f"{self.name} is down (call {calls})")
        host.redis.rpush(host.key("test", self.name, "claims"), claim.claim_id)

    @hookimpl
    def on_claim_status_changed(self, host, event, change):
        host.redis.rpush(host.key("test", self.name, "states"), change.claim_state.value)


def claims_of(host, name):
    return [c.decode() for c in host.redis.lrange(host.key("test", name, "claims"), 0, -1)]


def post(host, *events):
    with TestClient(create_app(host)) as client:
        for event in events:
            answer = client.post("/webhooks/orderprotection", json=event, headers={"x-webhook-secret": WEBHOOK_SECRET})
            assert answer.status_code == 202, answer.text


def test_a_raising_plugin_does_not_stop_another_and_is_retried_alone(make_host, run_worker):
    broken, healthy = Recorder("broken", failures=2), Recorder("healthy")
    host = make_host({"broken": broken, "healthy": healthy})
    worker = run_worker(host)
    # Dramatiq's backoff would make the retries slow; the test shortens it for this actor.
    host.broker.get_actor("opcore.deliver").options.update(min_backoff=10, max_backoff=50)
    event = claim_created()
    post(host, event)
    wait_for(lambda: claims_of(host, "broken"))
    drain(host, worker)
    assert claims_of(host, "healthy") == [event["body"]["claim_id"]]
    assert claims_of(host, "broken") == [event["body"]["claim_id"]]
    assert int(host.redis.get(host.key("test", "healthy", "calls"))) == 1
    assert int(host.redis.get(host.key("test", "broken", "calls"))) == 3


def test_a_plugin_that_never_recovers_ends_in_dead_letters_with_its_reason(make_host, run_worker):
    host = make_host({"broken": Recorder("broken", failures=10**6), "healthy": Recorder("healthy")})
    host.broker.get_actor("opcore.deliver").options.update(min_backoff=1, max_backoff=5, **retry_options(2))
    worker = run_worker(host)
    event = claim_created()
    post(host, event)
    wait_for(lambda: host.dead_letters.count() == 1)
    drain(host, worker)
    [entry] = host.dead_letters.list()
    assert entry.actor == "opcore.deliver"
    assert entry.claim_id == event["body"]["claim_id"]
    assert "broken is down" in entry.reason and entry.reason.startswith("retries exhausted after 3 attempt(s)")
    assert claims_of(host, "healthy") == [event["body"]["claim_id"]]


def test_the_same_event_twice_runs_the_hooks_once(make_host, run_worker):
    host = make_host({"one": Recorder("one")})
    worker = run_worker(host)
    event = claim_created()
    with TestClient(create_app(host)) as client:
        headers = {"x-webhook-secret": WEBHOOK_SECRET}
        assert client.post("/webhooks/orderprotection", json=event, headers=headers).status_code == 202
        assert client.post("/webhooks/orderprotection", json=event, headers=headers).json()["status"] == "duplicate"
    drain(host, worker)
    assert claims_of(host, "one") == [event["body"]["claim_id"]]


def test_status_changes_reach_plugins_with_the_new_state(make_host, run_worker):
    from opcore_hooks.testing import approved, state_changed

    host = make_host({"one": Recorder("one")})
    worker = run_worker(host)
    post(host, state_changed("c1", "WAITING_FOR_BRAND"), approved("c1"))
    drain(host, worker)
    states = [s.decode() for s in host.redis.lrange(host.key("test", "one", "states"), 0, -1)]
    assert sorted(states) == ["APPROVED", "WAITING_FOR_BRAND"]


def test_a_hook_without_a_spec_fails_loudly():
    class Typo:
        @hookimpl
        def on_claim_craeted(self, host, event, claim):
            pass

    with pytest.raises(PluginLoadError, match="on_claim_craeted"):
        load_plugins({"typo": Typo()})


def fake_entry_points(monkeypatch, **plugins):
    """Entry points whose load() returns the object, or raises it when it is an exception."""

    def load_for(target):
        def load():
            if isinstance(target, Exception):
                raise target
            return target
        return load

    eps = [SimpleNamespace(name=name, load=load_for(target)) for name, target in plugins.items()]
    monkeypatch.setattr("opcore_hooks.plugins.entry_points", lambda group: eps)


def test_a_plugin_that_fails_to_import_is_reported_and_the_others_load(monkeypatch):
    fake_entry_points(monkeypatch, good=Recorder("good"), bad=ImportError("No module named 'zendesk_sdk'"))
    loaded = load_plugins()
    assert loaded.names() == ["good"]
    assert "zendesk_sdk" in loaded.failures["bad"]


def test_strict_loading_makes_an_import_failure_fatal(monkeypatch):
    fake_entry_points(monkeypatch, bad=ImportError("boom"))
    with pytest.raises(PluginLoadError, match="bad"):
        load_plugins(strict=True)


def test_the_allowlist_restricts_which_plugins_load(monkeypatch):
    fake_entry_points(monkeypatch, one=Recorder("one"), two=Recorder("two"))
    loaded = load_plugins(allowlist=["two", "three"])
    assert loaded.names() == ["two"]
    assert "three" in loaded.failures


def test_opcore_plugins_lists_failures_beside_working_plugins(monkeypatch):
    fake_entry_points(monkeypatch, good=Recorder("good"), bad=SyntaxError("invalid syntax"))
    result = CliRunner().invoke(cli, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["plugins"] == [{"name": "good", "hooks": ["on_claim_created", "on_claim_status_changed"]}]
    assert "invalid syntax" in data["failures"]["bad"]


def test_opcore_plugins_lists_the_installed_richpanel_plugin_and_its_hooks(monkeypatch):
    monkeypatch.delenv("OPCORE_PLUGINS", raising=False)
    result = CliRunner().invoke(cli, ["plugins"])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if line.startswith("richpanel:"))
    for hook in ("on_claim_created", "on_claim_status_changed", "widget_context", "validate_credentials",
                 "register_helpdesk", "register_routes"):
        assert hook in line


def test_a_store_s_burst_overflows_into_the_bulk_lane_and_is_all_delivered(make_host, run_worker):
    from opcore_hooks.dispatch import LANE_LIMIT

    host = make_host({"one": Recorder("one")})
    burst = [claim_created(claim_id=f"burst-{i}") for i in range(LANE_LIMIT + 10)]
    quiet = claim_created(claim_id="quiet-1", store_id="store_quiet")
    post(host, *burst, quiet)
    ns = host.broker.namespace
    # The quiet store's event stays in the main lane, ahead of the burst's overflow.
    assert host.redis.hlen(f"{ns}:opcore.msgs") == LANE_LIMIT + 1
    assert host.redis.hlen(f"{ns}:opcore.bulk.msgs") == 10
    worker = run_worker(host)
    wait_for(lambda: len(claims_of(host, "one")) == len(burst) + 1)
    drain(host, worker)
    assert sorted(claims_of(host, "one")) == sorted([e["body"]["claim_id"] for e in burst] + ["quiet-1"])
    assert not host.redis.exists(host.key("inflight", "store_123"))


def test_a_helpdesk_missing_a_required_method_fails_when_the_host_loads_it(make_host):
    """Not in a worker on the first claim: ``Helpdesk`` is an ABC."""
    from opcore_hooks import Helpdesk, Pacing

    class Incomplete(Helpdesk):
        pacing = Pacing(quota=10, window=1.0)

        def settings_key(self, store_id): return f"x:{store_id}"
        def load_store(self, store_id, fields): return fields
        def pacing_scope(self, store): return "scope"
        def credentials_rejected(self, store, reason): pass
        def create_ticket(self, call, claim): return "1"
        def find_ticket(self, call, claim): return None

    class Plugin:
        @hookimpl
        def register_helpdesk(self, host):
            return Incomplete(host)

    with pytest.raises(TypeError, match="finish_ticket"):
        make_host({"incomplete": Plugin()})
