"""What a plugin hands the host to mount: kept apart so a plugin can build it without the app."""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.routing import BaseRoute


@dataclass
class Routes:
    #: Mounted under ``/internal/integrations/<plugin>``; the host enforces the admin token.
    internal: list[BaseRoute] = field(default_factory=list)
    #: Mounted under ``/widgets/<plugin>``; public, the plugin verifies signatures itself.
    widget: list[BaseRoute] = field(default_factory=list)
