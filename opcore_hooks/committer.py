"""Group commit: one thread runs every pending call of a Lua script in one Redis round trip.

The ingress accepts each event with one atomic script call. Made from the event loop, that
call blocks the loop for a round trip and pays redis-py's per-call overhead (connection
checkout, packing, a send and a receive) once per request. Handed to this thread instead, it
costs the loop a future: the calls of one loop turn are handed over together at its end (one
wake-up of the thread, not one per request), and the thread drains everything that arrived
while it was busy and pipelines it: every EVALSHA written at once, the replies read back in
order. It is not a MULTI transaction: each script call is atomic on its own, which is all
the ingress needs. Concurrent requests share one round trip and the loop keeps serving while
Redis answers.

The same code runs on real Redis and on fakeredis (the embedded mode and the tests): both
speak redis-py's connection protocol, which is all a pipeline is made of. Errors are per
call: a script that raises fails only its own caller, and a connection failure fails every
call of that batch with the exception, which the ingress turns into a 503 (nothing of that
batch was answered "accepted").

The thread starts on first use and stops on ``stop()``, after it has run everything handed
to it before; a later call starts a fresh one, so a host outlives any one app.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import queue
import threading
from collections import defaultdict
from typing import Any, Sequence

import redis
from redis.exceptions import NoScriptError

from .replication import Replication
from .store import pinned

log = logging.getLogger("opcore.committer")

_STOP = object()

#: One pending call: its keys, its args, the future to resolve and the loop that owns it.
_Call = tuple[Sequence[Any], Sequence[Any], "asyncio.Future[Any]", asyncio.AbstractEventLoop]


class Committer:
    """Runs ``script`` for every ``call()``, batching the calls that are pending together."""

    def __init__(self, client: redis.Redis, script: str, *, name: str = "opcore-committer",
                 max_batch: int = 256, replication: Replication | None = None) -> None:
        self.client = pinned(client)  # the committer thread keeps one connection of the pool
        self.replication = replication
        self.script = script
        self.sha = hashlib.sha1(script.encode()).hexdigest()
        self.name = name
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[Any] | None = None
        self._turn: dict[asyncio.AbstractEventLoop, list[_Call]] = {}
        self._thread: threading.Thread | None = None

    # -- the loop's side -------------------------------------------------------------------
    def call(self, keys: Sequence[Any], args: Sequence[Any]) -> asyncio.Future[Any]:
        """Queue one script call; the future resolves to its reply or to the error it raised.

        Call from a running event loop; the future belongs to that loop. The calls a loop
        makes in one turn reach the thread together, with one wake-up, at the end of it.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        with self._lock:
            calls = self._turn.get(loop)
            if calls is None:
                calls = self._turn[loop] = []
                loop.call_soon(self._hand_over, loop)
            calls.append((keys, args, future, loop))
        return future

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            calls = self._turn.pop(loop, None)
            if calls:
                if self._queue is None:
                    self._start()
                assert self._queue is not None
                self._queue.put(calls)

    def _start(self) -> None:
        self._queue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, args=(self._queue,), name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Run everything queued so far, then end the thread (waiting at most ``timeout``)."""
        with self._lock:
            if self._turn:  # calls of a loop turn that has not ended yet go first
                if self._queue is None:
                    self._start()
                assert self._queue is not None
                for calls in self._turn.values():
                    self._queue.put(calls)
                self._turn.clear()
            pending, thread = self._queue, self._thread
            self._queue = self._thread = None
            if pending is None or thread is None:
                return
            pending.put(_STOP)
        thread.join(timeout)
        if thread.is_alive():
            log.error("%s did not finish its pending calls within %.0f s", self.name, timeout)

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    # -- the thread's side -----------------------------------------------------------------
    def _run(self, pending: queue.SimpleQueue[Any]) -> None:
        stopping = False
        while not stopping:
            batch: list[_Call] = []
            handed = pending.get()
            while True:
                if handed is _STOP:
                    stopping = True
                    break
                batch.extend(handed)
                if len(batch) >= self.max_batch:
                    break
                try:
                    handed = pending.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._commit(batch)

    def _commit(self, batch: list[_Call]) -> None:
        try:
            replies: list[Any] = self._execute(batch)
            missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
            if missing:  # Redis restarted or flushed its scripts: load once, rerun just those
                self.client.script_load(self.script)
                for i, reply in zip(missing, self._execute([batch[i] for i in missing]), strict=True):
                    replies[i] = reply
        except Exception as exc:  # noqa: BLE001 - every caller of the batch gets the error
            replies = [exc] * len(batch)
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any]]] = defaultdict(list)
        for (_, _, future, loop), reply in zip(batch, replies, strict=True):
            by_loop[loop].append((future, reply))
        for loop, results in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, results)
            except RuntimeError:  # the loop is closed: nobody is waiting for these answers
                log.warning("%d script result(s) arrived after their event loop closed", len(results))

    def _execute(self, batch: list[_Call]) -> list[Any]:
        """One round trip for the batch (``PinnedRedis.run_batch``); a rerun is safe: an event
        that was already marked answers "duplicate".

        With replicas required, the batch ends with one ``WAIT``: every accept of the batch is
        answered only once the replicas hold it, and all of them fail with NotReplicated
        otherwise, duplicates too (the first copy may be the one the replicas lack). The events
        stay written on the primary, whole: Order Protection's redelivery then answers
        "duplicate" once the replicas confirm, or "accepted" on a new primary that lost them.
        """
        commands: list[tuple[Any, ...]] = [("EVALSHA", self.sha, len(keys), *keys, *args) for keys, args, _, _ in batch]
        replication = self.replication
        if replication is None or not replication.required:
            return self.client.run_batch(commands)
        replies = self.client.run_batch([*commands, replication.wait_command])
        try:
            replication.check(replies.pop())
        except redis.RedisError as exc:
            return [reply if isinstance(reply, BaseException) else exc for reply in replies]
        return replies


def _resolve(results: list[tuple[asyncio.Future[Any], Any]]) -> None:
    for future, reply in results:
        if future.cancelled():
            continue
        if isinstance(reply, BaseException):
            future.set_exception(reply)
        else:
            future.set_result(reply)
