"""Zendesk as the delivery engine sees it: its requests, its errors and its account-wide pacing.

The engine (``opcore_hooks.delivery``) keeps one ticket per claim, the finish after its ticket,
pacing shared by every worker, parking and dead letters. What is Zendesk's own:

- a ticket is ``POST /api/v2/tickets`` with an ``Idempotency-Key`` stable for the claim, so a
  retry after a lost answer gets the first ticket back; the claim id is its ``external_id``,
  which finds it again once the key's two hours have passed;
- a finished claim's ticket goes ``pending`` (never ``solved``: that closes by itself and may
  send the customer a survey);
- a mirrored message is a private comment (``public: false``) added by ``PUT /api/v2/tickets/{id}``,
  found again by its ref among the ticket's comments, newest first;
- the budget is per account (subdomain), sized by the plan and shared with the account's other
  apps: pacing starts from the configured quota and follows ``X-Rate-Limit`` and
  ``X-Rate-Limit-Remaining`` from the first answer on.
"""

from __future__ import annotations

import json
import re
import weakref
from typing import Any

import httpx

from opcore_hooks import (
    Call,
    ClaimCreated,
    Helpdesk,
    HelpdeskError,
    Host,
    Note,
    Pacing,
    RateLimited,
    Refused,
    ThreadTransport,
    Transient,
    classify_http,
    note_text,
)

from . import stores, tickets
from .client import UnreadableAnswer, ZendeskClient
from .settings import ZendeskSettings
from .stores import StoreConfig

#: Zendesk's per-object limits may answer 429 without Retry-After.
DEFAULT_RETRY_AFTER = 10.0
_ERROR_CODE = re.compile(r"[A-Za-z]{1,40}")


class Zendesk(Helpdesk[StoreConfig]):
    title = "Zendesk"
    finish_name = "pending status"

    def __init__(self, host: Host) -> None:
        super().__init__(host)
        found = host.plugin_settings(stores.NAME)
        self.settings = found if isinstance(found, ZendeskSettings) else ZendeskSettings()
        #: One client per host, a connection per thread (proxies from the environment through httpx's
        #: own); tests put a stand-in in its place.
        self.http = httpx.Client(timeout=self.settings.timeout_seconds, transport=ThreadTransport())
        weakref.finalize(self, self.http.close)

    @property
    def pacing(self) -> Pacing:
        return Pacing(quota=self.settings.quota, window=self.settings.window_seconds, follow_server_limit=True)

    @property
    def request_timeout(self) -> float:
        return self.settings.timeout_seconds

    # -- the store -------------------------------------------------------------------------
    def settings_key(self, store_id: str) -> str:
        return stores.settings_key(self.host, store_id)

    def store_ids(self) -> list[str]:
        return stores.store_ids(self.host)

    def load_store(self, store_id: str, fields: dict[str, str]) -> StoreConfig:
        return stores.from_fields(self.host, store_id, fields)

    def usable(self, store: StoreConfig) -> bool:
        return (store.enabled and store.api_token is not None and bool(store.subdomain and store.email)
                and store.credentials != "invalid")

    def pacing_scope(self, store: StoreConfig) -> str:
        """The account: its budget is shared by every store (and app) that uses it."""
        assert store.subdomain is not None
        return store.subdomain

    def credentials_rejected(self, store: StoreConfig, reason: str) -> None:
        assert store.api_token is not None
        stores.mark_invalid(self.host, store.store_id, reason, api_token=store.api_token.get_secret_value())

    # -- the requests ----------------------------------------------------------------------
    def create_ticket(self, call: Call[StoreConfig], claim: ClaimCreated) -> str:
        body = tickets.build_ticket(claim, self.host.claim_url(claim.claim_id), group_id=call.store.default_group_id)
        key = tickets.idempotency_key(claim.store_id, claim.claim_id)
        return self._send(call, lambda c: c.create_ticket(body, key))

    def find_ticket(self, call: Call[StoreConfig], claim: ClaimCreated) -> str | None:
        found = self._send(call, lambda c: c.find_by_external_id(claim.claim_id))
        return next((str(t["id"]) for t in found if str(t.get("external_id")) == claim.claim_id), None)

    def finish_ticket(self, call: Call[StoreConfig], ticket_id: str) -> None:
        self._send(call, lambda c: c.update_ticket(ticket_id, {"status": "pending"}))

    # -- the note mirror -------------------------------------------------------------------
    def add_note(self, call: Call[StoreConfig], ticket_id: str, note: Note) -> None:
        """``PUT /api/v2/tickets/{id}`` with a private comment; plain text, as Zendesk shows a ``body``."""
        body = note_text(note)
        self._send(call, lambda c: c.add_note(ticket_id, body))

    def find_note(self, call: Call[StoreConfig], ticket_id: str, note: Note) -> bool:
        """List Comments, newest first, for the note's ref: at most ``client.MAX_COMMENT_PAGES`` pages of 100,
        each read only if the ones before lack it. A note behind more than that many newer comments
        is not seen: it is written again (a duplicate note, never a lost one)."""
        return self._send(call, lambda c: tickets.has_note(c.comments(ticket_id), note.ref))

    def client(self, call: Call[Any], store: StoreConfig) -> ZendeskClient:
        """A client with ``store``'s credentials (a settings check passes the ones being saved)."""
        assert store.subdomain and store.email and store.api_token is not None
        return ZendeskClient(self.settings.base_url(store.subdomain), store.email, store.api_token.get_secret_value(),
                             http=self.http, observe=lambda seen: call.observe(seen.limit, seen.remaining))

    def _send(self, call: Call[StoreConfig], request: Any) -> Any:
        return request(self.client(call, call.store))

    def classify(self, exc: Exception) -> HelpdeskError | None:
        """httpx's meaning, plus: a 429 without Retry-After waits 10 s; Zendesk's error code (a
        word such as ``RecordInvalid``) joins a refusal's reason; an answer opcore cannot read is
        transient (the create may have acted: the next turn looks it up); and a 400
        ``IdempotentRequestError`` means a ticket was made under this claim's key with another
        body (the store's default group changed in between), so it is looked up again, not dropped."""
        if isinstance(exc, httpx.HTTPStatusError):
            response = exc.response
            if response.status_code == 429 and "retry-after" not in response.headers:
                return RateLimited("429 without Retry-After", DEFAULT_RETRY_AFTER)
            code = _error_code(response)
            if response.status_code == 400 and code == "IdempotentRequestError":
                return Transient("a ticket exists under this claim's idempotency key; looking it up")
            failure = classify_http(exc)
            return Refused(f"{failure} ({code})") if isinstance(failure, Refused) and code else failure
        if isinstance(exc, (UnreadableAnswer, json.JSONDecodeError, httpx.DecodingError)):
            return Transient(f"an answer opcore cannot read ({type(exc).__name__})")
        return classify_http(exc)


def _error_code(response: httpx.Response) -> str | None:
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        return None
    return error if isinstance(error, str) and _ERROR_CODE.fullmatch(error) else None
