"""Process-wide configuration, read once from the environment (prefix ``OPCORE_``).

Everything the outside world can set lives here so ``serve`` and ``worker`` can refuse to
start with one message that names every missing variable, instead of failing later at the
first request that needs it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: The admin token, which the operator chooses, must be long enough not to be guessed. The
#: webhook secret is Order Protection's to choose, so only an empty or blank one is refused.
MIN_SECRET_CHARS = 16
_PRESENTED = ("admin_token",)


class ConfigError(Exception):
    """A setting is missing or malformed; the message names the variables and what to do."""


def invalid_settings(exc: ValidationError, prefix: str) -> ConfigError:
    """One line naming each environment variable pydantic refused and why, never its value (it may
    be a secret): pydantic's own text spans a dozen lines and names fields, not variables."""
    problems = [f"{prefix}{'_'.join(str(part) for part in err['loc']).upper()}: {err['msg']}" if err["loc"]
                else err["msg"].removeprefix("Value error, ")  # a rule across variables names them itself
                for err in exc.errors(include_url=False, include_input=False)]
    return ConfigError("invalid configuration: " + "; ".join(problems)
                       + ". Fix the environment (see README, 'Configuration')")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OPCORE_", extra="ignore")

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:  # a bad variable stops every command with the same one line
            raise invalid_settings(exc, "OPCORE_") from None

    redis_url: str | None = None
    #: How many replicas must hold a write (Redis ``WAIT``) before opcore answers 202 or acts on
    #: it; 0 trusts the primary's memory alone (docs/OPERATIONS.md, "Redis").
    redis_replicas: int = Field(0, ge=0, le=16)
    #: How long one ``WAIT`` may take before opcore refuses (503) or retries the work.
    redis_replica_timeout_ms: int = Field(500, ge=10, le=10_000)
    #: ``host:port,host:port`` of Redis Sentinels; opcore then follows the primary they name.
    redis_sentinels: str | None = None
    #: The Sentinel service name of the primary.
    redis_sentinel_master: str | None = None
    #: Passwords (and ACL user, database) of the data nodes and of the Sentinels, for Sentinel
    #: mode, where no URL carries them.
    redis_username: str | None = None
    redis_password: SecretStr | None = None
    redis_sentinel_password: SecretStr | None = None
    redis_db: int = Field(0, ge=0, le=15)
    webhook_secret: SecretStr | None = None
    admin_token: SecretStr | None = None
    master_key: SecretStr | None = None
    dashboard_url: str = "https://app.orderprotection.com"
    #: Comma list of plugin names to load; empty loads every installed plugin.
    plugins: str = ""
    #: Make a plugin that fails to import fatal instead of reported.
    strict_plugins: bool = False
    #: Redis key prefix for everything opcore stores, so several deployments can share a Redis.
    namespace: str = "opcore"
    #: Largest webhook body accepted, in bytes.
    max_body_bytes: int = 256 * 1024
    #: How long a claim's records (read model, delivery record) live after its last event, in days.
    retention_days: float = Field(400.0, ge=1, le=36_500, allow_inf_nan=False)
    #: How long accepted event ids are remembered (the contract says at least 7 days).
    event_ttl_seconds: int = 8 * 24 * 3600
    #: After this long without a heartbeat, a worker counts as dead and the messages it held
    #: are delivered again (Dramatiq's default is 60 s).
    heartbeat_timeout_ms: int = 60_000
    #: Out of a million broker commands, how many also run queue maintenance (which, among
    #: other things, gives a dead worker's messages back). Dramatiq's default is 1000.
    broker_maintenance_chance: int = 1000
    #: How long a worker waits for Redis to come back before an enqueue fails.
    enqueue_wait_seconds: float = 300.0

    @field_validator("dashboard_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @field_validator("redis_sentinels", "redis_sentinel_master", "redis_url", "redis_username")
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    @model_validator(mode="after")
    def _replicas_need_redis(self) -> Settings:
        if self.redis_replicas and self.embedded:
            raise ValueError("OPCORE_REDIS_REPLICAS is above 0 but the store is embedded, which has no replicas: "
                             "set OPCORE_REDIS_URL or OPCORE_REDIS_SENTINELS, or set OPCORE_REDIS_REPLICAS=0")
        return self

    @property
    def embedded(self) -> bool:
        return not self.redis_url and not self.redis_sentinels

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """The Sentinels as (host, port); a malformed entry is a ConfigError naming it."""
        found = []
        for entry in (self.redis_sentinels or "").split(","):
            entry = entry.strip()
            host, sep, port = entry.rpartition(":")
            if not entry:
                continue
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(f"OPCORE_REDIS_SENTINELS: {entry!r} is not host:port; write the Sentinels "
                                  "as host:port,host:port (port 26379 by default)")
            found.append((host.strip("[]"), int(port)))
        return found

    @property
    def plugin_allowlist(self) -> list[str]:
        return [name.strip() for name in self.plugins.split(",") if name.strip()]

    def claim_url(self, claim_id: str) -> str:
        """The claim's page in the dashboard. The id is percent-encoded as one path segment, so
        whatever an id holds (a ``/``, ``?`` or ``#``) cannot point the link anywhere else; the
        ids the doors accept (A-Z a-z 0-9 . _ -) come out unchanged."""
        return f"{self.dashboard_url}/claims/view/{quote(claim_id, safe='')}"

    def require(self, *names: str) -> None:
        """Raise one ConfigError naming every variable in ``names`` that is unusable.

        An empty or blank secret is no secret (the process would start, then refuse every
        caller or match a blank header), and a short one can be guessed, so both stop the
        process here. The master key is decoded here too, so a malformed one stops ``serve`` at
        start instead of failing the first settings change with a 503.
        """
        missing, short, padded = [], [], []
        for name in names:
            if name == "redis_url" and self.redis_sentinels:  # the Sentinels name the primary instead
                continue
            value = getattr(self, name)
            text = value.get_secret_value() if isinstance(value, SecretStr) else value
            if text is None or not str(text).strip():
                missing.append(f"OPCORE_{name.upper()}")
            elif isinstance(value, SecretStr) and name != "master_key" and text != text.strip():
                padded.append(f"OPCORE_{name.upper()}")  # a header's value is trimmed: it could never match
            elif name in _PRESENTED and len(text) < MIN_SECRET_CHARS:
                short.append(f"OPCORE_{name.upper()}")
        problems = []
        if padded:
            problems.append(", ".join(padded) + " begin(s) or end(s) with whitespace, which a request header "
                            "can never carry: remove it")
        if missing:
            problems.append("missing configuration (unset, empty or blank): " + ", ".join(missing)
                            + ". Set them in the environment (see README, 'Configuration')")
        if short:
            problems.append(", ".join(short) + f" {'is' if len(short) == 1 else 'are'} shorter than "
                            f"{MIN_SECRET_CHARS} characters: set a long random value, e.g. from "
                            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`")
        if problems:
            raise ConfigError("; ".join(problems) + ".")
        if "master_key" in names:
            from .crypto import Vault  # crypto imports this module

            Vault.from_setting(self.master_key.get_secret_value())  # type: ignore[union-attr]
