"""A complete opcore helpdesk plugin: copy this folder to start a new one (see README.md).

Every hook the host offers a helpdesk is here. The work is split as in the Richpanel plugin:
``helpdesk.py`` is the helpdesk's API as the delivery engine sees it, ``stores.py`` a store's
settings; this module wires them to the host. The plugin's name comes from its folder
(``_template`` gives ``template``), so a copy needs no renaming to run its tests.
"""

from __future__ import annotations

from typing import Any, Mapping

import click
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from opcore_hooks import (
    ClaimCreated,
    ClaimStatusChanged,
    CredentialsCheck,
    CredentialsRejected,
    CustomerContext,
    Detail,
    Event,
    HelpdeskError,
    Host,
    MessageCreated,
    Panel,
    RateLimited,
    RequestError,
    Routes,
    StoreSettingsAPI,
    add_refusal,
    add_store_commands,
    check_settings,
    hookimpl,
    mirror_messages_option,
    open_host,
    problem,
)

from . import stores
from .helpdesk import TemplateDesk

#: The plugin's name, from its folder (``_template`` gives ``template``): its actor prefix, queue,
#: Redis keys, URL segment and environment prefix. Its entry point must have the same name.
NAME = __name__.split(".")[-2].lstrip("_")


class Settings(BaseSettings):
    """Process settings, read from ``OPCORE_<NAME>_*``; a bad value stops start-up."""

    model_config = SettingsConfigDict(env_prefix=f"OPCORE_{NAME.upper()}_", extra="ignore")
    api_url: str = "https://helpdesk.example.com"
    quota: int = Field(default=100, ge=1)
    window_seconds: float = Field(default=60.0, gt=0)
    #: Who may frame the widget panel (CSP frame-ancestors): the helpdesk's own domains.
    frame_ancestors: str = "https://*.helpdesk.example.com"


@hookimpl
def register_settings() -> type[BaseSettings]:
    return Settings


@hookimpl
def register_helpdesk(host: Host) -> TemplateDesk:
    if NAME not in host.plugin_names:
        raise RuntimeError(f"this plugin's folder names it {NAME!r}, but it was loaded under another name: "
                           f"name its entry point {NAME!r} in pyproject.toml")
    return TemplateDesk(host, NAME)


@hookimpl
def register_panel(host: Host) -> Panel:
    """The widget panel beside a ticket: the host serves, signs and provisions it."""
    settings = host.plugin_settings(NAME)
    assert isinstance(settings, Settings)  # what register_settings declared
    return Panel(frame_ancestors=settings.frame_ancestors,
                 setting=f"OPCORE_{NAME.upper()}_FRAME_ANCESTORS")


@hookimpl
def on_claim_created(host: Host, event: Event, claim: ClaimCreated) -> None:
    host.delivery(NAME).claim_created(claim, event)  # skips stores that do not use this helpdesk


@hookimpl
def on_claim_status_changed(host: Host, event: Event, change: ClaimStatusChanged) -> None:
    host.delivery(NAME).claim_status_changed(change)  # finishes the ticket once it exists


@hookimpl
def on_claim_message(host: Host, event: Event, message: MessageCreated) -> None:
    host.delivery(NAME).message_created(message, event)  # a private note, for stores mirroring messages


class SettingsRefused(RequestError):
    """A change the settings API refuses, in the host's error style (``RequestError``: a 422
    unless ``status`` says otherwise, with a detail per field at fault); ``rejected``: the
    helpdesk refused the token itself."""

    def __init__(self, message: str | None = None, details: list[Detail] | None = None, *,
                 status: int = 422, retry_after: float | None = None, rejected: bool = False) -> None:
        super().__init__(message, details, status=status, retry_after=retry_after)
        self.rejected = rejected


def _check(host: Host, token: str) -> None:
    """Ask the helpdesk whether ``token`` works, paced like delivery; SettingsRefused if not."""
    delivery = host.delivery(NAME)
    helpdesk = delivery.helpdesk
    assert isinstance(helpdesk, TemplateDesk)  # what register_helpdesk returned
    try:
        delivery.request(token, helpdesk.check, max_wait=5.0)
    except CredentialsRejected:
        raise SettingsRefused("the helpdesk rejected this api_token; nothing was saved", rejected=True,
                              details=[problem("api_token", "rejected by the helpdesk: paste a valid token",
                                               "rejected")]) from None
    except RateLimited as exc:
        wait = f"try again in {exc.retry_after:.0f} s"
        raise SettingsRefused(f"the helpdesk is rate limiting; {wait}", retry_after=exc.retry_after,
                              details=[problem("api_token", f"not checked: {wait}", "rate_limited")]) from None
    except HelpdeskError as exc:
        raise SettingsRefused(f"the helpdesk could not check the token ({exc}); try again later", status=502) from None


