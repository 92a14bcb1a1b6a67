"""The Zendesk plugin's hook implementations, each handing over to the module that owns it.

- ``helpdesk``/``tickets``/``client``: Zendesk's side of delivery (a private first comment,
  ``pending`` once the claim is finished), which the host's delivery engine runs;
- ``stores``/``api``/``commands``: per-store settings, the internal settings API, the CLI;
- ``widget``: what is Zendesk's in the host's widget panel;
- ``sandbox``/``demo``: a local stand-in for Zendesk's API, and its part of ``opcore demo``.
"""

from __future__ import annotations

from typing import Any

import click
from pydantic_settings import BaseSettings

from opcore_hooks import (
    ClaimCreated,
    ClaimStatusChanged,
    CredentialsCheck,
    DecryptionError,
    Event,
    Host,
    MessageCreated,
    Panel,
    Routes,
    hookimpl,
)

from . import api, commands, stores, widget
from .demo import ZendeskDemo
from .helpdesk import Zendesk
from .settings import ZendeskSettings

NAME = stores.NAME


@hookimpl
def register_settings() -> type[BaseSettings]:
    return ZendeskSettings


@hookimpl
def register_helpdesk(host: Host) -> Zendesk:
    return Zendesk(host)


@hookimpl
def register_panel(host: Host) -> Panel:
    return widget.panel(host)


@hookimpl
def register_routes(host: Host) -> Routes:
    return Routes(internal=api.internal_routes(host))


@hookimpl
def register_commands(cli: click.Group) -> None:
    commands.register(cli)


@hookimpl
def register_demo() -> ZendeskDemo:
    return ZendeskDemo()


@hookimpl
def on_claim_created(host: Host, event: Event, claim: ClaimCreated) -> None:
    host.delivery(NAME).claim_created(claim, event)


@hookimpl
def on_claim_status_changed(host: Host, event: Event, change: ClaimStatusChanged) -> None:
    host.delivery(NAME).claim_status_changed(change)


@hookimpl
def on_claim_message(host: Host, event: Event, message: MessageCreated) -> None:
    host.delivery(NAME).message_created(message, event)


@hookimpl
def validate_credentials(host: Host, store_id: str) -> CredentialsCheck | None:
    """Ask Zendesk now; only an answer about the credentials changes the stored health."""
    try:
        config = stores.load(host, store_id)
    except DecryptionError as exc:
        return CredentialsCheck(state="invalid", error=str(exc))
    if config is None or config.api_token is None or not (config.subdomain and config.email):
        return None
    try:
        stores.groups(host, config, "the stored credentials")
    except stores.SettingsError as exc:
        if exc.rejected:
            stores.mark_invalid(host, store_id, exc.message, api_token=config.api_token.get_secret_value())
            return CredentialsCheck(state="invalid", error=exc.message)
        return CredentialsCheck(state=config.credentials, checked_at=config.checked_at, error=exc.message)
    stores.mark_valid(host, store_id)
    if config.enabled:
        host.delivery(NAME).release_parked(store_id)
    return CredentialsCheck(state="valid")


@hookimpl
def store_status(host: Host, store_id: str) -> dict[str, Any] | None:
    try:
        config = stores.load(host, store_id)
    except DecryptionError as exc:
        return {"store_id": store_id, "api_token": None, "credentials": "invalid", "last_error": str(exc)}
    return stores.view(config) if config else None


@hookimpl
def rotate_secrets(host: Host) -> int:
    return stores.rotate(host)
