"""The widget panel every helpdesk plugin can have: a customer's recent orders and claims.

A plugin declares it by returning a :class:`Panel` from ``register_panel``; the host then
serves the panel at ``/widgets/<plugin>/{store_id}`` (to a plain iframe holding the store's
``iframe_url``, or to a signed request), its provisioning and revocation at
``/internal/integrations/<plugin>/stores/{store_id}/widget``, revokes it when the plugin's
store settings are deleted, reseals its secrets on ``opcore keys rotate``, and asks the
plugin's ``widget_context`` hook to shape what it shows. Signing secrets and iframe tokens
live in ``secrets.py``, HTML and headers in ``render.py``, HTTP in ``routes.py``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ..guards import store_path
from ..ids import id_problem
from . import routes
from .render import security_headers
from .secrets import GRACE_SECONDS, Provisioned, WidgetSecrets

if TYPE_CHECKING:
    from ..host import Host

__all__ = ["GRACE_SECONDS", "Panel", "Provisioned", "WidgetPanel"]

log = logging.getLogger("opcore.panel")


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

    def provision(self, store_id: str, now: float | None = None, revoke_previous: bool = False) -> Provisioned:
        return self.secrets.provision(store_id, now, revoke_previous)

    def revoke(self, store_id: str) -> bool:
        """End the store's secrets and iframe URLs at once; whether it had a widget."""
        return self.secrets.revoke(store_id)

    def iframe_url(self, store_id: str, base_url: str, now: float | None = None) -> str:
        """The store's current iframe URL template (``{email}`` still in it); LookupError if none."""
        secret = routes.current_secret(self.secrets, store_id, time.time() if now is None else now)
        return routes.iframe_url(self.plugin, store_id, secret, base_url)

    def revoking_on_store_delete(self, app: ASGIApp) -> ASGIApp:
        """ASGI middleware for the plugin's internal mount: ``DELETE /stores/{store_id}`` also
        revokes the store's widget, whatever the plugin's own route looks like.

        The contract makes deleting a store's settings end its widget; doing it here means no
        plugin can forget to. The widget is revoked first, so a settings delete that fails
        half-way still leaves no way into the store's customers, and a retry revokes again.
        """

        async def revoking(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http" and scope["method"] == "DELETE":
                found = store_path(scope)  # the store's settings, not its widget or teams
                if found and found[1] in ("", "/") and id_problem("store_id", found[0]) is None:
                    await run_in_threadpool(self.revoke, found[0])
            await app(scope, receive, send)

        return revoking

    def active_secrets(self, store_id: str, now: float) -> list[str] | None:
        return self.secrets.active(store_id, now)

    def rotate(self) -> int:
        return self.secrets.rotate()

    def path(self, store_id: str) -> str:
        return routes.widget_path(self.plugin, store_id)

    def signed_request_example(self, store_id: str, email: str, base_url: str,
                               now: float | None = None) -> dict[str, Any]:
        return routes.signed_request_example(self.secrets, self.plugin, store_id, email, base_url, now)
