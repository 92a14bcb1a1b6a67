"""A store's settings for this helpdesk: one Redis hash per store, the token sealed by the vault.

The delivery engine reads the hash through ``TemplateDesk.settings_key``/``load_store`` and
notices any change at the next request; the settings API and the CLI write it through ``save``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, SecretStr, StrictBool

from opcore_hooks import Host, MirrorMessages

TOKEN = "api_token"  # the vault binds the ciphertext to this field name


class StoreSettings(BaseModel):
    """What the engine and the hooks see: the token still secret."""

    store_id: str
    api_token: SecretStr | None = None
    enabled: bool = True
    #: The note mirror (CONTRACT.md): the engine writes each claim message as a private note on
    #: the claim's ticket when this is on and ``TemplateDesk`` implements ``add_note``.
    mirror_messages: bool = False
    credentials: Literal["valid", "invalid", "unchecked"] = "unchecked"
    last_error: str | None = None


class SettingsUpdate(BaseModel):
    """The settings API's PUT body; omitted (or null) fields keep their stored values."""

    model_config = ConfigDict(extra="forbid")
    api_token: SecretStr | None = None
    enabled: StrictBool | None = None
    mirror_messages: MirrorMessages = None  # true or false only, as every helpdesk's settings


def settings_key(host: Host, plugin: str, store_id: str) -> str:
    return host.key(plugin, "store", store_id)


def load(host: Host, plugin: str, store_id: str, fields: dict[str, str]) -> StoreSettings:
    token = fields.get(TOKEN)
    return StoreSettings(
        store_id=store_id,
        api_token=SecretStr(host.vault.decrypt(store_id, TOKEN, token)) if token else None,
        enabled=fields.get("enabled") == "1",
        mirror_messages=fields.get("mirror_messages") == "1",
        credentials=fields.get("credentials", "unchecked"),  # type: ignore[arg-type]
        last_error=fields.get("last_error") or None,
    )


def read(host: Host, plugin: str, store_id: str) -> StoreSettings | None:
    raw = host.redis.hgetall(settings_key(host, plugin, store_id))
    return load(host, plugin, store_id, {_text(k): _text(v) for k, v in raw.items()}) if raw else None


def save(host: Host, plugin: str, store_id: str, update: SettingsUpdate, *, credentials: str) -> StoreSettings:
    """Merge ``update`` over the stored settings and write them in one step."""
    current = read(host, plugin, store_id) or StoreSettings(store_id=store_id)
    merged = current.model_copy(update={
        "api_token": update.api_token or current.api_token,
        "enabled": current.enabled if update.enabled is None else update.enabled,
        "mirror_messages": current.mirror_messages if update.mirror_messages is None else update.mirror_messages,
        "credentials": credentials, "last_error": None,
    })
    fields = {"enabled": "1" if merged.enabled else "0", "mirror_messages": "1" if merged.mirror_messages else "0",
              "credentials": merged.credentials}
    if merged.api_token is not None:
        fields[TOKEN] = host.vault.encrypt(store_id, TOKEN, merged.api_token.get_secret_value())
    key = settings_key(host, plugin, store_id)
    with host.redis.pipeline(transaction=True) as pipe:
        pipe.delete(key)
        pipe.hset(key, mapping=fields)
        pipe.sadd(host.key(plugin, "stores"), store_id)
        pipe.execute()
    return merged


def forget(host: Host, plugin: str, store_id: str) -> bool:
    """Disable the store and drop its token (the settings ``DELETE``); whether it was configured."""
    key = settings_key(host, plugin, store_id)
    with host.redis.pipeline(transaction=True) as pipe:
        pipe.exists(key)
        pipe.hset(key, mapping={"enabled": "0", "credentials": "unchecked"})
        pipe.hdel(key, TOKEN, "last_error")
        existed, *_ = pipe.execute()
    if not existed:
        host.redis.delete(key)  # nothing was configured: leave nothing behind
    return bool(existed)


def rotate(host: Host, plugin: str) -> int:
    """Re-seal every stored token under the newest master key; returns how many changed."""
    count = 0
    for raw in host.redis.smembers(host.key(plugin, "stores")):
        store_id = _text(raw)
        key = settings_key(host, plugin, store_id)
        token = host.redis.hget(key, TOKEN)
        if token is not None and not host.vault.is_current(_text(token)):
            host.redis.hset(key, TOKEN, host.vault.reseal(store_id, TOKEN, _text(token)))
            count += 1
    return count


def mark_invalid(host: Host, plugin: str, store_id: str, reason: str, *, token: str) -> None:
    """Record that ``token`` was refused, unless the store holds another token by now."""
    current = read(host, plugin, store_id)
    if current is not None and current.api_token is not None and current.api_token.get_secret_value() == token:
        host.redis.hset(settings_key(host, plugin, store_id), mapping={"credentials": "invalid", "last_error": reason})


def mark_valid(host: Host, plugin: str, store_id: str) -> None:
    key = settings_key(host, plugin, store_id)
    with host.redis.pipeline(transaction=True) as pipe:
        pipe.hset(key, "credentials", "valid")
        pipe.hdel(key, "last_error")
        pipe.execute()


def view(settings: StoreSettings) -> dict[str, Any]:
    """What an admin may see: the token masked to its last 4 characters."""
    token = settings.api_token.get_secret_value() if settings.api_token else None
    return {"store_id": settings.store_id, "api_token": f"…{token[-4:]}" if token else None,
            "enabled": settings.enabled, "mirror_messages": settings.mirror_messages,
            "credentials": settings.credentials, "last_error": settings.last_error}


def store_ids(host: Host, plugin: str) -> list[str]:
    """Every store that ever saved settings for this helpdesk (for the host's metrics)."""
    return [_text(raw) for raw in host.redis.smembers(host.key(plugin, "stores"))]


def _text(raw: bytes | str) -> str:
    """A Redis reply as text: the host's client answers bytes (redis-py's types say either)."""
    return raw.decode() if isinstance(raw, bytes) else raw
