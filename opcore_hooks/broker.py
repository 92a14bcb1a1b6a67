"""Dramatiq's RedisBroker, waiting out Redis outages and sparing round trips.

- **Enqueue waits.** When an actor fails while Redis is away, Dramatiq's Retries middleware
  calls ``enqueue`` for the retry; a plain RedisBroker raises, the middleware logs it, and the
  worker acks the message once Redis is back: the work is gone (found by bench/chaos.py).
  Waiting here, with back-off, keeps that message until Redis answers again. Nothing else can
  run without Redis anyway, and the ingress does not use this path: it answers 503 at once.
- **Acks and fetches in batches.** Dramatiq's Redis consumer acks each message with its own
  round trip and, with a backlog, fetches one message each time a worker frees a slot: two
  round trips per message, a third of what one ticket cost a worker (bench/pipeline.py).
  ``_Consumer`` acks everything finished since its last turn in one script, and fetches only
  once a quarter of its prefetch is free. Acks not yet sent belong to the broker, so a consumer
  replaced after a connection error leaves them to its successor; an ack held back is at worst
  a message delivered again after the process dies, which Dramatiq's at-least-once delivery
  already asks every actor to bear.
- **Counters released by the ack.** A message whose ``RELEASES`` option names a Redis counter
  decrements it (and deletes it at zero) when it is acked or rejected, in the ack's own round
  trip: the dispatcher counts each store's unfinished events this way (its fairness lanes).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.errors import ConnectionClosed
from dramatiq.broker import MessageProxy
from dramatiq.message import Message

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


class _Consumer(_RedisConsumer):
    def __init__(self, broker: Broker, queue_name: str, prefetch: int, timeout: int) -> None:
        super().__init__(broker, queue_name, prefetch, timeout)
        self._batch = max(1, prefetch // 4)
        # A delayed message is acked on its delay queue when it moves to its real queue; the
        # work (and the count) is released by the ack there, not twice.
        self._releases = not queue_name.endswith(".DQ")

    @property
    def outstanding_message_count(self) -> int:
        # Read by Dramatiq's __next__ to decide whether (and how many) to fetch: report the
        # prefetch as full until a batch worth fetching is free.
        outstanding = len(self.queued_message_ids) + len(self.message_cache)
        return outstanding if outstanding <= self.prefetch - self._batch else self.prefetch

    def ack(self, message: MessageProxy) -> None:
        releases = (message.options.get(RELEASES) or "") if self._releases else ""
        self.broker.pending_acks.add(self.queue_name, message.options["redis_message_id"], releases)
        self.queued_message_ids.discard(message.message_id)

    def nack(self, message: MessageProxy) -> None:
        super().nack(message)
        counter = message.options.get(RELEASES) if self._releases else None
        if counter:
            try:
                self.broker.release(keys=[counter])
            except redis.RedisError as exc:  # an approximate count, never worth failing the nack
                log.warning("could not release %r after a rejected message: %s", counter, type(exc).__name__)

    def flush_acks(self) -> None:
        pending, broker = self.broker.pending_acks, self.broker
        pairs = pending.take(self.queue_name)
        if not pairs:
            return
        try:
            broker.ack_many(keys=[f"{broker.namespace}:__acks__.{broker.broker_id}.{self.queue_name}",
                                  f"{broker.namespace}:{self.queue_name}.msgs", f"{broker.namespace}:__heartbeats__"],
                            args=[broker.broker_id, int(time.time() * 1000), *pairs])
        except redis.RedisError as exc:
            pending.give_back(self.queue_name, pairs)  # sent by whichever consumer runs next
            raise ConnectionClosed(exc) from None

    def __next__(self) -> MessageProxy | None:
        # Only when about to fetch: a failure then is the one Dramatiq already handles (its
        # consumer restarts with nothing in hand), never one that drops prefetched messages.
        if not self.message_cache:
            self.flush_acks()
        return super().__next__()

    def close(self) -> None:
        try:
            self.flush_acks()
            if self.message_cache:  # prefetched, never handed out: back to their queue now
                self.broker.do_requeue(self.queue_name, *[Message.decode(data).options["redis_message_id"]
                                                          for data in self.message_cache if data])
                self.message_cache = []
        except (ConnectionClosed, redis.RedisError):
            log.warning("Redis is unavailable: %d ack(s) of %s wait for the next consumer; messages "
                        "it had prefetched come back when this worker is declared dead",
                        self.broker.pending_acks.count(self.queue_name), self.queue_name)
        super().close()


class Broker(RedisBroker):
    def __init__(self, *, enqueue_wait_seconds: float = 300.0, **options: Any) -> None:
        super().__init__(**options)
        self.enqueue_wait_seconds = enqueue_wait_seconds
        self.ack_many = self.client.register_script(_ACK_MANY)
        self.release = self.client.register_script(_RELEASE)
        self.pending_acks = _PendingAcks()

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
