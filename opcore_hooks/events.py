"""Typed models of Order Protection's webhook envelope and the bodies opcore acts on.

Order Protection adds fields over time and documents both ``claim/created`` and
``claim.created``, camelCase and snake_case bodies; the models accept all of that and keep
unknown fields, so nothing a plugin might need later is thrown away at the door.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AliasChoices, BaseModel, BeforeValidator, ConfigDict, Field

from .ids import Email, Identifier


class ClaimType(StrEnum):
    DAMAGED = "DAMAGED"
    DEFECTIVE_ITEM = "DEFECTIVE_ITEM"
    MISSING_ITEM = "MISSING_ITEM"
    MULTIPLE = "MULTIPLE"
    ORDER_DELIVERED_NOT_RECEIVED = "ORDER_DELIVERED_NOT_RECEIVED"
    RETURNED_TO_SENDER = "RETURNED_TO_SENDER"
    STOLEN = "STOLEN"
    WRONG_ITEM = "WRONG_ITEM"


class ClaimState(StrEnum):
    APPROVED = "APPROVED"
    ARCHIVED = "ARCHIVED"
    CLOSED = "CLOSED"
    COMMUNICATING = "COMMUNICATING"
    DENIED = "DENIED"
    DISMISSED = "DISMISSED"
    NEW = "NEW"
    OPEN = "OPEN"
    RESOLVED = "RESOLVED"
    RESOLVED_BY_BRAND = "RESOLVED_BY_BRAND"
    TEMPORARILY_DISMISSED = "TEMPORARILY_DISMISSED"
    WAITING_FOR_BRAND = "WAITING_FOR_BRAND"
    WAITING_FOR_CUSTOMER = "WAITING_FOR_CUSTOMER"
    WAITING_FOR_OP = "WAITING_FOR_OP"


#: A plain decimal: digits, an optional point and fraction, no exponent. The bounds keep an
#: amount a price: "1e20000000" is a valid Decimal that the summary would write out as twenty
#: million digits (issue #23), and no order total needs more than this.
MONEY_DIGITS, MONEY_PLACES = 15, 8
_PLAIN_DECIMAL = re.compile(rf"-?[0-9]{{1,{MONEY_DIGITS}}}(?:\.[0-9]{{1,{MONEY_PLACES}}})?")
_MONEY_RULE = (f'must be a plain decimal string such as "24.99" (no exponent, at most {MONEY_DIGITS} digits '
               f'before the point and {MONEY_PLACES} after)')

#: The times a claim, an order or a message can carry. Outside them a time is a typo or an
#: attack, and converting one near year 1 or 9999 to UTC raises OverflowError in the worker.
EARLIEST, LATEST = datetime(1970, 1, 1, tzinfo=timezone.utc), datetime(2200, 1, 1, tzinfo=timezone.utc)


def utc(value: datetime) -> datetime:
    """``value`` in UTC. Order Protection writes UTC: a time without an offset is taken as UTC."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _money(value: Any) -> Any:
    """Money travels as a decimal string; a float would already have lost cents."""
    if type(value) is str and _PLAIN_DECIMAL.fullmatch(value):
        return value  # the usual "24.99"
    if value is None:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 10 ** MONEY_DIGITS:
        return str(value)
    if isinstance(value, str) and _PLAIN_DECIMAL.fullmatch(value.strip()):
        return value.strip()
    raise ValueError(_MONEY_RULE)


def _in_range(value: datetime) -> datetime:
    """``value`` as sent, refused when in UTC it falls outside EARLIEST..LATEST (or cannot be
    converted at all): then ``utc`` never overflows downstream. Most times are years inside the
    range, where no offset (at most a day) can carry them out: those take no conversion."""
    if EARLIEST.year < value.year < LATEST.year - 1:
        return value
    try:
        converted: datetime | None = utc(value)
    except (OverflowError, ValueError):
        converted = None
    if converted is None or not EARLIEST <= converted < LATEST:
        raise ValueError(f"must be a time between {EARLIEST.year} and {LATEST.year} (ISO 8601, with an offset or UTC)")
    return value


def Text(max_length: int, *, min_length: int = 0) -> Any:  # noqa: N802 - used as a type
    """A string of at most ``max_length`` characters (pydantic refuses lone surrogates in any
    ``str``; ``bodies.read_json`` refuses them in the fields no model names)."""
    return Annotated[str, Field(min_length=min_length, max_length=max_length)]


Money = Annotated[str, BeforeValidator(_money)]
When = Annotated[datetime, AfterValidator(_in_range)]
Quantity = Annotated[int, Field(ge=0, le=1_000_000)]
NonEmpty = Text(512, min_length=1)
#: Generous: a bound is there to keep an event deliverable, and a claim refused for a long
#: name is a claim lost, so each is far past any real value (a currency code, a phone number).
Short = Text(128)
Name = Text(256)
Ref = Text(256)  # an order number, an SKU, an item or product id: a reference, never prose
#: Lists are bounded like everything else: a claim lists the items of one order.
MAX_ITEMS = 500


class _Open(BaseModel):
    # A refused event's error text never repeats what was sent: it may be a customer's data,
    # and errors reach logs (the ingress's 422 names fields, not values, as well).
    model_config = ConfigDict(extra="allow", populate_by_name=True, hide_input_in_errors=True)


class Customer(_Open):
    email: Text(320) | None = None
    first_name: Name | None = None
    last_name: Name | None = None
    phone: Short | None = None


class CustomerWithEmail(Customer):
    email: Email


