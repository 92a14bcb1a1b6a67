"""A complete opcore plugin in one file: copy this folder to start a new helpdesk.

Every hook the host offers is implemented here, doing the least that shows its shape: it logs
what it receives and records it in Redis through the host, so the template's own tests can
see each hook work. Replace the bodies, keep the signatures. See README.md beside this file.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import click
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from opcore_hooks import (
    ClaimCreated,
    ClaimStatusChanged,
    CredentialsCheck,
    CustomerContext,
    Event,
    Host,
    Routes,
    hookimpl,
)

#: The plugin's name: its entry-point name, actor prefix, queue and URL segment.
NAME = "template"

log = logging.getLogger(f"opcore.{NAME}")


class TemplateSettings(BaseSettings):
    """Process settings, read from ``OPCORE_TEMPLATE_*``; a bad value stops start-up."""

    model_config = SettingsConfigDict(env_prefix=f"OPCORE_{NAME.upper()}_", extra="ignore")
    api_url: str = "https://helpdesk.example.com"


def _record(host: Host, what: str, payload: dict[str, Any]) -> None:
    host.redis.rpush(host.key(NAME, "seen"), json.dumps({"what": what, **payload}))


@hookimpl
def register_settings() -> type[BaseSettings]:
    return TemplateSettings


@hookimpl
def register_actors(host: Host) -> None:
    def open_ticket(store_id: str, claim_id: str) -> None:
        # The real work goes here: call the helpdesk's API, idempotently per claim.
        log.info("would open a ticket for claim %s of store %s", claim_id, store_id)
        _record(host, "ticket", {"store_id": store_id, "claim_id": claim_id})

    host.actor(open_ticket, plugin=NAME, max_retries=5)


@hookimpl
def register_routes(host: Host) -> Routes:
    async def status(request: Request) -> JSONResponse:
        store_id = request.path_params["store_id"]
        return JSONResponse({"plugin": NAME, "store_id": store_id, "seen": host.redis.llen(host.key(NAME, "seen"))})

    return Routes(internal=[Route("/stores/{store_id}", status)])


@hookimpl
def register_commands(cli: click.Group) -> None:
    @cli.commands["stores"].commands["set"].command(NAME)
    @click.argument("store_id")
    def set_store(store_id: str) -> None:
        """Configure the template helpdesk for STORE."""
        click.echo(f"{NAME}: configured {store_id}")


@hookimpl
def on_claim_created(host: Host, event: Event, claim: ClaimCreated) -> None:
    log.info("claim created: %s (%s) in store %s", claim.claim_id, claim.claim_type, claim.store_id)
    _record(host, "created", {"event_id": event.id, "claim_id": claim.claim_id})
    host.broker.get_actor(f"{NAME}.open_ticket").send(claim.store_id, claim.claim_id)


@hookimpl
def on_claim_status_changed(host: Host, event: Event, change: ClaimStatusChanged) -> None:
    log.info("claim %s is now %s", change.claim_id, change.claim_state)
    _record(host, "status", {"claim_id": change.claim_id, "state": change.claim_state.value})


@hookimpl
def widget_context(host: Host, store_id: str, context: CustomerContext) -> dict[str, Any]:
    return {"helpdesk": NAME, "claims": len(context.claims), **context.model_dump(mode="json")}


@hookimpl
def validate_credentials(host: Host, store_id: str) -> CredentialsCheck | None:
    return CredentialsCheck(state="unchecked")


@hookimpl
def store_status(host: Host, store_id: str) -> dict[str, Any] | None:
    return {"configured": False}


@hookimpl
def rotate_secrets(host: Host) -> int:
    return 0
