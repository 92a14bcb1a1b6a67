"""``opcore stores set zendesk``, ``opcore stores groups`` and ``opcore zendesk-sandbox``.

The setter goes through ``stores.parse_update``/``stores.update``, the path of the HTTP PUT, so
the CLI never saves what the API would refuse. ``--api-token -`` reads the token from standard
input, out of shell history and process listings.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from opcore_hooks import add_refusal, add_store_commands, fail, mirror_messages_option, open_host
from opcore_hooks.standins import fault_options

from . import stores
from .stores import SettingsError


@click.command("zendesk")
@click.argument("store_id")
@click.option("--subdomain", default=None, help="The account's subdomain (acme for acme.zendesk.com).")
@click.option("--email", default=None, help="The email of the agent who owns the API token.")
@click.option("--api-token", default=None, metavar="TOKEN|-", help="'-' reads it from standard input.")
@click.option("--group", "group", default=None, type=int, help="Default group id (see `opcore stores groups`).")
@click.option("--clear-group", is_flag=True, help="Remove the default group.")
@click.option("--enable/--disable", "enabled", default=None, help="Turn delivery to Zendesk on or off.")
@mirror_messages_option
def set_zendesk(store_id: str, subdomain: str | None, email: str | None, api_token: str | None, group: int | None,
                clear_group: bool, enabled: bool | None, mirror_messages: bool | None) -> None:
    """Connect STORE to Zendesk: the credentials are checked with Zendesk before anything is saved."""
    if group is not None and clear_group:
        fail("--group and --clear-group cannot be used together; give one")
    data: dict[str, Any] = {k: v for k, v in (("subdomain", subdomain), ("email", email), ("enabled", enabled),
                                              ("mirror_messages", mirror_messages)) if v is not None}
    if api_token is not None:
        data["api_token"] = sys.stdin.readline().strip() if api_token == "-" else api_token
    if group is not None or clear_group:
        data["default_group_id"] = None if clear_group else group
    saved = stores.update(open_host(), store_id, stores.parse_update(data))
    click.echo(json.dumps({"zendesk": stores.view(saved)}, indent=2))


@click.command("groups")
@click.argument("store_id")
def groups(store_id: str) -> None:
    """The Zendesk groups of STORE's account (id and name), to pick a default group."""
    host = open_host()
    config = stores.load(host, store_id)
    if config is None or config.api_token is None:
        fail(f"Zendesk is not configured for store {store_id!r}; connect it with `opcore stores set zendesk`")
    for group in stores.groups(host, config, "the stored credentials"):
        click.echo(f"{group.id}\t{group.name}")


@click.command("zendesk-sandbox")
@click.option("--port", default=8710, show_default=True, type=click.IntRange(1, 65535))
@click.option("--host", "bind", default="127.0.0.1", show_default=True, help="Keep it on loopback: no real auth.")
@click.option("--other-apps", default=0.0, show_default=True, type=click.FloatRange(0, 0.95),
              help="Share of each account's budget other apps use.")
@fault_options
def sandbox_command(port: int, bind: str, other_apps: float, error_rate: float, drop_rate: float) -> None:
    """A local Zendesk stand-in; add accounts with POST /_sandbox/accounts."""
    from .sandbox import main

    main(port, bind, other_apps=other_apps, error_rate=error_rate, drop_rate=drop_rate,
         on_ready=lambda url: click.echo(f"Zendesk sandbox on {url}; set OPCORE_ZENDESK_API_URL={url}/{{subdomain}}"))


def register(cli: click.Group) -> None:
    cli.add_command(sandbox_command)
    add_store_commands(cli, set_zendesk, groups)
    add_refusal(cli, SettingsError)
