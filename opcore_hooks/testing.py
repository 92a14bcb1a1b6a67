"""opcore's pytest plugin: fixtures and helpers for the host's tests and every plugin's.

Installed as a ``pytest11`` entry point, so a plugin copied from ``plugins/_template`` has
``make_host``, ``run_worker`` and the payload builders without a conftest of its own. Every
test that takes ``redis_client`` runs on fakeredis, and on real Redis as well when
``OPCORE_TEST_REDIS_URL`` is set (CI sets it), so the embedded mode and production run the
same code under the same assertions.
"""

from __future__ import annotations

import copy
import importlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator

import fakeredis
import pytest
import redis

from .config import Settings
from .crypto import generate_master_key
from .delivery import Call, Helpdesk, Note
from .host import Host
from .samples import CLAIM_CREATED
from .worker import EmbeddedWorker

REAL_REDIS = os.environ.get("OPCORE_TEST_REDIS_URL")

#: The host's entry points a plugin's tests drive (the app, the command line, plugin loading),
#: importable from here so a plugin's tests need nothing of the host but this and its API.
_ENTRY_POINTS = {"create_app": "app", "cli": "cli", "load_plugins": "plugins"}


def __getattr__(name: str) -> Any:
    """``create_app``, ``cli`` and ``load_plugins``, imported when first asked for (the command
    line pulls in the servers and the demo; a test that needs none of them imports none)."""
    if name in _ENTRY_POINTS:
        return getattr(importlib.import_module(f"opcore_hooks.{_ENTRY_POINTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
BACKENDS = ["fakeredis"] + (["redis"] if REAL_REDIS else [])

WEBHOOK_SECRET = "whsec_test_0123456789"
ADMIN_TOKEN = "admin_test_token_0123456789"


@pytest.fixture(params=BACKENDS)
def redis_client(request: pytest.FixtureRequest) -> Iterator[redis.Redis]:
    if request.param == "fakeredis":
        yield fakeredis.FakeRedis(server=fakeredis.FakeServer())
        return
    client = redis.Redis.from_url(REAL_REDIS)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


class RedisServer:
    """A ``redis-server`` of a test's own on a free loopback port (or a Sentinel, with ``sentinel``),
    stopped and continued by its own pid only: the shared Redis is never touched."""

    def __init__(self, tmp: Path, name: str, *args: str, sentinel: bool = False) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        folder = tmp / name
        folder.mkdir()
        if sentinel:
            conf = folder / "sentinel.conf"
            conf.write_text(f"port {self.port}\nbind 127.0.0.1\ndir {folder}\n" + "\n".join(args) + "\n")
            command = ["redis-server", str(conf), "--sentinel"]
        else:
            command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                       "--appendonly", "no", "--dir", str(folder), *args]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.client = redis.Redis(port=self.port, socket_timeout=5)
        wait_for(self._answers, timeout=10)

    def _answers(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.ConnectionError:
            return False

    def pause(self) -> None:
        """Stop the process (SIGSTOP): as a stalled link or a starved machine, it acknowledges nothing."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        self.resume()
        self.proc.kill()
        self.proc.wait(10)
        self.client.close()


class RedisPair:
    """A primary and one replica of it, replicating before this returns."""

    def __init__(self, tmp: Path) -> None:
        self.primary = RedisServer(tmp, "primary")
        self.replica = RedisServer(tmp, "replica", "--replicaof", "127.0.0.1", str(self.primary.port))
        wait_for(lambda: self.replica.client.info("replication").get("master_link_status") == "up", timeout=15)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.primary.port}/0"

    def stop(self) -> None:
        self.replica.stop()
        self.primary.stop()


#: For tests that need replication: they run in the real-Redis run (CI), where redis-server exists.
needs_redis_pair = pytest.mark.skipif(not REAL_REDIS or not shutil.which("redis-server"),
                                      reason="needs the real-Redis run (OPCORE_TEST_REDIS_URL) and redis-server")


@pytest.fixture(scope="module")
def redis_pair_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisPair]:
    if not REAL_REDIS or not shutil.which("redis-server"):
        pytest.skip("needs the real-Redis run (OPCORE_TEST_REDIS_URL) and redis-server")
    started = RedisPair(tmp_path_factory.mktemp("pair"))
    yield started
    started.stop()


@pytest.fixture
def redis_pair(redis_pair_servers: RedisPair) -> Iterator[RedisPair]:
    """A replicating primary and replica of the module's, emptied, the replica running."""
    redis_pair_servers.primary.client.flushall()
    yield redis_pair_servers
    redis_pair_servers.replica.resume()


@pytest.fixture
def settings() -> Settings:
    return Settings(
        _env_file=None,
        redis_url=None,
        webhook_secret=WEBHOOK_SECRET,
        admin_token=ADMIN_TOKEN,
        master_key=generate_master_key(),
        namespace="optest",
        plugins="",
    )


@pytest.fixture
def make_host(redis_client: redis.Redis, settings: Settings) -> Iterator[Callable[..., Host]]:
    """Build a host on the test's Redis with exactly the plugins given (no entry points)."""
    built: list[Host] = []

    def make(plugins: dict[str, Any] | None = None, **overrides: Any) -> Host:
        host = Host(settings.model_copy(update=overrides), redis_client=redis_client, plugins=plugins or {})
        built.append(host)
        return host

    yield make
    for host in built:
        host.close()


@pytest.fixture
def run_worker() -> Iterator[Callable[[Host], EmbeddedWorker]]:
    started: list[EmbeddedWorker] = []

    def start(host: Host, threads: int = 4) -> EmbeddedWorker:
        worker = EmbeddedWorker(host, threads=threads)
        worker.start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop(timeout_ms=5000)



def claim_created(**body: Any) -> dict[str, Any]:
    """A claim.created envelope with a fresh event id; ``body`` overrides body fields."""
    event = copy.deepcopy(CLAIM_CREATED)
    event["id"] = str(uuid.uuid4())
    event["body"].update(body)
    return event


def message_created(claim_id: str, message: str = "Where is my parcel?", *, store_id: str = "store_123",
                    message_id: str | None = None, created_at: str | None = None, **body: Any) -> dict[str, Any]:
    """A message.created envelope with a fresh event id (the note mirror's input)."""
    fields: dict[str, Any] = {"store_id": store_id, "claim_id": claim_id, "message": message,
                              "sender_type": "customer", "author_name": "Ana Lima", **body}
    if message_id is not None:
        fields["message_id"] = message_id
    if created_at is not None:
        fields["created_at"] = created_at
    return {"id": str(uuid.uuid4()), "topic": "message.created", "created_at": "2026-11-27T10:01:00Z", "body": fields}


def state_changed(claim_id: str, state: str, store_id: str = "store_123", **extra: Any) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "topic": "claim.state_changed",
        "created_at": extra.pop("created_at", "2026-11-27T10:05:00Z"),
        "body": {"store_id": store_id, "claim_id": claim_id, "claim_state": state, **extra},
    }


def approved(claim_id: str, store_id: str = "store_123") -> dict[str, Any]:
    """claim/approved as Order Protection's documentation shows it: camelCase, slash topic."""
    return {
        "id": str(uuid.uuid4()),
        "topic": "claim/approved",
        "created_at": "2026-11-27T10:06:00Z",
        "body": {"claimId": claim_id, "storeId": store_id,
                 "resolutions": [{"type": "RESHIP", "itemId": "i1", "quantity": 1}]},
    }


def claim_note(ref: str = "opcore-note-0a1b2c", message: str = "<b>Where is my parcel?</b>\nIt is late.",
               **fields: Any) -> Note:
    """A claim's message as the note mirror hands it to ``Helpdesk.add_note``; ``fields`` override."""
    return Note(**{"store_id": "store_123", "claim_id": "claim-1", "ref": ref, "message": message,
                   "claim_url": "https://dash.example/claims/view/claim-1", "sender_type": "customer",
                   "author_name": "Ana", "created_at": datetime(2026, 11, 27, 10, 1, tzinfo=timezone.utc), **fields})


def check_find_note(helpdesk: Helpdesk[Any], call: Call[Any], ticket_id: str, other_ticket_id: str) -> None:
    """What ``find_note`` must answer, on two tickets of the helpdesk: a note ``add_note`` wrote is
    found by its ref; a ref never written is not, nor the note on another ticket."""
    helpdesk.add_note(call, ticket_id, claim_note("opcore-note-aaaa"))
    assert helpdesk.find_note(call, ticket_id, claim_note("opcore-note-aaaa")) is True
    assert helpdesk.find_note(call, ticket_id, claim_note("opcore-note-bbbb")) is False
    assert helpdesk.find_note(call, other_ticket_id, claim_note("opcore-note-aaaa")) is False


def drain(host: Host, worker: EmbeddedWorker, timeout: float = 15.0) -> None:
    """Wait until every queue of ``host`` (delayed ones included) is empty and the worker idle."""
    deadline = time.monotonic() + timeout
    while True:
        for queue in host.broker.get_declared_queues():
            host.broker.join(queue, timeout=max(1, int((deadline - time.monotonic()) * 1000)))
        worker.join()
        if all(_queue_empty(host, q) for q in host.broker.get_declared_queues()):
            return
        if time.monotonic() > deadline:
            raise TimeoutError("queues did not drain")


def _queue_empty(host: Host, queue: str) -> bool:
    from dramatiq.common import dq_name

    r = host.redis
    ns = host.broker.namespace
    return all(r.llen(f"{ns}:{q}") == 0 and r.hlen(f"{ns}:{q}.msgs") == 0 for q in (queue, dq_name(queue)))


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll until ``predicate`` is truthy; fail with a clear message otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


def plugin_beside(test_file: str, module: str = "plugin") -> ModuleType:
    """The plugin module of the folder a test file sits in (``<plugin>/tests/test_x.py``).

    A plugin's tests import their plugin through this rather than by name, so a copied plugin
    folder tests the copy, whatever it is called. The package is named by walking up through
    the folders that hold an ``__init__.py``; the first folder above them is put on
    ``sys.path`` if needed.
    """
    folder = Path(test_file).resolve().parent
    folder = next((p.parent for p in (folder, *folder.parents) if p.name == "tests"), folder)
    while not (folder / "__init__.py").exists():
        if folder.parent == folder:
            raise LookupError(f"{test_file} is not inside a plugin package (a folder with __init__.py)")
        folder = folder.parent
    parts, top = [folder.name], folder.parent
    while (top / "__init__.py").exists():
        parts.insert(0, top.name)
        top = top.parent
    if str(top) not in sys.path:
        sys.path.insert(0, str(top))
    return importlib.import_module(".".join([*parts, module]))


def feed(host: Host, *envelopes: dict[str, Any]) -> None:
    """Run webhook envelopes through the dispatcher exactly as a worker does, without the broker."""
    from .events import Event, normalize_topic, parse_body

    for envelope in envelopes:
        topic = normalize_topic(envelope["topic"])
        event = Event(id=envelope["id"], topic=topic, created_at=envelope.get("created_at"),
                      body=parse_body(topic, envelope["body"]), received_at=time.time())
        host.dispatcher.dispatch(event.model_dump(mode="json"))
