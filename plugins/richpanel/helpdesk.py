"""Richpanel as the delivery engine sees it: its requests, its errors and its pacing.

Everything that holds whatever the helpdesk (one ticket per claim, ordering, pacing shared by
every worker, parking, dead letters) is the host's (``opcore_hooks.delivery``); this is what is
Richpanel's own: a ticket is ``POST /v1/tickets``, a lost answer is found among the customer's
tickets by the claim's link, a finished claim is snoozed, a mirrored message is an operator's
private comment (found again by its ref among the ticket's comments), 429 and 492 are rate
limits, and pacing is per API key.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from opcore_hooks import (
    Call,
    ClaimCreated,
    CredentialsRejected,
    Helpdesk,
    HelpdeskError,
    Host,
    Note,
    Pacing,
    RateLimited,
    Refused,
    Transient,
    note_html,
)

from . import session, stores, tickets
from .client import AuthError, ClientError, RichpanelClient, RichpanelError
from .client import RateLimited as RichpanelRateLimited
from .store_config import StoreConfig

T = TypeVar("T")


class Richpanel(Helpdesk[StoreConfig]):
    title = "Richpanel"
    finish_name = "snooze"

    def __init__(self, host: Host) -> None:
        super().__init__(host)
        self.settings = session.settings_of(host)

    @property
    def pacing(self) -> Pacing:
        return Pacing(quota=self.settings.quota, window=self.settings.window_seconds)

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
        return store.enabled and store.api_key is not None and store.credentials != "invalid"

    def pacing_scope(self, store: StoreConfig) -> str:
        """Richpanel counts requests per API key; the key is also what ``client`` sends."""
        assert store.api_key is not None
        return store.api_key.get_secret_value()

    def credentials_rejected(self, store: StoreConfig, reason: str) -> None:
        stores.mark_invalid(self.host, store.store_id, reason, api_key=self.pacing_scope(store))

    # -- the requests ----------------------------------------------------------------------
    def create_ticket(self, call: Call[StoreConfig], claim: ClaimCreated) -> str:
        store = call.store
        body = tickets.build_ticket(claim, self.host.claim_url(claim.claim_id), channel=store.default_channel,
                                    team_id=store.default_team_id)
        return self.client(call, lambda c: c.create_ticket(body))

    def find_ticket(self, call: Call[StoreConfig], claim: ClaimCreated) -> str | None:
        """Richpanel has no idempotency key: the customer's tickets are searched for the claim's link."""
        found = self.client(call, lambda c: c.find_tickets_by_email(claim.customer.email))
        url = self.host.claim_url(claim.claim_id)
        return next((str(t.get("id")) for t in found if tickets.is_ticket_for(t, url)), None)

    def finish_ticket(self, call: Call[StoreConfig], ticket_id: str) -> None:
        self.client(call, lambda c: c.snooze_ticket(ticket_id))

    # -- the note mirror -------------------------------------------------------------------
    def add_note(self, call: Call[StoreConfig], ticket_id: str, note: Note) -> None:
        """``PUT /v1/tickets/{id}`` with an operator's private comment (HTML: Richpanel renders it)."""
        body = note_html(note)
        self.client(call, lambda c: c.add_note(ticket_id, body))

    def find_note(self, call: Call[StoreConfig], ticket_id: str, note: Note) -> bool:
        """The ticket is read back (``GET /v1/tickets/{id}``, every comment) for the note's ref."""
        return tickets.has_note(self.client(call, lambda c: c.get_ticket(ticket_id)), note.ref)

    def client(self, call: Call[Any], request: Callable[[RichpanelClient], T]) -> T:
        """Send ``request`` with the call's key; Richpanel's rate-limit headers reach the pacing,
        except a 429/492's (its Retry-After blocks the key; its remaining count of 0 says the
        window is spent, not who spent it)."""
        client, limited = session.client_for(self.host, call.scope), False
        try:
            return request(client)
        except RichpanelRateLimited:
            limited = True
            raise
        finally:
            if client.last_rate_limit is not None and not limited:
                call.observe(client.last_rate_limit.limit, client.last_rate_limit.remaining)

    def classify(self, exc: Exception) -> HelpdeskError | None:
        """429 and 492 are rate limits, 401 a rejected key, another 4xx a refusal, the rest transient."""
        if isinstance(exc, RichpanelRateLimited):
            return RateLimited(str(exc), exc.retry_after)
        if isinstance(exc, AuthError):
            return CredentialsRejected(str(exc))
        if isinstance(exc, ClientError):
            return Refused(str(exc))
        if isinstance(exc, RichpanelError):
            return Transient(str(exc))
        return super().classify(exc)
