"""The one Redis connection factory: real Redis in production, fakeredis when embedded.

Both give a ``redis.Redis``-compatible client, so the broker, the dedup keys, the settings
and the read model run the same code either way; only this module knows the difference.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import fakeredis
import redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError, ReadOnlyError
from redis.sentinel import Sentinel

from .config import ConfigError, Settings

log = logging.getLogger("opcore.store")

_embedded_server: fakeredis.FakeServer | None = None
_embedded_lock = threading.Lock()

EMBEDDED_WARNING = (
    "OPCORE_REDIS_URL is not set: using the embedded in-process store. Nothing survives this "
    "process (queued events, settings, ticket ids); set OPCORE_REDIS_URL for production."
)


def embedded_server() -> fakeredis.FakeServer:
    """The process's embedded server: every client of one process must see the same data."""
    global _embedded_server
    with _embedded_lock:
        if _embedded_server is None:
            log.warning(EMBEDDED_WARNING)
            _embedded_server = fakeredis.FakeServer()
        return _embedded_server


@dataclass
class Deferred:
    """A script deferred by ``PinnedRedis.defer``: ``sent`` once a command carried it, with its
    ``answer`` (or the ResponseError Redis answered instead)."""

    script: Script
    keys: list[Any]
    args: list[Any]
    then: Callable[[Any], None] | None
    packed: list[bytes]  # the EVALSHA, packed when deferred: bad arguments fail the caller at once
    answer: Any = None  # its reply, or the ResponseError Redis answered instead
    sent: bool = False


class _Pinned:
    """One thread's connection, and the writes waiting to travel with its next command."""

    __slots__ = ("conn", "depth", "queued", "done", "used", "__weakref__")

    def __init__(self, conn: redis.connection.AbstractConnection) -> None:
        self.conn = conn
        self.used = -math.inf  # time.monotonic() of the last command's start
        self.depth = 0  # nested write_behind() blocks open on this thread
        self.queued: list[Deferred] = []  # not sent yet
        self.done: list[Deferred] = []  # sent (answered or failed), waiting for the block's end


