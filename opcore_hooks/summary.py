"""What an agent reads about a claim in any helpdesk: its subject line and its summary.

Helpdesk plugins put these in the ticket a claim opens (Richpanel's first comment, Zendesk's
private first comment), so agents see the same facts whichever helpdesk a brand runs, and the
note mirror's notes (one per message of the claim's Order Protection conversation). The HTML
forms escape every customer- or store-supplied value, since helpdesks render them.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from html import escape

from .delivery.helpdesk import Note
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


@dataclass
class _Summary:
    """The facts an agent reads, as plain text, in the order they are shown."""

    title: str
    facts: list[str]  # type, state, order
    description: str | None
    items: list[str]
    pricing: list[str]  # line items, then subtotal, shipping, tax, total


def _summary(claim: ClaimCreated) -> _Summary:
    order = claim.order
    facts = [f"Claim type: {humanize(claim.claim_type.value)}", f"Claim state: {humanize(claim.claim_state.value)}"]
    order_number = (order.order_number if order else None) or claim.source_order_id
    if order_number:
        facts.append(f"Order: {order_number}")
    items = []
    for item in claim.items:
        name = item.item_name or item.sku or item.item_id or "item"
        sku = f" (SKU {item.sku})" if item.sku and item.item_name else ""
        items.append(f"{item.quantity} × {name}{sku}")
    pricing: list[str] = []
    if order is not None:
        for li in order.line_items:
            price = _money(li.unit_price, order.currency)
            pricing.append(f"{li.quantity} × {li.item_name or li.sku or 'item'}" + (f" at {price}" if price else ""))
        for label, name in (("Subtotal", "subtotal"), ("Shipping", "shipping"), ("Tax", "tax"), ("Total", "total")):
            value = _money(getattr(order, name), order.currency)
            if value is not None:
                pricing.append(f"{label}: {value}")
    return _Summary(f"Order Protection claim {claim_label(claim)}", facts, claim.claim_description, items, pricing)


def summary_html(claim: ClaimCreated, claim_url: str, agent_note: str) -> str:
    """The claim for an agent, as HTML: type and state, order, description, claimed items, pricing,
    the link to the claim and ``agent_note``. Every value from a customer or a store is escaped."""
    e, found = escape, _summary(claim)
    lines = [f"<p><strong>{e(found.title)}</strong></p>", "<ul>", *(f"<li>{e(f)}</li>" for f in found.facts), "</ul>"]
    if found.description:
        lines.append(f"<p>Customer's description: {e(found.description)}</p>")
    for heading, rows in (("Claimed items", found.items), ("Order summary", found.pricing)):
        if rows:
            lines += [f"<p>{heading}:</p><ul>", *(f"<li>{e(row)}</li>" for row in rows), "</ul>"]
    lines.append(f'<p>Claim in Order Protection: <a href="{e(claim_url)}">{e(claim_url)}</a></p>')
    lines.append(f"<p><em>{e(agent_note)}</em></p>")
    return "\n".join(lines)


def summary_text(claim: ClaimCreated, claim_url: str, agent_note: str) -> str:
    """The same summary as plain text, for a helpdesk that shows a comment's body as written."""
    found = _summary(claim)
    lines = [found.title, *(f"- {f}" for f in found.facts)]
    if found.description:
        lines.append(f"Customer's description: {found.description}")
    for heading, rows in (("Claimed items", found.items), ("Order summary", found.pricing)):
        if rows:
            lines += [f"{heading}:", *(f"- {row}" for row in rows)]
    lines += [f"Claim in Order Protection: {claim_url}", agent_note]
    return "\n".join(lines)


def _note_parts(note: Note) -> tuple[str, str]:
    """Who wrote the message (its author and kind of sender, as sent) and when, as plain text."""
    kind = humanize(note.sender_type) if note.sender_type else None
    who = " ".join(part for part in (note.author_name, f"({kind})" if note.author_name and kind else kind) if part)
    when = f" on {note.created_at.isoformat(timespec='seconds')}" if note.created_at else ""
    return who or "Unknown sender", when


def note_html(note: Note) -> str:
    """A claim message as an HTML note: sender, the message as text (its HTML escaped, line
    breaks kept), the claim's link, and the note's reference for ``find_note``."""
    e, (who, when) = escape, _note_parts(note)
    text = "<br>".join(e(line) for line in note.message.splitlines()) or e(note.message)
    return "\n".join((
        f"<p><strong>Order Protection message from {e(who)}</strong>{e(when)}</p>",
        f"<p>{text}</p>",
        f'<p>Claim in Order Protection: <a href="{e(note.claim_url)}">{e(note.claim_url)}</a></p>',
        f"<p><small>Private note mirrored by Order Protection; the customer does not see it. Ref {note.ref}</small></p>",
    ))


def note_text(note: Note) -> str:
    """The same note as plain text, for a helpdesk that shows a comment's body as written
    (so nothing in it is ever read as markup)."""
    who, when = _note_parts(note)
    return "\n".join((f"Order Protection message from {who}{when}:", "", note.message, "",
                      f"Claim in Order Protection: {note.claim_url}",
                      f"Private note mirrored by Order Protection; the customer does not see it. Ref {note.ref}"))
