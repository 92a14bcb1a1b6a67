"""The Richpanel ticket a claim opens: what an agent needs to see, and nothing the customer gets.

The first comment is recorded as the *customer's* (``sender_type: customer``): an operator
comment on the email channel would be emailed to the customer. Every piece of customer text
is HTML-escaped because Richpanel renders the body as HTML. The claim link doubles as the
marker that finds this claim's ticket again if Richpanel's answer to the create was lost.
"""

from __future__ import annotations

from html import escape
from typing import Any

from opcore_hooks import ClaimCreated, subject, summary_html

#: Channels whose customer is addressed by phone number rather than email.
PHONE_CHANNELS = {"twilio-sms", "aircall"}

AGENT_NOTE = (
    "Order Protection keeps this customer's conversation. Use Add Note for internal notes here, "
    "and reply to the customer from the Order Protection dashboard (the link above): a reply "
    "sent from Richpanel would email the customer outside the claim."
)


def comment_body(claim: ClaimCreated, claim_url: str) -> str:
    """The first comment as HTML (``opcore_hooks.summary``) with Richpanel's note to agents."""
    return summary_html(claim, claim_url, AGENT_NOTE)


def build_ticket(
    claim: ClaimCreated, claim_url: str, *, channel: str = "email", team_id: str | None = None
) -> dict[str, Any]:
    """The ``ticket`` object of ``POST /v1/tickets`` for a new claim."""
    customer = claim.customer
    source_from: dict[str, Any] = {"address": customer.email}
    if channel in PHONE_CHANNELS and customer.phone:
        source_from["id"] = customer.phone
    ticket: dict[str, Any] = {
        "status": "OPEN",
        "subject": subject(claim),
        "customer_profile": {
            "firstName": customer.first_name,
            "lastName": customer.last_name,
            "email": customer.email,
            "phone": customer.phone,
        },
        "via": {"channel": channel, "source": {"from": source_from}},
        "comment": {"sender_type": "customer", "public": True, "body": comment_body(claim, claim_url)},
    }
    if team_id:
        # Richpanel documents no team field; Order Protection's integration assigns the team in
        # the create call. ``team_id`` carries the configured team's UUID.
        ticket["team_id"] = team_id
    return ticket


def _texts(ticket: dict[str, Any]) -> list[str]:
    """Every comment text of a retrieved ticket: each comment's ``body`` and ``plain_body``."""
    comments = ticket.get("comments") or []
    first = ticket.get("comment")
    found = [c for c in comments if isinstance(c, dict)] + ([first] if isinstance(first, dict) else [])
    return [str(c.get(name) or "") for c in found for name in ("body", "plain_body")]


def is_ticket_for(ticket: dict[str, Any], claim_url: str) -> bool:
    """Whether a ticket found by the customer's email is the one this claim already opened."""
    markers = (claim_url, escape(claim_url))
    return any(marker in text for text in _texts(ticket) for marker in markers)


def has_note(ticket: dict[str, Any], ref: str) -> bool:
    """Whether a retrieved ticket holds the note whose reference is ``ref`` (``Note.ref``, which
    ``note_html`` writes as is: nothing in it is escaped)."""
    return any(ref in text for text in _texts(ticket))
