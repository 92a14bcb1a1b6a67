"""Per-store Zendesk settings: a subdomain, an agent email and a sealed API token, checked first.

One Redis hash per store (``<ns>:zendesk:store:<store_id>``) plus an index of store ids. The
token is stored only as a vault ciphertext bound to the store and field, and leaves this module
inside a ``SecretStr`` or masked. ``update`` is the one validate-and-save path: the HTTP PUT and
the CLI both call it. A change is checked with ``GET /api/v2/groups`` (paced with the account's
delivery), merged under WATCH, and written whole or not at all.
"""

from __future__ import annotations

import logging
import math
from datetime import datetime, timezone
from typing import Any, Literal, Mapping

import redis
from pydantic import BaseModel, ConfigDict, SecretStr, StrictBool, StrictInt, field_validator

from opcore_hooks import (
    CredentialsRejected,
    DecryptionError,
    Detail,
    HelpdeskError,
    Host,
    MirrorMessages,
    RateLimited,
    Refused,
    RequestError,
    check_settings,
    problem,
    validated,
)

from .client import SUBDOMAIN, Group

NAME = "zendesk"
TOKEN = "api_token"  # the vault binds the ciphertext to this field name
#: Longest wait for the account's pacing slot before a check is refused as rate limited.
MAX_PACING_WAIT = 5.0

log = logging.getLogger("opcore.zendesk.stores")


class SettingsError(RequestError):
    """A change refused or a call that cannot be served; ``message`` is for a store admin."""

    def __init__(self, message: str | None = None, details: list[Detail] | None = None, *, status: int = 422,
                 retry_after: float | None = None, rejected: bool = False) -> None:
        super().__init__(message, details, status=status, retry_after=retry_after)
        #: Zendesk refused the credentials themselves (a 401), as opposed to not answering.
        self.rejected = rejected


class StoreConfig(BaseModel):
    store_id: str
    subdomain: str | None = None
    email: str | None = None
    api_token: SecretStr | None = None
    default_group_id: int | None = None
    enabled: bool = True
    mirror_messages: bool = False  # the note mirror: claim messages as private notes, off by default
    credentials: Literal["valid", "invalid", "unchecked"] = "unchecked"
    checked_at: datetime | None = None
    last_error: str | None = None


class SettingsUpdate(BaseModel):
    """The PUT body; omitted fields (and a null api_token, enabled or mirror_messages) keep their
    stored values, a null default_group_id clears the group."""

    model_config = ConfigDict(extra="forbid")
    subdomain: str | None = None
    email: str | None = None
    api_token: SecretStr | None = None
    default_group_id: StrictInt | None = None
    enabled: StrictBool | None = None
    mirror_messages: MirrorMessages = None

    @field_validator("subdomain")
    @classmethod
    def _subdomain(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().lower().removesuffix(".zendesk.com")
        if not SUBDOMAIN.fullmatch(value):
            raise ValueError("subdomain must be the account's Zendesk subdomain: letters, digits and '-' "
                             "(acme for acme.zendesk.com)")
        return value

    @field_validator("email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        local, at, domain = value.partition("@")
        if not (at and local and "." in domain and len(value) <= 254 and value.isprintable() and " " not in value):
            raise ValueError("email must be the address of the Zendesk agent who owns the API token")
        return value

    @field_validator("api_token")
    @classmethod
    def _token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        token = value.get_secret_value().strip()
        if not token or len(token) > 256 or not token.isascii() or not token.isprintable() or " " in token:
            raise ValueError("api_token must be the Zendesk API token, pasted whole")
        return SecretStr(token)


#: A body to show whoever sent one that could not be used.
EXAMPLE = '{"subdomain": "acme", "email": "agent@acme.com", "api_token": "...", "enabled": true}'


def parse_update(data: Any) -> SettingsUpdate:
    """The PUT body (or the CLI's options) as a SettingsUpdate, or a SettingsError naming every bad field."""
    return validated(SettingsUpdate, data, EXAMPLE, SettingsError)


def mask(token: str) -> str:
    return f"…{token[-4:]}" if len(token) >= 12 else "…"


# -- storage --------------------------------------------------------------------------------------

def settings_key(host: Host, store_id: str) -> str:
    return host.key(NAME, "store", store_id)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def from_fields(host: Host, store_id: str, fields: dict[str, str]) -> StoreConfig:
    token = fields.get(TOKEN)
    group = fields.get("default_group_id")
    return StoreConfig(
        store_id=store_id, subdomain=fields.get("subdomain") or None, email=fields.get("email") or None,
        api_token=SecretStr(host.vault.decrypt(store_id, TOKEN, token)) if token else None,
        default_group_id=int(group) if group else None, enabled=fields.get("enabled") == "1",
        mirror_messages=fields.get("mirror_messages") == "1",
        credentials=fields.get("credentials", "unchecked"),  # type: ignore[arg-type]
        checked_at=fields.get("checked_at") or None, last_error=fields.get("last_error") or None,
    )


def _to_hash(host: Host, config: StoreConfig) -> dict[str, str]:
    fields = {"enabled": "1" if config.enabled else "0", "mirror_messages": "1" if config.mirror_messages else "0",
              "credentials": config.credentials, "updated_at": _now().isoformat()}
    for name in ("subdomain", "email"):
        if getattr(config, name):
            fields[name] = getattr(config, name)
    if config.api_token is not None:
        fields[TOKEN] = host.vault.encrypt(config.store_id, TOKEN, config.api_token.get_secret_value())
    if config.default_group_id is not None:
        fields["default_group_id"] = str(config.default_group_id)
    if config.checked_at:
        fields["checked_at"] = config.checked_at.isoformat()
    if config.last_error:
        fields["last_error"] = config.last_error
    return fields


def _fields(host: Host, store_id: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in host.redis.hgetall(settings_key(host, store_id)).items()}


def load(host: Host, store_id: str) -> StoreConfig | None:
    """The store's settings, token decrypted; None if never configured (DecryptionError says what to do)."""
    found = _fields(host, store_id)
    return from_fields(host, store_id, found) if found else None


def mark_invalid(host: Host, store_id: str, error: str, *, api_token: str | None = None) -> None:
    """Record that Zendesk refused the store's credentials, unless other ones were saved meanwhile."""
    if api_token is not None:
        try:
            current = load(host, store_id)
        except DecryptionError:
            current = None
        if current is None or current.api_token is None or current.api_token.get_secret_value() != api_token:
            return
    key = settings_key(host, store_id)
    if host.redis.exists(key):
        host.redis.hset(key, mapping={"credentials": "invalid", "checked_at": _now().isoformat(), "last_error": error})
        log.warning("zendesk credentials of store %r marked invalid: %r", store_id, error)


def mark_valid(host: Host, store_id: str) -> None:
    key = settings_key(host, store_id)
    if host.redis.exists(key):
        with host.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"credentials": "valid", "checked_at": _now().isoformat()})
            pipe.hdel(key, "last_error")
            pipe.execute()


