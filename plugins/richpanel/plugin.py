"""The Richpanel plugin's hook implementations: thin, each handing over to the module that owns it.

- ``stores``/``api``/``commands``: per-store settings, the internal settings API, the CLI;
- ``helpdesk``/``tickets``/``client``: Richpanel's side of delivery (tickets and snoozes), which
  the host's delivery engine runs;
- ``widget``: what is Richpanel's in the host's widget panel;
- ``sandbox``/``demo``: a local stand-in for Richpanel's API, and its part of ``opcore demo``.
"""

from __future__ import annotations

from typing import Any

import click
from pydantic_settings import BaseSettings

from opcore_hooks import (
    ClaimCreated,
    ClaimStatusChanged,
    CredentialsCheck,
    CustomerContext,
    Event,
    Host,
    MessageCreated,
    Panel,
    Routes,
    hookimpl,
)

from . import api, commands, stores, widget
from .demo import RichpanelDemo
from .helpdesk import Richpanel
from .settings import RichpanelSettings

NAME = "richpanel"


@hookimpl
def register_settings() -> type[BaseSettings]:
    return RichpanelSettings


@hookimpl
def register_helpdesk(host: Host) -> Richpanel:
    return Richpanel(host)


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
def register_demo() -> RichpanelDemo:
    return RichpanelDemo()


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
def widget_context(host: Host, store_id: str, context: CustomerContext) -> dict[str, Any] | None:
    return widget.shape_context(host, store_id, context)


@hookimpl
def validate_credentials(host: Host, store_id: str) -> CredentialsCheck | None:
    return stores.validate_credentials(host, store_id)


@hookimpl
def store_status(host: Host, store_id: str) -> dict[str, Any] | None:
    return stores.status(host, store_id)


@hookimpl
def rotate_secrets(host: Host) -> int:
    return stores.rotate(host)
