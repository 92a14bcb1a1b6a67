"""Per-store Richpanel settings: what a brand pasted, checked against Richpanel, sealed in Redis.

One Redis hash per store (``<ns>:richpanel:store:<store_id>``) plus an index set of store ids,
so rotation never has to guess key patterns. The API key is stored only as a vault ciphertext
bound to the store and field, and leaves this module only inside a ``SecretStr`` or masked.
``update`` is the single validate-and-save path: the HTTP PUT and the CLI both call it, so a
rule added here holds everywhere.
"""

from __future__ import annotations

import hmac
import logging
import math
from datetime import datetime, timezone
from typing import Any, Mapping

import redis
from pydantic import SecretStr

from opcore_hooks import (
    CredentialsCheck,
    CredentialsRejected,
    DecryptionError,
    Detail,
    HelpdeskError,
    Host,
    RateLimited,
    check_settings,
    problem,
)

from .client import Team
from .store_config import (  # noqa: F401 - re-exported: stores is the module callers use
    CHANNELS,
    EXAMPLE,
    FIELD,
    SettingsError,
    SettingsUpdate,
    StoreConfig,
    check_team,
    mask,
    parse_update,
    view,
)

NAME = "richpanel"
#: Longest wait for the key's pacing slot before a check is refused as rate limited.
MAX_PACING_WAIT = 5.0

log = logging.getLogger("opcore.richpanel.stores")


# -- storage ---------------------------------------------------------------------------------

def settings_key(host: Host, store_id: str) -> str:
    """The store's settings hash; the delivery engine watches it for changes."""
    return host.key(NAME, "store", store_id)


_key = settings_key


