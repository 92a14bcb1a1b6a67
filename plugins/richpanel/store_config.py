"""A store's Richpanel settings as the API, the CLI and storage see them, and their errors.

Kept apart from ``stores`` (which talks to Redis and Richpanel) so the boundary models can
be read, and reused, without the machinery behind them.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, SecretStr, StrictBool, ValidationError, field_validator

from opcore_hooks.fields import MirrorMessages

FIELD = "api_key"  # the vault binds the ciphertext to this field name
CHANNELS = ("email", "message", "twilio-sms", "attentive", "aircall", "facebook_message",
            "instagram", "facebook_feed_comment")
_KEY_CHARS = re.compile(r"^[\x21-\x7e]+$")  # a header value: printable ASCII, no spaces


class SettingsError(Exception):
    """A change was refused or a call cannot be served; ``message`` is for a store admin.

    ``status`` is the HTTP status the settings API answers with: 422 for anything the admin
    can fix in the request, 404 for an unknown store, 502 when Richpanel itself failed.
    """

    def __init__(self, message: str, details: list[dict[str, Any]] | None = None, *,
                 status: int = 422, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message, self.details, self.status, self.retry_after = message, details or [], status, retry_after


class StoreConfig(BaseModel):
    """A store's Richpanel settings and credential health, the key still secret."""

    store_id: str
    api_key: SecretStr | None = None
    default_team_id: str | None = None
    default_channel: str = "email"
    enabled: bool = True
    credentials: Literal["valid", "invalid", "unchecked"] = "unchecked"
    checked_at: datetime | None = None
    last_error: str | None = None


class SettingsUpdate(BaseModel):
    """The PUT body. Omitted fields (and a null api_key/enabled) keep their stored values;
    a null default_team_id clears the team, a null default_channel goes back to email."""

    model_config = ConfigDict(extra="forbid")
    api_key: SecretStr | None = None
    default_team_id: str | None = None
    default_channel: str | None = None
    enabled: StrictBool | None = None
    mirror_messages: MirrorMessages = None  # false only, until the note mirror exists

    @field_validator("api_key")
    @classmethod
    def _key_shape(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        key = value.get_secret_value().strip()  # pasted keys often carry a newline
        if not key.startswith("rp_"):
            raise ValueError("a Richpanel API key starts with 'rp_'; copy the whole key from Richpanel")
        if len(key) > 512 or not _KEY_CHARS.match(key):
            raise ValueError("the API key contains spaces or characters a Richpanel key cannot have")
        return SecretStr(key)

    @field_validator("default_channel")
    @classmethod
    def _known_channel(cls, value: str | None) -> str | None:
        if value is not None and value not in CHANNELS:
            raise ValueError(f"default_channel must be one of: {', '.join(CHANNELS)}")
        return value


def parse_update(data: Any) -> SettingsUpdate:
    """The PUT body (or the CLI's options) as a SettingsUpdate, or a SettingsError naming fields.

    Pydantic's own error text carries the input value, which may be a key: only the location
    and message are kept.
    """
    if not isinstance(data, dict):
        raise SettingsError("the body must be a JSON object such as {\"api_key\": \"rp_...\"}")
    try:
        return SettingsUpdate.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False)
    unknown = sorted(str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden")
    details = [{"field": ".".join(map(str, e["loc"])), "message": e["msg"].removeprefix("Value error, ")}
               for e in errors if e["type"] != "extra_forbidden"]
    if unknown:
        details.insert(0, {"field": ", ".join(unknown), "message": "unknown field(s); allowed: "
                           + ", ".join(SettingsUpdate.model_fields)})
    raise SettingsError("; ".join(f"{d['field']}: {d['message']}" for d in details), details)


def mask(key: str) -> str:
    """``rp_…`` and the last 4 characters; short keys show no tail (it would be most of them)."""
    return f"rp_…{key[-4:]}" if len(key) >= 12 else "rp_…"
