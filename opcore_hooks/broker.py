"""Dramatiq's RedisBroker, waiting out Redis outages and sparing round trips.

- **Enqueue waits.** When an actor fails while Redis is away, Dramatiq's Retries middleware
  calls ``enqueue`` for the retry; a plain RedisBroker raises, the middleware logs it, and the
  worker acks the message once Redis is back: the work is gone (found by bench/chaos.py).
  Waiting here, with back-off, keeps that message until Redis answers again. Nothing else can
  run without Redis anyway, and the ingress does not use this path: it answers 503 at once.
- **Acks and fetches in batches.** Dramatiq's Redis consumer acks each message with its own
  round trip and, with a backlog, fetches one message each time a worker frees a slot: two
  round trips per message, a large share of what one ticket cost a worker (bench/pipeline.py;
  figures in ``docs/BENCHMARKS.md``).
  ``_Consumer`` acks everything finished since its last turn in one script, and fetches only
  once a quarter of its prefetch is free. Acks not yet sent belong to the broker, so a consumer
  replaced after a connection error leaves them to its successor; an ack held back is at worst
  a message delivered again after the process dies, which Dramatiq's at-least-once delivery
  already asks every actor to bear.
- **Acks wait for the replicas.** With ``OPCORE_REDIS_REPLICAS`` above 0, a batch of acks is
  sent only once the replicas hold everything the primary has executed (``Replication.confirm``):
  a message is acked only once what it wrote (a ticket id, a retry, the next message) would
  survive a failover. One ``WAIT`` serves the whole batch.
- **A new primary, or a restarted consumer, is reconciled** (``_Consumer.recover``). The messages
  this process holds (fetched and not yet acked) are registered again on the Redis it now
  reaches, their bodies written back where that Redis lacks them; whatever its ack set holds
  beyond them (prefetched messages a replaced consumer dropped, acks a failover lost) is handed
  back to the queue at once, instead of waiting for this worker's death. After a *new primary*
  (Redis's run id changed), the messages that were in progress or done-but-unacked are run
  again there, since their writes may have died with the old primary: the delivery engine's
  records make a second run find what the first did.
- **Counters released by the ack.** A message whose ``RELEASES`` option names a Redis counter
  decrements it (and deletes it at zero) when it is acked or rejected, in the ack's own round
  trip: the dispatcher counts each store's unfinished events this way (its fairness lanes).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

import redis
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.errors import ConnectionClosed
from dramatiq.message import Message

from .replication import NotReplicated, Replication, primary_id

log = logging.getLogger("opcore.broker")

#: The message option naming a counter to decrement once the message is acked or rejected.
RELEASES = "opcore_releases"

# KEYS: this worker's fetched-but-unacked set for the queue, the queue's messages hash, the
# heartbeats zset. ARGV: worker id, now (ms), then pairs of message id and the counter it
# releases ('' for none). Dramatiq's own "ack" for many messages at once, each releasing its
# counter only if it was still ours to ack; like every Dramatiq command, it beats the heart.
_ACK_MANY = """
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
for i = 3, #ARGV, 2 do
  if redis.call('SREM', KEYS[1], ARGV[i]) > 0 then
    redis.call('HDEL', KEYS[2], ARGV[i])
    local counter = ARGV[i + 1]
    if counter ~= '' and redis.call('DECR', counter) <= 0 then redis.call('DEL', counter) end
  end
end
"""

# KEYS: this worker's ack set for the queue, the queue's messages hash, the queue. ARGV: pairs of
# message id and its encoded message. Gives each back to the queue whole: the body is written
# again where this Redis lost it (a failover), and the id queued once, whether or not the ack set
# still held it. A message whose body exists but which this worker does not hold is queued or
# held elsewhere already: left alone. Returns how many bodies had to be written again.
_GIVE_BACK = """
local resent = 0
for i = 1, #ARGV, 2 do
  local ours = redis.call('SREM', KEYS[1], ARGV[i]) > 0
  local lost = redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[i + 1]) == 1
  if lost then resent = resent + 1 end
  if ours or lost then redis.call('RPUSH', KEYS[3], ARGV[i]) end
