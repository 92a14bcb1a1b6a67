"""What a helpdesk plugin tells the delivery engine: its API's specifics, and nothing else.

A plugin subclasses :class:`Helpdesk` and returns an instance from its ``register_helpdesk``
hook. The engine (``engine.py``) owns everything that must hold whatever the helpdesk:
one ticket per claim under at-least-once delivery, the finishing call never before its ticket,
pacing per credential shared by every worker, parking while credentials are rejected, dead
letters with reasons, the per-claim record and its counters. The subclass supplies a few
methods in the manner of Singer's ``RESTStream`` or Airbyte's ``HttpStream``:

- reading a store's settings (``settings_key``, ``load_store``, ``usable``, ``pacing_scope``);
- the requests (``create_ticket``, ``find_ticket``, ``finish_ticket``; for the note mirror,
  ``add_note`` and ``find_note``);
- what its errors mean (``classify``): rate limited for N seconds, transient, credentials
  rejected, or refused for good;
- its pacing (``pacing``): how many requests per window, per what scope.
"""

from __future__ import annotations

import logging
import math
import re
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Callable, ClassVar, Generic, Iterable, Mapping, TypeVar

import httpx

if TYPE_CHECKING:
    from ..events import ClaimCreated
    from ..host import Host

S = TypeVar("S")
log = logging.getLogger("opcore.delivery")

#: Claim states whose ticket gets the helpdesk's finishing call (snooze, pending, ...).
FINISH_STATES = frozenset({"APPROVED", "RESOLVED", "RESOLVED_BY_BRAND"})


# -- what a failed request means -----------------------------------------------------------------

class HelpdeskError(Exception):
    """A failed request, as the engine acts on it. ``classify`` turns a client's errors into these.

    Messages reach logs and dead letters: they must never hold a credential.
    """


class RateLimited(HelpdeskError):
    """The helpdesk refused for quota: nothing was done; no request in this scope for ``retry_after`` s."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Transient(HelpdeskError):
    """A 5xx, a timeout, a lost connection: the request may or may not have acted. Retried with back-off."""


class CredentialsRejected(HelpdeskError):
    """The store's credentials no longer work: its work is parked until valid ones are saved."""


class Refused(HelpdeskError):
    """The helpdesk refused this request for good (a 400, a 404): a dead letter, with this reason."""


#: What a helpdesk may say in a numeric header: ASCII digits (``str.isdigit`` takes "²" and
#: "١٢", which ``int`` then refuses), within bounds. A limit past a million requests, or a wait
#: past a day, is no helpdesk's answer but junk, and is ignored like any other.
_DIGITS = re.compile(r"[0-9]{1,12}")
_SECONDS = re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,6})?")
MAX_HEADER_COUNT = 1_000_000
MAX_RETRY_AFTER = 86_400.0
_junk_seen: set[str] = set()


def _junk(name: str, value: str) -> None:
    """Log an unreadable header once per name and process: a helpdesk that sends junk sends it
    on every answer, and one line says as much as a million."""
    if name not in _junk_seen:
        _junk_seen.add(name)
        log.warning("ignored a %s header that is not a plain number in range: %r (logged once)", name,
                    value[:40])


def header_count(headers: Mapping[str, str], name: str) -> int | None:
    """A count a helpdesk sends in a header (``X-RateLimit-Limit``, ``-Remaining``), or None when
    it is absent or not ASCII digits within ``MAX_HEADER_COUNT``."""
    value = headers.get(name)
    if value is None:
        return None
    text = value.strip()
    if _DIGITS.fullmatch(text) and int(text) <= MAX_HEADER_COUNT:
        return int(text)
    _junk(name, value)
    return None


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After given as delta-seconds or an HTTP date (RFC 9110).

    Returns None when the header is absent or unreadable (so the caller can pick its own
    default): delta-seconds in ASCII digits (a fraction is tolerated), or a date; at most a day.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    if _SECONDS.fullmatch(text):
        seconds = float(text)
    else:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            when = None
        if when is None:
            _junk("Retry-After", value)
            return None
        if when.tzinfo is None:  # HTTP dates are GMT by definition
            when = when.replace(tzinfo=timezone.utc)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds) or seconds > MAX_RETRY_AFTER:
        _junk("Retry-After", value)
        return None
    return max(0.0, seconds)


