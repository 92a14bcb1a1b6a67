"""Replicated acknowledgement: a write opcore promises (202) or acts on is on N replicas first.

Redis acknowledges a write once it is in the primary's memory; its replicas get it a moment
later. A failover in that moment promotes a replica that never saw it: an event answered 202
is gone, or a delivery record that said "a create is under way" is, and the claim gets a
second ticket (measured in docs/RELIABILITY.md, "Failover"). ``WAIT n timeout`` blocks until n
replicas confirm every write the connection made, which is the bar reliable stores set before
they acknowledge (Kafka's ``acks=all``, PostgreSQL's synchronous standbys).

``OPCORE_REDIS_REPLICAS`` says how many replicas must confirm (0, the default, skips all of
this: no command is sent). Where a confirmation is due:

- the ingress: one ``WAIT`` per group commit, after every accept of the batch (``Committer``);
  short of N, every event of the batch answers 503, and Order Protection redelivers;
- the delivery engine: after it marks a create as begun and before it calls the helpdesk, so
  the mark survives any failover and a create whose answer was lost is looked up, not repeated;
- the end of every worker message (``Replication.confirm`` in the actor wrapper), so what a
  message wrote is durable before its ack and a new primary never misses a finished message's
  effects;
- settings writes, before they are answered.

A ``WAIT`` covers what its own connection wrote. Writes reach Redis on several connections of a
process (a thread's own, pipelines from the pool), so ``confirm`` first makes one small write of
its own (the *fence*): its offset in the replication stream lies after everything the primary
had executed by then, on any connection, and ``WAIT`` for it covers all of that.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import redis

log = logging.getLogger("opcore.replication")

#: A replica whose last acknowledgement is older than this counts as lagging, not in sync.
IN_SYNC_SECONDS = 1


class NotReplicated(redis.RedisError):
    """Fewer replicas than required confirmed a write within the timeout.

    A RedisError, so whatever handles Redis being unavailable handles this too: the ingress
    answers 503, a worker's message is retried, a settings change answers 503.
    """

    def __init__(self, confirmed: int, required: int, timeout_ms: int) -> None:
        super().__init__(f"only {confirmed} of {required} required Redis replica(s) confirmed the write within "
                         f"{timeout_ms} ms (OPCORE_REDIS_REPLICAS, OPCORE_REDIS_REPLICA_TIMEOUT_MS)")
        self.confirmed, self.required, self.timeout_ms = confirmed, required, timeout_ms


@dataclass(frozen=True)
class Replication:
    """The deployment's replication requirement, and the one way to check it."""

    required: int
    timeout_ms: int
    fence_key: str

    @property
    def wait_command(self) -> tuple[Any, ...]:
        return ("WAIT", self.required, self.timeout_ms)

    def check(self, confirmed: Any) -> None:
        """Raise NotReplicated unless ``confirmed`` (WAIT's answer, or the error in its place) suffices."""
        if isinstance(confirmed, BaseException):
            raise confirmed
        if int(confirmed) < self.required:
            raise NotReplicated(int(confirmed), self.required, self.timeout_ms)

    def confirm(self, client: Any) -> None:
        """Return once ``required`` replicas hold everything the primary has executed so far;
        else raise NotReplicated (or the connection's error). With 0 required, send nothing.

        ``client`` is a ``store.PinnedRedis``: the fence and the ``WAIT`` go in one round trip on
        the calling thread's own connection.
        """
        if not self.required:
            return
        fence, confirmed = client.run_batch([("INCR", self.fence_key), self.wait_command])
        if isinstance(fence, BaseException):
            raise fence
        self.check(confirmed)


@dataclass(frozen=True)
class ReplicationStatus:
    """What ``INFO replication`` says of the primary opcore writes to, for /healthz and /metrics."""

    role: str
    connected: int
    in_sync: int
    max_lag_seconds: float
    max_lag_bytes: int

    def as_dict(self) -> dict[str, Any]:
        return {"role": self.role, "replicas_connected": self.connected, "replicas_in_sync": self.in_sync,
                "max_lag_seconds": self.max_lag_seconds, "max_lag_bytes": self.max_lag_bytes}


def replication_status(client: redis.Redis) -> ReplicationStatus | None:
    """The primary's replicas and how far behind they are; None where INFO is not available
    (the embedded store, an ACL without it)."""
    try:
        info = client.info("replication")
    except redis.ResponseError:
        return None
    offset = int(info.get("master_repl_offset", 0))
    connected = in_sync = 0
    lag_seconds, lag_bytes = 0.0, 0
    for name, value in info.items():
        if not (name.startswith("slave") and name[5:].isdigit() and isinstance(value, dict)):
            continue
        connected += 1
        lag = float(value.get("lag", 0))
        behind = max(0, offset - int(value.get("offset", 0)))
        lag_seconds, lag_bytes = max(lag_seconds, lag), max(lag_bytes, behind)
        if value.get("state") == "online" and lag <= IN_SYNC_SECONDS:
            in_sync += 1
    return ReplicationStatus(str(info.get("role", "unknown")), connected, in_sync, lag_seconds, lag_bytes)


def primary_id(client: redis.Redis) -> str | None:
    """The run id of the Redis answering this client: it changes when a replica is promoted or the
    primary restarts, which is when a worker must check what it holds. None where INFO is not
    available (the embedded store never fails over)."""
    try:
        run_id = client.info("server").get("run_id")
    except redis.ResponseError:
        return None
    return str(run_id) if run_id else None
