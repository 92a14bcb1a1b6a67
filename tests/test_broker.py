"""The broker's batched acks: nothing fetched is stranded when Redis fails between batches."""

from __future__ import annotations

import dramatiq
import pytest
import redis
from dramatiq.errors import ConnectionClosed

from opcore_hooks.broker import RELEASES

QUEUE = "batched"


def _three_messages(host):
    actor = dramatiq.actor(lambda n: None, broker=host.broker, actor_name="t.noop", queue_name=QUEUE)
    host.redis.set("counter", 3)
    for n in range(3):
        actor.send_with_options(args=(n,), **{RELEASES: "counter"})
    ns = host.broker.namespace
    return f"{ns}:{QUEUE}", f"{ns}:{QUEUE}.msgs", f"{ns}:__acks__.{host.broker.broker_id}.{QUEUE}"


def test_acks_a_failed_flush_kept_are_sent_by_the_next_consumer(make_host, monkeypatch):
    host = make_host()
    queue, msgs, unacked = _three_messages(host)
    first = host.broker.consume(QUEUE, prefetch=8, timeout=10)
    for _ in range(3):
        first.ack(next(first))
    real = host.broker.ack_many

    def down(*args, **kwargs):
        raise redis.ConnectionError("Redis went away")

    monkeypatch.setattr(host.broker, "ack_many", down)
    with pytest.raises(ConnectionClosed):
        next(first)  # the cache is empty: it flushes before fetching, and fails
    assert host.redis.hlen(msgs) == 3 and host.redis.scard(unacked) == 3
    monkeypatch.setattr(host.broker, "ack_many", real)
    first.close()  # Dramatiq closes a consumer whose connection failed and builds a new one
    second = host.broker.consume(QUEUE, prefetch=8, timeout=10)
    assert next(second) is None  # nothing left to fetch; the acks it inherited went first
    assert host.redis.hlen(msgs) == 0 and host.redis.scard(unacked) == 0 and host.redis.llen(queue) == 0
    assert not host.redis.exists("counter")  # each ack released the count its message named


def test_a_closed_consumer_gives_back_what_it_prefetched(make_host):
    host = make_host()
    queue, msgs, unacked = _three_messages(host)
    consumer = host.broker.consume(QUEUE, prefetch=8, timeout=10)
    taken = next(consumer)  # fetches all three, hands out one
    consumer.ack(taken)
    consumer.close()
    assert host.redis.llen(queue) == 2 and host.redis.hlen(msgs) == 2 and host.redis.scard(unacked) == 0
    assert int(host.redis.get("counter")) == 2
