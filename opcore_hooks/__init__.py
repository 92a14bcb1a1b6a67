"""opcore's host: the public API a helpdesk plugin may use.

A plugin imports from here: ``hookimpl`` to mark its hook implementations, ``Host`` (what
every hook receives), ``Routes`` to hand over its Starlette routes, the event models,
``CredentialsCheck`` for its health, the delivery engine's ``Helpdesk`` seam with its
``Pacing``, ``Call``, the errors a helpdesk's answers map to and the readers of its
rate-limit headers (``header_count``, ``parse_retry_after``), ``Panel`` for the widget,
``ThreadTransport``/``transport_for`` to send its requests (a keep-alive connection per
thread), ``read_json``/``read_object``/``BodyError`` to read a bounded JSON body in its own routes, and
the one error style every route answers in (``RequestError``, ``problem``, ``check_settings``,
``validated``, ``validate_fields``, ``field_errors``, ``error_response``; see ``opcore_hooks.errors``),
what a ticket says (``subject``, ``summary_html``/``summary_text``, ``note_html``/``note_text``),
a store's ``MirrorMessages`` setting, ``DecryptionError`` for a sealed secret that no key opens,
and the command-line pieces for ``register_commands`` (``add_store_commands``, ``add_refusal``,
``mirror_messages_option``, ``open_host``, ``fail``).

A plugin imports nothing else of the host (tests/test_plugin_api.py holds it to that): its
stand-in helpdesk and demo use ``opcore_hooks.standins``, its tests ``opcore_hooks.testing``.
"""

from .bodies import BodyError, read_json, read_object
from .commands import add_refusal, add_store_commands, fail, mirror_messages_option, open_host
from .crypto import DecryptionError
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
from .fields import MirrorMessages
from .hookspecs import hookimpl
from .host import Host
from .http import ThreadTransport, transport_for
from .ids import id_problem
from .panel import Panel
from .readmodel import CustomerContext
from .routes import Routes
from .settings_api import StoreSettingsAPI
from .status import CredentialsCheck
from .summary import note_html, note_text, subject, summary_html, summary_text

__all__ = [
    "BodyError",
    "Call",
    "ClaimCreated",
    "ClaimState",
    "ClaimStatusChanged",
    "ClaimType",
    "CredentialsCheck",
    "CredentialsRejected",
    "Customer",
    "CustomerContext",
    "DecryptionError",
    "Detail",
    "Event",
    "Helpdesk",
    "HelpdeskError",
    "Host",
    "MessageCreated",
    "MirrorMessages",
    "Note",
    "Order",
    "OrderUpserted",
    "Pacing",
    "Panel",
    "RateLimited",
    "Refused",
    "RequestError",
    "Routes",
    "StoreSettingsAPI",
    "ThreadTransport",
    "Transient",
    "add_refusal",
    "add_store_commands",
    "check_settings",
    "classify_http",
    "error_response",
    "fail",
    "field_errors",
    "header_count",
    "hookimpl",
    "id_problem",
    "mirror_messages_option",
    "note_html",
    "note_text",
    "open_host",
    "parse_retry_after",
    "problem",
    "read_json",
    "read_object",
    "subject",
    "summary_html",
    "summary_text",
    "transport_for",
    "validate_fields",
    "validated",
]
