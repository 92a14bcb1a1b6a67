"""``POST /webhooks/orderprotection``: validate, deduplicate, enqueue, answer within milliseconds.

Order Protection wants an answer within 5 s and redelivers on failure, so this endpoint does
no helpdesk work: a 202 means the event is in the broker. Marking the id seen and enqueueing
happen in one atomic Redis step (``Dispatcher.accept``), so no crash can leave an event marked
seen but not queued; if Redis cannot be reached the answer is 503 and the sender retries.

The handler never waits on Redis from the event loop: it hands the atomic step to the
dispatcher's committer thread, which sends every step pending at that moment as one pipeline,
so concurrent requests share a round trip and the loop serves others meanwhile (measured in
bench/ingress.py).
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from dramatiq.errors import BrokerError
from pydantic import ValidationError
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .auth import secret_matches
from .bodies import BodyError, read_json
from .errors import error_response, field_errors
from .events import BODY_MODELS, Envelope, Event, normalize_topic, parse_body, received_form
from .replication import NotReplicated

if TYPE_CHECKING:
    from .host import Host

log = logging.getLogger("opcore.ingress")

#: When Order Protection may try a refused (503) event again: a replica or a Redis failover
#: usually settles within seconds.
RETRY_AFTER = {"Retry-After": "2"}

class Ingress:
    def __init__(self, host: Host) -> None:
        self.host = host
        secret = host.settings.webhook_secret
        self.secret = secret.get_secret_value() if secret else None

    def _seen_key(self, event_id: str) -> str:
        return self.host.key("seen", event_id)

    async def handle(self, request: Request) -> Response:
        answer, topic = await self._handle(request)
        if answer.status_code >= 400 and answer.status_code != 503:  # 503: nothing was decided
            await self._count(topic, "refused")
        return answer

    async def _count(self, topic: str | None, outcome: str) -> None:
        """Count an ignored or refused event for /metrics; a count lost to Redis never changes the answer."""
        try:
            await run_in_threadpool(self.host.metrics.count_event, topic, outcome)
        except RedisError:
            pass

    async def _handle(self, request: Request) -> tuple[Response, str | None]:
        if self.secret is None or not secret_matches(request.headers.get("x-webhook-secret"), self.secret):
            return error_response(401, "missing or wrong x-webhook-secret header"), None
        try:
            data = await read_json(request, self.host.settings.max_body_bytes)
        except BodyError as exc:
            return error_response(exc.status, exc.message, exc.details), None
        if not isinstance(data, dict):
            return error_response(422, "body must be a JSON object (Order Protection's webhook envelope)",
                         [{"field": "", "message": "expected an object", "type": "object_type"}]), None
        try:
            envelope = Envelope.model_validate(data)
        except ValidationError as exc:
            return error_response(422, "the webhook envelope is invalid", field_errors(exc)), None
        topic = normalize_topic(envelope.topic)
        if topic not in BODY_MODELS:
            await self._count(topic, "ignored")
            return JSONResponse({"status": "ignored", "topic": envelope.topic}, status_code=200), topic
        try:
            body = parse_body(topic, envelope.body)
        except ValidationError as exc:
            details = field_errors(exc, "body")
            fields = ", ".join(d["field"] for d in details)
            return error_response(422, f"the {topic} body is invalid: {fields}", details), topic
        event = Event(id=envelope.id, topic=topic, created_at=envelope.created_at, body=body, received_at=time.time())
        # Enqueued as it came, validated: dumping the models again cost more than validating them.
        return await self._accept(event, received_form(data, event)), topic

    async def _accept(self, event: Event, wire: dict[str, Any]) -> Response:
        try:
            accepted = await self.host.dispatcher.accept(event, self._seen_key(event.id),
                                                         self.host.settings.event_ttl_seconds, wire=wire)
        except NotReplicated as exc:
            log.error("event %r not acknowledged: %s", event.id, exc)
            await run_in_threadpool(self.host.metrics.count_refusal, "ingress")
            return error_response(503, "the event is not yet on enough Redis replicas to be promised; send it "
                                  "again", headers=RETRY_AFTER)
        except (RedisError, BrokerError, ConnectionError, OSError) as exc:
            log.error("broker unavailable, event %r not accepted: %s", event.id, type(exc).__name__)
            return error_response(503, "the queue is unavailable; the event was not accepted, retry later",
                                  headers=RETRY_AFTER)
        if not accepted:
            return _json({"status": "duplicate", "event_id": event.id}, 200)
        return _json({"status": "accepted", "event_id": event.id}, 202)


#: What JSONResponse renders, with one encoder kept instead of one built per answer.
_RENDER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode


def _json(payload: dict[str, Any], status: int) -> Response:
    """``JSONResponse(payload, status)``, byte for byte, for the answers every event gets."""
    return Response(_RENDER(payload).encode("utf-8"), status_code=status, media_type="application/json")
