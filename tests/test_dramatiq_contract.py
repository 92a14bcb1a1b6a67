"""The Dramatiq internals opcore's worker leans on, pinned in pyproject.toml (``dramatiq>=2.2,<2.3``).

``opcore_hooks.worker`` keeps the delayed messages Dramatiq's consumer drops on a connection
error (Dramatiq issue #527, "Delayed Jobs aren't run after cycling Redis": they come back only
when the worker is declared dead). It does so by intercepting the consumer's ``delay_queue``
assignment and by building consumers as ``Worker._add_consumer`` does. These tests fail when a
Dramatiq release changes either, before any worker strands a message for it.
"""

from __future__ import annotations

import inspect
import queue
from dataclasses import fields

from dramatiq.worker import ConsumerThread, Worker, _WorkQueueItem

from opcore_hooks.testing import claim_created
from opcore_hooks.worker import _KeepDelayed, _Worker


def test_dramatiq_drops_its_delay_queue_by_assigning_a_new_one():
    assert "self.delay_queue = PriorityQueue()" in inspect.getsource(ConsumerThread.run)
    assert "self.delay_queue: PriorityQueue[_WorkQueueItem] = PriorityQueue()" in inspect.getsource(
        ConsumerThread.__init__)
    assert "message" in [f.name for f in fields(_WorkQueueItem)]  # what the orphans are read from


def test_opcore_builds_consumers_as_dramatiq_does():
    theirs = inspect.getsource(Worker._add_consumer)
    for part in ("ConsumerThread(", "broker=self.broker", "queue_name=queue_name",
                 "prefetch=self.delay_prefetch if delay else self.queue_prefetch",
                 "work_queue=self.work_queue", "worker_timeout=self.worker_timeout", "consumer.start()"):
        assert part in theirs, part
    assert inspect.signature(Worker._add_consumer) == inspect.signature(_Worker._add_consumer)


def test_delayed_messages_dropped_on_a_connection_error_are_given_back_whole(make_host):
    host = make_host({})
    consumer = _KeepDelayed(broker=host.broker, queue_name="opcore.DQ", prefetch=1,
                            work_queue=queue.PriorityQueue(), worker_timeout=100)
    message = host.dispatcher.dispatch.message(claim_created())
    consumer.delay_queue.put(_WorkQueueItem(0, message))
    consumer.delay_queue = queue.PriorityQueue()  # what Dramatiq's run() does on a connection error

    given_back = []

    class Connected:
        def requeue(self, messages):
            given_back.extend(messages)

    consumer.consumer = Connected()
    consumer.handle_delayed_messages()
    assert given_back == [message]
