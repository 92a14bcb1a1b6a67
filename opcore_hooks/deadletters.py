"""Work that will not succeed by retrying, kept with its reason until an operator replays it.

Dramatiq's own dead-letter queue forgets messages after a week and keeps no reason; an
operator needs to see *why* (a 400 from the helpdesk, a revoked key) and send it again once
fixed. Entries are keyed by (actor, claim) so the same failure recorded twice is one entry.
"""

from __future__ import annotations

import json
import time
from typing import Any

import dramatiq
import redis
from pydantic import BaseModel

from . import keys

#: What an exception says about the work that raised it. These come from the work itself (an
#: event no model accepts, a value no request can carry, an answer no parser can use) and
#: fail the same way on every retry: retrying one for days only hides it. A garbled JSON answer
#: is the exception: the next answer may be whole.
PERMANENT: tuple[type[BaseException], ...] = (ValueError, TypeError, LookupError, AttributeError, ArithmeticError)
_TRANSIENT_DESPITE: tuple[type[BaseException], ...] = (json.JSONDecodeError,)


def is_permanent(exc: BaseException) -> bool:
    return isinstance(exc, PERMANENT) and not isinstance(exc, _TRANSIENT_DESPITE)


def retry_options(max_retries: int) -> dict[str, Any]:
    """Dramatiq actor options: retry an outage or a bug up to ``max_retries`` times, but send
    work that failed permanently (``is_permanent``) to the dead letters at once, with its reason,
    where ``/metrics`` counts it and ``opcore dead-letters`` shows it. (With ``retry_when`` set,
    Dramatiq only reports ``max_retries`` to the ``on_retry_exhausted`` actor.)"""
    def retry_when(retries: int, exc: BaseException) -> bool:
        return retries < max_retries and not is_permanent(exc)
    return {"max_retries": max_retries, "retry_when": retry_when}


class DeadLetter(BaseModel):
    id: str
    actor: str
    args: list[Any]
    kwargs: dict[str, Any] = {}
    store_id: str | None = None
    claim_id: str | None = None
    reason: str
    at: float


class DeadLetters:
    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.redis = client
        self.prefix = prefix
        self.index = f"{prefix}:index"

    def add(
        self,
        actor: str,
        args: list[Any],
        *,
        reason: str,
        kwargs: dict[str, Any] | None = None,
        store_id: str | None = None,
        claim_id: str | None = None,
        part: str | None = None,
    ) -> DeadLetter:
        """Keep the work; ``part`` tells apart entries of one actor and claim (a claim's notes)."""
        ident = keys.join(actor, store_id or "-", claim_id or str(time.time_ns()), *((part,) if part else ()))
        entry = DeadLetter(
            id=ident, actor=actor, args=list(args), kwargs=kwargs or {},
            store_id=store_id, claim_id=claim_id, reason=reason, at=time.time(),
        )
        pipe = self.redis.pipeline()
        pipe.set(f"{self.prefix}:{ident}", entry.model_dump_json())
        pipe.zadd(self.index, {ident: entry.at})
        pipe.execute()
        return entry

    def list(self, *, store_id: str | None = None, claim_id: str | None = None) -> list[DeadLetter]:
        idents = [i.decode() for i in self.redis.zrange(self.index, 0, -1)]
        raws = self.redis.mget([f"{self.prefix}:{i}" for i in idents]) if idents else []
        entries = [DeadLetter.model_validate_json(raw) for raw in raws if raw]
        return [
            e for e in entries
            if (store_id is None or e.store_id == store_id) and (claim_id is None or e.claim_id == claim_id)
        ]

    def replay(self, broker: dramatiq.Broker, entry: DeadLetter) -> None:
        """Send the work again and forget the entry; the actor's own idempotency prevents doubles."""
        broker.get_actor(entry.actor).send_with_options(args=tuple(entry.args), kwargs=entry.kwargs)
        self.discard(entry.id)

    def discard(self, ident: str) -> None:
        pipe = self.redis.pipeline()
        pipe.delete(f"{self.prefix}:{ident}")
        pipe.zrem(self.index, ident)
        pipe.execute()

    def count(self) -> int:
        return int(self.redis.zcard(self.index))

