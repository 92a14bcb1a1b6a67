"""What a plugin hands the host to mount: kept apart so a plugin can build it without the app."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from starlette.routing import BaseRoute


@dataclass
class Routes:
    """A plugin's Starlette routes (any sequence of them: a list of ``Route`` is one)."""

    #: Mounted under ``/internal/integrations/<plugin>``; the host enforces the admin token.
    internal: Sequence[BaseRoute] = field(default_factory=list)
    #: Mounted under ``/widgets/<plugin>``; public, the plugin verifies signatures itself.
    widget: Sequence[BaseRoute] = field(default_factory=list)
