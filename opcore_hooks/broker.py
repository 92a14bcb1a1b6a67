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
  once a quarter of its prefetch is free. An ack held back is at worst a message delivered
  again after a crash, which Dramatiq's at-least-once delivery already asks every actor to bear.
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

# KEYS: this worker's fetched-but-unacked set for the queue, the queue's messages hash.
# ARGV: pairs of message id and the counter it releases ('' for none). Dramatiq's own "ack",
# for many messages at once, each releasing its counter if it was still ours to ack.
_ACK_MANY = """
for i = 1, #ARGV, 2 do
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


class _Consumer(_RedisConsumer):
    def __init__(self, broker: Broker, queue_name: str, prefetch: int, timeout: int) -> None:
        super().__init__(broker, queue_name, prefetch, timeout)
        self._acks: list[str] = []
        self._acks_lock = threading.Lock()
        self._batch = max(1, prefetch // 4)

    @property
    def outstanding_message_count(self) -> int:
        # Read by Dramatiq's __next__ to decide whether (and how many) to fetch: report the
        # prefetch as full until a batch worth fetching is free.
        outstanding = len(self.queued_message_ids) + len(self.message_cache)
        return outstanding if outstanding <= self.prefetch - self._batch else self.prefetch

    def ack(self, message: MessageProxy) -> None:
        with self._acks_lock:
            self._acks += [message.options["redis_message_id"], message.options.get(RELEASES) or ""]
        self.queued_message_ids.discard(message.message_id)

    def nack(self, message: MessageProxy) -> None:
        super().nack(message)
        counter = message.options.get(RELEASES)
        if counter:
            self.broker.release(keys=[counter])

    def flush_acks(self) -> None:
        with self._acks_lock:
            ids, self._acks = self._acks, []
        if not ids:
            return
        broker = self.broker
        try:
            broker.ack_many(keys=[f"{broker.namespace}:__acks__.{broker.broker_id}.{self.queue_name}",
                                  f"{broker.namespace}:{self.queue_name}.msgs"], args=ids)
        except redis.ConnectionError as exc:
            with self._acks_lock:
                self._acks[:0] = ids  # kept for the next turn; lost only with the process
            raise ConnectionClosed(exc) from None

    def __next__(self) -> MessageProxy | None:
        self.flush_acks()
        return super().__next__()

    def close(self) -> None:
        try:
            self.flush_acks()
        except ConnectionClosed:
            log.warning("Redis is unavailable: %d ack(s) of %s not sent; those messages will be "
                        "delivered again", len(self._acks) // 2, self.queue_name)
        super().close()


class Broker(RedisBroker):
    def __init__(self, *, enqueue_wait_seconds: float = 300.0, **options: Any) -> None:
        super().__init__(**options)
        self.enqueue_wait_seconds = enqueue_wait_seconds
        self.ack_many = self.client.register_script(_ACK_MANY)
        self.release = self.client.register_script(_RELEASE)

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
