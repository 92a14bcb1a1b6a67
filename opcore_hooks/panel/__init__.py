"""The widget panel every helpdesk plugin can have: a customer's recent orders and claims.

A plugin declares it by returning a :class:`Panel` from ``register_panel``; the host then
serves the signed panel at ``/widgets/<plugin>/{store_id}``, its provisioning at
``/internal/integrations/<plugin>/stores/{store_id}/widget``, reseals its secrets on
``opcore keys rotate``, and asks the plugin's ``widget_context`` hook to shape what it shows.
Signing secrets live in ``secrets.py``, HTML and headers in ``render.py``, HTTP in ``routes.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.routing import Route

from . import routes
from .render import security_headers
from .secrets import GRACE_SECONDS, Provisioned, WidgetSecrets

if TYPE_CHECKING:
    from ..host import Host

__all__ = ["GRACE_SECONDS", "Panel", "Provisioned", "WidgetPanel"]


@dataclass(frozen=True)
class Panel:
    """What a plugin says of its panel: who may frame it (CSP ``frame-ancestors`` sources).

    ``setting`` names the environment variable the sources come from, so a bad value is
    reported by the name the operator set.
    """

    frame_ancestors: str
    setting: str = "frame_ancestors"


class WidgetPanel:
    """One plugin's panel on one host, built from its :class:`Panel` when the host starts."""

    def __init__(self, host: Host, plugin: str, panel: Panel) -> None:
        self.host, self.plugin = host, plugin
        self.secrets = WidgetSecrets(host, plugin)
        self.headers = security_headers(panel.frame_ancestors, panel.setting)  # a bad setting stops start-up

    def widget_routes(self) -> list[Route]:
        return routes.widget_routes(self.host, self.plugin, self.secrets, self.headers)

    def internal_routes(self) -> list[Route]:
        return routes.internal_routes(self.plugin, self.secrets)

    def provision(self, store_id: str, now: float | None = None) -> Provisioned:
        return self.secrets.provision(store_id, now)

    def active_secrets(self, store_id: str, now: float) -> list[str] | None:
        return self.secrets.active(store_id, now)

    def rotate(self) -> int:
        return self.secrets.rotate()

    def path(self, store_id: str) -> str:
        return routes.widget_path(self.plugin, store_id)

    def signed_request_example(self, store_id: str, email: str, base_url: str,
                               now: float | None = None) -> dict[str, Any]:
        return routes.signed_request_example(self.secrets, self.plugin, store_id, email, base_url, now)
