"""The chaos run's faults: workers SIGKILLed every few seconds, Redis SIGKILLed once, rate limits that change shape.

The sandbox injects the per-request faults itself (latency, 500s, 429s, answers dropped after
the work was done); this module adds what only the harness can do: crash processes, and flip
the sandbox's rate-limit status between 429 and 492 every second (Richpanel answers both).
Faults run while ``on`` is set; clearing it stops them after the current kill or restart.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Callable

import httpx

from bench._chaos_procs import Cluster
from bench._chaos_traffic import Counter, Sender


class Faults:
    """The fault threads of one run; ``on`` is set by the caller when the faults should start."""

    def __init__(self, cluster: Cluster, sender: Sender, rng: random.Random, *, kill_every: tuple[float, float],
                 kills: bool, redis_restart: bool, stop: threading.Event, counter: Counter,
                 progress: Callable[[str], None] | None) -> None:
        self.cluster, self.sender, self.rng, self.kill_every = cluster, sender, rng, kill_every
        self.kills, self.redis_restart = kills, redis_restart
        self.stop, self.counter, self.progress = stop, counter, progress
        self.on = threading.Event()
        #: Redis is restarted once, when half the deliveries are done: mid-burst, with work in every state.
        self.half = len(sender.sends) // 2

    def chaos_monkey(self) -> None:
        """Thread body: kill a random worker every ``kill_every`` seconds and restart it 0.2-1 s later;
        restart Redis once; restart (and count) a worker that died on its own."""
        restarted = not self.redis_restart
        next_kill = time.monotonic() + self.rng.uniform(*self.kill_every)
        while self.on.is_set() and not self.stop.is_set():
            if not restarted and self.sender.delivered.get("done") >= self.half:
                self._restart_redis()
                restarted = True
            if self.kills and time.monotonic() >= next_kill:
                self._kill_a_worker()
                next_kill = time.monotonic() + self.rng.uniform(*self.kill_every)
            for w in self.cluster.dead_workers():
                if not self.on.is_set():
                    break
                self.counter.add("worker_died")
                self.cluster.start_worker(w)
            time.sleep(0.05)

    def _kill_a_worker(self) -> None:
        victim = self.rng.choice(self.cluster.workers)
        self.cluster.kill_worker(victim)
        time.sleep(self.rng.uniform(0.2, 1.0))
        self.cluster.start_worker(victim)

    def _restart_redis(self) -> None:
        self.cluster.restart_redis()
        if self.progress is not None:
            self.progress(f"redis restarted (down {self.cluster.redis_down_seconds:.1f} s)")

    def flip_limit_status(self) -> None:
        """Thread body, until ``stop``: the sandbox's rate-limit status alternates 429/492 every second."""
        status = 429
        while not self.stop.wait(1.0):
            status = 492 if status == 429 else 429
            try:
                self.cluster.control.put("/_sandbox/config", json={"limit_status": status})
            except httpx.HTTPError:
                pass