#: A body to show whoever sent one that could not be used.
EXAMPLE = '{"api_token": "...", "enabled": true}'


def configure(host: Host, store_id: str, update: stores.SettingsUpdate | Mapping[str, Any]) -> stores.StoreSettings:
    """Check the token (given, or stored and enabled), save, and release work parked on a bad one.

    ``update`` may be the PUT's body as sent: every local problem (its fields, the store id,
    a token none is stored for) is refused in one answer, before the helpdesk is asked.
    """
    # The body's fields and the store id (it becomes part of Redis keys and URLs), then the state.
    update, problems = check_settings(stores.SettingsUpdate, store_id, update, EXAMPLE, SettingsRefused)
    current = stores.read(host, NAME, store_id)
    token = update.api_token or (current.api_token if current else None)
    if token is None and not any(d["field"] == "api_token" for d in problems):
        problems.append(problem("api_token", "api_token is required: none is stored for this store", "missing"))
    if problems:
        raise SettingsRefused(details=problems)
    assert token is not None
    _check(host, token.get_secret_value())
    saved = stores.save(host, NAME, store_id, update, credentials="valid")
    if saved.enabled:
        host.delivery(NAME).release_parked(store_id)
    return saved


@hookimpl
def register_routes(host: Host) -> Routes:
    """The settings API, under ``/internal/integrations/<NAME>`` behind the admin token.

    The host builds the PUT/GET/DELETE routes from the store functions and answers every refusal
    in the ingress's shape: {"error": one line, "details": [{"field", "message", "type"}]}. It
    also refuses a malformed store id and, on DELETE, revokes the store's widget first. Routes
    of your own (the helpdesk's teams, say) go after them, run through ``SETTINGS.call``.
    """
    settings = StoreSettingsAPI(
        title=NAME, example=EXAMPLE, secret_field="api_token", view=stores.view,
        update=configure,  # checks the token with the helpdesk: the host runs it in a thread
        load=lambda host, store_id: stores.read(host, NAME, store_id),
        disconnect=lambda host, store_id: stores.forget(host, NAME, store_id),
    )
    return Routes(internal=settings.routes(host))


@hookimpl
def register_commands(cli: click.Group) -> None:
    """``opcore stores set <NAME>``; a refusal is one line and exit 2, as for every command."""

    @click.command(NAME)
    @click.argument("store_id")
    @click.option("--api-token", envvar=f"OPCORE_{NAME.upper()}_API_TOKEN", help="read from the environment if unset")
    @click.option("--enable/--disable", default=None)
    @mirror_messages_option
    def set_store(store_id: str, api_token: str | None, enable: bool | None, mirror_messages: bool | None) -> None:
        """Connect STORE_ID to this helpdesk (the token is checked before it is saved)."""
        token = SecretStr(api_token) if api_token is not None else None
        saved = configure(open_host(), store_id, stores.SettingsUpdate(api_token=token, enabled=enable,
                                                                       mirror_messages=mirror_messages))
        click.echo(f"{NAME}: store {store_id} saved, token {stores.view(saved)['api_token']}")

    add_store_commands(cli, set_store)  # refuses the embedded store, naming OPCORE_REDIS_URL
    add_refusal(cli, SettingsRefused)


@hookimpl
def widget_context(host: Host, store_id: str, context: CustomerContext) -> dict[str, Any]:
    return context.model_dump(mode="json")


@hookimpl
def validate_credentials(host: Host, store_id: str) -> CredentialsCheck | None:
    found = stores.read(host, NAME, store_id)
    if found is None or found.api_token is None:
        return None
    token = found.api_token.get_secret_value()
    try:
        _check(host, token)
    except SettingsRefused as exc:
        if exc.rejected:
            stores.mark_invalid(host, NAME, store_id, exc.message, token=token)
            return CredentialsCheck(state="invalid", error=exc.message)
        return CredentialsCheck(state=found.credentials, error=exc.message)  # the check itself failed
    stores.mark_valid(host, NAME, store_id)
    if found.enabled:
        host.delivery(NAME).release_parked(store_id)
    return CredentialsCheck(state="valid")


@hookimpl
def store_status(host: Host, store_id: str) -> dict[str, Any] | None:
    found = stores.read(host, NAME, store_id)
    return stores.view(found) if found else None


@hookimpl
def rotate_secrets(host: Host) -> int:
    return stores.rotate(host, NAME)