class LineItem(_Open):
    item_id: Ref | None = None
    item_name: Text(1024) | None = None
    sku: Ref | None = None
    quantity: Quantity = 1
    unit_price: Money | None = None


class Order(_Open):
    order_number: Ref | None = None
    currency: Short | None = None
    placed_at: When | None = None
    line_items: Annotated[list[LineItem], Field(max_length=MAX_ITEMS)] = []
    subtotal: Money | None = None
    shipping: Money | None = None
    tax: Money | None = None
    total: Money | None = None


class ClaimItem(_Open):
    product_id: Ref | None = None
    variant_id: Ref | None = None
    sku: Ref | None = None
    item_id: Ref | None = None
    item_name: Text(1024) | None = None
    quantity: Quantity = 1


def _ids(snake: str, camel: str) -> Any:
    return Field(validation_alias=AliasChoices(snake, camel))


class ClaimCreated(_Open):
    store_id: Identifier = _ids("store_id", "storeId")
    claim_id: Identifier = _ids("claim_id", "claimId")
    claim_number: Ref | None = None
    order_id: Ref | None = None
    source_order_id: Ref | None = None
    created_at: When | None = None
    claim_description: Text(65_536) | None = None
    claim_type: ClaimType
    claim_state: ClaimState
    items: Annotated[list[ClaimItem], Field(max_length=MAX_ITEMS)] = []
    customer: CustomerWithEmail
    order: Order | None = None


class ClaimStatusChanged(_Open):
    """One shape for ``claim.state_changed``, ``claim.approved`` and ``claim.denied``."""

    store_id: Identifier = _ids("store_id", "storeId")
    claim_id: Identifier = _ids("claim_id", "claimId")
    claim_state: ClaimState
    previous_state: ClaimState | None = None
    resolutions: Annotated[list[dict[str, Any]], Field(max_length=MAX_ITEMS)] = []


class OrderUpserted(_Open):
    store_id: Identifier = _ids("store_id", "storeId")
    customer: CustomerWithEmail
    order: Order


class MessageCreated(_Open):
    """A message of the claim's Order Protection conversation (CONTRACT.md, "Note mirror").

    Accepted and queued whatever the stores' settings; the note mirror (issue #15) is what will
    act on it. ``message_id`` is unique within its claim when given.
    """

    store_id: Identifier = _ids("store_id", "storeId")
    claim_id: Identifier = _ids("claim_id", "claimId")
    message: Text(65_536, min_length=1)
    message_id: Text(256, min_length=1) | None = Field(
        default=None, validation_alias=AliasChoices("message_id", "messageId"))
    sender_type: Short | None = None
    author_name: Name | None = None
    created_at: When | None = None


Topic = Literal["claim.created", "claim.state_changed", "claim.approved", "claim.denied", "order.upserted",
                "message.created"]

#: The body model of every topic opcore acts on; other topics are answered "ignored".
BODY_MODELS: dict[str, type[BaseModel]] = {
    "claim.created": ClaimCreated,
    "claim.state_changed": ClaimStatusChanged,
    "claim.approved": ClaimStatusChanged,
    "claim.denied": ClaimStatusChanged,
    "order.upserted": OrderUpserted,
    "message.created": MessageCreated,
}

#: States implied by topics whose body need not carry one.
IMPLIED_STATE = {"claim.approved": ClaimState.APPROVED, "claim.denied": ClaimState.DENIED}


def normalize_topic(topic: str) -> str:
    """``claim/created`` and ``claim.created`` are the same topic in Order Protection's docs."""
    return topic.strip().replace("/", ".").lower()


class Envelope(_Open):
    id: NonEmpty
    topic: NonEmpty
    created_at: When | None = None
    body: dict[str, Any]


class Event(BaseModel):
    """A validated event: the envelope plus its typed body. This is what travels on the broker."""

    model_config = ConfigDict(hide_input_in_errors=True)

    id: str
    topic: Topic
    created_at: datetime | None = None
    body: ClaimCreated | ClaimStatusChanged | OrderUpserted | MessageCreated
    #: When the ingress accepted it (unix seconds): where the claim-to-ticket time starts.
    received_at: float | None = None

    @property
    def store_id(self) -> str:
        return self.body.store_id


def parse_body(topic: str, body: dict[str, Any]) -> BaseModel:
    """Validate ``body`` for a normalized, handled topic (raises pydantic.ValidationError)."""
    if topic in IMPLIED_STATE and "claim_state" not in body and "claimState" not in body:
        body = {**body, "claim_state": IMPLIED_STATE[topic].value}
    elif "claimState" in body and "claim_state" not in body:
        body = {**body, "claim_state": body["claimState"]}
    return BODY_MODELS[topic].model_validate(body)


def event_from_json(data: dict[str, Any]) -> Event:
    """Rebuild an Event from its broker form, choosing the body model by topic, not by guess.

    The body goes through ``parse_body``, as at the ingress: the broker form may be the body as
    Order Protection sent it (a state implied by its topic, camelCase names).
    """
    return Event(
        id=data["id"],
        topic=data["topic"],
        created_at=data.get("created_at"),
        body=parse_body(data["topic"], data["body"]),
        received_at=data.get("received_at"),
    )


def received_form(data: dict[str, Any], event: Event) -> dict[str, Any]:
    """The broker form of an event as Order Protection sent it (``data``), once it has validated
    into ``event``: its topic normalized, its body untouched. ``event_from_json`` parses it with
    the same ``parse_body`` into the same event, and it costs no second serialization."""
    return {"id": event.id, "topic": event.topic, "created_at": data.get("created_at"), "body": data["body"],
            "received_at": event.received_at}
