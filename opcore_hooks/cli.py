"""The ``opcore`` command line. Plugins add their own commands through ``register_commands``."""

from __future__ import annotations

import json
import logging
import sys

import click

from .config import ConfigError, Settings
from .demo import register as register_demo
from .plugins import PluginLoadError, load_plugins

log = logging.getLogger("opcore.cli")


def _host(**kwargs):
    from .host import Host

    return Host.from_env(**kwargs)


def _fail(message: str) -> None:
    click.echo(f"opcore: {message}", err=True)
    sys.exit(2)


@click.group()
@click.option("--log-level", default="INFO", show_default=True, help="Python logging level.")
def cli(log_level: str) -> None:
    """Order Protection's integration host and its helpdesk plugins."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs every request URL at INFO; Richpanel lookups carry customer emails in the path.
    for chatty in ("httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLogger().level))


@cli.command()
@click.option("--host", "bind", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--with-worker", is_flag=True, help="Run Dramatiq worker threads in this process too.")
@click.option("--threads", default=4, show_default=True, help="Worker threads when they run here.")
@click.option("--limit-concurrency", default=200, show_default=True, type=click.IntRange(min=1),
              envvar="OPCORE_LIMIT_CONCURRENCY", show_envvar=True,
              help="Open connections and requests at once; past it, new requests get 503.")
@click.option("--timeout-keep-alive", default=5, show_default=True, type=click.IntRange(min=1),
              envvar="OPCORE_TIMEOUT_KEEP_ALIVE", show_envvar=True,
              help="Seconds an idle keep-alive connection stays open after an answer.")
@click.option("--max-header-bytes", default=16 * 1024, show_default=True, type=click.IntRange(min=1024),
              envvar="OPCORE_MAX_HEADER_BYTES", show_envvar=True,
              help="Largest request line and headers accepted (h11's incomplete event size).")
def serve(bind: str, port: int, with_worker: bool, threads: int, limit_concurrency: int,
          timeout_keep_alive: int, max_header_bytes: int) -> None:
    """The web tier: ingress, internal API, widgets, /healthz.

    uvicorn has no timeout for reading a request's headers or body: a client that sends
    slowly keeps its connection, so the concurrency limit bounds what slow clients can hold,
    and a proxy in front should time them out (README, 'Running behind a proxy').
    """
    import uvicorn

    from .app import create_app

    settings = Settings()
    try:
        settings.require("webhook_secret", "admin_token", "master_key")
        host = _host()
    except (ConfigError, PluginLoadError) as exc:
        _fail(str(exc))
    app = create_app(host, with_worker=with_worker or settings.embedded, worker_threads=threads)
    uvicorn.run(app, host=bind, port=port, log_level="warning", access_log=False,
                limit_concurrency=limit_concurrency, timeout_keep_alive=timeout_keep_alive,
                h11_max_incomplete_event_size=max_header_bytes)


@cli.command()
@click.option("--processes", default=1, show_default=True, type=int)
@click.option("--threads", default=8, show_default=True, type=int)
def worker(processes: int, threads: int) -> None:
    """Dramatiq workers for every plugin's actors (needs OPCORE_REDIS_URL)."""
    from .worker import run_processes

    settings = Settings()
    try:
        settings.require("redis_url", "master_key")
        _host().close()  # fail here, once, on bad plugin settings rather than in every child
    except (ConfigError, PluginLoadError) as exc:
        hint = " (with the embedded store, `opcore serve` runs the workers itself)" if settings.embedded else ""
        _fail(f"{exc}{hint}")
    sys.exit(run_processes(processes, threads, _host))


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins_cmd(as_json: bool) -> None:
    """The loaded plugins and the hooks each implements; plugins that failed to load."""
    settings = Settings()
    try:
        loaded = load_plugins(allowlist=settings.plugin_allowlist, strict=settings.strict_plugins)
    except PluginLoadError as exc:
        _fail(str(exc))
    rows = [{"name": name, "hooks": loaded.hooks_of(name)} for name in loaded.names()]
    if as_json:
        click.echo(json.dumps({"plugins": rows, "failures": loaded.failures}, indent=2))
        return
    for row in rows:
        click.echo(f"{row['name']}: {', '.join(row['hooks'])}")
    for name, reason in loaded.failures.items():
        click.echo(f"{name}: FAILED TO LOAD: {reason}")
    if not rows and not loaded.failures:
        click.echo("no plugins installed (entry-point group opcore.plugins)")


