"""Finding and loading plugins: one plugin manager per host, never a global one.

Plugins come from the ``opcore.plugins`` entry-point group (the built-in Richpanel plugin
included), optionally narrowed by ``OPCORE_PLUGINS``. A plugin that fails to import is
recorded and reported, and the others still load (simonw/llm#1280 shows what happens
otherwise); ``OPCORE_STRICT_PLUGINS`` makes it fatal. A hook implementation without a spec is
always fatal, because it is a typo that would otherwise silently never run.
"""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import pluggy

from . import hookspecs

log = logging.getLogger("opcore.plugins")

ENTRY_POINT_GROUP = "opcore.plugins"


class PluginLoadError(Exception):
    """A plugin could not be loaded and loading is strict, or a hook has no spec."""


@dataclass
class LoadedPlugins:
    pm: pluggy.PluginManager
    #: plugin name -> one-line reason it failed to load
    failures: dict[str, str] = field(default_factory=dict)

    def names(self) -> list[str]:
        return [name for name, _ in self.pm.list_name_plugin()]

    def hooks_of(self, name: str) -> list[str]:
        plugin = self.pm.get_plugin(name)
        return sorted(caller.name for caller in self.pm.get_hookcallers(plugin) or [])


def new_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("opcore")
    pm.add_hookspecs(hookspecs)
    return pm


def load_plugins(
    plugins: dict[str, Any] | None = None,
    *,
    allowlist: list[str] | None = None,
    strict: bool = False,
) -> LoadedPlugins:
    """Build a plugin manager from ``plugins`` (name -> module/object) or from entry points.

    Tests pass ``plugins`` directly; production leaves it None to use entry points.
    """
    loaded = LoadedPlugins(pm=new_manager())
    candidates: dict[str, Any] = {}
    if plugins is not None:
        candidates = dict(plugins)
    else:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if allowlist and ep.name not in allowlist:
                continue
            try:
                candidates[ep.name] = ep.load()
            except Exception as exc:  # noqa: BLE001 - any import failure must be reported, not fatal
                reason = "".join(traceback.format_exception_only(type(exc), exc)).strip()
                if strict:
                    raise PluginLoadError(f"plugin {ep.name!r} failed to import: {reason}") from exc
                log.error("plugin %r failed to import and is skipped: %s", ep.name, reason)
                loaded.failures[ep.name] = reason
        for name in allowlist or []:
            if name not in candidates and name not in loaded.failures:
                loaded.failures[name] = "listed in OPCORE_PLUGINS but no such plugin is installed"
                if strict:
                    raise PluginLoadError(f"plugin {name!r}: {loaded.failures[name]}")
    for name, plugin in candidates.items():
        loaded.pm.register(plugin, name=name)
    try:
        loaded.pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginLoadError(
            f"{exc}. Rename the function to one of the hooks in opcore_hooks/hookspecs.py."
        ) from exc
    return loaded