end
return resent
"""

# KEYS: as _GIVE_BACK. ARGV: n, then n pairs of message id and encoded message: what this worker
# holds. Each is registered as this worker's (its body written again if missing, its id taken
# out of the queue if this Redis had it queued); every other id in the ack set is handed back.
# Returns {bodies written again, ids registered again, ids handed back}.
_RECOVER = """
local held, n = {}, tonumber(ARGV[1])
local resent, registered, handed = 0, 0, 0
for i = 2, 2 * n, 2 do
  local id = ARGV[i]
  held[id] = true
  if redis.call('HSETNX', KEYS[2], id, ARGV[i + 1]) == 1 then resent = resent + 1 end
  if redis.call('SADD', KEYS[1], id) == 1 then
    redis.call('LREM', KEYS[3], 0, id)
    registered = registered + 1
  end
end
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if not held[id] then
    redis.call('SREM', KEYS[1], id)
    if redis.call('HEXISTS', KEYS[2], id) == 1 then
      redis.call('RPUSH', KEYS[3], id)
      handed = handed + 1
    end
  end
end
return {resent, registered, handed}
"""

_RELEASE = """
if redis.call('DECR', KEYS[1]) <= 0 then redis.call('DEL', KEYS[1]) end
"""


class _PendingAcks:
    """Acks finished but not yet sent, per queue, owned by the broker: a consumer that Dramatiq
    replaces after a connection error hands them to its successor instead of dropping them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_queue: dict[str, list[str]] = {}

    def add(self, queue_name: str, message_id: str, releases: str) -> None:
        with self._lock:
            self._by_queue.setdefault(queue_name, []).extend((message_id, releases))

    def take(self, queue_name: str) -> list[str]:
        with self._lock:
            return self._by_queue.pop(queue_name, [])

    def give_back(self, queue_name: str, pairs: list[str]) -> None:
        with self._lock:
            self._by_queue[queue_name] = pairs + self._by_queue.get(queue_name, [])

    def count(self, queue_name: str) -> int:
        with self._lock:
            return len(self._by_queue.get(queue_name, [])) // 2