# -- checking against Zendesk ----------------------------------------------------------------------

def groups(host: Host, config: StoreConfig, which: str, *, unavailable_status: int = 422) -> list[Group]:
    """``GET /api/v2/groups`` with the config's credentials, paced with the account's delivery;
    Zendesk's failures become errors worded for a store admin (a settings change refused for
    any reason is a 422; listing the groups answers 502 when Zendesk itself failed)."""
    assert config.subdomain and config.email and config.api_token is not None
    delivery = host.delivery(NAME)
    zendesk = delivery.helpdesk
    try:
        return delivery.request(config.subdomain, lambda call: zendesk.client(call, config).list_groups(),
                                max_wait=MAX_PACING_WAIT)
    except CredentialsRejected:
        raise SettingsError(details=[problem(TOKEN, f"Zendesk rejected {which} (401): check the agent email and "
                                                    "API token", "rejected")], rejected=True) from None
    except Refused as exc:
        raise SettingsError(details=[problem("email", f"Zendesk refused to list the groups with {which} ({exc}): "
                                                      "the agent needs permission to see the account's groups",
                                             "refused")]) from None
    except RateLimited as exc:
        wait = max(1, math.ceil(exc.retry_after))
        raise SettingsError(details=[problem(TOKEN, f"Zendesk is rate limiting this account, try again in {wait} s",
                                             "rate_limited", retry_after=wait)], retry_after=wait) from None
    except HelpdeskError as exc:
        raise SettingsError(details=[problem(TOKEN, f"Zendesk could not check {which} ({exc}); try again later",
                                             "unavailable")], status=unavailable_status) from None


def update(host: Host, store_id: str, changes: SettingsUpdate | Mapping[str, Any]) -> StoreConfig:
    """Validate ``changes`` merged over the stored settings and save them, or raise SettingsError.

    ``changes`` may be the PUT's body as sent: then the body's faults, the store id's and what
    the stored settings lack are named together in one SettingsError, and Zendesk is not asked
    while any of them stands. Zendesk is asked whenever credentials or a group are given or the
    result is enabled, so an enabled store always holds credentials that worked when saved;
    ``mirror_messages`` adds no check of its own (the mirror writes with the stored credentials).
    """
    changes, problems = check_settings(SettingsUpdate, store_id, changes, EXAMPLE, SettingsError)
    key = settings_key(host, store_id)
    for _ in range(3):
        with host.redis.pipeline(transaction=True) as pipe:
            pipe.watch(key)
            raw = {k.decode(): v.decode() for k, v in pipe.hgetall(key).items()}
            saved = _merge(host, store_id, raw, changes, problems)
            pipe.multi()
            pipe.delete(key)
            pipe.hset(key, mapping=_to_hash(host, saved))
            pipe.sadd(host.key(NAME, "stores"), store_id)
            try:
                pipe.execute()
            except redis.WatchError:
                continue
        if saved.enabled and saved.credentials == "valid":
            host.delivery(NAME).release_parked(store_id)
        return saved
    raise SettingsError("the settings changed while they were being saved; send the change again")


