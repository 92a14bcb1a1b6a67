"""opcore's host: the public API a helpdesk plugin may use.

A plugin imports from here: ``hookimpl`` to mark its hook implementations, ``Host`` (what
every hook receives), ``Routes`` to hand over its Starlette routes, the event models,
``CredentialsCheck`` for its health, the delivery engine's ``Helpdesk`` seam with its
``Pacing``, ``Call`` and the errors a helpdesk's answers map to, ``Panel`` for the widget, and
``read_json``/``BodyError`` to read a bounded JSON body in its own routes.
"""

from .bodies import BodyError, read_json
from .delivery import (
    Call,
    CredentialsRejected,
    Helpdesk,
    HelpdeskError,
    Pacing,
    RateLimited,
    Refused,
    Transient,
    classify_http,
)
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
from .ids import id_problem
from .host import Host
from .panel import Panel
from .readmodel import CustomerContext
from .routes import Routes
from .status import CredentialsCheck

__all__ = [
    "BodyError",
    "Call",
    "CredentialsRejected",
    "Helpdesk",
    "HelpdeskError",
    "Pacing",
    "RateLimited",
    "Refused",
    "Transient",
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
    "Panel",
    "Routes",
    "classify_http",
    "hookimpl",
    "id_problem",
    "read_json",
]