class PinnedRedis(redis.Redis):
    """A client whose every thread keeps one connection of the shared pool.

    redis-py takes a connection from its pool and gives it back around every command; both
    steps lock the pool, and with eight worker threads that lock was the largest single cost
    of a Redis call (bench/worker_cpu.py). redis-py's own ``single_connection_client`` skips
    the pool but serialises every thread on one connection; this keeps one per thread.
    Pipelines, transactions and pub/sub still take their connections from the pool. A process
    thus holds one connection per thread that has used the client (a worker's threads, the web
    tier's thread pool), each back in the pool when its thread ends.

    A pinned connection also allows *write-behind*: inside ``write_behind()``, ``defer()``
    queues a script whose answer nobody waits for, and it is sent in the same packet as the
    thread's next command (its answer read just before that command's), or at the block's
    end if no command follows. It reaches Redis before anything the thread does next, as if
    run at once, but costs no round trip of its own: the read model's write before each
    ticket was a measurable share of a worker's CPU per ticket, mostly in that round trip
    (docs/BENCHMARKS.md).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._pins = threading.local()
        self._loaded: set[str] = set()  # scripts loaded for write-behind (EVALSHA) by this client
        #: Connections of this client's threads made so far; a change tells a worker's consumer to
        #: check whether the Redis it reaches is another primary (``broker._Consumer``).
        self.connects = 0
        super().__init__(*args, **kwargs)

    def _pin(self) -> _Pinned:
        pin = getattr(self._pins, "pin", None)
        if pin is None:
            pool = self.connection_pool
            pin = self._pins.pin = _Pinned(pool.get_connection())
            pin.conn.register_connect_callback(self._connected)
            weakref.finalize(pin, pool.release, pin.conn)  # the thread ended: back to the pool
        return pin

    @property
    def connection(self) -> redis.connection.AbstractConnection:  # read by redis.Redis.execute_command
        pin = self._pin()
        ready(pin.conn, _idle(pin))
        return pin.conn

    @connection.setter
    def connection(self, value: object) -> None:  # redis.Redis.__init__ sets None
        if value is not None:
            raise TypeError("PinnedRedis keeps one connection per thread; it cannot be given one")

    def close(self) -> None:
        # redis.Redis.close() would hand this thread's pin back to the pool while the thread
        # still holds it. The pins belong to the pool: closing a pool this client made closes them.
        if self.auto_close_connection_pool:
            self.connection_pool.close()

    # -- write-behind ------------------------------------------------------------------------
    def defer(self, script: Script, keys: list[Any], args: list[Any],
              then: Callable[[Any], None] | None = None) -> Deferred | None:
        """Run ``script`` with this thread's next command; at once outside ``write_behind()``.

        Only for idempotent writes and reads: a connection error may send one twice. ``then``
        gets the script's answer at the end of the block (at once outside one); it is for
        follow-ups that may be skipped: a ``then`` that raises is logged, and the block goes on.
        Returns the deferred script, whose answer a caller may read once it is ``sent`` (None
        outside a block, where it already ran).
        """
        pin = self._pin()
        if not pin.depth:
            self._then(then, script(keys=keys, args=args, client=self))
            return None
        if script.sha not in self._loaded:  # else its first EVALSHA would only meet NOSCRIPT
            self.script_load(script.script)
            self._loaded.add(script.sha)
        packed = pin.conn.pack_command("EVALSHA", script.sha, len(keys), *keys, *args)
        deferred = Deferred(script, keys, args, then, packed)
        pin.queued.append(deferred)
        return deferred

    @contextmanager
    def write_behind(self) -> Iterator[None]:
        """A block whose deferred writes have all reached Redis, or raised, when it ends.

        What rides on the next command must be seen by whoever reads next, so pipelines and
        transactions of this thread send the deferred writes first (a round trip); other
        threads and other clients see them once the command carrying them has run.
        """
        pin = self._pin()
        pin.depth += 1
        try:
            yield
            if pin.depth == 1:
                self._settle(pin)
        finally:
            if pin.depth == 1:  # settled, or the work failed and will run again, writes and all
                pin.queued, pin.done = [], []
            pin.depth -= 1

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        pin = getattr(self._pins, "pin", None)
        if pin is not None:
            self._send_queued(pin)  # a pipeline has a connection of its own: send them first
        return super().pipeline(transaction=transaction, shard_hint=shard_hint)

    def _send_queued(self, pin: _Pinned) -> None:
        if pin.queued:
            self.execute_command("PING")  # carries them (see _send_command_parse_response)

    def _settle(self, pin: _Pinned) -> None:
        self._send_queued(pin)
        settled, pin.done = pin.done, []
        for item in settled:
            if isinstance(item.answer, redis.ResponseError):
                raise item.answer
        for item in settled:
            self._then(item.then, item.answer)

    @staticmethod
    def _then(then: Callable[[Any], None] | None, result: Any) -> None:
        if then is None:
            return
        try:
            then(result)
        except Exception:  # noqa: BLE001 - a follow-up may be skipped; the write itself landed
            log.exception("a follow-up of a deferred write failed; the write itself landed")

    def _send_command_parse_response(self, conn, command_name, *args, **options):  # type: ignore[override]
        pin = getattr(self._pins, "pin", None)
        if pin is None or conn is not pin.conn:
            return super()._send_command_parse_response(conn, command_name, *args, **options)
        queued = pin.queued  # only ever filled inside a block, and emptied when it ends
        error: redis.ResponseError | None = None
        try:
            if not queued:
                return super()._send_command_parse_response(conn, command_name, *args, **options)
            conn.send_packed_command([chunk for item in queued for chunk in item.packed] + conn.pack_command(*args))
            for item, reply in zip(queued, read_replies(conn, len(queued)), strict=True):  # before the command's own
                item.answer, item.sent = reply, True
            # Sent and answered: a retry of this command (after a connection error) must not
            # send them again, and nothing else may read their answers.
            pin.queued = []
            pin.done.extend(queued)
            answer = self.parse_response(conn, command_name, **options)
        except redis.ResponseError as exc:  # the command's own error answer: the connection is in step
            if not queued:
                if isinstance(exc, ReadOnlyError):
                    conn.disconnect()  # a demoted primary: reconnect, and find the new one, next time
                raise
            error = exc
        except BaseException:
            # Anything else between sending and reading (a lost connection, Dramatiq's time
            # limit raised into this thread) may leave answers unread on a connection this
            # thread keeps: close it, so it reconnects clean instead of answering one behind.
            conn.disconnect()
            raise
        self._run_unloaded(queued)
        if isinstance(error, ReadOnlyError) or any(isinstance(item.answer, ReadOnlyError) for item in queued):
            conn.disconnect()
        if error is not None:
            raise error
        return answer

    def _run_unloaded(self, sent: list[Deferred]) -> None:
        """Run whole the deferred scripts this Redis did not know (it restarted, failed over or
        flushed its scripts), whatever the command that carried them answered."""
        for item in sent:
            if isinstance(item.answer, NoScriptError):
                self._loaded.discard(item.script.sha)
                item.answer = item.script(keys=item.keys, args=item.args, client=self)

    def _connected(self, _conn: Any = None) -> None:
        """On every (re)connect: the server may be another one, which knows none of our scripts."""
        self._loaded.clear()
        self.connects += 1

    def run_batch(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Send ``commands`` at once on this thread's connection and read every answer: one round
        trip (what ``Pipeline.execute`` does without its bookkeeping). An error answer comes back
        in its command's place; a lost connection retries the whole batch by the connection's
        Retry policy, so only commands safe to repeat belong here. A connection that failed
        half-way is closed, never used again with answers unread."""
        pin = self._pin()
        self._send_queued(pin)
        connection = pin.conn

        def send_and_read() -> list[Any]:
            ready(connection, _idle(pin))  # as ``connection`` does, on each try: a retry asks the Sentinels again
            connection.send_packed_command(connection.pack_commands(commands))
            return read_replies(connection, len(commands))

        try:
            replies = connection.retry.call_with_retry(send_and_read, lambda _error: connection.disconnect())
        except BaseException:
            connection.disconnect()
            raise
        if any(isinstance(reply, ReadOnlyError) for reply in replies):
            connection.disconnect()  # a demoted primary: the next batch finds the new one
        return replies


