"""Dramatiq's RedisBroker, with an enqueue that waits out a Redis outage instead of losing work.

When an actor fails while Redis is away, Dramatiq's Retries middleware calls ``enqueue`` for
the retry; a plain RedisBroker raises, the middleware logs it, and the worker acks the
message once Redis is back: the work is gone (found by bench/chaos.py). Waiting here, with
back-off, keeps that message until Redis answers again. Nothing else can run without Redis
anyway, and the ingress does not use this path: it answers 503 at once.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.message import Message

log = logging.getLogger("opcore.broker")


class Broker(RedisBroker):
    def __init__(self, *, enqueue_wait_seconds: float = 300.0, **options: Any) -> None:
        super().__init__(**options)
        self.enqueue_wait_seconds = enqueue_wait_seconds

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
