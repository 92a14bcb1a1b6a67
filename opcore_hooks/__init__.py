"""opcore's host: the public API a helpdesk plugin may use.

A plugin imports from here: ``hookimpl`` to mark its hook implementations, ``Host`` (what
every hook receives), ``Routes`` to hand over its Starlette routes, the event models,
``CredentialsCheck`` for its health, the delivery engine's ``Helpdesk`` seam with its
``Pacing``, ``Call``, the errors a helpdesk's answers map to and the readers of its
rate-limit headers (``header_count``, ``parse_retry_after``), ``Panel`` for the widget,
``ThreadTransport``/``transport_for`` to send its requests (a keep-alive connection per
thread), ``read_json``/``read_object``/``BodyError`` to read a bounded JSON body in its own routes, and
the one error style every route answers in (``RequestError``, ``problem``, ``check_settings``,
``validated``, ``validate_fields``, ``field_errors``, ``error_response``; see ``opcore_hooks.errors``).
"""

from .bodies import BodyError, read_json, read_object
from .delivery import (
    Call,
    CredentialsRejected,
    Helpdesk,
    HelpdeskError,
    Note,
    Pacing,
    RateLimited,
    Refused,
    Transient,
    classify_http,
    header_count,
    parse_retry_after,
)
from .errors import (
    Detail,
    RequestError,
    check_settings,
    error_response,
    field_errors,
    problem,
    validate_fields,
    validated,
)
from .events import (
    ClaimCreated,
    ClaimState,
    ClaimStatusChanged,
    ClaimType,
    Customer,
    Event,
    MessageCreated,
    Order,
    OrderUpserted,
)
from .hookspecs import hookimpl
from .host import Host
from .http import ThreadTransport, transport_for
from .ids import id_problem
from .panel import Panel
from .readmodel import CustomerContext
from .routes import Routes
from .settings_api import StoreSettingsAPI
from .status import CredentialsCheck

__all__ = [
    "BodyError",
    "Call",
    "CredentialsRejected",
    "Helpdesk",
    "HelpdeskError",
    "Note",
    "Pacing",
    "RateLimited",
    "Refused",
    "RequestError",
    "StoreSettingsAPI",
    "Transient",
    "ThreadTransport",
    "transport_for",
    "ClaimCreated",
    "ClaimState",
    "ClaimStatusChanged",
    "ClaimType",
    "CredentialsCheck",
    "Customer",
    "CustomerContext",
    "Detail",
    "Event",
    "MessageCreated",
    "Host",
    "Order",
    "OrderUpserted",
    "Panel",
    "Routes",
    "check_settings",
    "classify_http",
    "error_response",
    "field_errors",
    "header_count",
    "hookimpl",
    "id_problem",
    "parse_retry_after",
    "problem",
    "read_json",
    "read_object",
    "validate_fields",
    "validated",
]
