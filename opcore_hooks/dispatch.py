"""The host's own actors: hand each accepted event to every plugin, one plugin at a time.

``dispatch`` runs once per accepted event: it feeds the read model, then calls each
plugin's hook separately. A plugin that raises gets its own ``deliver`` message, retried with
Dramatiq's exponential backoff for that plugin alone, so a broken plugin never repeats another
plugin's work. A slow hook does delay the hooks after it for the same event: a hook may do its
remote work inline (the Richpanel plugin opens the ticket right here when its key's pacing
allows, each request bounded by its timeout), and must send anything that waits as a message.
Dramatiq delivers at least once: a redelivered dispatch calls the hooks again, which is why
hooks must be idempotent per claim.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from typing import TYPE_CHECKING, Any

import dramatiq.message
from dramatiq.encoder import JSONEncoder

from .broker import RELEASES
from .committer import Committer
from .deadletters import retry_options
from .events import Event, event_from_json
from .redaction import hide_actor_args

if TYPE_CHECKING:
    from .host import Host

log = logging.getLogger("opcore.dispatch")

QUEUE = "opcore"
#: A store with more than LANE_LIMIT events accepted but not yet done (each one's ack releases
#: it: broker.RELEASES) sends the rest through this second queue. The worker consumes both
#: queues side by side (a consumer each, feeding one FIFO work queue), so a quiet store's events never wait behind another
#: store's burst: a backlog occupies at most one queue's prefetch of the work queue.
BULK_QUEUE = "opcore.bulk"
LANE_LIMIT = 20
EXHAUSTED = "opcore.exhausted"

#: Which plugin hook each topic reaches; order.upserted only feeds the read model.
HOOK_FOR_TOPIC = {
    "claim.created": "on_claim_created",
    "claim.state_changed": "on_claim_status_changed",
    "claim.approved": "on_claim_status_changed",
    "claim.denied": "on_claim_status_changed",
    "message.created": "on_claim_message",
}


# KEYS: seen, msgs, queue, the store's in-flight counter, bulk msgs, bulk queue, event counters,
#       the claim's messages in flight (a message.created; the note mirror waits for them).
# ARGV: seen ttl, message id, message, lane limit, the message's queue_name prefix, the bulk one,
#       the topic (counted as "<topic>|accepted" or "<topic>|duplicate" for /metrics), the event
#       id for a message.created ('' for any other).
# Dramatiq acks a message through the consumer of the queue its queue_name names, so a message
# sent down the bulk lane must name it; Dramatiq's encoding puts queue_name first, which makes
# swapping that prefix here exact and spares encoding and sending the event twice.
_ACCEPT = """
if redis.call('SET', KEYS[1], 'accepted', 'NX', 'EX', ARGV[1]) then
  redis.call('HINCRBY', KEYS[7], ARGV[7] .. '|accepted', 1)
  if ARGV[8] ~= '' then
    redis.call('SADD', KEYS[8], ARGV[8])
    redis.call('EXPIRE', KEYS[8], 3600)
  end
  local n = redis.call('INCR', KEYS[4])
  redis.call('EXPIRE', KEYS[4], 3600)
  local message = ARGV[3]
  if n > tonumber(ARGV[4]) and string.sub(message, 1, #ARGV[5]) == ARGV[5] then
    redis.call('HSET', KEYS[5], ARGV[2], ARGV[6] .. string.sub(message, #ARGV[5] + 1))
    redis.call('RPUSH', KEYS[6], ARGV[2])
    return 2
  end
  redis.call('HSET', KEYS[2], ARGV[2], message)
  redis.call('RPUSH', KEYS[3], ARGV[2])
  return 1
end
redis.call('HINCRBY', KEYS[7], ARGV[7] .. '|duplicate', 1)
return 0
"""


# KEYS: the claim's messages in flight. ARGV: the event's id. A set, not a count: a dispatch run
# twice (redelivered, or run again after a failover lost its ack) removes its own id twice, never
# another message's, which would let the note mirror write that one's successor first.
_ARRIVED = """
redis.call('SREM', KEYS[1], ARGV[1])
"""


class Dispatcher:
    def __init__(self, host: Host) -> None:
        self.host = host
        broker = host.broker
        import dramatiq

        self.dispatch = hide_actor_args(dramatiq.actor(
            self._dispatch, broker=broker, actor_name="opcore.dispatch", queue_name=QUEUE,
            **retry_options(20), min_backoff=500, max_backoff=300_000, on_retry_exhausted=EXHAUSTED,
        ))
        self.deliver = hide_actor_args(dramatiq.actor(
            self._deliver, broker=broker, actor_name="opcore.deliver", queue_name=QUEUE,
            **retry_options(25), min_backoff=1000, max_backoff=3_600_000, on_retry_exhausted=EXHAUSTED,
        ))
        head = {"queue_name": self.dispatch.queue_name, "actor_name": self.dispatch.actor_name}
        self._message_head = _COMPACT(head)[:-1].encode() + b',"args":['
        queue, bulk = f"{broker.namespace}:{QUEUE}", f"{broker.namespace}:{BULK_QUEUE}"
        self._lanes = (queue, f"{queue}.msgs", bulk, f"{bulk}.msgs")
        self.committer = Committer(host.redis, _ACCEPT, name=f"{host.settings.namespace}-accept",
                                   replication=host.replication)
        self._arrived = host.redis.register_script(_ARRIVED)
        broker.declare_queue(BULK_QUEUE)
        self.exhausted = hide_actor_args(dramatiq.actor(
            self._exhausted, broker=broker, actor_name=EXHAUSTED, queue_name=QUEUE, max_retries=50,
        ))

    # The topic decides the hook and the body model; both are validated again here because
    # a message may have been written by an older or newer version of opcore.
    def _inflight_key(self, store_id: str | None) -> str:
        return self.host.key("inflight", store_id or "-")

    def _messages_key(self, event: Event) -> str | None:
        """The claim's count of messages on their way (a message.created only)."""
        if event.topic != "message.created":
            return None
        return self.host.messages_in_flight_key(event.body.store_id, event.body.claim_id)  # type: ignore[attr-defined]

    def _dispatch(self, data: dict[str, Any]) -> None:
        # The store's in-flight counter is released by this message's ack (broker.RELEASES).
        self._dispatch_event(event_from_json(data), data)

    def _dispatch_event(self, event: Event, data: dict[str, Any]) -> None:
        # The read model's write rides on the first plugin's first Redis command (or goes
        # alone at the end): in Redis before any plugin acts, without a round trip of its own.
        with self.host.redis.write_behind(), contextlib.ExitStack() as prefetches:
            self._feed_read_model(event)
            hook = HOOK_FOR_TOPIC.get(event.topic)
            if hook is None:
                return
            store_id = getattr(event.body, "store_id", None)
            for delivery in self.host.deliveries.values():  # their settings reads ride along too
                prefetches.enter_context(delivery.stores.prefetching(store_id))
            for name in self.host.implementers(hook):
                try:
                    self._call(name, hook, event)
                except Exception:  # noqa: BLE001 - isolation: one plugin's failure is its own
                    log.exception("plugin %r failed on %s %r; retrying it alone", name, event.topic, event.id)
                    self.deliver.send(name, data)
            coming = self._messages_key(event)
            if coming is not None:  # handed to every plugin (a failed one retries on its own)
                self.host.redis.defer(self._arrived, keys=[coming], args=[event.id])

    def _deliver(self, plugin: str, data: dict[str, Any]) -> None:
        event = event_from_json(data)
        hook = HOOK_FOR_TOPIC[event.topic]
        self._call(plugin, hook, event)

    def _call(self, plugin: str, hook: str, event: Event) -> None:
        name = {"on_claim_created": "claim", "on_claim_message": "message"}.get(hook, "change")
        payload = {name: event.body}
        self.host.call_plugin(plugin, hook, host=self.host, event=event, **payload)

    def _feed_read_model(self, event: Event) -> None:
        rm = self.host.readmodel
        if event.topic == "claim.created":
            rm.record_claim(event.body, event.created_at)
        elif event.topic == "order.upserted":
            rm.record_order(event.body, event.created_at)
        elif event.topic != "message.created":  # messages are the note mirror's (#15), not the panel's
            rm.record_state(event.body, event.created_at)

    def _exhausted(self, message: dict[str, Any], info: dict[str, Any]) -> None:
        """Every retry is spent, or the work failed permanently (``deadletters.retry_options``):
        keep the work and its reason where an operator will see it, and say so in the log."""
        options = message.get("options", {})
        reason = _exception_text(options.get("traceback") or "") or "no traceback was kept"
        args = message.get("args", [])
        store_id, claim_id = _ids(args)
        plugin, _, actor = message["actor_name"].partition(".")
        kind = {"create_ticket": "create", "finish_ticket": "finish", "write_notes": "note"}.get(actor)
        if plugin in self.host.deliveries and kind:  # for /metrics
            self.host.delivery(plugin).count(f"dead_{kind}")
        tries = int(info.get("retries") or 0) + 1
        gave_up = "retries exhausted" if tries > int(info.get("max_retries") or 0) else "failed permanently"
        self.host.dead_letters.add(
            message["actor_name"], list(args), kwargs=message.get("kwargs") or {},
            reason=f"{gave_up} after {tries} attempt(s): {reason}", store_id=store_id, claim_id=claim_id,
        )
        # The exception's name only: its text may quote the event (the dead letter keeps it whole).
        log.error("%s of store %r, claim %r is a dead letter (%s: %s); see opcore dead-letters",
                  message["actor_name"], store_id, claim_id, gave_up, reason.partition(":")[0])

    async def accept(self, event: Event, seen_key: str, ttl_seconds: int, *, wire: dict[str, Any] | None = None) -> bool:
        """Mark ``event`` seen and enqueue it in one atomic step; False if it was seen before.

        ``wire`` is the event's broker form when the caller has it already (the ingress passes
        ``events.received_form``); else ``event`` is dumped.

        One Lua script does both, so there is no moment at which an event is marked seen but
        not queued (a crash there would turn Order Protection's redelivery into a "duplicate"
        and lose the claim), and the ingress pays one Redis round trip instead of three, shared
        with every accept pending at the same moment (``Committer``: the loop never waits on
        Redis). It writes the message exactly as Dramatiq's RedisBroker ``enqueue`` command does (the
        ``<queue>.msgs`` hash and the ``<queue>`` list); the end-to-end tests prove a real
        Dramatiq worker consumes it. Enqueue middleware hooks are not emitted for it.
        """
        message_id = _random_uuid()
        inflight = self._inflight_key(getattr(event.body, "store_id", None))
        coming = self._messages_key(event)
        encoded = self._encode_dispatch(event.model_dump(mode="json") if wire is None else wire, message_id, inflight)
        queue, msgs, bulk, bulk_msgs = self._lanes
        accepted = await self.committer.call(
            [seen_key, msgs, queue, inflight, bulk_msgs, bulk, self.host.metrics.events_key, coming or inflight],
            [ttl_seconds, message_id, encoded, LANE_LIMIT, _MAIN_LANE, _BULK_LANE, event.topic, event.id if coming else ""],
        )
        return bool(accepted)

    def close(self) -> None:
        """Finish the accepts already handed to Redis and stop their thread."""
        self.committer.stop()

    def _encode_dispatch(self, data: dict[str, Any], redis_message_id: str, releases: str) -> bytes:
        """The bytes ``dispatch.message_with_options(args=(data,), redis_message_id=..., opcore_releases=...)
        .encode()`` gives; the ack of the message releases the store's in-flight counter.

        Building Dramatiq's Message and encoding its dict cost more than the rest of the
        handler's Python together; with Dramatiq's default JSON encoder in place the same
        bytes are put together here (a test compares them with Dramatiq's own). With any
        other encoder set, Dramatiq encodes.
        """
        if type(dramatiq.message.get_encoder()) is not JSONEncoder:
            return self.dispatch.message_with_options(args=(data,), redis_message_id=redis_message_id,
                                                      **{RELEASES: releases}).encode()
        return b"".join((
            self._message_head, _COMPACT(data).encode(), b'],"kwargs":{},"options":{"redis_message_id":"',
            redis_message_id.encode(), b'","' + RELEASES.encode() + b'":', _COMPACT(releases).encode(),
            b'},"message_id":"', _random_uuid().encode(),
            b'","message_timestamp":', str(int(time.time() * 1000)).encode(), b"}",
        ))


#: Dramatiq's JSONEncoder is ``json.dumps(data, separators=(",", ":"))``; one encoder kept
#: spares building it again for every message.
_COMPACT = json.JSONEncoder(separators=(",", ":")).encode


def _random_uuid() -> str:
    """``str(uuid.uuid4())`` (same randomness, version and variant bits) without the UUID object."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


_MAIN_LANE = f'{{"queue_name":"{QUEUE}",'.encode()
_BULK_LANE = f'{{"queue_name":"{BULK_QUEUE}",'.encode()


def _exception_text(traceback_text: str, limit: int = 600) -> str:
    """The final exception of a formatted traceback, its lines joined: what an operator reads as
    a dead letter's reason. A traceback's last line alone would be pydantic's "For further
    information visit ..." and never the field at fault."""
    lines = traceback_text.rstrip().splitlines()
    frames = [i for i, line in enumerate(lines) if line.startswith("  File ")]
    start = frames[-1] + 1 if frames else 0
    while start < len(lines) and lines[start].startswith("    "):  # the frame's code and its carets
        start += 1
    text = "; ".join(line.strip() for line in lines[start:]
                     if line.strip() and "For further information visit" not in line)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _ids(args: list[Any]) -> tuple[str | None, str | None]:
    """The store and claim a message is about: an event, a claim body, or (store, claim) ids."""
    for arg in args:
        if isinstance(arg, dict):
            body = arg.get("body", arg)
            if isinstance(body, dict):  # snake_case as dumped, or camelCase as Order Protection may send
                store_id, claim_id = body.get("store_id", body.get("storeId")), body.get("claim_id", body.get("claimId"))
                if store_id is not None or claim_id is not None:
                    return store_id, claim_id
    strings = [a for a in args if isinstance(a, str)]
    return (strings[0] if strings else None), (strings[1] if len(strings) > 1 else None)
