"""The Redis client every part of a host shares: one connection per thread, none leaked."""

from __future__ import annotations

import threading

import pytest
import redis

from opcore_hooks.store import PinnedRedis, connect, pinned


def _connection_of(client: PinnedRedis) -> int:
    return id(client.connection)


def test_each_thread_keeps_its_own_connection_across_commands(redis_client):
    client = pinned(redis_client)
    seen: dict[str, list[int]] = {}
    barrier = threading.Barrier(4)

    def work(name: str) -> None:
        ids = []
        for i in range(5):
            client.incr("pinned:counter")
            ids.append(_connection_of(client))
        seen[name] = ids
        barrier.wait()  # no thread ends (and gives its connection back) before all have one

    threads = [threading.Thread(target=work, args=(f"t{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert int(redis_client.get("pinned:counter")) == 20
    assert all(len(set(ids)) == 1 for ids in seen.values())  # one connection per thread, kept
    assert len({ids[0] for ids in seen.values()}) == 4  # and never shared between threads


def test_a_finished_threads_connection_goes_back_to_the_pool(redis_client):
    client = pinned(redis_client)
    pool = client.connection_pool
    client.ping()  # this thread's own pin
    in_use = len(pool._in_use_connections)
    threads = [threading.Thread(target=client.ping) for _ in range(6)]
    for t in threads:
        t.start()
        t.join()  # one after another: each reuses the connection the previous one gave back
    assert len(pool._in_use_connections) == in_use
    assert len(pool._available_connections) <= 1


def test_pipelines_and_scripts_work_through_the_pinned_client(redis_client):
    client = pinned(redis_client)
    script = client.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    assert script(keys=["pinned:script"], args=[3]) == 3
    with client.pipeline() as pipe:
        pipe.incr("pinned:script").get("pinned:script")
        assert pipe.execute() == [4, b"4"]


def test_wrapping_shares_the_data_and_is_idempotent(redis_client):
    client = pinned(redis_client)
    assert pinned(client) is client
    client.set("pinned:shared", "yes")
    assert redis_client.get("pinned:shared") == b"yes"
    client.close()  # a wrapper does not own the pool it was given
    assert redis_client.get("pinned:shared") == b"yes"


def test_a_client_built_from_a_url_closes_its_own_pool(monkeypatch):
    closed = []
    client = connect("redis://127.0.0.1:1/0")  # never connected: nothing answers on port 1
    assert isinstance(client, PinnedRedis)
    monkeypatch.setattr(client.connection_pool, "close", lambda: closed.append(True))
    client.close()
    assert closed == [True]


def test_a_pinned_client_refuses_a_connection_handed_to_it():
    client = PinnedRedis(connection_pool=redis.ConnectionPool())
    with pytest.raises(TypeError, match="one connection per thread"):
        client.connection = object()
