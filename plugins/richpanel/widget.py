"""The Richpanel widget: the host's panel (``opcore_hooks.panel``) beside a Richpanel ticket.

The host serves, signs, provisions and rotates it; what is Richpanel's is who may frame it
(Richpanel's domains, ``OPCORE_RICHPANEL_FRAME_ANCESTORS``) and how much it shows.
"""

from __future__ import annotations

from typing import Any

from opcore_hooks import CustomerContext, Host, Panel

from . import session

#: Orders shown beside a ticket; every claim the read model keeps is shown.
RECENT_ORDERS = 20


def panel(host: Host) -> Panel:
    return Panel(frame_ancestors=session.settings_of(host).frame_ancestors,
                 setting="OPCORE_RICHPANEL_FRAME_ANCESTORS")


def shape_context(host: Host, store_id: str, context: CustomerContext) -> dict[str, Any]:
    """The ``widget_context`` hook: the contract's JSON, recent orders only, every claim.

    The host's CustomerContext is already field for field the contract's shape, so this only
    trims; validating it a second time would be a large part of the request's cost.
    """
    return context.model_copy(update={"orders": context.orders[:RECENT_ORDERS]}).model_dump(mode="json")