def _merge(host: Host, store_id: str, raw: dict[str, str], changes: SettingsUpdate,
           body_problems: list[Detail]) -> StoreConfig:
    """The settings to save, checked with Zendesk; ``body_problems`` (the body's invalid fields,
    left out of ``changes``) are raised with what the stored settings lack, before Zendesk is asked."""
    given = changes.model_fields_set
    problems = list(body_problems)
    try:
        current = from_fields(host, store_id, raw) if raw else StoreConfig(store_id=store_id)
    except DecryptionError as exc:
        if changes.api_token is None and not any(d["field"] == TOKEN for d in problems):
            problems.append(problem(TOKEN, f"{exc}: send api_token with this change", "unreadable"))
        current = from_fields(host, store_id, {k: v for k, v in raw.items() if k != TOKEN})
    merged = current.model_copy(update={
        "subdomain": changes.subdomain or current.subdomain, "email": changes.email or current.email,
        "api_token": changes.api_token or current.api_token,
        "default_group_id": changes.default_group_id if "default_group_id" in given else current.default_group_id,
        "enabled": current.enabled if changes.enabled is None else changes.enabled,
        "mirror_messages": current.mirror_messages if changes.mirror_messages is None else changes.mirror_messages,
    })
    named = {d["field"] for d in problems}  # a field the body got wrong is not "missing" too
    problems += [problem(f, f"{f} is required: none is stored for this store yet", "missing")
                 for f in ("subdomain", "email", TOKEN) if getattr(merged, f) is None and f not in named]
    if problems:
        raise SettingsError(details=problems)
    credentials_given = bool({"subdomain", "email", TOKEN} & given)
    if not (credentials_given or changes.default_group_id is not None or merged.enabled):
        return merged
    listed = groups(host, merged, "these credentials" if credentials_given else "the stored credentials")
    if merged.default_group_id is not None and merged.default_group_id not in {g.id for g in listed}:
        names = ", ".join(f"{g.name} ({g.id})" for g in listed) or "none"
        wrong = f"default_group_id {merged.default_group_id} is not a group of this account. Its groups: {names}"
        raise SettingsError(details=[problem("default_group_id", wrong, "unknown_group",
                                             groups=[g.model_dump() for g in listed])])
    merged.credentials, merged.checked_at, merged.last_error = "valid", _now(), None
    return merged


def disconnect(host: Host, store_id: str) -> bool:
    """Disable the store and forget its token; the record stays so GET shows it disconnected."""
    key = settings_key(host, store_id)
    if not host.redis.exists(key):
        return False
    with host.redis.pipeline(transaction=True) as pipe:
        pipe.hdel(key, TOKEN, "checked_at", "last_error")
        pipe.hset(key, mapping={"enabled": "0", "credentials": "unchecked", "updated_at": _now().isoformat()})
        pipe.execute()
    return True


def view(config: StoreConfig) -> dict[str, Any]:
    """What an admin may see: the token masked."""
    return {"store_id": config.store_id, "subdomain": config.subdomain, "email": config.email,
            "api_token": mask(config.api_token.get_secret_value()) if config.api_token else None,
            "default_group_id": config.default_group_id, "enabled": config.enabled,
            "mirror_messages": config.mirror_messages,
            "credentials": config.credentials,
            "checked_at": config.checked_at.isoformat() if config.checked_at else None,
            "last_error": config.last_error}


def rotate(host: Host) -> int:
    """Re-seal every stored token under the newest master key; returns how many changed."""
    count = 0
    for raw_id in sorted(host.redis.smembers(host.key(NAME, "stores"))):
        store_id = raw_id.decode()
        key = settings_key(host, store_id)
        with host.redis.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(key)
                token = pipe.hget(key, TOKEN)
                if token is None or host.vault.is_current(token.decode()):
                    continue
                fresh = host.vault.reseal(store_id, TOKEN, token.decode())
                pipe.multi()
                pipe.hset(key, TOKEN, fresh)
                pipe.execute()
                count += 1
            except DecryptionError as exc:
                log.error("zendesk: cannot re-encrypt the token of store %r: %s", store_id, exc)
            except redis.WatchError:
                log.warning("zendesk: the settings of store %r changed during rotation; run it again", store_id)
    return count


def store_ids(host: Host) -> list[str]:
    """Every store that ever saved settings for this helpdesk (for the host's metrics)."""
    return [raw.decode() for raw in host.redis.smembers(host.key(NAME, "stores"))]
