"""``opcore stores set richpanel`` and ``opcore stores teams``: the settings API for operators.

Both go through ``stores.parse_update``/``stores.update``, the same path as the HTTP PUT, so
the CLI can never save what the API would refuse. ``--api-key -`` reads the key from stdin
so it stays out of shell history and process listings.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from opcore_hooks import add_refusal, add_store_commands, fail, mirror_messages_option, open_host
from opcore_hooks.standins import fault_options

from . import stores
from .stores import CHANNELS, SettingsError


def _read_key(value: str | None) -> str | None:
    if value != "-":
        return value
    key = sys.stdin.readline().strip()
    if not key:
        fail("--api-key -: no key on standard input; pipe the key in, e.g. `printf %s \"$KEY\" | opcore ...`")
    return key


@click.command("richpanel")
@click.argument("store_id")
@click.option("--api-key", default=None, metavar="KEY|-",
              help="Richpanel API key (rp_...); '-' reads it from standard input. Omit to keep the stored one.")
@click.option("--team", default=None, help="Default team id (a UUID; see `opcore stores teams STORE`).")
@click.option("--clear-team", is_flag=True, help="Remove the default team.")
@click.option("--channel", default=None, help=f"Default ticket channel: {', '.join(CHANNELS)}.")
@click.option("--enable/--disable", "enabled", default=None, help="Turn delivery to Richpanel on or off.")
@mirror_messages_option
def set_richpanel(store_id: str, api_key: str | None, team: str | None, clear_team: bool,
                  channel: str | None, enabled: bool | None, mirror_messages: bool | None) -> None:
    """Connect STORE to Richpanel: the key is checked with Richpanel before anything is saved."""
    if team is not None and clear_team:
        fail("--team and --clear-team cannot be used together; give one")
    data: dict[str, Any] = {}
    if api_key is not None:
        data["api_key"] = _read_key(api_key)
    if team is not None or clear_team:
        data["default_team_id"] = None if clear_team else team
    if channel is not None:
        data["default_channel"] = channel
    if enabled is not None:
        data["enabled"] = enabled
    if mirror_messages is not None:
        data["mirror_messages"] = mirror_messages
    saved = stores.update(open_host(), store_id, stores.parse_update(data))
    click.echo(json.dumps({"richpanel": stores.view(saved)}, indent=2))


@click.command("teams")
@click.argument("store_id")
def teams(store_id: str) -> None:
    """The Richpanel teams of STORE's account (id and name), to pick a default team."""
    found = stores.list_teams(open_host(), store_id)
    for team in found:
        click.echo(f"{team.id}\t{team.name}")
    if not found:
        click.echo("this Richpanel account has no teams")


@click.command("richpanel-sandbox")
@click.option("--port", default=8700, show_default=True, type=click.IntRange(1, 65535))
@click.option("--host", "bind", default="127.0.0.1", show_default=True, help="Keep it on loopback: no auth.")
@click.option("--quota", default=50, show_default=True, type=click.IntRange(min=1), help="Requests per window per key.")
@click.option("--window", default=30.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Quota window, seconds.")
@click.option("--limit-status", default=429, show_default=True, type=click.Choice(["429", "492"]))
@click.option("--retry-after-form", default="seconds", show_default=True,
              type=click.Choice(["seconds", "date", "mixed"]))
@fault_options
@click.option("--rate-limit-rate", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="Fraction rate-limited at random.")
@click.option("--latency-ms", default=(0, 0), nargs=2, type=click.IntRange(min=0), show_default=True,
              help="Uniform MIN MAX.")
@click.option("--account", "accounts", multiple=True, metavar="rp_KEY", help="Register a key at start.")
def sandbox_command(port: int, bind: str, quota: int, window: float, limit_status: str, retry_after_form: str,
                    error_rate: float, drop_rate: float, rate_limit_rate: float, latency_ms: tuple[int, int],
                    accounts: tuple[str, ...]) -> None:
    """A local Richpanel stand-in; add keys with --account or POST /_sandbox/accounts."""
    from .sandbox import main

    main(port, bind, quota=quota, window=window, limit_status=int(limit_status), retry_after_form=retry_after_form,
         error_rate=error_rate, drop_rate=drop_rate, rate_limit_rate=rate_limit_rate, latency_ms=latency_ms,
         accounts=list(accounts),
         on_ready=lambda url: click.echo(f"Richpanel sandbox on {url} ({quota} requests per {window:g} s per key)"))


def register(cli: click.Group) -> None:
    """Add the commands to the host's ``stores set`` and ``stores`` groups, and the sandbox; a
    refused change (SettingsError) is answered in one line like the host's own errors."""
    cli.add_command(sandbox_command)
    add_store_commands(cli, set_richpanel, teams)
    add_refusal(cli, SettingsError)