def classify_http(exc: Exception) -> HelpdeskError | None:
    """What plain httpx errors mean (``response.raise_for_status()`` and transport failures).

    429 is a rate limit, 401 rejected credentials, another 4xx (403 included: a permission on
    one resource, not the credentials) a refusal, a 5xx or any transport failure transient.
    Anything else is not a helpdesk answer: None. The messages name the method and status only:
    a path or an answer's body may carry a customer's email or echo a credential.
    """
    if isinstance(exc, HelpdeskError):
        return exc
    if isinstance(exc, httpx.HTTPStatusError):
        response, status = exc.response, exc.response.status_code
        said = f"{exc.request.method} answered {status}"
        if status == 429:
            wait = parse_retry_after(response.headers.get("retry-after"))
            return RateLimited(said, 1.0 if wait is None else wait)
        if status == 401:
            return CredentialsRejected(said)
        if 400 <= status < 500:
            return Refused(said)
        return Transient(said)
    if isinstance(exc, (httpx.InvalidURL, httpx.UnsupportedProtocol, httpx.LocalProtocolError)):
        # Nothing was sent, and sending again cannot help: a setting holds what no URL or header may.
        return Refused(f"{type(exc).__name__}: the request could not be sent as built")
    if isinstance(exc, httpx.TransportError):
        return Transient(f"{type(exc).__name__}: no answer")
    return None


# -- pacing and one request's context ------------------------------------------------------------

@dataclass(frozen=True)
class Pacing:
    """How fast one scope (an API key, an account) may be called.

    A sliding window: at most ``quota`` requests in any ``window`` seconds, shared by every
    worker through Redis. It also serves a leaky bucket (Gorgias: 40 per 20 s, leaking 2 per
    second) conservatively: any sequence with at most ``capacity`` requests per
    ``capacity / leak`` seconds never overflows the bucket. What the server reports
    (``Call.observe``) tightens it: a lower advertised limit, and requests other apps spent.
    ``follow_server_limit`` also lets an advertised limit *raise* the quota (Zendesk's plan
    decides it, and the configured quota is only where a new account starts).
    """

    quota: int
    window: float
    follow_server_limit: bool = False


@dataclass
class Call(Generic[S]):
    """One request's context, handed to the request methods of a Helpdesk.

    ``store`` is the store's settings as ``load_store`` made them (None for a request made
    outside delivery, such as a settings check). ``observe(limit, remaining)`` passes on what
    the helpdesk said of its quota, so every worker's pacing follows it: call it with the
    headers of every answer except a rate limit's (its Retry-After is what counts, and its
    remaining count of 0 would read as other apps spending the whole window).
    """

    store: S = field(repr=False)
    scope: str = field(repr=False)  # may be an API key
    observe: Callable[[int | None, int | None], None] = field(repr=False)


@dataclass(frozen=True)
class Note:
    """One message of a claim's Order Protection conversation, to be written as a private note.

    ``ref`` is stable for the message (the same on every retry and worker) and safe in any text
    (``opcore-note-`` and hex): the rendered note carries it, so ``find_note`` can tell whether
    a note whose answer was lost reached the ticket. Every other text field is the sender's,
    untrusted: ``summary.note_html`` and ``summary.note_text`` render it escaped.
    """

    store_id: str
    claim_id: str
    ref: str
    message: str = field(repr=False)
    claim_url: str
    sender_type: str | None = None
    author_name: str | None = field(default=None, repr=False)
    created_at: datetime | None = None


# -- the adapter ---------------------------------------------------------------------------------

