"""The failover run's Redis: a primary, its replica, the moving endpoint, the replication links, Sentinels.

What an operator deploys, on loopback and private ports, in a temporary directory (never the
shared Redis): every node with ``appendonly yes``, ``appendfsync everysec`` and no RDB
snapshots, each from a config file of its own (Sentinel rewrites the files of the nodes it
reconfigures, and refuses a node that has none). Each replica reaches its primary through a
replication link of ``_failover_net`` that the harness can stall; opcore reaches the primary
through the moving endpoint (or, in the Sentinel variant, asks the Sentinels where it is).

``repl-diskless-sync-delay 0``: Redis 7 waits 5 s by default before a diskless full sync, in case
more replicas come; a managed service's fresh replica syncs as soon as it asks, and the run
must measure opcore's gap, not that wait.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from bench._chaos_procs import Proc, process_env
from bench._failover_net import Net
from bench._servers import free_port, wait_port

SENTINEL_MASTER = "opcore-failover"
#: Sentinel's wait before it calls a silent primary down (a managed service's detection, ~1 s).
DOWN_AFTER_MS = 1000


def direct(port: int, timeout: float = 2.0, **options: Any) -> redis.Redis:
    """The harness's own client of one node or Sentinel: no retries (redis-py's default retries
    with back-off would hide for seconds that a node is dead, and blur every time measured)."""
    return redis.Redis(port=port, socket_timeout=timeout, socket_connect_timeout=timeout,
                       retry=Retry(NoBackoff(), 0), **options)


@dataclass
class Node:
    """One redis-server we started: its port, directory, process, and the link it replicates through."""

    name: str
    port: int
    dir: Path
    proc: Proc
    link: str | None = None  # the replication link's proxy name, for a replica
    born: float = field(default_factory=time.time)

    def client(self, timeout: float = 2.0) -> redis.Redis:
        return direct(self.port, timeout)


def _retrying(call: Any, tries: int = 20, pause: float = 0.1) -> Any:
    """``call()`` until it does not raise a Redis error (a node reconnecting, Sentinel killing clients)."""
    for attempt in range(tries):
        try:
            return call()
        except redis.RedisError:
            if attempt == tries - 1:
                raise
            time.sleep(pause)
    return None


class Topology:
    """The nodes, the proxies and the Sentinels of one run, and the moves a failover makes on them."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.net = Net(tmp)
        self.nodes: list[Node] = []
        self.primary: Node | None = None
        self.replica: Node | None = None
        self.endpoint_port = 0
        self.sentinels: list[tuple[int, Proc]] = []

    # -- nodes ----------------------------------------------------------------------------------

    def _node(self, replica_of: Node | None) -> Node:
        """Start a node with an empty directory; a replica replicates ``replica_of`` through a new link."""
        name = f"redis-{len(self.nodes)}"
        port, folder = free_port(), self.tmp / name
        folder.mkdir(parents=True, exist_ok=True)
        link = None
        lines = [f"port {port}", "bind 127.0.0.1", "protected-mode yes", "daemonize no", f"dir {folder}",
                 "appendonly yes", "appendfsync everysec", 'save ""', "repl-diskless-sync-delay 0"]
        if replica_of is not None:
            link = f"link-{name}"
            lines.append(f"replicaof 127.0.0.1 {self.net.add(link, replica_of.port)}")
        conf = folder / "redis.conf"
        conf.write_text("\n".join(lines) + "\n")
        node = Node(name, port, folder, Proc(name, ["redis-server", str(conf)], process_env({}),
                                             self.tmp / f"{name}.log"), link)
        node.proc.start()
        wait_port(port, 20)
        _retrying(node.client().ping, tries=100)
        self.nodes.append(node)
        return node

    def start(self, *, replica: bool = True) -> None:
        """The proxy process, the primary, its replica (in sync before this returns) and the endpoint."""
        self.net.start()
        self.primary = self._node(None)
        if replica:
            self.replica = self._node(self.primary)
            self.wait_synced(self.replica)
        self.endpoint_port = self.net.add("endpoint", self.primary.port)

    def wait_synced(self, node: Node, timeout: float = 30.0) -> float:
        """Wait until ``node``'s link to its primary is up and its first sync is over; when that was."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                info = node.client().info("replication")
                if info.get("master_link_status") == "up" and not info.get("master_sync_in_progress"):
                    return time.time()
            except redis.RedisError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{node.name} did not sync with its primary within {timeout:g} s")

    @property
    def endpoint_url(self) -> str:
        return f"redis://127.0.0.1:{self.endpoint_port}/0"

    # -- what a failover does -----------------------------------------------------------------

    def kill_primary(self) -> float:
        """SIGKILL the primary (no chance to flush its AOF or its replica's output buffer); when."""
        assert self.primary is not None
        at = time.time()
        self.primary.proc.kill()
        return at

    def promote(self) -> float:
        """``REPLICAOF NO ONE`` on the replica, which becomes the primary (as a managed service's
        failover does); drop its old link. When it answered."""
        assert self.replica is not None
        _retrying(lambda: self.replica.client().execute_command("REPLICAOF", "NO", "ONE"))
        at = time.time()
        self._adopt(self.replica)
        return at

    def _adopt(self, node: Node) -> None:
        if node.link:
            self.net.remove(node.link)
            node.link = None
        self.primary, self.replica = node, None

    def switch_endpoint(self) -> tuple[float, int]:
        """Point the moving endpoint at the current primary, closing every connection; (when, closed)."""
        assert self.primary is not None
        closed = self.net.switch("endpoint", self.primary.port)
        return time.time(), closed

    def fresh_replica(self) -> Node:
        """A new, empty replica of the current primary (new port, new directory), as a managed
        service starts after a failover; ``wait_synced`` says when it has caught up."""
        assert self.primary is not None
        self.replica = self._node(self.primary)
        return self.replica

    # -- reading offsets and sizes -------------------------------------------------------------

    def offsets(self) -> dict[str, int]:
        """The primary's replication offset, the offset its replica acknowledged (as the primary
        sees it), and the replica's own offset (as it says); -1 where a node does not answer."""
        out = {"primary": -1, "acked": -1, "replica": -1}
        try:
            info = self.primary.client(0.5).info("replication")
            out["primary"] = int(info.get("master_repl_offset", -1))
            slave = info.get("slave0")
            out["acked"] = int(slave["offset"]) if isinstance(slave, dict) else -1
        except (redis.RedisError, AttributeError):
            pass
        try:
            if self.replica is not None:
                info = self.replica.client(0.5).info("replication")
                out["replica"] = int(info.get("slave_repl_offset", info.get("master_repl_offset", -1)))
        except redis.RedisError:
            pass
        return out

    def dbsize(self, node: Node | None) -> int:
        try:
            return int(node.client(0.5).dbsize()) if node is not None else -1
        except redis.RedisError:
            return -1

    # -- Sentinel ----------------------------------------------------------------------------

    def start_sentinels(self, count: int) -> list[int]:
        """``count`` Sentinels watching the primary (quorum 1, or 2 of 3); wait until each knows
        the replica and the others, or a failover could find no one to promote or no majority."""
        assert self.primary is not None
        quorum = 1 if count == 1 else 2
        for i in range(count):
            port, folder = free_port(), self.tmp / f"sentinel-{i}"
            folder.mkdir(parents=True, exist_ok=True)
            conf = folder / "sentinel.conf"
            conf.write_text("\n".join([
                f"port {port}", "bind 127.0.0.1", "daemonize no", f"dir {folder}",
                f"sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {self.primary.port} {quorum}",
                f"sentinel down-after-milliseconds {SENTINEL_MASTER} {DOWN_AFTER_MS}",
                f"sentinel failover-timeout {SENTINEL_MASTER} 10000",
                f"sentinel parallel-syncs {SENTINEL_MASTER} 1"]) + "\n")
            proc = Proc(f"sentinel-{i}", ["redis-server", str(conf), "--sentinel"], process_env({}),
                        self.tmp / f"sentinel-{i}.log")
            proc.start()
            wait_port(port, 20)
            self.sentinels.append((port, proc))
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            if all(self._sentinel_ready(port, count) for port, _ in self.sentinels):
                return [port for port, _ in self.sentinels]
            time.sleep(0.2)
        raise RuntimeError("the Sentinels did not discover the replica (and each other) within 40 s")

    def _sentinel_ready(self, port: int, count: int) -> bool:
        try:
            s = direct(port, 1.0, decode_responses=True)
            replicas = s.execute_command("SENTINEL", "REPLICAS", SENTINEL_MASTER)
            others = s.execute_command("SENTINEL", "SENTINELS", SENTINEL_MASTER)
            return len(replicas) >= 1 and len(others) >= count - 1
        except redis.RedisError:
            return False

    def sentinel_primary_port(self) -> int | None:
        """The primary's port as the first Sentinel that answers names it."""
        for port, _ in self.sentinels:
            try:
                host_port = direct(port, 1.0, decode_responses=True).execute_command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_MASTER)
                if host_port:
                    return int(host_port[1])
            except redis.RedisError:
                continue
        return None

    def wait_sentinel_promotion(self, old_port: int, timeout: float = 30.0) -> float | None:
        """Wait until the Sentinels name another primary and it answers as a master; adopt it; when."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            port = self.sentinel_primary_port()
            node = next((n for n in self.nodes if n.port == port), None)
            if port != old_port and node is not None:
                try:
                    if node.client(0.5).info("replication").get("role") == "master":
                        at = time.time()
                        self._adopt(node)
                        return at
                except redis.RedisError:
                    pass
            time.sleep(0.05)
        return None

    # -- the end ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Sentinels first (so they do not fail anything over while we stop), then nodes, then the proxies."""
        for _, proc in self.sentinels:
            proc.stop(5)
        for node in self.nodes:
            node.proc.stop(10)
        self.net.stop()
