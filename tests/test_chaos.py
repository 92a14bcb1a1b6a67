"""The chaos run (bench/chaos.py) at CI size, and one focused test per fault it found.

``test_chaos_run`` starts its own redis-server (AOF in a temporary directory), the Richpanel
sandbox with injected faults, ``opcore serve`` and two ``opcore worker`` processes, sends 200
claims while killing workers and restarting Redis, and checks what Richpanel received. It needs
``redis-server`` and is skipped, saying so, only when that is not installed.

The focused tests below it each reproduce, in seconds, one fault the chaos run found, and fail
on the code as it was before that fault was fixed.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import fakeredis
import pytest
import redis
from starlette.testclient import TestClient

from opcore_hooks.app import create_app
from opcore_hooks.config import Settings
from opcore_hooks.crypto import generate_master_key
from opcore_hooks.host import Host
from opcore_hooks.signing import sign
from opcore_hooks.testing import ADMIN_TOKEN, WEBHOOK_SECRET, claim_created, wait_for
from opcore_hooks.worker import EmbeddedWorker
from plugins.richpanel import plugin

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

needs_redis_server = pytest.mark.skipif(shutil.which("redis-server") is None,
                                        reason="redis-server is not installed: the chaos run needs a Redis of its own")


@pytest.mark.chaos
@needs_redis_server
@pytest.mark.timeout(240)
def test_chaos_run():
    from bench.chaos import run

    result = run(200, timeout=170, progress=print)
    print(result.report())
    assert result.settled, result.report()
    assert result.events_failed == 0
    # Half the stores are on Richpanel, half on Zendesk; each is judged from its own stand-in.
    assert result.tickets == result.zd_tickets == 100
    assert result.missing == result.duplicates == result.stray_tickets == 0
    assert result.zd_missing == result.zd_duplicates == result.zd_stray == 0
    assert result.snoozes_done == result.snoozes_expected == 50
    assert result.zd_pending_done == result.zd_pending_expected == 50
    assert result.snooze_before_ticket == 0 and result.unexpected_snoozes == 0 and result.zd_unexpected_pending == 0
    assert result.zd_public_comments == 0, "a public comment would have emailed the customer"
    assert result.unexpected_writes == 0 and result.zd_unexpected_writes == 0
    assert result.unexplained_dead_letters == 0 and all(d["reason"].strip() for d in result.dead_letters)
    assert result.dramatiq_dead == 0 and result.parked == 0 and result.left_in_queues == 0
    assert result.records_out_of_step == 0
    # The note mirror is on for half the stores: each message one private note, in order, after its ticket.
    assert result.notes_expected > 0 and result.notes_written == result.notes_expected
    assert result.notes_missing == result.notes_duplicated == result.notes_unexpected == 0
    assert result.notes_public == result.notes_out_of_order == result.notes_unescaped == 0
    assert result.writes_before_ticket == 0
    assert result.secret_leaks == []
    assert result.secrets_checked.get("redis keys", 0) > 0 and result.secrets_checked.get("log files", 0) >= 4
    assert result.secrets_checked.get("http answers", 0) > 0
    assert result.widget.get("attack_accepted", 0) == 0 and result.widget.get("refused", 0) > 0
    assert result.widget.get("5xx", 0) == 0
    assert result.widget_claims_missing == 0 and result.widget_state_wrong == 0
    assert result.worker_kills >= 3 and result.redis_restarts == 1
    assert result.ok, result.report()
    assert result.wall_seconds < 180


# -- a Redis of our own, to take away and give back -------------------------------------------

class OwnRedis:
    """redis-server on a free port, AOF always, in ``directory``; killed and restarted by pid only."""

    def __init__(self, directory: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.directory = directory
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
             "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path)
    server.start()
    yield server
    server.kill()


@pytest.fixture
def bare_host(own_redis: OwnRedis) -> Iterator[Host]:
    """A host with no plugins on the private Redis, as ``opcore worker`` builds it."""
    host = Host(Settings(_env_file=None, redis_url=own_redis.url, namespace="chaostest", master_key=generate_master_key(),
                         webhook_secret=WEBHOOK_SECRET, admin_token=ADMIN_TOKEN, plugins=""), plugins={})
    yield host
    host.close()


# -- finding 1: a retry that could not be enqueued was dropped ----------------------------------------

@needs_redis_server
@pytest.mark.timeout(60)
def test_a_failure_while_redis_is_away_is_still_retried(own_redis, bare_host):
    calls: list[float] = []

    def flaky(n: int) -> None:
        calls.append(time.monotonic())
        if len(calls) == 1:
            own_redis.kill()  # Redis goes away while this attempt fails
            raise RuntimeError("the first attempt fails")

    actor = bare_host.actor(flaky, plugin="chaostest", max_retries=5, min_backoff=100, max_backoff=200)
    worker = EmbeddedWorker(bare_host, threads=2)
    worker.start()
    try:
        actor.send(1)
        wait_for(lambda: calls, timeout=10)
        time.sleep(1.0)
        own_redis.start()
        wait_for(lambda: len(calls) >= 2, timeout=20)
    finally:
        worker.stop(timeout_ms=5000)


# -- finding 2: delayed messages held by a worker were stranded by a Redis restart -----------------------

@needs_redis_server
@pytest.mark.timeout(60)
def test_delayed_messages_survive_a_redis_restart_without_a_worker_restart(own_redis, bare_host):
    calls: list[int] = []

    def later(n: int) -> None:
        calls.append(n)

    actor = bare_host.actor(later, plugin="chaostest")
    worker = EmbeddedWorker(bare_host, threads=2)
    worker.start()
    probe = redis.Redis.from_url(own_redis.url)
    try:
        actor.send_with_options(args=(1,), delay=4000)
        # the worker has fetched it into its in-memory delay queue
        wait_for(lambda: any(probe.scard(k) for k in probe.scan_iter("chaostest:dramatiq:__acks__.*.chaostest.DQ")),
                 timeout=10)
        own_redis.kill()
        time.sleep(1.0)
        own_redis.start()
        wait_for(lambda: calls, timeout=25)
    finally:
        probe.close()
        worker.stop(timeout_ms=5000)


# -- finding 3: HTTP answers while Redis is away ------------------------------------------------------

@pytest.fixture
def outage():
    """A Richpanel host on an embedded store that can be taken away: (client, host, server)."""
    server = fakeredis.FakeServer()
    settings = Settings(_env_file=None, redis_url=None, webhook_secret=WEBHOOK_SECRET, admin_token=ADMIN_TOKEN,
                        master_key=generate_master_key(), namespace="optest", plugins="")
    host = Host(settings, redis_client=fakeredis.FakeRedis(server=server), plugins={"richpanel": plugin})
    with TestClient(create_app(host), raise_server_exceptions=False) as client:
        yield client, host, server
    host.close()


ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def test_the_ingress_and_healthz_answer_503_json_while_redis_is_away(outage):
    client, host, server = outage
    server.connected = False
    answer = client.post("/webhooks/orderprotection", json=claim_created(), headers={"x-webhook-secret": WEBHOOK_SECRET})
    assert answer.status_code == 503 and "error" in answer.json()
    health = client.get("/healthz")
    assert health.status_code == 503 and health.json()["status"] == "unavailable"


def test_the_widget_answers_503_json_while_redis_is_away(outage):
    client, host, server = outage
    secret = client.post("/internal/integrations/richpanel/stores/store_123/widget", headers=ADMIN).json()["signing_secret"]
    target = "/widgets/richpanel/store_123?email=ana%40example.com"
    assert client.get(target, headers={"X-OP-Signature": sign(secret, target, int(time.time()))}).status_code == 200
    server.connected = False
    answer = client.get(target, headers={"X-OP-Signature": sign(secret, target, int(time.time()))})
    assert answer.status_code == 503
    assert answer.headers["content-type"].startswith("application/json") and answer.json()["error"]


def test_the_settings_api_answers_503_json_while_redis_is_away(outage):
    client, host, server = outage
    server.connected = False
    for method, path in (("GET", "/internal/integrations/richpanel/stores/store_123"),
                         ("DELETE", "/internal/integrations/richpanel/stores/store_123"),
                         ("POST", "/internal/integrations/richpanel/stores/store_123/widget")):
        answer = client.request(method, path, headers=ADMIN)
        assert answer.status_code == 503, (method, path, answer.status_code)
        assert answer.headers["content-type"].startswith("application/json") and answer.json()["error"]


# -- finding 4: a state change racing its claim's creation was parked for ever --------------------------

def test_a_state_change_racing_its_claim_is_not_lost(make_host):
    from opcore_hooks.events import parse_body

    host = make_host()
    rm = host.readmodel
    created = claim_created(claim_id="claim-race")
    claim = parse_body("claim.created", created["body"])
    change = parse_body("claim.state_changed", {"store_id": "store_123", "claim_id": "claim-race",
                                                "claim_state": "RESOLVED"})
    real = rm._set_state

    def claim_recorded_meanwhile(*args, **kwargs):
        rm._set_state = real
        rm.record_claim(claim, datetime(2026, 11, 27, 10, 0, tzinfo=timezone.utc))  # the other worker
        return real(*args, **kwargs)

    rm._set_state = claim_recorded_meanwhile
    rm.record_state(change, datetime(2026, 11, 27, 10, 0, 1, tzinfo=timezone.utc))
    [shown] = rm.customer_context("store_123", "ana@example.com").claims
    assert shown.claim_state == "RESOLVED"


def test_the_judge_counts_a_note_that_is_not_private_and_only_writes_that_acted():
    from bench._chaos_judge import _judge_requests
    from bench._chaos_result import ChaosResult

    def put(body, status):
        return {"method": "PUT", "path": "/v1/tickets/t1", "status": status, "dropped": status is None,
                "body": body, "time": 1.0}

    private = {"ticket": {"comment": {"body": "x", "public": False, "sender_type": "operator"}}}
    public = {"ticket": {"comment": {"body": "x", "public": True, "sender_type": "operator"}}}
    reply = {"ticket": {"comment": {"body": "x", "public": False, "sender_type": "customer"}}}
    for requests, unexpected in (([put(private, 200), put(private, None)], 0),
                                 ([put(None, None), put(None, 500), put(public, 429)], 0),  # none acted
                                 ([put(public, 200)], 1), ([put(reply, None)], 1)):
        result = ChaosResult()
        _judge_requests(requests, {"t1": 0.0}, result)
        assert result.unexpected_writes == unexpected, requests
