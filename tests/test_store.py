"""The Redis client every part of a host shares: one connection per thread, none leaked."""

from __future__ import annotations

import threading
import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from opcore_hooks.store import CHECK_AFTER_IDLE, PinnedRedis, connect, pinned
from opcore_hooks.testing import REAL_REDIS


def _connection_of(client: PinnedRedis) -> int:
    return id(client.connection)


def test_each_thread_keeps_its_own_connection_across_commands(redis_client):
    client = pinned(redis_client)
    seen: dict[str, list[int]] = {}
    barrier = threading.Barrier(4)

    def work(name: str) -> None:
        ids = []
        for _ in range(5):
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


# -- write-behind ---------------------------------------------------------------------------

SET = "redis.call('SET', KEYS[1], ARGV[1]); return ARGV[1]"


def test_a_deferred_write_lands_before_the_threads_next_command(redis_client):
    client = pinned(redis_client)
    script = client.register_script(SET)
    with client.write_behind():
        client.defer(script, ["wb:a"], ["1"])
        assert redis_client.get("wb:a") is None  # not sent on its own
        assert client.get("wb:a") == b"1"  # the next command carries it, ahead of itself
    assert redis_client.get("wb:a") == b"1"


def test_a_deferred_write_with_no_command_after_it_lands_when_the_block_ends(redis_client):
    client = pinned(redis_client)
    script = client.register_script(SET)
    answers = []
    with client.write_behind():
        client.defer(script, ["wb:b"], ["2"], then=answers.append)
        assert answers == []  # answers are handed over at the block's end
    assert redis_client.get("wb:b") == b"2"
    assert answers == [b"2"]


def test_outside_a_block_a_deferred_write_runs_at_once(redis_client):
    client = pinned(redis_client)
    answers = []
    client.defer(client.register_script(SET), ["wb:c"], ["3"], then=answers.append)
    assert redis_client.get("wb:c") == b"3"
    assert answers == [b"3"]


def test_writes_deferred_on_one_thread_never_ride_on_anothers_commands(redis_client):
    client = pinned(redis_client)
    script = client.register_script(SET)
    other_saw = []
    with client.write_behind():
        client.defer(script, ["wb:d"], ["4"])
        thread = threading.Thread(target=lambda: other_saw.append(client.get("wb:d")))
        thread.start()
        thread.join()
    assert other_saw == [None]
    assert redis_client.get("wb:d") == b"4"


def test_a_failed_block_sends_nothing_it_still_held(redis_client):
    client = pinned(redis_client)
    script = client.register_script(SET)
    with pytest.raises(RuntimeError):
        with client.write_behind():
            client.defer(script, ["wb:e"], ["5"])
            raise RuntimeError("the work failed; it will run again, writes and all")
    client.get("wb:other")  # a later command carries nothing left over
    assert redis_client.get("wb:e") is None


def test_a_script_flushed_from_redis_is_loaded_and_run_before_the_command_returns(redis_client):
    client = pinned(redis_client)
    script = client.register_script(SET)
    with client.write_behind():
        client.defer(script, ["wb:f"], ["first"])  # loaded once, for this client
    client.script_flush()  # as a Redis restart does
    with client.write_behind():
        client.defer(script, ["wb:f"], ["6"])
        assert client.get("wb:f") == b"first"  # NOSCRIPT answered ahead of the GET's own answer ...
        assert redis_client.get("wb:f") == b"6"  # ... and the write was loaded and run before it returned


def test_a_failing_deferred_write_raises_when_the_block_ends(redis_client):
    client = pinned(redis_client)
    broken = client.register_script("return redis.call('NOSUCHCOMMAND')")
    with pytest.raises(redis.ResponseError):
        with client.write_behind():
            client.defer(broken, ["wb:g"], [])
            client.set("wb:g", "7")  # the command it rode on still did its own work
    assert redis_client.get("wb:g") == b"7"


def test_a_connection_lost_mid_send_sends_the_deferred_write_again(redis_client, monkeypatch):
    client = pinned(redis_client)
    script = client.register_script(SET)
    conn = client.connection
    real_send, failures = conn.send_packed_command, []

    def send_once_broken(command, check_health=True):
        if not failures:
            failures.append(1)
            conn.disconnect()
            raise redis.ConnectionError("connection lost while sending")
        return real_send(command, check_health)

    monkeypatch.setattr(conn, "send_packed_command", send_once_broken)
    # As a client configured to retry once (redis-py 5 also asks for the errors to retry on).
    monkeypatch.setattr(conn, "retry", Retry(NoBackoff(), 1))
    monkeypatch.setattr(conn, "retry_on_error", [redis.ConnectionError], raising=False)
    with client.write_behind():
        client.defer(script, ["wb:h"], ["8"])
        assert client.get("wb:h") == b"8"  # redis-py's retry resent both
    assert failures == [1]