def _index(host: Host) -> str:
    return host.key(NAME, "stores")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _decode(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


def from_fields(host: Host, store_id: str, fields: dict[str, str]) -> StoreConfig:
    """The settings a store's hash holds, key decrypted (DecryptionError says what to do)."""
    token = fields.get(FIELD)
    return StoreConfig(
        store_id=store_id,
        api_key=SecretStr(host.vault.decrypt(store_id, FIELD, token)) if token else None,
        default_team_id=fields.get("default_team_id") or None,
        default_channel=fields.get("default_channel") or "email",
        enabled=fields.get("enabled") == "1",
        mirror_messages=fields.get("mirror_messages") == "1",
        credentials=fields.get("credentials", "unchecked"),
        checked_at=fields.get("checked_at") or None,
        last_error=fields.get("last_error") or None,
    )


def _to_hash(host: Host, config: StoreConfig) -> dict[str, str]:
    fields = {"default_channel": config.default_channel, "enabled": "1" if config.enabled else "0",
              "mirror_messages": "1" if config.mirror_messages else "0",
              "credentials": config.credentials, "updated_at": _now().isoformat()}
    if config.api_key is not None:
        fields[FIELD] = host.vault.encrypt(config.store_id, FIELD, config.api_key.get_secret_value())
    if config.default_team_id:
        fields["default_team_id"] = config.default_team_id
    if config.checked_at:
        fields["checked_at"] = config.checked_at.isoformat()
    if config.last_error:
        fields["last_error"] = config.last_error
    return fields


def load(host: Host, store_id: str) -> StoreConfig | None:
    """The store's settings, key decrypted; None if never configured.

    Raises DecryptionError (its message says what to do) when the stored key cannot be
    opened: tampered, copied from another store, or sealed by a master key no longer set.
    """
    found = stored_fields(host, store_id)
    return from_fields(host, store_id, found) if found else None


def stored_fields(host: Host, store_id: str) -> dict[str, str]:
    """The store's hash as stored (its key sealed); empty when never configured."""
    return _decode(host.redis.hgetall(_key(host, store_id)))


def _set_health(host: Host, store_id: str, fields: dict[str, str], drop_error: bool) -> bool:
    """Write health fields of an existing record only (never creates a half record)."""
    key = _key(host, store_id)
    if not host.redis.exists(key):
        return False
    with host.redis.pipeline(transaction=True) as pipe:
        pipe.hset(key, mapping=fields)
        if drop_error:
            pipe.hdel(key, "last_error")
        pipe.execute()
    return True


def mark_invalid(host: Host, store_id: str, error: str, *, api_key: str | None = None) -> None:
    """Record that Richpanel rejected the store's key (delivery calls this on a 401).

    Pass the ``api_key`` that was rejected when known: if the store has a different key by
    now (an admin just pasted a new one), the stale rejection is ignored.
    """
    if api_key is not None:
        try:
            current = load(host, store_id)
        except DecryptionError:
            current = None
        stored = current.api_key.get_secret_value() if current and current.api_key else ""
        if not hmac.compare_digest(stored.encode(), api_key.encode()):
            return
    if _set_health(host, store_id, {"credentials": "invalid", "checked_at": _now().isoformat(),
                                    "last_error": error}, drop_error=False):
        log.warning("richpanel credentials of store %r marked invalid: %r", store_id, error)


def mark_valid(host: Host, store_id: str) -> None:
    _set_health(host, store_id, {"credentials": "valid", "checked_at": _now().isoformat()},
                drop_error=True)


# -- validation against Richpanel --------------------------------------------------------------

class KeyRejected(SettingsError):
    """Richpanel answered 401: the key itself is wrong or revoked."""


class RichpanelUnavailable(SettingsError):
    """Richpanel did not judge the key (rate limit, outage, odd answer): nothing is known about it."""


def _limited(which: str, seconds: float) -> RichpanelUnavailable:
    wait = max(1, math.ceil(seconds))
    wrong = f"Richpanel is rate limiting {which}, try again in {wait} second{'s' * (wait != 1)}"
    return RichpanelUnavailable(wrong, [problem(FIELD, wrong, "rate_limited", retry_after=wait)], retry_after=wait)


def _teams(host: Host, api_key: str, which: str) -> list[Team]:
    """/v1/teams with ``api_key``; Richpanel's failures become errors worded for a store admin.

    The check is one more request with the store's key, so it goes through the delivery
    engine's pacing: never during a Retry-After block, counted in the key's window, and a rate
    limit it meets blocks delivery too. A slot more than a few seconds away is refused rather
    than waited for, so an admin is not left hanging.
    """
    delivery = host.delivery(NAME)
    richpanel = delivery.helpdesk
    try:
        return delivery.request(api_key, lambda call: richpanel.client(call, lambda c: c.list_teams()),
                                max_wait=MAX_PACING_WAIT)
    except CredentialsRejected:
        wrong = f"Richpanel rejected {which} (401)"
        raise KeyRejected(wrong, [problem(FIELD, wrong, "rejected")]) from None
    except RateLimited as exc:
        raise _limited(which, exc.retry_after) from None
    except HelpdeskError as exc:  # the client's messages never carry the key
        wrong = f"Richpanel could not check {which} ({exc}); try again later"
        raise RichpanelUnavailable(wrong, [problem(FIELD, wrong, "unavailable")]) from None


def update(host: Host, store_id: str, changes: SettingsUpdate | Mapping[str, Any]) -> StoreConfig:
    """Validate ``changes`` merged over the stored settings and save them, or raise SettingsError.

    ``changes`` may be the PUT's body as sent: then the body's faults, the store id's and what
    the stored settings lack (a key) are named together in one SettingsError, and Richpanel is
    not asked while any of them stands. Richpanel is asked (one GET /v1/teams) whenever a key
    or team is given or the result is enabled, so an enabled store always holds a key that
    worked when it was saved; a change that only disables or clears needs no network.
    ``mirror_messages`` adds no check of its own (the mirror writes with the key the store
    already holds): the rule above alone decides whether Richpanel is asked. The
    write is one MULTI, guarded by WATCH so a concurrent change is never half-merged; nothing
    is written on any failure.
    """
    changes, problems = check_settings(SettingsUpdate, store_id, changes, EXAMPLE, SettingsError)
    key = _key(host, store_id)
    for _ in range(3):
        with host.redis.pipeline(transaction=True) as pipe:
            pipe.watch(key)
            saved, checked = _merge(host, store_id, _decode(pipe.hgetall(key)), changes, problems)
            pipe.multi()
            pipe.delete(key)
            pipe.hset(key, mapping=_to_hash(host, saved))
            pipe.sadd(_index(host), store_id)
            try:
                pipe.execute()
            except redis.WatchError:
                continue
        assert saved.api_key is not None
        log.info("richpanel settings of store %r saved (key %r, enabled=%s)", store_id,
                 mask(saved.api_key.get_secret_value()), saved.enabled)
        if checked and saved.enabled:
            _release(host, store_id)
        return saved
    raise SettingsError("the settings changed while they were being saved; send the change again")


def _merge(host: Host, store_id: str, fields: dict[str, str], changes: SettingsUpdate,
           body_problems: list[Detail]) -> tuple[StoreConfig, bool]:
    """The settings to save and whether Richpanel vouched for them just now.

    ``body_problems`` (the body's invalid fields, left out of ``changes``) are raised together
    with what the stored settings lack, before Richpanel is asked anything.
    """
    given = changes.model_fields_set
    new_key = changes.api_key if "api_key" in given else None
    problems = list(body_problems)
    key_named = any(d["field"] == FIELD for d in problems)  # a bad key in the body: not "missing" too
    if fields:
        try:
            current = from_fields(host, store_id, fields)
        except DecryptionError as exc:
            if new_key is None and not key_named:
                problems.append(problem(FIELD, f"{exc}: send api_key with this change", "unreadable"))
                key_named = True
            current = from_fields(host, store_id, {k: v for k, v in fields.items() if k != FIELD})
    else:
        current = StoreConfig(store_id=store_id)
    merged = current.model_copy(update={
        "api_key": new_key or current.api_key,
        "default_team_id": changes.default_team_id if "default_team_id" in given else current.default_team_id,
        "default_channel": (changes.default_channel or "email") if "default_channel" in given
        else current.default_channel,
        "enabled": current.enabled if changes.enabled is None else changes.enabled,
        "mirror_messages": current.mirror_messages if changes.mirror_messages is None else changes.mirror_messages,
    })
    if merged.api_key is None and not key_named:
        problems.append(problem(FIELD, "api_key is required: no Richpanel API key is stored for this store",
                                "missing"))
    if problems:
        raise SettingsError(details=problems)
    assert merged.api_key is not None
    team_given = "default_team_id" in given and changes.default_team_id is not None
    if not (new_key is not None or team_given or merged.enabled):
        return merged, False
    which = "this API key" if new_key is not None else "the stored API key"
    try:
        teams = _teams(host, merged.api_key.get_secret_value(), which)
    except KeyRejected as exc:
        fix = ("check that you copied the whole key and that it is still active" if new_key is not None
               else "paste a new api_key")
        raise SettingsError(f"{exc.message}: {fix}. Nothing was saved.",
                            [problem(FIELD, f"{exc.message}: {fix}", "rejected")]) from None
    except RichpanelUnavailable as exc:
        raise SettingsError(f"{exc.message}. Nothing was saved.", exc.details,
                            retry_after=exc.retry_after) from None
    if merged.default_team_id is not None:
        merged.default_team_id = check_team(merged.default_team_id, teams)
    merged.credentials, merged.checked_at, merged.last_error = "valid", _now(), None
    return merged, True


def _release(host: Host, store_id: str) -> None:
    """Work parked on a rejected key runs again; a failure here must not undo a good save."""
    try:
        released = host.delivery(NAME).release_parked(store_id)
    except Exception as exc:  # noqa: BLE001 - the save stands; the work stays parked for next time
        log.error("richpanel: parked work of store %r not released: %s", store_id, type(exc).__name__)
        return
    if released:
        log.info("richpanel: released %d parked message(s) of store %r", released, store_id)


# -- the rest of the public API ----------------------------------------------------------------

def disconnect(host: Host, store_id: str) -> bool:
    """Disable the store and forget its key; the record stays so GET shows it disconnected."""
    key = _key(host, store_id)
    if not host.redis.exists(key):
        return False
    with host.redis.pipeline(transaction=True) as pipe:
        pipe.hdel(key, FIELD, "checked_at", "last_error")
        pipe.hset(key, mapping={"enabled": "0", "credentials": "unchecked", "updated_at": _now().isoformat()})
        pipe.execute()
    log.info("richpanel store %r disconnected: key forgotten", store_id)
    return True


def validate_credentials(host: Host, store_id: str) -> CredentialsCheck | None:
    """Ask Richpanel about the stored key now and record the answer in the store's health.

    Only an answer about the key changes the health: a rate limit or an outage says nothing
    about it, so the stored state is returned with the reason the check could not be made.
    A key found valid releases the store's parked work.
    """
    try:
        config = load(host, store_id)
    except DecryptionError as exc:
        mark_invalid(host, store_id, str(exc))
        return CredentialsCheck(state="invalid", checked_at=_now(), error=str(exc))
    if config is None or config.api_key is None:
        return None
    try:
        _teams(host, config.api_key.get_secret_value(), "the stored API key")
    except KeyRejected as exc:
        error = f"{exc.message}: paste a new api_key"
        mark_invalid(host, store_id, error)
        return CredentialsCheck(state="invalid", checked_at=_now(), error=error)
    except RichpanelUnavailable as exc:
        return CredentialsCheck(state=config.credentials, checked_at=config.checked_at, error=exc.message)
    mark_valid(host, store_id)
    if config.enabled:
        _release(host, store_id)
    return CredentialsCheck(state="valid", checked_at=_now())


def list_teams(host: Host, store_id: str) -> list[Team]:
    """The account's teams with the stored key; a 401 is recorded in the store's health.

    Raises SettingsError: 404 unknown store, 422 no key or key rejected, 502 Richpanel failed.
    """
    config = load(host, store_id)
    if config is None:
        raise SettingsError(f"Richpanel is not configured for store {store_id!r}", status=404)
    if config.api_key is None:
        raise SettingsError(details=[problem(FIELD, "no Richpanel API key is stored for this store; "
                                                    "save an api_key first", "missing")])
    try:
        teams = _teams(host, config.api_key.get_secret_value(), "the stored API key")
    except KeyRejected as exc:
        wrong = f"{exc.message}: paste a new api_key"
        mark_invalid(host, store_id, wrong)
        raise SettingsError(details=[problem(FIELD, wrong, "rejected")]) from None
    except RichpanelUnavailable as exc:
        exc.status = 502
        raise
    mark_valid(host, store_id)
    return teams


def status(host: Host, store_id: str) -> dict[str, Any] | None:
    """For ``opcore stores show``: the masked view, or the decryption problem in its place."""
    try:
        config = load(host, store_id)
    except DecryptionError as exc:
        return {"store_id": store_id, "api_key": None, "credentials": "invalid", "last_error": str(exc)}
    return view(config) if config else None


def rotate(host: Host) -> int:
    """Re-seal every stored key under the newest master key; returns how many changed.

    Each store is re-sealed under WATCH so a key saved meanwhile is never overwritten by the
    old one; a key that cannot be opened is reported and left as it is.
    """
    count = 0
    for raw_id in sorted(host.redis.smembers(_index(host))):
        store_id, key = raw_id.decode(), _key(host, raw_id.decode())
        for _ in range(3):
            with host.redis.pipeline(transaction=True) as pipe:
                pipe.watch(key)
                token = pipe.hget(key, FIELD)
                if token is None or host.vault.is_current(token.decode()):
                    break
                try:
                    fresh = host.vault.reseal(store_id, FIELD, token.decode())
                except DecryptionError as exc:
                    log.error("richpanel: cannot re-encrypt the key of store %r: %s", store_id, exc)
                    break
                pipe.multi()
                pipe.hset(key, FIELD, fresh)
                try:
                    pipe.execute()
                except redis.WatchError:
                    continue
                count += 1
                break
    return count


def store_ids(host: Host) -> list[str]:
    """Every store that ever saved settings for this helpdesk (for the host's metrics)."""
    return [raw.decode() for raw in host.redis.smembers(_index(host))]
