"""opcore's host: the public API a helpdesk plugin may use.

A plugin imports from here and nowhere else in ``opcore_hooks``: ``hookimpl`` to mark its
hook implementations, ``Host`` (what every hook receives), ``Routes`` to hand over its
Starlette routes, the event models, and ``CredentialsCheck`` for its health.
"""

from .events import (
    ClaimCreated,
    ClaimState,
    ClaimStatusChanged,
    ClaimType,
    Customer,
    Event,
    Order,
    OrderUpserted,
)
from .hookspecs import hookimpl
from .host import Host
from .readmodel import CustomerContext
from .routes import Routes
from .status import CredentialsCheck

__all__ = [
    "ClaimCreated",
    "ClaimState",
    "ClaimStatusChanged",
    "ClaimType",
    "CredentialsCheck",
    "Customer",
    "CustomerContext",
    "Event",
    "Host",
    "Order",
    "OrderUpserted",
    "Routes",
    "hookimpl",
]
