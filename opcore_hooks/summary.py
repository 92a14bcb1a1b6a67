"""What an agent reads about a claim in any helpdesk: its subject line and its summary.

Helpdesk plugins put these in the ticket a claim opens (Richpanel's first comment, Zendesk's
private first comment), so agents see the same facts whichever helpdesk a brand runs. The
summary is HTML with every customer- or store-supplied value escaped, since helpdesks render it.
"""

from __future__ import annotations

from decimal import Decimal
from html import escape

from .events import ClaimCreated


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


def summary_html(claim: ClaimCreated, claim_url: str, agent_note: str) -> str:
    """The claim for an agent, as HTML: type and state, order, description, claimed items, pricing,
    the link to the claim and ``agent_note``. Every value from a customer or a store is escaped."""
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
    lines.append(f"<p><em>{e(agent_note)}</em></p>")
    return "\n".join(lines)
