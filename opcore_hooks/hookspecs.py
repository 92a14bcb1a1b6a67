"""The hooks a helpdesk plugin implements. The bodies are empty: the docstrings are the contract.

Every hook receives ``host`` (an :class:`opcore_hooks.host.Host`), the plugin's only way into
opcore: its Redis, broker, settings, secret vault and read model. Plugins never import the
host's internals, and the host never imports a plugin, so adding a helpdesk is a new package
with an ``opcore.plugins`` entry point and nothing else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click
    from pydantic_settings import BaseSettings

    from .delivery import Helpdesk
    from .demo import DemoHelpdesk
    from .events import ClaimCreated, ClaimStatusChanged, Event, MessageCreated
    from .host import Host
    from .panel import Panel
    from .readmodel import CustomerContext
    from .routes import Routes
    from .status import CredentialsCheck

hookspec = pluggy.HookspecMarker("opcore")
hookimpl = pluggy.HookimplMarker("opcore")


@hookspec
def register_settings() -> type[BaseSettings] | None:
    """Return the plugin's process settings model (a pydantic-settings class), or None.

    Called once when a host is built. The host instantiates it, so the plugin reads its own
    environment variables (by convention ``OPCORE_<PLUGIN>_*``) and a bad value stops
    ``serve`` and ``worker`` at start-up instead of at the first event. The instance is
    ``host.plugin_settings(name)``.
    """


@hookspec
def register_actors(host: Host) -> None:
    """Declare the plugin's Dramatiq actors on ``host.broker``.

    Called once per host, after settings. Actors must be created with ``broker=host.broker``
    (``host.actor(...)`` does that and namespaces the actor name), never on Dramatiq's global
    broker: the web tier and each worker build their own host, and tests build many.
    """


@hookspec
def register_helpdesk(host: Host) -> Helpdesk | None:
    """Return the plugin's :class:`opcore_hooks.delivery.Helpdesk`, or None.

    The host builds the delivery engine for it (its create and finish actors, claim records,
    pacing, parking, dead letters), reachable as ``host.delivery(<plugin>)``; the plugin's
    ``on_claim_created`` and ``on_claim_status_changed`` hand claims to it. Called once per
    host, after ``register_actors``.
    """


@hookspec
def register_panel(host: Host) -> Panel | None:
    """Return a :class:`opcore_hooks.panel.Panel` to give the plugin's helpdesk the widget panel.

    The host then serves it at ``/widgets/<plugin>/{store_id}`` (signed per store), provisions
    and rotates its secrets at ``/internal/integrations/<plugin>/stores/{store_id}/widget``,
    and reseals them on ``opcore keys rotate``; ``widget_context`` shapes what it shows.
    """


@hookspec
def register_demo() -> DemoHelpdesk | None:
    """Return the plugin's part of ``opcore demo``: a local stand-in of its helpdesk and how to
    read back what it received (:class:`opcore_hooks.standins.DemoHelpdesk`), or None.

    Called before the demo builds its host, so the part can point the plugin's settings at the
    stand-in through the environment.
    """


@hookspec
def register_routes(host: Host) -> Routes | None:
    """Return the plugin's Starlette routes, or None.

    ``Routes.internal`` is mounted under ``/internal/integrations/<plugin>`` behind the admin
    bearer token; ``Routes.widget`` under ``/widgets/<plugin>``, public, so the plugin
    authenticates those requests itself (see ``opcore_hooks.signing``).
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add click commands to the ``opcore`` command line.

    Called before the command line is parsed, with the root group. Groups the host owns
    (``stores``, ``stores set``) are reachable as ``cli.commands[...]``; a plugin adds its
    ``stores set <plugin>`` command there. Commands build their own host with
    ``Host.from_env()``.
    """


@hookspec
def on_claim_created(host: Host, event: Event, claim: ClaimCreated) -> None:
    """A new claim was accepted at the ingress; called in a worker, once per plugin.

    Do the minimum here: a helpdesk plugin hands the claim to its delivery
    (``host.delivery(<plugin>).claim_created(claim, event)``), which skips stores that do not use it;
    a plugin without one enqueues its own actor. If this raises, the host retries this call for
    this plugin alone with backoff; other plugins are unaffected. Dramatiq delivers at least
    once, so the same claim may arrive again: the plugin's work must be idempotent per claim.
    """


@hookspec
def on_claim_status_changed(host: Host, event: Event, change: ClaimStatusChanged) -> None:
    """A claim changed state (``claim.state_changed``, ``claim.approved``, ``claim.denied``).

    ``change.claim_state`` is the new state. It may arrive before the plugin has finished
    handling the claim's creation (auto-approval): ``host.delivery(<plugin>)
    .claim_status_changed(change)`` finishes the ticket only once it exists. Same isolation
    and at-least-once rules as ``on_claim_created``.
    """


@hookspec
def on_claim_message(host: Host, event: Event, message: MessageCreated) -> None:
    """A message of a claim's Order Protection conversation (``message.created``).

    A helpdesk plugin hands it to its delivery (``host.delivery(<plugin>).message_created(message,
    event)``), which writes it as a private note on the claim's ticket for stores that turned
    the note mirror on, and ignores it for every other store. Same isolation and at-least-once
    rules as ``on_claim_created``: the delivery writes each message once.
    """


@hookspec
def widget_context(host: Host, store_id: str, context: CustomerContext) -> dict[str, Any] | None:
    """Shape what the plugin's helpdesk widget shows for one customer.

    The host gathers ``context`` (the customer's recent orders and claims in ``store_id``,
    newest first) from its read model; it calls this hook of the plugin that owns the widget
    only. Return the JSON-able dict the widget renders, or None to show the context as is.
    """


@hookspec
def validate_credentials(host: Host, store_id: str) -> CredentialsCheck | None:
    """Check the store's stored credentials against the helpdesk now and record the result.

    Called on demand (settings API, CLI) and by the plugin itself when delivery meets an
    authentication failure. Return None when the plugin has no credentials for the store.
    """


@hookspec
def store_status(host: Host, store_id: str) -> dict[str, Any] | None:
    """Return the store's settings for this helpdesk with every secret masked, or None.

    ``opcore stores show`` prints one section per plugin that answers.
    """


@hookspec
def rotate_secrets(host: Host) -> int:
    """Re-encrypt every secret the plugin stores under the newest master key; return how many.

    Called by ``opcore keys rotate`` after a new key was put first in ``OPCORE_MASTER_KEY``.
    """
