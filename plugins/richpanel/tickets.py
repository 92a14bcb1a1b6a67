"""The Richpanel ticket a claim opens: what an agent needs to see, and nothing the customer gets.

The first comment is recorded as the *customer's* (``sender_type: customer``): an operator
comment on the email channel would be emailed to the customer. Every piece of customer text
is HTML-escaped because Richpanel renders the body as HTML. The claim link doubles as the
marker that finds this claim's ticket again if Richpanel's answer to the create was lost.
"""

from __future__ import annotations

from decimal import Decimal
from html import escape
from typing import Any

from opcore_hooks import ClaimCreated

#: Channels whose customer is addressed by phone number rather than email.
PHONE_CHANNELS = {"twilio-sms", "aircall"}

AGENT_NOTE = (
    "Order Protection keeps this customer's conversation. Use Add Note for internal notes here, "
    "and reply to the customer from the Order Protection dashboard (the link above): a reply "
    "sent from Richpanel would email the customer outside the claim."
)


def humanize(value: str) -> str:
    return value.replace("_", " ").capitalize()


def claim_label(claim: ClaimCreated) -> str:
    return claim.claim_number or claim.claim_id


def subject(claim: ClaimCreated) -> str:
    order = claim.order.order_number if claim.order and claim.order.order_number else claim.source_order_id
    text = f"{humanize(claim.claim_type.value)} claim {claim_label(claim)}"
    return f"{text} for order {order}" if order else text


def _money(amount: str | None, currency: str | None) -> str | None:
    if amount is None:
        return None
    value = f"{Decimal(amount):.2f}"
    return f"{value} {currency}" if currency else value


def comment_body(claim: ClaimCreated, claim_url: str) -> str:
    """The first comment as HTML; every value that came from a customer or a store is escaped."""
    e = escape
    order = claim.order
    lines = [
        f"<p><strong>Order Protection claim {e(claim_label(claim))}</strong></p>",
        "<ul>",
        f"<li>Claim type: {e(humanize(claim.claim_type.value))}</li>",
        f"<li>Claim state: {e(humanize(claim.claim_state.value))}</li>",
    ]
    order_number = (order.order_number if order else None) or claim.source_order_id
    if order_number:
        lines.append(f"<li>Order: {e(order_number)}</li>")
    lines.append("</ul>")
    if claim.claim_description:
        lines.append(f"<p>Customer's description: {e(claim.claim_description)}</p>")
    if claim.items:
        lines.append("<p>Claimed items:</p><ul>")
        for item in claim.items:
            name = item.item_name or item.sku or item.item_id or "item"
            sku = f" (SKU {e(item.sku)})" if item.sku and item.item_name else ""
            lines.append(f"<li>{item.quantity} × {e(name)}{sku}</li>")
        lines.append("</ul>")
    if order is not None:
        rows = [(label, _money(getattr(order, field), order.currency)) for label, field in (
            ("Subtotal", "subtotal"), ("Shipping", "shipping"), ("Tax", "tax"), ("Total", "total"))]
        priced = [(label, value) for label, value in rows if value is not None]
        if order.line_items or priced:
            lines.append("<p>Order summary:</p><ul>")
            for li in order.line_items:
                price = _money(li.unit_price, order.currency)
                each = f" at {e(price)}" if price else ""
                lines.append(f"<li>{li.quantity} × {e(li.item_name or li.sku or 'item')}{each}</li>")
            lines.extend(f"<li>{label}: {e(value)}</li>" for label, value in priced)
            lines.append("</ul>")
    lines.append(f'<p>Claim in Order Protection: <a href="{e(claim_url)}">{e(claim_url)}</a></p>')
    lines.append(f"<p><em>{e(AGENT_NOTE)}</em></p>")
    return "\n".join(lines)


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


def is_ticket_for(ticket: dict[str, Any], claim_url: str) -> bool:
    """Whether a ticket found by the customer's email is the one this claim already opened."""
    comments = ticket.get("comments") or []
    first = ticket.get("comment")
    texts = [c.get("body") or c.get("plain_body") or "" for c in comments if isinstance(c, dict)]
    if isinstance(first, dict):
        texts.append(first.get("body") or "")
    markers = (claim_url, escape(claim_url))
    return any(marker in text for text in texts for marker in markers)
