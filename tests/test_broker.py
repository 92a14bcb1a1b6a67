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


def test_what_a_dropped_consumer_had_prefetched_is_handed_back_by_the_next(make_host):
    """Dramatiq drops a consumer on a connection error without giving its prefetch back (its
    close cannot reach Redis); the next consumer of the live worker hands it back at once."""
    host = make_host()
    queue, msgs, unacked = _three_messages(host)
    dropped = host.broker.consume(QUEUE, prefetch=8, timeout=10)
    held = next(dropped)  # fetched all three, handed out one, which a worker thread now runs
    assert host.redis.scard(unacked) == 3
    successor = host.broker.consume(QUEUE, prefetch=1, timeout=10)
    taken = next(successor)
    assert taken is not None and taken.message_id != held.message_id  # one of the two handed back
    assert host.redis.scard(unacked) == 2  # what runs, and what the successor took
    successor.ack(held)  # the worker thread finishes; its ack goes through the new consumer
    successor.ack(taken)
    assert next(successor) is not None  # the third, handed back, is delivered
    assert host.redis.llen(queue) == 0


def test_after_a_new_primary_held_work_is_registered_again_and_run_again(make_host, monkeypatch):
    """A promoted replica may lack what this worker fetched (the fetch, or the message itself)
    and the effects of what it finished: held messages are written back whole, and those in
    progress or finished-but-unacked are handed back to run again on the new primary."""
    import opcore_hooks.broker as broker_module

    host = make_host()
    queue, msgs, unacked = _three_messages(host)
    primary = {"id": "old"}
    monkeypatch.setattr(broker_module, "primary_id", lambda client: primary["id"])
    consumer = host.broker.consume(QUEUE, prefetch=8, timeout=10)
    running, finished, _ = next(consumer), next(consumer), next(consumer)
    consumer.ack(finished)  # done, its ack not yet sent
    # The failover: the new primary never saw the fetch; one message's body is gone entirely.
    host.redis.delete(unacked)
    host.redis.rpush(queue, running.options["redis_message_id"])
    host.redis.hdel(msgs, finished.options["redis_message_id"])
    primary["id"] = "new"
    successor = host.broker.consume(QUEUE, prefetch=8, timeout=10)
    successor.recover()
    ids = {m.options["redis_message_id"] for m in (running, finished)}
    # the finished one runs again: back in the queue, its body written back
    assert [m.decode() for m in host.redis.lrange(queue, 0, -1)] == [finished.options["redis_message_id"]]
    assert host.redis.hexists(msgs, finished.options["redis_message_id"])
    assert running.options["redis_message_id"].encode() in host.redis.smembers(unacked)  # held, registered
    successor.ack(running)  # finished across the change: handed back, not acked
    assert {m.decode() for m in host.redis.lrange(queue, 0, -1)} == ids
    assert host.redis.hget(host.metrics.refusals_key, "rerun") == b"1"
    assert host.redis.hget(host.metrics.refusals_key, "primary_changes") == b"1"


def test_delayed_messages_held_across_a_failover_are_given_back_whole(make_host):
    host = make_host()
    actor = dramatiq.actor(lambda: None, broker=host.broker, actor_name="t.later", queue_name=QUEUE)
    actor.send_with_options(delay=60_000)
    ns, dq = host.broker.namespace, f"{QUEUE}.DQ"
    consumer = host.broker.consume(dq, prefetch=8, timeout=10)
    delayed = next(consumer)
    host.redis.delete(f"{ns}:__acks__.{host.broker.broker_id}.{dq}", f"{ns}:{dq}.msgs")  # a failover's loss
    consumer.requeue([delayed])  # what the worker does with delayed messages a connection error orphaned
    [rid] = host.redis.lrange(f"{ns}:{dq}", 0, -1)
    assert rid.decode() == delayed.options["redis_message_id"]
    assert host.redis.hget(f"{ns}:{dq}.msgs", rid)  # whole again: a requeue by id would have dropped it
