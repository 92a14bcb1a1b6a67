"""Running Dramatiq workers for a host: threads inside ``serve``, or ``opcore worker`` processes."""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
from typing import Callable

from dramatiq import Worker

from .host import Host

log = logging.getLogger("opcore.worker")

#: How long an idle worker may wait before polling Redis again, in ms. Dramatiq's default of
#: 1 s would add up to a second per hop to the event-to-ticket time.
POLL_MS = 100


class EmbeddedWorker:
    """Dramatiq worker threads in this process, on the host's own broker."""

    def __init__(self, host: Host, *, threads: int = 4) -> None:
        self.worker = Worker(host.broker, worker_threads=threads, worker_timeout=POLL_MS)

    def start(self) -> None:
        self.worker.start()

    def stop(self, timeout_ms: int = 10_000) -> None:
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