@cli.group()
def stores() -> None:
    """Per-store helpdesk settings, for operators without the HTTP API."""


@stores.group("set")
def stores_set() -> None:
    """Configure a helpdesk for a store: `opcore stores set <plugin> STORE ...`."""


def add_store_commands(root: click.Group, setter: click.Command, *others: click.Command) -> None:
    """For a plugin's ``register_commands``: its ``opcore stores set <plugin>`` command, and any
    others under ``opcore stores`` (``teams``, ``groups``)."""
    group = root.commands["stores"]
    assert isinstance(group, click.Group)
    set_group = group.commands["set"]
    assert isinstance(set_group, click.Group)
    set_group.add_command(setter)
    for command in others:
        group.add_command(command)


@stores.command("show")
@click.argument("store_id")
def stores_show(store_id: str) -> None:
    """Every plugin's settings for STORE, secrets masked."""
    host = _host()
    found = False
    for name in host.plugin_names:
        status = host.call_plugin(name, "store_status", host=host, store_id=store_id)
        if status is not None:
            found = True
            if name in host.deliveries:  # work held while the store's credentials are rejected
                status = {**status, "parked": host.delivery(name).parked_count(store_id)}
            click.echo(json.dumps({name: status}, indent=2, default=str))
    if not found:
        _fail(f"no helpdesk is configured for store {store_id!r}")


@cli.group()
def keys() -> None:
    """The master key that protects stored credentials."""


@keys.command("generate")
def keys_generate() -> None:
    """Print a new random master key for OPCORE_MASTER_KEY."""
    from .crypto import generate_master_key

    click.echo(generate_master_key())


@keys.command("rotate")
def keys_rotate() -> None:
    """Re-encrypt every stored secret under the first key of OPCORE_MASTER_KEY."""
    host = _host()
    try:
        host.vault  # noqa: B018 - fail early with the configuration message
    except ConfigError as exc:
        _fail(str(exc))
    total = host.rotate_secrets()
    click.echo(f"re-encrypted {total} secret(s) under the newest master key")


@cli.group("dead-letters")
def dead_letters() -> None:
    """Work that failed for good, with the reason; replay it once the cause is fixed."""


@dead_letters.command("list")
@click.option("--store", default=None)
@click.option("--claim", default=None)
def dead_letters_list(store: str | None, claim: str | None) -> None:
    """Each dead letter: its id, store, claim and why it failed."""
    host = _host()
    entries = host.dead_letters.list(store_id=store, claim_id=claim)
    for e in entries:
        click.echo(f"{e.id}\tstore={e.store_id}\tclaim={e.claim_id}\t{e.reason}")
    click.echo(f"{len(entries)} dead letter(s)")


@dead_letters.command("replay")
@click.option("--store", default=None)
@click.option("--claim", default=None)
def dead_letters_replay(store: str | None, claim: str | None) -> None:
    """Send the matching dead letters again (all when no filter); a claim never gets a second ticket."""
    host = _host()
    entries = host.dead_letters.list(store_id=store, claim_id=claim)
    for e in entries:
        host.dead_letters.replay(host.broker, e)
    click.echo(f"replayed {len(entries)} dead letter(s)")


register_demo(cli)  # the host's `opcore demo`, over every plugin's demo part


def build_cli() -> click.Group:
    """The root group with every plugin's commands added; a plugin that fails here is skipped."""
    settings = Settings()
    try:
        loaded = load_plugins(allowlist=settings.plugin_allowlist, strict=settings.strict_plugins)
    except PluginLoadError as exc:
        _fail(str(exc))
    for name in loaded.names():
        others = [p for n, p in loaded.pm.list_name_plugin() if n != name]
        try:
            loaded.pm.subset_hook_caller("register_commands", remove_plugins=others)(cli=cli)
        except Exception as exc:  # noqa: BLE001 - one plugin's broken command must not break the CLI
            log.error("plugin %r could not add its commands: %s", name, exc)
    return cli


def main() -> None:
    build_cli()(prog_name="opcore")
