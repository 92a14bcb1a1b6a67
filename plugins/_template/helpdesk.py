"""The helpdesk as the delivery engine sees it: three requests, what its errors mean, its pacing.

The template's helpdesk is a made-up REST API shaped like most real ones; replace each request
with yours. Everything that must hold whatever the helpdesk (one ticket per claim however often
Dramatiq delivers, the finish never before its ticket, pacing shared by every worker, parking,
dead letters) is the engine's: nothing here needs a lock, a retry or a counter.

    POST /api/tickets            {"ticket": {...}} with an Idempotency-Key -> 201 {"id": ...}
    GET  /api/tickets?external_id=<claim id>     -> {"tickets": [{"id": ...}]}
    PUT  /api/tickets/<id>       {"ticket": {"status": "pending"}}
    POST /api/tickets/<id>/notes {"note": {"body": ..., "public": false}}   (the note mirror)
    GET  /api/tickets/<id>/notes -> {"notes": [{"body": ...}]}
    GET  /api/account            -> 200 while the token works (the settings check)
    Every answer: X-RateLimit-Limit, X-RateLimit-Remaining; over quota: 429 with Retry-After.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from opcore_hooks import Call, ClaimCreated, Helpdesk, Host, Note, Pacing, ThreadTransport, header_count, note_text

from .stores import StoreSettings, load, mark_invalid, settings_key, store_ids


class TemplateDesk(Helpdesk[StoreSettings]):
    title = "the template helpdesk"

    def __init__(self, host: Host, name: str) -> None:
        super().__init__(host)
        self.name = name
        self.settings: Any = host.plugin_settings(name)
        #: Every request goes through this client. The host's ThreadTransport keeps a connection per
        #: worker thread (httpx's own pool is shared by all of them and costs a worker far more CPU);
        #: tests put a stand-in in its place (``httpx.Client(transport=httpx.MockTransport(...))``).
        self.http = httpx.Client(timeout=self.request_timeout, transport=ThreadTransport())

    # -- pacing and the store's settings ---------------------------------------------------------
    @property
    def pacing(self) -> Pacing:
        return Pacing(quota=self.settings.quota, window=self.settings.window_seconds)

    def settings_key(self, store_id: str) -> str:
        return settings_key(self.host, self.name, store_id)

    def store_ids(self) -> list[str]:  # for the host's metrics: credential health, parked work
        return store_ids(self.host, self.name)

    def load_store(self, store_id: str, fields: dict[str, str]) -> StoreSettings:
        return load(self.host, self.name, store_id, fields)

    def usable(self, store: StoreSettings) -> bool:
        return store.enabled and store.api_token is not None and store.credentials != "invalid"

    def pacing_scope(self, store: StoreSettings) -> str:
        """The quota is per API token here; an account-wide quota would return the account."""
        assert store.api_token is not None
        return store.api_token.get_secret_value()

    def credentials_rejected(self, store: StoreSettings, reason: str) -> None:
        mark_invalid(self.host, self.name, store.store_id, reason, token=self.pacing_scope(store))

    # -- the requests --------------------------------------------------------------------------
    def create_ticket(self, call: Call[StoreSettings], claim: ClaimCreated) -> str:
        # The same key and body on every retry: the helpdesk answers a repeat with the first ticket.
        body = {"ticket": {
            "external_id": claim.claim_id,
            "subject": f"{claim.claim_type.value.title()} claim {claim.claim_number or claim.claim_id}",
            "requester": {"email": claim.customer.email},
            "comment": {"body": f"Claim: {self.host.claim_url(claim.claim_id)}", "public": False},
        }}
        answer = self.send(call, "POST", "/api/tickets", json=body,
                           headers={"Idempotency-Key": f"opcore-{claim.store_id}-{claim.claim_id}"})
        return str(answer["id"])

    def find_ticket(self, call: Call[StoreSettings], claim: ClaimCreated) -> str | None:
        found = self.send(call, "GET", "/api/tickets", params={"external_id": claim.claim_id})
        return next((str(t["id"]) for t in found.get("tickets", [])), None)

    def finish_ticket(self, call: Call[StoreSettings], ticket_id: str) -> None:
        self.send(call, "PUT", f"/api/tickets/{quote(ticket_id, safe='')}", json={"ticket": {"status": "pending"}})

    # -- the note mirror (optional: leave both out and the mirror is never offered) -------------
    def add_note(self, call: Call[StoreSettings], ticket_id: str, note: Note) -> None:
        # Private, never a reply: the customer must not be emailed. note_text escapes nothing
        # because this API shows the body as text; use note_html where the helpdesk renders HTML.
        self.send(call, "POST", f"/api/tickets/{quote(ticket_id, safe='')}/notes",
                  json={"note": {"body": note_text(note), "public": False}})

    def find_note(self, call: Call[StoreSettings], ticket_id: str, note: Note) -> bool:
        found = self.send(call, "GET", f"/api/tickets/{quote(ticket_id, safe='')}/notes")
        return any(note.ref in n.get("body", "") for n in found.get("notes", []))

    def check(self, call: Call[Any]) -> None:
        """Whether the token works (the settings check): raises CredentialsRejected when not."""
        self.send(call, "GET", "/api/account")

    def send(self, call: Call[Any], method: str, path: str, **options: Any) -> dict[str, Any]:
        """One request with the call's token; errors are left for ``classify`` (httpx's, by default)."""
        headers = {"Authorization": f"Bearer {call.scope}", **options.pop("headers", {})}
        response = self.http.request(method, self.settings.api_url.rstrip("/") + path, headers=headers, **options)
        if response.status_code != 429:  # a 429's remaining 0 says the window is spent, not who spent it
            call.observe(header_count(response.headers, "x-ratelimit-limit"),
                         header_count(response.headers, "x-ratelimit-remaining"))
        response.raise_for_status()
        return response.json() if response.content else {}