class _Held:
    """The messages this process fetched and has not acked yet, per queue, by Redis message id:
    what a recovery registers again on the Redis it reaches (``_RECOVER``). ``rerun`` marks the
    ones in progress across a primary change, which are handed back instead of acked."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_queue: dict[str, dict[str, MessageProxy]] = {}
        self.rerun: set[str] = set()

    def add(self, queue_name: str, message: MessageProxy) -> None:
        with self._lock:
            self._by_queue.setdefault(queue_name, {})[message.options["redis_message_id"]] = message

    def drop(self, queue_name: str, ids: list[str]) -> None:
        with self._lock:
            held = self._by_queue.get(queue_name, {})
            for rid in ids:
                held.pop(rid, None)
                self.rerun.discard(rid)

    def of(self, queue_name: str) -> dict[str, MessageProxy]:
        with self._lock:
            return dict(self._by_queue.get(queue_name, {}))


class _Consumer(_RedisConsumer):
    def __init__(self, broker: Broker, queue_name: str, prefetch: int, timeout: int) -> None:
        super().__init__(broker, queue_name, prefetch, timeout)
        self._batch = max(1, prefetch // 4)
        # A delayed message is acked on its delay queue when it moves to its real queue; the
        # work (and the count) is released by the ack there, not twice.
        self._releases = not queue_name.endswith(".DQ")
        self._checked: int | None = None  # the client's connection count at the last recovery
        self._keys = [f"{broker.namespace}:__acks__.{broker.broker_id}.{queue_name}",
                      f"{broker.namespace}:{queue_name}.msgs", f"{broker.namespace}:{queue_name}"]

    @property
    def outstanding_message_count(self) -> int:
        # Read by Dramatiq's __next__ to decide whether (and how many) to fetch: report the
        # prefetch as full until a batch worth fetching is free.
        outstanding = len(self.queued_message_ids) + len(self.message_cache)
        return outstanding if outstanding <= self.prefetch - self._batch else self.prefetch

    def ack(self, message: MessageProxy) -> None:
        rid = message.options["redis_message_id"]
        if rid in self.broker.held.rerun:  # in progress across a primary change: run it again there
            try:
                self.give_back([message])
            finally:
                self.queued_message_ids.discard(message.message_id)
            return
        releases = (message.options.get(RELEASES) or "") if self._releases else ""
        self.broker.pending_acks.add(self.queue_name, rid, releases)
        self.queued_message_ids.discard(message.message_id)

    def nack(self, message: MessageProxy) -> None:
        super().nack(message)
        self.broker.held.drop(self.queue_name, [message.options["redis_message_id"]])
        counter = message.options.get(RELEASES) if self._releases else None
        if counter:
            try:
                self.broker.release(keys=[counter])
            except redis.RedisError as exc:  # an approximate count, never worth failing the nack
                log.warning("could not release %r after a rejected message: %s", counter, type(exc).__name__)

    def requeue(self, messages: Any) -> None:
        """Back to the queue whole (Dramatiq's own requeue goes by id, which a Redis that failed
        over may not know: the message would be dropped without a word)."""
        self.give_back(list(messages))

    def give_back(self, messages: list[MessageProxy]) -> None:
        if not messages:
            return
        pairs: list[Any] = []
        for message in messages:
            pairs += [message.options["redis_message_id"], message.encode()]
        try:
            resent = self.broker.give_back_script(keys=self._keys, args=pairs)
        except redis.RedisError as exc:
            raise ConnectionClosed(exc) from None
        self.broker.held.drop(self.queue_name, pairs[::2])
        if resent:
            log.warning("%s: %d message(s) given back were missing from Redis and were written again whole",
                        self.queue_name, resent)
            self.broker.count("resent", resent)

    def flush_acks(self) -> None:
        pending, broker = self.broker.pending_acks, self.broker
        pairs = pending.take(self.queue_name)
        if not pairs:
            return
        try:
            broker.replication.confirm(broker.client)  # what these messages wrote survives a failover first
            broker.ack_many(keys=[self._keys[0], self._keys[1], f"{broker.namespace}:__heartbeats__"],
                            args=[broker.broker_id, int(time.time() * 1000), *pairs])
        except NotReplicated as exc:
            pending.give_back(self.queue_name, pairs)  # acked once the replicas confirm
            broker.replica_wait(exc)
            return
        except redis.RedisError as exc:
            pending.give_back(self.queue_name, pairs)  # sent by whichever consumer runs next
            raise ConnectionClosed(exc) from None
        broker.held.drop(self.queue_name, pairs[::2])

    def recover(self) -> None:
        """Reconcile what this process holds with the Redis it reaches now (module docstring)."""
        broker, client = self.broker, self.broker.client
        self._checked = getattr(client, "connects", 0)
        try:
            primary = primary_id(client)
            new = broker.primary_seen(self.queue_name, primary)
            held = broker.held.of(self.queue_name)
            rerun: list[MessageProxy] = []
            if new:  # what finished here may have died with the old primary: run it again
                if self._releases:  # marked first: an ack from now on hands its message back
                    broker.held.rerun.update(held)
                done = set(broker.pending_acks.take(self.queue_name)[::2])
                rerun = [held.pop(rid) for rid in list(held) if rid in done]
            pairs: list[Any] = [0]
            for rid, message in held.items():
                pairs += [rid, message.encode()]
            for data in self.message_cache:  # fetched, not handed out yet: this consumer's still
                if data:
                    cached = Message.decode(data)
                    pairs += [cached.options["redis_message_id"], data]
            pairs[0] = (len(pairs) - 1) // 2
            resent, registered, handed = broker.recover_script(keys=self._keys, args=pairs)
            if rerun:
                self.give_back(rerun)
        except redis.RedisError as exc:
            raise ConnectionClosed(exc) from None
        if new or resent or handed:
            log.warning("%s: %s; %d held message(s) registered again (%d written back whole), %d handed back "
                        "from the ack set, %d finished one(s) to run again", self.queue_name,
                        "a new Redis primary" if new else "the consumer restarted", registered, resent, handed,
                        len(rerun))
        for what, count in (("reregistered", registered), ("resent", resent), ("handed_back", handed),
                            ("rerun", len(rerun))):
            if count:
                broker.count(what, count)

    def __next__(self) -> MessageProxy | None:
        # Only when about to fetch: a failure then is the one Dramatiq already handles (its
        # consumer restarts with nothing in hand), never one that drops prefetched messages.
        if self._checked != getattr(self.broker.client, "connects", 0):
            self.recover()
        if not self.message_cache:
            self.flush_acks()
        message = super().__next__()
        if message is not None:
            self.broker.held.add(self.queue_name, message)
        return message

    def close(self) -> None:
        try:
            self.flush_acks()
            if self.message_cache:  # prefetched, never handed out: back to their queue now
                self.give_back([MessageProxy(Message.decode(data)) for data in self.message_cache if data])
                self.message_cache = []
        except (ConnectionClosed, redis.RedisError):
            log.warning("Redis is unavailable: %d ack(s) of %s wait for the next consumer; messages "
                        "it had prefetched come back when the next consumer starts",
                        self.broker.pending_acks.count(self.queue_name), self.queue_name)
        super().close()


class Broker(RedisBroker):
    def __init__(self, *, enqueue_wait_seconds: float = 300.0, replication: Replication | None = None,
                 on_recovery: Callable[[str, int], None] | None = None, **options: Any) -> None:
        super().__init__(**options)
        self.enqueue_wait_seconds = enqueue_wait_seconds
        self.replication = replication or Replication(0, 0, "")
        self.ack_many = self.client.register_script(_ACK_MANY)
        self.release = self.client.register_script(_RELEASE)
        self.give_back_script = self.client.register_script(_GIVE_BACK)
        self.recover_script = self.client.register_script(_RECOVER)
        self.pending_acks = _PendingAcks()
        self.held = _Held()
        self._on_recovery = on_recovery
        self._primaries: dict[str, str] = {}  # per queue: the primary its last recovery met
        self._primary: str | None = None
        self._lock = threading.Lock()
        self._quiet_until = 0.0

    def count(self, what: str, by: int = 1) -> None:
        """A recovery's figure, for /metrics (``opcore_replication_events``)."""
        if self._on_recovery is not None:
            self._on_recovery(what, by)

    def primary_seen(self, queue_name: str, primary: str | None) -> bool:
        """Record the primary a queue's consumer reaches; True when it is a new one for that queue.
        A process's first sight of a new primary is logged and counted once."""
        if primary is None:
            return False
        with self._lock:
            before = self._primaries.get(queue_name)
            self._primaries[queue_name] = primary
            changed, self._primary = self._primary is not None and self._primary != primary, primary
        if changed:
            log.warning("Redis answers from a new primary (run id %s...): the messages this worker holds are "
                        "reconciled with it queue by queue", primary[:8])
            self.count("primary_changes")
        return before is not None and before != primary

    def replica_wait(self, exc: NotReplicated) -> None:
        """Acks held back for the replicas: said at most every 10 s, counted each time."""
        self.count("ack_waits")
        now = time.monotonic()
        if now >= self._quiet_until:
            self._quiet_until = now + 10.0
            log.warning("acks wait for the Redis replicas: %s", exc)

    @property
    def consumer_class(self) -> type[_RedisConsumer]:
        return _Consumer

    def enqueue(self, message: Message, *, delay: int | None = None) -> Message:
        deadline = time.monotonic() + self.enqueue_wait_seconds
        pause = 0.1
        while True:
            try:
                return super().enqueue(message, delay=delay)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if time.monotonic() + pause > deadline:
                    raise
                log.warning("Redis is unavailable (%s); enqueue of %s waits %.1f s",
                            type(exc).__name__, message.actor_name, pause)
                time.sleep(pause)
                pause = min(pause * 2, 2.0)