def test_a_block_whose_writes_could_not_be_sent_leaves_nothing_for_the_next_one(redis_client, monkeypatch):
    client = pinned(redis_client)
    script = client.register_script(SET)
    conn = client.connection

    def redis_is_down(command, check_health=True):
        raise redis.ConnectionError("Redis went away")

    with monkeypatch.context() as patch:
        patch.setattr(conn, "send_packed_command", redis_is_down)
        with pytest.raises(redis.ConnectionError):
            with client.write_behind():
                client.defer(script, ["wb:i"], ["stale"])
    answers = []
    with client.write_behind():  # the next message on this thread
        client.defer(script, ["wb:j"], ["9"], then=answers.append)
        assert client.get("wb:i") is None  # the failed block's write did not ride along
    assert answers == [b"9"] and redis_client.get("wb:i") is None


def test_a_failing_follow_up_is_logged_and_the_others_still_run(redis_client, caplog):
    client = pinned(redis_client)
    script = client.register_script(SET)
    answers = []

    def broken(_answer):
        raise RuntimeError("trim failed")

    with client.write_behind():
        client.defer(script, ["wb:k"], ["10"], then=broken)
        client.defer(script, ["wb:l"], ["11"], then=answers.append)
    assert answers == [b"11"]
    assert redis_client.get("wb:k") == b"10"
    assert "follow-up of a deferred write failed" in caplog.text


def test_a_pipeline_of_the_same_thread_sees_the_deferred_write(redis_client):
    client = pinned(redis_client)
    script = client.register_script(SET)
    with client.write_behind():
        client.defer(script, ["wb:m"], ["12"])
        with client.pipeline() as pipe:
            assert pipe.get("wb:m").execute() == [b"12"]


def test_an_interruption_between_send_and_answer_leaves_no_answer_behind(redis_client, monkeypatch):
    """Dramatiq's time limit raises into a worker thread wherever it is, even mid-command."""
    client = pinned(redis_client)
    client.set("wb:n", "mine")
    script = client.register_script(SET)
    conn = client.connection
    real_read, interrupted = conn.read_response, []

    def interrupted_once(*args, **kwargs):
        if not interrupted:
            interrupted.append(1)
            raise KeyboardInterrupt  # a BaseException, as Dramatiq's TimeLimitExceeded is
        return real_read(*args, **kwargs)

    monkeypatch.setattr(conn, "read_response", interrupted_once)
    with pytest.raises(KeyboardInterrupt):
        with client.write_behind():
            client.defer(script, ["wb:o"], ["13"])
            client.get("wb:n")
    assert client.get("wb:n") == b"mine"  # not an answer left over from before
    with client.write_behind():  # the interrupted work runs again, its write with it
        client.defer(script, ["wb:o"], ["13"])
        assert client.get("wb:o") == b"13"


def test_a_write_with_an_argument_redis_cannot_take_fails_where_it_is_deferred(redis_client):
    client = pinned(redis_client)
    script = client.register_script(SET)
    with client.write_behind():
        with pytest.raises(redis.DataError):
            client.defer(script, ["wb:p"], [{"not": "encodable"}])
        client.set("wb:q", "fine")  # nothing bad was queued for the next command
    assert redis_client.get("wb:q") == b"fine"



@pytest.mark.skipif(not REAL_REDIS, reason="a real Redis drops the connection; the embedded store never does, "
                    "and fakeredis's CLIENT KILL leaves the socket looking alive")
def test_a_connection_the_server_dropped_while_idle_reconnects_before_the_next_command():
    # After a Redis restart or failover every thread's kept connection is one the server closed;
    # its next command (a widget read, an accept batch) must not fail for it.
    client, other = connect(REAL_REDIS), redis.Redis.from_url(REAL_REDIS)
    try:
        client.set("opcore-test:dropped", b"v")
        assert other.client_kill_filter(_id=client.client_id()) == 1
        time.sleep(CHECK_AFTER_IDLE)  # idle: a connection in steady use is not polled before each command
        assert client.get("opcore-test:dropped") == b"v"
        assert other.client_kill_filter(_id=client.client_id()) == 1
        time.sleep(CHECK_AFTER_IDLE)
        assert client.run_batch([("GET", "opcore-test:dropped"), ("PING",)]) == [b"v", b"PONG"]
    finally:
        other.delete("opcore-test:dropped")
        client.close()
        other.close()