class Helpdesk(ABC, Generic[S]):
    """Subclass this for a helpdesk; every method documents what the engine expects of it.

    The methods every helpdesk must have are abstract: a subclass that lacks one cannot be
    built, so the plugin fails when the host loads it (``register_helpdesk``), not in a worker
    on the first claim. The note mirror's ``add_note`` is optional (``writes_notes``).
    """

    #: The helpdesk's name as people read it, in logs and dead-letter reasons.
    title: ClassVar[str] = "the helpdesk"
    #: Claim states whose ticket gets ``finish_ticket``, and what that call is called (dead letters say it).
    finish_states: ClassVar[frozenset[str]] = FINISH_STATES
    finish_name: ClassVar[str] = "finishing call"

    def __init__(self, host: Host) -> None:
        self.host = host

    # -- settings ----------------------------------------------------------------------------
    @property
    @abstractmethod
    def pacing(self) -> Pacing:
        """Requests per window per ``pacing_scope``."""
        raise NotImplementedError

    @property
    def request_timeout(self) -> float:
        """Seconds before one request counts as lost; bounds how long a claim's lock is held."""
        return 10.0

    @abstractmethod
    def settings_key(self, store_id: str) -> str:
        """The Redis hash holding the store's settings for this helpdesk.

        The engine caches each store's settings per process and checks, in the same Redis step
        that takes a claim's turn, that the hash is unchanged: a new key is used at once.
        """
        raise NotImplementedError

    def store_ids(self) -> Iterable[str]:
        """Every store that configured this helpdesk: the host's metrics report their credential
        health and parked work. The default, none, leaves those figures empty."""
        return ()

    @abstractmethod
    def load_store(self, store_id: str, fields: dict[str, str]) -> S:
        """The store's settings from the hash's fields (secrets decrypted); fields is never empty."""
        raise NotImplementedError

    def enabled(self, store: S) -> bool:
        """Whether the store chose this helpdesk. A disabled store's new claims are skipped."""
        return bool(store.enabled)

    def usable(self, store: S) -> bool:
        """Whether requests may be made: enabled, with credentials not known to be rejected.
        An enabled store that is not usable has its work parked."""
        return self.enabled(store) and getattr(store, "credentials", "unchecked") != "invalid"

    @abstractmethod
    def pacing_scope(self, store: S) -> str:
        """What the helpdesk counts requests against: an API key, an account. Never stored as is
        (a fingerprint names it in Redis)."""
        raise NotImplementedError

    @abstractmethod
    def credentials_rejected(self, store: S, reason: str) -> None:
        """Record in the store's health that its credentials were refused (a 401), so that
        ``usable`` says False until valid ones are saved: the engine parks the work meanwhile.
        Record it only if ``store``'s credentials are still the stored ones (an admin may have
        saved new ones while this request was out)."""
        raise NotImplementedError

    # -- the requests ------------------------------------------------------------------------
    @abstractmethod
    def create_ticket(self, call: Call[S], claim: ClaimCreated) -> str:
        """Open the claim's ticket; return its id. Called at most once per claim unless an
        earlier answer was lost, in which case ``find_ticket`` is asked first."""
        raise NotImplementedError

    @abstractmethod
    def find_ticket(self, call: Call[S], claim: ClaimCreated) -> str | None:
        """The id of the ticket an earlier create opened for this claim, or None.

        Asked only when a create may have acted unrecorded (a lost answer, a dead worker, a 5xx),
        before creating again. A helpdesk with an idempotency key may also send the create
        again with the same key, and return None here.
        """
        raise NotImplementedError

    @abstractmethod
    def finish_ticket(self, call: Call[S], ticket_id: str) -> None:
        """Mark the ticket of a finished claim (snooze, pending). Must be safe to repeat."""
        raise NotImplementedError

    # -- the note mirror (optional) --------------------------------------------------------------
    @property
    def writes_notes(self) -> bool:
        """Whether this helpdesk can mirror messages as private notes (it overrides ``add_note``)."""
        return type(self).add_note is not Helpdesk.add_note

    def mirrors_messages(self, store: S) -> bool:
        """Whether the store turned the note mirror on (its ``mirror_messages`` setting)."""
        return bool(getattr(store, "mirror_messages", False))

    def add_note(self, call: Call[S], ticket_id: str, note: Note) -> None:
        """Write ``note`` on the ticket as a *private* note: never public, never a reply, so the
        customer is sent nothing. Render it with ``summary.note_html``/``note_text`` (they carry
        ``note.ref``). Called once per message unless an answer was lost; then ``find_note`` first."""
        raise NotImplementedError

    def find_note(self, call: Call[S], ticket_id: str, note: Note) -> bool:
        """Whether a note carrying ``note.ref`` is already on the ticket; asked only when an
        earlier ``add_note`` may have acted unrecorded. The default, False, writes it again: a
        helpdesk that cannot read its notes back risks a duplicate note rather than a lost one."""
        return False

    def classify(self, exc: Exception) -> HelpdeskError | None:
        """What a request's exception means; None re-raises it (a bug: Dramatiq retries the message).

        The default understands the engine's own errors and plain httpx errors.
        """
        return classify_http(exc)
