"""A store's Richpanel settings as the API, the CLI and storage see them, their rules, and their errors.

Kept apart from ``stores`` (which talks to Redis and Richpanel) so the boundary models can
be read, and reused, without the machinery behind them.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, SecretStr, StrictBool, field_validator

from opcore_hooks import MirrorMessages, RequestError, problem, validated

from .client import Team

FIELD = "api_key"  # the vault binds the ciphertext to this field name
CHANNELS = ("email", "message", "twilio-sms", "attentive", "aircall", "facebook_message",
            "instagram", "facebook_feed_comment")
_KEY_CHARS = re.compile(r"[\x21-\x7e]+")  # a header value: printable ASCII, no spaces
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


class SettingsError(RequestError):
    """A change was refused or a call cannot be served; ``message`` is for a store admin.

    ``status`` is the HTTP status the settings API answers with: 422 for anything the admin
    can fix in the request, 404 for an unknown store, 502 when Richpanel itself failed.
    """


class StoreConfig(BaseModel):
    """A store's Richpanel settings and credential health, the key still secret."""

    store_id: str
    api_key: SecretStr | None = None
    default_team_id: str | None = None
    default_channel: str = "email"
    enabled: bool = True
    mirror_messages: bool = False  # the note mirror: claim messages as private notes, off by default
    credentials: Literal["valid", "invalid", "unchecked"] = "unchecked"
    checked_at: datetime | None = None
    last_error: str | None = None


class SettingsUpdate(BaseModel):
    """The PUT body. Omitted fields (and a null api_key/enabled/mirror_messages) keep their
    stored values; a null default_team_id clears the team, a null default_channel goes back to email."""

    model_config = ConfigDict(extra="forbid")
    api_key: SecretStr | None = None
    default_team_id: str | None = None
    default_channel: str | None = None
    enabled: StrictBool | None = None
    mirror_messages: MirrorMessages = None

    @field_validator("api_key")
    @classmethod
    def _key_shape(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        key = value.get_secret_value().strip()  # pasted keys often carry a newline
        if not key.startswith("rp_"):
            raise ValueError("a Richpanel API key starts with 'rp_'; copy the whole key from Richpanel")
        if len(key) > 512 or not _KEY_CHARS.fullmatch(key):
            raise ValueError("the API key contains spaces or characters a Richpanel key cannot have")
        return SecretStr(key)

    @field_validator("default_channel")
    @classmethod
    def _known_channel(cls, value: str | None) -> str | None:
        if value is not None and value not in CHANNELS:
            raise ValueError(f"default_channel must be one of: {', '.join(CHANNELS)}")
        return value


#: A body to show whoever sent one that could not be used.
EXAMPLE = '{"api_key": "rp_...", "default_channel": "email", "enabled": true}'


def parse_update(data: Any) -> SettingsUpdate:
    """The PUT body (or the CLI's options) as a SettingsUpdate, or a SettingsError naming every bad field."""
    return validated(SettingsUpdate, data, EXAMPLE, SettingsError)


def check_team(team_id: str, teams: list[Team]) -> str:
    """The team as Richpanel spells its id; a name or unknown id lists the account's teams."""
    listing = [{"id": t.id, "name": t.name} for t in teams]
    names = ", ".join(f"{t.name} ({t.id})" for t in teams) or "none"
    if not _UUID.fullmatch(team_id):
        wrong = f"default_team_id must be a team's id (a UUID), not its name. This account's teams: {names}"
    else:
        for team in teams:
            if team.id.lower() == team_id.lower():
                return team.id
        wrong = f"default_team_id {team_id} is not a team of this Richpanel account. Its teams: {names}"
    raise SettingsError(details=[problem("default_team_id", wrong, "unknown_team", teams=listing)])


def mask(key: str) -> str:
    """``rp_…`` and the last 4 characters; short keys show no tail (it would be most of them)."""
    return f"rp_…{key[-4:]}" if len(key) >= 12 else "rp_…"


def view(config: StoreConfig) -> dict[str, Any]:
    """The JSON-able settings an admin may see: key masked, health flat and grouped."""
    health = {"credentials": config.credentials,
              "checked_at": config.checked_at.isoformat() if config.checked_at else None,
              "last_error": config.last_error}
    return {"store_id": config.store_id,
            "api_key": mask(config.api_key.get_secret_value()) if config.api_key else None,
            "connected": config.api_key is not None, "default_team_id": config.default_team_id,
            "default_channel": config.default_channel, "enabled": config.enabled,
            "mirror_messages": config.mirror_messages,
            **health, "health": health}