#: A pinned connection idle at least this long is checked before its next command (``ready``).
#: One in steady use is not: the check polls its socket, which before every command cost the
#: worker measurably (docs/BENCHMARKS.md, "The pinned connection's check"), and a server that
#: drops a busy connection fails its command at once, which the caller's error handling sees.
CHECK_AFTER_IDLE = 0.25


def _idle(pin: _Pinned) -> float:
    now = time.monotonic()
    idle, pin.used = now - pin.used, now
    return idle


def ready(conn: redis.connection.AbstractConnection, idle: float = math.inf) -> None:
    """What the pool's ``get_connection`` does before lending a connection, for one kept pinned
    (and idle for ``idle`` seconds: only one idle at least ``CHECK_AFTER_IDLE`` is checked).

    A connection the server closed while it sat idle (Redis restarted, failed over, or dropped
    the client) would fail its next command, and redis-py's connections built from a URL retry
    nothing: after a failover every thread of the web tier answered one request 503, whenever it
    was next used (bench/failover.py). Nothing has been sent yet, so reconnecting is safe; a
    connection lost *during* a command still raises, since that command may have run. A
    Sentinel-managed connection asks the Sentinels for the primary only here: redis-py's
    reconnect inside a command goes back to the address it had, which after a failover is the
    demoted primary (READONLY on every retry; tests/test_replication.py).
    """
    conn.connect()  # a no-op when connected
    if idle < CHECK_AFTER_IDLE:
        return
    try:
        if conn.can_read():  # unread bytes on an idle connection: the server closed it, or it is out of step
            raise redis.ConnectionError("the idle connection has data")
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        conn.disconnect()
        conn.connect()


