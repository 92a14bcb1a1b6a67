"""The ``opcore`` command line. Plugins add their own commands through ``register_commands``.

An operator who sets a bad value, forgets a variable or points at a Redis that does not answer
gets one line on stderr, ``opcore: <what is wrong>; <what to do>``, never a traceback (``--debug``
shows it). Exit status: 2 for a usage or configuration error (change something, then run again),
3 when Redis cannot be reached or refuses a command (its fault, not the command line's), 1 for a
failed run (the demo's verdict). The mapping is written once, in :class:`OpcoreGroup`, so every
plugin's command gets it without a try/except of its own.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import TYPE_CHECKING, Any

import click

from .commands import (
    Failure,
    OpcoreGroup,
    OperatorGroup,
    fail,
    needs_redis,
    open_host,
)
from .config import ConfigError, Settings
from .demo import register as register_demo
from .plugins import load_plugins
from .store import check_eviction_policy

if TYPE_CHECKING:
    from .host import Host

log = logging.getLogger("opcore.cli")

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _host(**kwargs: Any) -> Host:
    from .host import Host

    return Host.from_env(**kwargs)


def _deployment_host(settings: Settings) -> Host:
    """The host `serve` and `worker` start from; on a shared Redis, once it has answered (an
    unreachable one stops them here, exit 3) and its eviction policy was checked."""
    host = _host()
    if not settings.embedded:
        try:
            check_eviction_policy(host.redis)
        except BaseException:
            host.close()
            raise
    return host


@click.group("opcore", cls=OpcoreGroup)
@click.option("--log-level", default="INFO", show_default=True, type=click.Choice(LOG_LEVELS, case_sensitive=False),
              help="Python logging level.")
@click.option("--debug", is_flag=True, help="Show an error's traceback instead of its one line.")
def cli(log_level: str, debug: bool) -> None:
    """Order Protection's integration host and its helpdesk plugins."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs every request URL at INFO; Richpanel lookups carry customer emails in the path.
    for chatty in ("httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLogger().level))


@cli.command()
@click.option("--host", "bind", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="0: any free port.")
@click.option("--with-worker", is_flag=True, help="Run Dramatiq worker threads in this process too.")
@click.option("--threads", default=4, show_default=True, type=click.IntRange(min=1),
              help="Worker threads when they run here.")
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
    from .serving import ForegroundServer

    settings = Settings()
    settings.require("webhook_secret", "admin_token", "master_key")
    in_process = with_worker or settings.embedded
    app = create_app(_deployment_host(settings), with_worker=in_process, worker_threads=threads)
    tier = (f"web tier and {threads} worker thread{'s' * (threads != 1)}" if in_process
            else "web tier only; workers run as `opcore worker`")
    if settings.embedded:
        tier += ", embedded store: nothing survives this process"
    config = uvicorn.Config(app, host=bind, port=port, log_level="warning", access_log=False,
                            limit_concurrency=limit_concurrency, timeout_keep_alive=timeout_keep_alive,
                            h11_max_incomplete_event_size=max_header_bytes)
    server = ForegroundServer(config, on_ready=lambda url: log.info("opcore serving on %s (%s)", url, tier))
    try:
        server.run()
    except KeyboardInterrupt:
        pass


@cli.command()
@click.option("--processes", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--threads", default=8, show_default=True, type=click.IntRange(min=1))
def worker(processes: int, threads: int) -> None:
    """Dramatiq workers for every plugin's actors (needs OPCORE_REDIS_URL)."""
    from .worker import run_processes

    settings = Settings()
    try:
        settings.require("redis_url", "master_key")
    except ConfigError as exc:
        hint = " (with the embedded store, `opcore serve` runs the workers itself)" if settings.embedded else ""
        fail(f"{exc}{hint}")
    _deployment_host(settings).close()  # fail here, once, on bad settings or Redis rather than in every child
    sys.exit(run_processes(processes, threads, _host))


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins_cmd(as_json: bool) -> None:
    """The loaded plugins and the hooks each implements; plugins that failed to load."""
    settings = Settings()
    loaded = load_plugins(allowlist=settings.plugin_allowlist, strict=settings.strict_plugins)
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


@cli.group(cls=OperatorGroup)
def stores() -> None:
    """Per-store helpdesk settings, for operators without the HTTP API (needs OPCORE_REDIS_URL)."""


@stores.group("set")
def stores_set() -> None:
    """Configure a helpdesk for a store: `opcore stores set <plugin> STORE ...`."""


@stores.command("show")
@click.argument("store_id")
def stores_show(store_id: str) -> None:
    """Every plugin's settings for STORE, secrets masked."""
    host = open_host()
    found = False
    for name in host.plugin_names:
        status = host.call_plugin(name, "store_status", host=host, store_id=store_id)
        if status is not None:
            found = True
            if name in host.deliveries:  # work held while the store's credentials are rejected
                status = {**status, "parked": host.delivery(name).parked_count(store_id)}
            click.echo(json.dumps({name: status}, indent=2, default=str))
    if not found:
        fail(f"no helpdesk is configured for store {store_id!r}; connect one with `opcore stores set <plugin>` "
             "or the settings API")


@cli.group()
def keys() -> None:
    """The master key that protects stored credentials."""


@keys.command("generate")
def keys_generate() -> None:
    """Print a new random master key for OPCORE_MASTER_KEY."""
    from .crypto import generate_master_key

    click.echo(generate_master_key())


@keys.command("rotate")
@needs_redis
def keys_rotate() -> None:
    """Re-encrypt every stored secret under the first key of OPCORE_MASTER_KEY (needs OPCORE_REDIS_URL)."""
    host = open_host()
    host.vault  # noqa: B018 - fail early with the configuration message
    total = host.rotate_secrets()
    click.echo(f"re-encrypted {total} secret(s) under the newest master key")


@cli.group("dead-letters", cls=OperatorGroup)
def dead_letters() -> None:
    """Work that failed for good, with the reason; replay it once the cause is fixed (needs OPCORE_REDIS_URL)."""


@dead_letters.command("list")
@click.option("--store", default=None)
@click.option("--claim", default=None)
def dead_letters_list(store: str | None, claim: str | None) -> None:
    """Each dead letter: its id, store, claim and why it failed."""
    host = open_host()
    entries = host.dead_letters.list(store_id=store, claim_id=claim)
    for e in entries:
        click.echo(f"{e.id}\tstore={e.store_id}\tclaim={e.claim_id}\t{e.reason}")
    click.echo(f"{len(entries)} dead letter(s)")


@dead_letters.command("replay")
@click.option("--store", default=None)
@click.option("--claim", default=None)
def dead_letters_replay(store: str | None, claim: str | None) -> None:
    """Send the matching dead letters again (all when no filter); a claim never gets a second ticket."""
    host = open_host()
    entries = host.dead_letters.list(store_id=store, claim_id=claim)
    for e in entries:
        host.dead_letters.replay(host.broker, e)
    click.echo(f"replayed {len(entries)} dead letter(s)")


register_demo(cli)  # the host's `opcore demo`, over every plugin's demo part


def build_cli() -> click.Group:
    """The root group with every plugin's commands added; a plugin that fails here is skipped."""
    settings = Settings()
    loaded = load_plugins(allowlist=settings.plugin_allowlist, strict=settings.strict_plugins)
    for name in loaded.names():
        others = [p for n, p in loaded.pm.list_name_plugin() if n != name]
        try:
            loaded.pm.subset_hook_caller("register_commands", remove_plugins=others)(cli=cli)
        except Exception as exc:  # noqa: BLE001 - one plugin's broken command must not break the CLI
            log.error("plugin %r could not add its commands: %s", name, exc)
    return cli


def main() -> None:
    try:
        root = build_cli()
    except Exception as exc:  # before click parses anything: a bad variable or a strict plugin failing
        answer = cli.explain(exc)
        if answer is None or "--debug" in sys.argv[1:]:
            raise
        failure = Failure(*answer)
        failure.show()
        sys.exit(failure.exit_code)
    root(prog_name="opcore")
