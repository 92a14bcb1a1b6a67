"""The command-line pieces a plugin's ``register_commands`` uses, and the host's own CLI builds on.

Kept apart from ``cli`` (the ``opcore`` command itself, which also starts servers and demos) so
a plugin adds its commands through the host's API without importing the whole command line.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Callable, NoReturn

import click
import redis

from .config import ConfigError, Settings
from .crypto import DecryptionError
from .plugins import PluginLoadError

if TYPE_CHECKING:
    from .host import Host

EXIT_CONFIG = 2
EXIT_REDIS = 3

class Failure(click.ClickException):
    """What the operator can fix, said in one line: ``opcore: ...`` on stderr, with its exit status."""

    def __init__(self, message: str, exit_code: int = EXIT_CONFIG) -> None:
        super().__init__(" ".join(message.split()))  # one line, whatever the message held
        self.exit_code = exit_code

    def show(self, file: Any = None) -> None:
        click.echo(f"opcore: {self.message}", err=True)


def fail(message: str, exit_code: int = EXIT_CONFIG) -> NoReturn:
    """Stop the running command with one line (``message`` says what is wrong and what to do)."""
    raise Failure(message, exit_code)


class OpcoreGroup(click.Group):
    """The root group: whatever command runs, a plugin's included, an error the operator can fix
    becomes one line, and the traceback is kept for ``--debug`` and for bugs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Plugins' own exceptions for what an operator can fix (``add_refusal``).
        self.refusals: set[type[Exception]] = set()

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.ClickException:
            raise
        except Exception as exc:
            answer = self.explain(exc)
            if answer is None or ctx.params.get("debug"):
                raise
            raise Failure(*answer) from exc

    def explain(self, exc: Exception) -> tuple[str, int] | None:
        """The line and exit status for ``exc``; None for a bug, whose traceback must show."""
        if isinstance(exc, (ConfigError, PluginLoadError, DecryptionError)):
            return str(exc), EXIT_CONFIG
        if isinstance(exc, tuple(self.refusals)):
            return getattr(exc, "message", None) or str(exc), EXIT_CONFIG
        if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
            return f"cannot reach Redis ({exc}); check OPCORE_REDIS_URL (or OPCORE_REDIS_SENTINELS) and that Redis is running", EXIT_REDIS
        if isinstance(exc, redis.RedisError):
            return (f"Redis refused a command ({exc}); check that OPCORE_REDIS_URL (or the Sentinels) name a writable primary "
                    "this deployment may use (`opcore --debug ...` shows the command)"), EXIT_REDIS
        return None


def add_refusal(root: click.Group, kind: type[Exception]) -> None:
    """For a plugin's ``register_commands``: answer ``kind`` (its refusal of a settings change, say)
    as the host answers its own errors, in one line (its ``message``, else its text) and exit 2."""
    assert isinstance(root, OpcoreGroup)
    root.refusals.add(kind)


#: ``--mirror-messages/--no-mirror-messages`` for a plugin's ``stores set``: the ``mirror_messages``
#: setting (CONTRACT.md, "Note mirror"); None when omitted, which keeps the stored choice.
mirror_messages_option = click.option(
    "--mirror-messages/--no-mirror-messages", "mirror_messages", default=None,
    help="Mirror the claim's messages as private notes on its ticket (never public). Omit to keep the stored choice.")


def needs_redis(callback: Callable[..., Any]) -> Callable[..., Any]:
    """For a command on the deployment's state: refuse to run on the embedded store, which in a
    fresh process is empty, so `stores show` would call a configured store unknown and `keys
    rotate` would reseal nothing, both without a word."""
    if getattr(callback, "needs_redis", False):
        return callback

    @functools.wraps(callback)
    def checked(*args: Any, **kwargs: Any) -> Any:
        if Settings().embedded:
            fail(f"`{click.get_current_context().command_path}` works on the deployment's Redis and "
                 "OPCORE_REDIS_URL is not set (this process would read an empty store of its own); set it "
                 "(or OPCORE_REDIS_SENTINELS) to the Redis that `opcore serve` and `opcore worker` use")
        return callback(*args, **kwargs)

    checked.needs_redis = True  # type: ignore[attr-defined]
    return checked


class OperatorGroup(click.Group):
    """Commands on the deployment's state: each one added, a plugin's too, refuses the embedded store."""

    group_class = type  # its subgroups (``stores set``) are operator groups as well

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        if cmd.callback is not None and not isinstance(cmd, click.Group):
            cmd.callback = needs_redis(cmd.callback)
        super().add_command(cmd, name)


def open_host() -> Host:
    """The deployment's host for the running command, closed when the command ends, however it ends."""
    from .host import Host

    host = Host.from_env()
    click.get_current_context().call_on_close(host.close)
    return host


def add_store_commands(root: click.Group, setter: click.Command, *others: click.Command) -> None:
    """For a plugin's ``register_commands``: its ``opcore stores set <plugin>`` command, and any
    others under ``opcore stores`` (``teams``, ``groups``); like the host's, they refuse the
    embedded store."""
    group = root.commands["stores"]
    assert isinstance(group, click.Group)
    set_group = group.commands["set"]
    assert isinstance(set_group, click.Group)
    set_group.add_command(setter)
    for command in others:
        group.add_command(command)
