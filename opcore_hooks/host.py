"""The Host: everything a plugin may use, built once per process (or per test).

A plugin gets the host in every hook and uses only what is public here: ``settings``,
``redis``, ``broker``, ``actor()``, ``key()``, ``plugin_settings()``, ``vault``,
``readmodel``, ``dead_letters``, ``replication``, ``delivery()``, ``panel()``, ``claim_url()`` and ``call_plugin()``. Building two hosts in
one process is fine (the tests do it all the time) because nothing here is global: each host
has its own plugin manager, broker and actors.
"""

from __future__ import annotations

import logging
from functools import cached_property
from typing import TYPE_CHECKING, Any, Callable

import dramatiq
import redis
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from . import keys
from .broker import Broker
from .config import ConfigError, Settings, invalid_settings
from .deadletters import DeadLetters
from .metrics import Metrics
from .plugins import LoadedPlugins, load_plugins
from .readmodel import ReadModel
from .redaction import hide_actor_args, hide_request_paths
from .replication import Replication
from .store import PinnedRedis, connect_settings, pinned

if TYPE_CHECKING:
    from .delivery import Delivery
    from .panel import WidgetPanel

log = logging.getLogger("opcore.host")


class Host:
    def __init__(
        self,
        settings: Settings | None = None,
        *,
        redis_client: redis.Redis | None = None,
        plugins: dict[str, Any] | None = None,
    ) -> None:
        self.settings = settings or Settings()
        hide_request_paths()  # a helpdesk lookup's URL holds a customer's email
        self.redis: PinnedRedis = pinned(redis_client) if redis_client else connect_settings(self.settings)
        #: How many replicas must hold a write before opcore promises or relies on it (``replication.py``).
        self.replication = Replication(self.settings.redis_replicas, self.settings.redis_replica_timeout_ms,
                                       self.key("replication", "fence"))
        self.broker = Broker(
            client=self.redis,
            namespace=self.key("dramatiq"),
            heartbeat_timeout=self.settings.heartbeat_timeout_ms,
            maintenance_chance=self.settings.broker_maintenance_chance,
            enqueue_wait_seconds=self.settings.enqueue_wait_seconds,
            replication=self.replication,
            on_recovery=lambda what, by: self.metrics.count_refusal(what, by),
        )
        self.loaded: LoadedPlugins = load_plugins(
            plugins, allowlist=self.settings.plugin_allowlist, strict=self.settings.strict_plugins
        )
        self.pm = self.loaded.pm
        self._callers: dict[tuple[str, str], Any] = {}
        self.readmodel = ReadModel(self.redis, self.key("rm"), self.settings)
        self.dead_letters = DeadLetters(self.redis, self.key("dead"))
        self.metrics = Metrics(self)
        self._plugin_settings: dict[str, BaseSettings] = {}
        for name in self.loaded.names():
            model = self.call_plugin(name, "register_settings")
            if model is not None:
                try:
                    self._plugin_settings[name] = model()
                except ValidationError as exc:
                    raise invalid_settings(exc, model.model_config.get("env_prefix", "")) from None
        from .dispatch import Dispatcher  # the dispatcher's actors need a finished host

        self.dispatcher = Dispatcher(self)
        self.pm.hook.register_actors(host=self)
        from .delivery import Delivery
        from .panel import WidgetPanel

        self._deliveries: dict[str, Delivery] = {}
        for name in self.implementers("register_helpdesk"):
            helpdesk = self.call_plugin(name, "register_helpdesk", host=self)
            if helpdesk is not None:
                self._deliveries[name] = Delivery(self, name, helpdesk)
        self._panels: dict[str, WidgetPanel] = {}
        for name in self.implementers("register_panel"):
            panel = self.call_plugin(name, "register_panel", host=self)
            if panel is not None:
                self._panels[name] = WidgetPanel(self, name, panel)

    @classmethod
    def from_env(cls, **kwargs: Any) -> Host:
        return cls(Settings(), **kwargs)

    # -- names -------------------------------------------------------------------------
    def key(self, *parts: str) -> str:
        """A Redis key in this deployment's namespace; every key opcore writes goes through here.

        Each part is encoded (``opcore_hooks.keys``), so an id or email holding ``:`` cannot
        name another store's key.
        """
        return keys.join(self.settings.namespace, *parts)

    def messages_in_flight_key(self, store_id: str, claim_id: str) -> str:
        """The set of the claim's message events (by id) the ingress accepted and the dispatch has
        not handed to the plugins yet: the note mirror's writer waits for them, to keep the order.
        (It was a count under another name, ``msgs``; those keys expire within the hour.)"""
        return self.key("coming", store_id, claim_id)

    def claim_url(self, claim_id: str) -> str:
        return self.settings.claim_url(claim_id)

    # -- plugins -----------------------------------------------------------------------
    @property
    def plugin_names(self) -> list[str]:
        return self.loaded.names()

    def plugin_settings(self, name: str) -> BaseSettings | None:
        return self._plugin_settings.get(name)

    @property
    def deliveries(self) -> dict[str, Delivery]:
        """Every plugin's delivery engine, by plugin name."""
        return dict(self._deliveries)

    def delivery(self, name: str) -> Delivery:
        """The delivery engine of plugin ``name`` (built from its ``register_helpdesk``)."""
        try:
            return self._deliveries[name]
        except KeyError:
            raise KeyError(f"plugin {name!r} registered no helpdesk; its register_helpdesk hook "
                           "must return a Helpdesk") from None

    def panel(self, name: str) -> WidgetPanel | None:
        """The widget panel of plugin ``name``, or None when it declares none (``register_panel``)."""
        return self._panels.get(name)

    def implementers(self, hook: str) -> list[str]:
        """Names of the plugins that implement ``hook``, in registration order."""
        return [impl.plugin_name for impl in getattr(self.pm.hook, hook).get_hookimpls()]

    def call_plugin(self, name: str, hook: str, **kwargs: Any) -> Any:
        """Call one plugin's implementation of ``hook``; None when it has none.

        Events fan out plugin by plugin through this, so one plugin raising never skips
        another (pluggy's own fan-out stops at the first exception, pluggy#419).
        """
        caller = self._callers.get((name, hook))
        if caller is None:  # plugins are registered once, when the host is built: keep it
            if self.pm.get_plugin(name) is None:
                raise KeyError(f"no plugin named {name!r} is loaded")
            others = [p for n, p in self.pm.list_name_plugin() if n != name]
            caller = self._callers[(name, hook)] = self.pm.subset_hook_caller(hook, remove_plugins=others)
        results = caller(**kwargs)
        return results[0] if results else None

    def actor(
        self, fn: Callable[..., Any], *, plugin: str, queue: str | None = None, **options: Any
    ) -> dramatiq.Actor:
        """Declare ``fn`` as an actor of ``plugin`` on this host's broker.

        The actor is named ``<plugin>.<function>`` and uses the queue ``<plugin>`` unless
        told otherwise, so each plugin's backlog is its own queue.
        """
        return hide_actor_args(dramatiq.actor(
            fn,
            broker=self.broker,
            actor_name=f"{plugin}.{fn.__name__}",
            queue_name=queue or plugin,
            **options,
        ))

    # -- secrets -----------------------------------------------------------------------
    @cached_property
    def vault(self):  # -> Vault; imported lazily so hosts without a master key still build
        from .crypto import Vault

        if self.settings.master_key is None:
            raise ConfigError(
                "OPCORE_MASTER_KEY is not set: it is needed to store credentials. Generate one "
                "with `opcore keys generate` and set it in the environment."
            )
        return Vault.from_setting(self.settings.master_key.get_secret_value())

    def rotate_secrets(self) -> int:
        """Reseal every secret under the newest master key: each plugin's, and each widget panel's."""
        return sum(self.pm.hook.rotate_secrets(host=self)) + sum(p.rotate() for p in self._panels.values())

    def close(self) -> None:
        self.dispatcher.close()
        self.broker.close()
