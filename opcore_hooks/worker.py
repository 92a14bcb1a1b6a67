"""Running Dramatiq workers for a host: threads inside ``serve``, or ``opcore worker`` processes."""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
from typing import Callable

from dramatiq import Worker
from dramatiq.common import iter_queue, q_name
from dramatiq.errors import BrokerConnectionError
from dramatiq.worker import ConsumerThread
from redis.exceptions import RedisError

from .host import Host
from .redaction import hide_message_args

log = logging.getLogger("opcore.worker")

#: How long an idle worker may wait before polling Redis again, in ms. Dramatiq's default of
#: 1 s would add up to a second per hop to the event-to-ticket time.
POLL_MS = 100


class _KeepDelayed(ConsumerThread):
    """A consumer that gives back the delayed messages Dramatiq drops on a connection error
    (upstream: Bogdanp/dramatiq#527; the internals used here are pinned in pyproject.toml and
    checked by tests/test_dramatiq_contract.py).

    On a broker connection error, Dramatiq's consumer replaces its in-memory delay queue with
    an empty one. The messages it held stay claimed by this worker in Redis and come back only
    when the worker is declared dead, which a live worker never is: every paced ticket and
    snooze is a delayed message, and a Redis restart stranded them (found by bench/chaos.py).
    This keeps them and gives them back *whole* as soon as a consumer is connected again
    (``broker._Consumer.give_back``): after a failover the new primary may not know their ids,
    and a requeue by id would drop them (bench/failover.py found 235 lost that way).
    """

    def __init__(self, **kwargs: object) -> None:
        self._orphans: list = []
        super().__init__(**kwargs)

    @property
    def delay_queue(self):  # type: ignore[override]
        return self._delay_queue

    @delay_queue.setter
    def delay_queue(self, queue) -> None:
        old = self.__dict__.get("_delay_queue")
        if old is not None:
            self._orphans.extend(item.message for item in iter_queue(old))
        self._delay_queue = queue

    def handle_delayed_messages(self) -> None:
        if self._orphans and self.consumer is not None:
            try:
                self.consumer.requeue(self._orphans)
            except (RedisError, BrokerConnectionError):
                pass  # still away: try again on the next turn
            else:
                log.warning("gave back %d delayed message(s) held across a connection error", len(self._orphans))
                self._orphans = []
        super().handle_delayed_messages()


class _Worker(Worker):
    def __init__(self, *args: object, **kwargs: object) -> None:
        hide_message_args("dramatiq.worker.WorkerThread")  # named as dramatiq.logging names it
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def _add_consumer(self, queue_name: str, *, delay: bool = False) -> None:
        # Dramatiq's own body, with _KeepDelayed as the consumer class.
        if queue_name in self.consumers:
            return
        hide_message_args(f"dramatiq.worker.ConsumerThread({queue_name})")
        if self.consumer_whitelist and q_name(queue_name) not in self.consumer_whitelist:
            return
        consumer = self.consumers[queue_name] = _KeepDelayed(
            broker=self.broker,
            queue_name=queue_name,
            prefetch=self.delay_prefetch if delay else self.queue_prefetch,
            work_queue=self.work_queue,
            worker_timeout=self.worker_timeout,
        )
        consumer.start()


#: Seconds between two runs of the deliveries' periodic work (``Delivery.tick``).
TICK_SECONDS = 30.0


class Ticker(threading.Thread):
    """Runs each delivery's periodic work (note deadlines) in a worker, every TICK_SECONDS.

    Every worker process runs one; the work is leased in Redis, so several tickers share it.
    """

    def __init__(self, host: Host, interval: float = TICK_SECONDS) -> None:
        super().__init__(name="opcore-ticker", daemon=True)
        self.host, self.interval, self.stopping = host, interval, threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            for name, delivery in self.host.deliveries.items():
                try:
                    delivery.tick()
                except Exception:  # a Redis outage, a bug: logged, and tried again next time
                    log.exception("periodic work of %r failed; trying again in %g s", name, self.interval)


class EmbeddedWorker:
    """Dramatiq worker threads in this process, on the host's own broker, and its ticker."""

    def __init__(self, host: Host, *, threads: int = 4) -> None:
        self.worker = _Worker(host.broker, worker_threads=threads, worker_timeout=POLL_MS)
        self.ticker = Ticker(host)

    def start(self) -> None:
        self.worker.start()
        self.ticker.start()

    def stop(self, timeout_ms: int = 10_000) -> None:
        self.ticker.stopping.set()
        self.worker.stop(timeout=timeout_ms)

    def join(self) -> None:
        self.worker.join()


def _run_one(threads: int, host_factory: Callable[[], Host]) -> None:
    host = host_factory()
    worker = EmbeddedWorker(host, threads=threads)
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    worker.start()
    log.info("worker process ready: %d threads, queues %s", threads, sorted(host.broker.get_declared_queues()))
    stopping.wait()
    worker.stop()
    host.close()


def run_processes(processes: int, threads: int, host_factory: Callable[[], Host]) -> int:
    """Run ``processes`` worker processes until SIGTERM/SIGINT; restart none (a supervisor does)."""
    if processes == 1:
        _run_one(threads, host_factory)
        return 0
    ctx = multiprocessing.get_context("spawn")
    children = [ctx.Process(target=_run_one, args=(threads, host_factory), daemon=False) for _ in range(processes)]
    for child in children:
        child.start()
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    while not stopping.is_set() and all(child.is_alive() for child in children):
        stopping.wait(1.0)
    for child in children:
        if child.is_alive():
            child.terminate()
    for child in children:
        child.join(30)
    return 0 if stopping.is_set() else 1
