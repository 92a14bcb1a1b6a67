"""The Zendesk ticket a claim opens: everything an agent needs, in a comment the customer never gets.

The first comment is private (``"public": false``): Zendesk's standard triggers email the
requester on public updates only. Its ``body`` is the host's claim summary as plain text (Zendesk
shows a ``body`` as written, so nothing in it is markup). The claim id is the ticket's
``external_id``, which finds it again.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable

from opcore_hooks import ClaimCreated, subject, summary_text

TAG = "order_protection"
AGENT_NOTE = (
    "Order Protection keeps this customer's conversation. This ticket's first comment is internal; "
    "reply to the customer from the Order Protection dashboard (the link above), not from Zendesk."
)


def requester_name(claim: ClaimCreated) -> str:
    customer = claim.customer
    return " ".join(part for part in (customer.first_name, customer.last_name) if part) or customer.email


def build_ticket(claim: ClaimCreated, claim_url: str, *, group_id: int | None = None) -> dict[str, Any]:
    """The ``ticket`` of ``POST /api/v2/tickets``. The same claim always gives the same body, as
    Zendesk refuses a repeated Idempotency-Key with another body."""
    ticket: dict[str, Any] = {
        "subject": subject(claim),
        "comment": {"body": summary_text(claim, claim_url, AGENT_NOTE), "public": False},
        "requester": {"name": requester_name(claim), "email": claim.customer.email},
        "external_id": claim.claim_id,
        "tags": [TAG],
    }
    if group_id is not None:
        ticket["group_id"] = group_id
    return ticket


def idempotency_key(store_id: str, claim_id: str) -> str:
    """Stable for the claim across every retry and worker, and a valid header whatever the ids hold."""
    digest = hashlib.sha256(json.dumps([store_id, claim_id]).encode()).hexdigest()[:40]
    return f"opcore-{digest}"


def has_note(comments: Iterable[Any], ref: str) -> bool:
    """Whether one of ``comments`` (List Comments' objects) is the note whose reference is ``ref``
    (``Note.ref``: letters, digits and '-', the same in ``body``, ``plain_body`` and ``html_body``).
    Stops at the first match, so no further page is read."""
    fields = ("body", "plain_body", "html_body")
    return any(isinstance(c, dict) and any(ref in str(c.get(name) or "") for name in fields) for c in comments)
