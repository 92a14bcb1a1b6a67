"""Typed models of Order Protection's webhook envelope and the bodies opcore acts on.

Order Protection adds fields over time and documents both ``claim/created`` and
``claim.created``, camelCase and snake_case bodies; the models accept all of that and keep
unknown fields, so nothing a plugin might need later is thrown away at the door.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, BeforeValidator, ConfigDict, Field

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


_PLAIN_DECIMAL = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")


def utc(value: datetime) -> datetime:
    """``value`` in UTC. Order Protection writes UTC: a time without an offset is taken as UTC."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _money(value: Any) -> Any:
    """Money travels as a decimal string; a float would already have lost cents."""
    if type(value) is str and _PLAIN_DECIMAL.fullmatch(value):
        return value  # the usual "24.99": finite, nothing to strip, no Decimal needed
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        try:
            amount = Decimal(value.strip())
        except InvalidOperation:
            raise ValueError("must be a decimal string such as \"24.99\"") from None
        if not amount.is_finite():
            raise ValueError("must be a finite decimal string such as \"24.99\"")
        return value.strip()
    raise ValueError("must be a decimal string such as \"24.99\"")


Money = Annotated[str, BeforeValidator(_money)]
NonEmpty = Annotated[str, Field(min_length=1, max_length=512)]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class Customer(_Open):
    email: str | None = Field(default=None, max_length=320)
    first_name: str | None = None
    last_name: str | None = None
    phone: str | None = None

    @property
    def full_name(self) -> str:
        return " ".join(part for part in (self.first_name, self.last_name) if part)


class CustomerWithEmail(Customer):
    email: Email


class LineItem(_Open):
    item_id: str | None = None
    item_name: str | None = None
    sku: str | None = None
    quantity: int = 1
    unit_price: Money | None = None


class Order(_Open):
    order_number: str | None = None
    currency: str | None = None
    placed_at: datetime | None = None
    line_items: list[LineItem] = []
    subtotal: Money | None = None
    shipping: Money | None = None
    tax: Money | None = None
    total: Money | None = None


class ClaimItem(_Open):
    product_id: str | None = None
    variant_id: str | None = None
    sku: str | None = None
    item_id: str | None = None
    item_name: str | None = None
    quantity: int = 1


def _ids(snake: str, camel: str) -> Any:
    return Field(validation_alias=AliasChoices(snake, camel))


class ClaimCreated(_Open):
    store_id: Identifier = _ids("store_id", "storeId")
    claim_id: Identifier = _ids("claim_id", "claimId")
    claim_number: str | None = None
    order_id: str | None = None
    source_order_id: str | None = None
    created_at: datetime | None = None
    claim_description: str | None = None
    claim_type: ClaimType
    claim_state: ClaimState
    items: list[ClaimItem] = []
    customer: CustomerWithEmail
    order: Order | None = None


class ClaimStatusChanged(_Open):
    """One shape for ``claim.state_changed``, ``claim.approved`` and ``claim.denied``."""

    store_id: Identifier = _ids("store_id", "storeId")
    claim_id: Identifier = _ids("claim_id", "claimId")
    claim_state: ClaimState
    previous_state: ClaimState | None = None
    resolutions: list[dict[str, Any]] = []


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
    message: Annotated[str, Field(min_length=1, max_length=65_536)]
    message_id: Annotated[str, Field(min_length=1, max_length=256)] | None = Field(
        default=None, validation_alias=AliasChoices("message_id", "messageId"))
    sender_type: Annotated[str, Field(max_length=64)] | None = None
    author_name: Annotated[str, Field(max_length=256)] | None = None
    created_at: datetime | None = None


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
    created_at: datetime | None = None
    body: dict[str, Any]


class Event(BaseModel):
    """A validated event: the envelope plus its typed body. This is what travels on the broker."""

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
