"""Replicated acknowledgement and Sentinel, against a real primary, replica and Sentinel.

The fixture starts its own ``redis-server`` primary and replica (and a Sentinel) on free ports
in a temporary directory, so the shared Redis is never touched. It runs when the real-Redis run
is on (``OPCORE_TEST_REDIS_URL``, which CI sets); the embedded store has no replicas, and
OPCORE_REDIS_REPLICAS above 0 refuses it. A replica is made to miss its confirmations by
stopping its process (SIGSTOP), as a stalled link or a busy machine would.
"""

from __future__ import annotations

from typing import Iterator

import pytest
import redis
from starlette.testclient import TestClient

from opcore_hooks.app import create_app
from opcore_hooks.config import ConfigError, Settings
from opcore_hooks.crypto import generate_master_key
from opcore_hooks.host import Host
from opcore_hooks.replication import NotReplicated, replication_status
from opcore_hooks.store import connect_settings
from opcore_hooks.testing import (
    ADMIN_TOKEN,
    WEBHOOK_SECRET,
    RedisPair,
    RedisServer,
    claim_created,
    needs_redis_pair,
    wait_for,
)


def settings(**overrides) -> Settings:
    values = dict(_env_file=None, webhook_secret=WEBHOOK_SECRET, admin_token=ADMIN_TOKEN,
                  master_key=generate_master_key(), namespace="optest", plugins="", redis_replicas=1,
                  redis_replica_timeout_ms=200)
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def host(redis_pair: RedisPair) -> Iterator[Host]:
    built = Host(settings(redis_url=redis_pair.url), plugins={})
    yield built
    built.close()


def post(host: Host, event: dict):
    with TestClient(create_app(host)) as client:
        return client.post("/webhooks/orderprotection", json=event, headers={"x-webhook-secret": WEBHOOK_SECRET})


def test_an_event_is_answered_202_once_the_replica_holds_it(redis_pair, host):
    event = claim_created()
    answer = post(host, event)
    assert answer.status_code == 202, answer.text
    # WAIT returned: the replica has it already, no polling needed
    assert redis_pair.replica.client.exists(host.key("seen", event["id"])) == 1
    assert redis_pair.replica.client.llen(f"{host.broker.namespace}:opcore") == 1


def test_without_the_replica_an_event_is_refused_whole_and_promised_on_redelivery(redis_pair, host):
    event = claim_created()
    redis_pair.replica.pause()
    answer = post(host, event)
    assert answer.status_code == 503
    assert answer.headers["Retry-After"] == "2"
    assert "replicas" in answer.json()["error"]
    # Nothing half-written: the mark and its message are on the primary together...
    primary = host.redis
    assert primary.exists(host.key("seen", event["id"])) == 1
    assert primary.llen(f"{host.broker.namespace}:opcore") == 1
    # ... and a redelivery is not promised either while the replica still lacks them
    assert post(host, event).status_code == 503
    redis_pair.replica.resume()
    again = post(host, event)
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    assert redis_pair.replica.client.llen(f"{host.broker.namespace}:opcore") == 1  # one message, for one ticket
    assert host.redis.hget(host.metrics.refusals_key, "ingress") == b"2"


def test_health_says_what_is_required_and_what_the_replicas_hold(redis_pair, host):
    with TestClient(create_app(host)) as client:
        redis_pair.replica.pause()
        answer = client.get("/healthz")  # reads never wait for replicas
        redis_pair.replica.resume()
    assert answer.status_code == 200
    replication = answer.json()["replication"]
    assert (replication["required"], replication["role"], replication["replicas_connected"]) == (1, "master", 1)


def test_a_confirmation_covers_writes_made_on_other_connections(redis_pair, host):
    with host.redis.pipeline() as pipe:  # a pool connection, not the thread's own
        pipe.set("optest:piped", "1").execute()
    host.replication.confirm(host.redis)
    assert redis_pair.replica.client.get("optest:piped") == b"1"
    redis_pair.replica.pause()
    with pytest.raises(NotReplicated, match="only 0 of 1 required Redis replica"):
        host.replication.confirm(host.redis)
    redis_pair.replica.resume()
    host.replication.confirm(host.redis)  # the same connection confirms once the replica is back


@needs_redis_pair
def test_sentinel_is_followed_to_the_primary_and_after_a_failover(tmp_path):
    pair = RedisPair(tmp_path)
    sentinel = RedisServer(tmp_path, "sentinel", f"sentinel monitor optest 127.0.0.1 {pair.primary.port} 1",
                      "sentinel down-after-milliseconds optest 1000", "sentinel failover-timeout optest 5000",
                      sentinel=True)
    try:
        wait_for(lambda: sentinel.client.execute_command("SENTINEL", "REPLICAS", "optest"), timeout=20)
        config = settings(redis_sentinels=f"127.0.0.1:{sentinel.port}", redis_sentinel_master="optest")
        assert not config.embedded  # no OPCORE_REDIS_URL needed
        client = connect_settings(config)
        client.set("optest:written", "before")
        assert pair.primary.client.get("optest:written") == b"before"

        def failover_started() -> bool:  # refused until the Sentinel has heard from the replica itself
            try:
                return bool(sentinel.client.execute_command("SENTINEL", "FAILOVER", "optest"))
            except redis.ResponseError:
                return False

        wait_for(failover_started, timeout=30, interval=0.5)
        wait_for(lambda: pair.replica.client.info("replication")["role"] == "master", timeout=30)
        # Until Sentinel demotes it, the old primary still takes writes that its demotion drops;
        # OPCORE_REDIS_REPLICAS=1 is what refuses to promise them (it has no replica left).
        wait_for(lambda: pair.primary.client.info("replication")["role"] == "slave", timeout=30)

        def written_after() -> bool:
            try:
                client.set("optest:written", "after")
                return True
            except redis.ConnectionError:  # a command on the demoted primary fails; the next finds the new one
                return False

        wait_for(written_after, timeout=30)
        assert pair.replica.client.get("optest:written") == b"after"  # the promoted one took it
        client.close()
    finally:
        sentinel.stop()
        pair.stop()


def test_sentinel_settings_are_checked_with_one_clear_line():
    with pytest.raises(ConfigError, match="OPCORE_REDIS_SENTINELS: 'nohost' is not host:port"):
        _ = settings(redis_sentinels="nohost", redis_sentinel_master="m").sentinel_addresses
    with pytest.raises(ConfigError, match="OPCORE_REDIS_SENTINEL_MASTER"):
        connect_settings(settings(redis_sentinels="127.0.0.1:26379"))


def test_replication_status_reads_the_replicas_lag(redis_pair, host):
    status = replication_status(host.redis)
    assert status is not None
    assert (status.role, status.connected, status.in_sync) == ("master", 1, 1)


def test_replicas_on_the_embedded_store_are_refused_naming_what_to_set(monkeypatch):
    monkeypatch.setenv("OPCORE_REDIS_REPLICAS", "1")
    monkeypatch.delenv("OPCORE_REDIS_URL", raising=False)
    with pytest.raises(ConfigError, match="^invalid configuration: OPCORE_REDIS_REPLICAS is above 0 but the store "
                                          "is embedded.*set OPCORE_REDIS_URL or OPCORE_REDIS_SENTINELS"):
        Settings(_env_file=None)
