"""The delivery engine: what every helpdesk plugin gets from the host, written once.

A plugin describes its helpdesk with a :class:`Helpdesk` subclass (``helpdesk.py``) and
returns it from ``register_helpdesk``; the host builds a :class:`Delivery` for it
(``engine.py``), reachable as ``host.delivery(name)``. The engine keeps each claim's record
(``ledger.py``), paces requests per scope through Redis (``pacing.py``), parks work while
credentials are rejected (``parking.py``), caches each store's settings per process
(``store_cache.py``), and mirrors claim messages as private notes for the stores that ask
(``notes.py``, its records in ``note_records.py``).
"""

from .engine import Delivery
from .helpdesk import (
    FINISH_STATES,
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

__all__ = [
    "FINISH_STATES",
    "Call",
    "CredentialsRejected",
    "Delivery",
    "Helpdesk",
    "HelpdeskError",
    "Note",
    "Pacing",
    "RateLimited",
    "Refused",
    "Transient",
    "classify_http",
    "header_count",
    "parse_retry_after",
]