def read_replies(conn: redis.connection.AbstractConnection, count: int) -> list[Any]:
    """The next ``count`` answers on ``conn``, in order; an error answer is returned in its
    place, so one failing command of a pipelined batch leaves the connection in step."""
    replies: list[Any] = []
    for _ in range(count):
        try:
            replies.append(conn.read_response())
        except redis.ResponseError as exc:
            replies.append(exc)
    return replies


#: Socket settings of every connection to a data node: a dead primary is noticed within seconds.
_SOCKETS: dict[str, Any] = {"health_check_interval": 30, "socket_timeout": 10, "socket_connect_timeout": 5}


def connect(url: str | None, *, server: fakeredis.FakeServer | None = None) -> PinnedRedis:
    """A client for ``url``, or for the embedded store (``server`` or the process's own)."""
    if url:
        try:
            return PinnedRedis.from_url(url, **_SOCKETS)
        except ValueError as exc:  # redis-py's reason never holds the URL, which may carry a password
            raise ConfigError(f"OPCORE_REDIS_URL is not a usable Redis URL ({exc}); write it as "
                              "redis://[:password@]host:6379/0 (rediss:// for TLS)") from None
    return pinned(fakeredis.FakeRedis(server=server or embedded_server()))


def connect_settings(settings: Settings) -> PinnedRedis:
    """The deployment's client: through its Sentinels when they are set, else ``OPCORE_REDIS_URL``,
    else the embedded store.

    With Sentinels, every connection asks them for the current primary when it (re)connects,
    and one that finds its primary demoted (READONLY) closes and asks again: redis-py's
    ``Sentinel.master_for``, which every process (web tier, workers, operator commands, the
    Dramatiq broker on the same client) then follows.
    """
    if not settings.redis_sentinels:
        return connect(settings.redis_url)
    if not settings.redis_sentinel_master:
        raise ConfigError("OPCORE_REDIS_SENTINELS is set but OPCORE_REDIS_SENTINEL_MASTER is not: set it to the "
                          "Sentinel service name of the primary (the name in `sentinel monitor <name> ...`)")
    sentinel_password = settings.redis_sentinel_password
    sentinel = Sentinel(
        settings.sentinel_addresses,
        sentinel_kwargs={"socket_timeout": 2, "socket_connect_timeout": 2,
                         "password": sentinel_password.get_secret_value() if sentinel_password else None},
        **_SOCKETS)
    password = settings.redis_password
    return sentinel.master_for(settings.redis_sentinel_master, redis_class=PinnedRedis, db=settings.redis_db,
                               username=settings.redis_username,
                               password=password.get_secret_value() if password else None)


def check_eviction_policy(client: redis.Redis) -> str | None:
    """Warn, once at start, when Redis may evict opcore's keys; the policy when it may, else None.

    Everything opcore keeps is in Redis and none of it is a cache: a Redis that evicts under
    memory pressure drops sealed credentials, queued work and delivery records without a word,
    and a claim then gets a second ticket or none. Where CONFIG is not allowed (managed Redis,
    an ACL without it) or not known (the embedded store) there is nothing to read: stay quiet.
    """
    try:
        answer = client.config_get("maxmemory-policy")
    except redis.ResponseError:
        return None
    policy = next(iter(answer.values()), None) if answer else None
    if isinstance(policy, bytes):
        policy = policy.decode()
    if policy is None or policy == "noeviction":
        return None
    log.warning("Redis maxmemory-policy is %s: when its memory fills, Redis silently evicts keys, and sealed "
                "credentials, queued work and delivery records with them; set `maxmemory-policy noeviction` "
                "on this Redis (redis.conf or CONFIG SET) and give it the memory it needs", policy)
    return policy


def pinned(client: redis.Redis) -> PinnedRedis:
    """``client``'s pool (real or fake) behind a PinnedRedis: one code path for both stores."""
    return client if isinstance(client, PinnedRedis) else PinnedRedis(connection_pool=client.connection_pool)
