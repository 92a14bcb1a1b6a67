"""Zendesk's part of ``opcore demo`` (``opcore_hooks.demo``): its sandbox, a connected store
mirroring its claims' messages as notes, and what the sandbox received, read back for the verdict
(private first comments and private notes included).

The demo account's budget is the stand-in quota, half of it spent by the merchant's other apps,
so pacing has to follow what Zendesk's headers say; a few answers are dropped after the ticket
was made, so a lost answer is found again by ``external_id``.
"""

from __future__ import annotations

import os
import secrets

import httpx

from opcore_hooks.standins import DemoHelpdesk, Outcome, Plan, SeenNote

from .sandbox import SandboxConfig, SandboxServer, run_in_thread

SUBDOMAIN, EMAIL = "demo", "agent@demo.test"


class ZendeskDemo(DemoHelpdesk):
    plugin, title, finished_label = "zendesk", "Zendesk", "pending"
    allowed_writes = frozenset({"POST tickets", "PUT tickets/{id}"})

    def __init__(self) -> None:
        self.token = "zd_demo_" + secrets.token_urlsafe(16)
        self.sandbox: SandboxServer | None = None

    def start(self, quota: int, window: float) -> None:
        self.sandbox = run_in_thread(SandboxConfig(window=window, other_apps=0.5, drop_rate=0.03, seed=7))
        self.sandbox.state.add_account(SUBDOMAIN, EMAIL, self.token, plan=2 * quota,
                                       groups=[{"id": 360001, "name": "Claims"}])
        os.environ.update(OPCORE_ZENDESK_API_URL=self.sandbox.url + "/{subdomain}",
                          OPCORE_ZENDESK_WINDOW_SECONDS=str(window))

    def connect(self, http: httpx.Client, admin: dict[str, str], store_id: str) -> None:
        http.put(f"/internal/integrations/zendesk/stores/{store_id}", headers=admin, json={
            "subdomain": SUBDOMAIN, "email": EMAIL, "api_token": self.token, "default_group_id": 360001,
            "mirror_messages": True,
        }).raise_for_status()

    def outcome(self, plan: Plan) -> Outcome:
        assert self.sandbox is not None
        claims = set(plan.claims)
        [account] = [a for a in self.sandbox.state.view_tickets()["accounts"] if a["subdomain"] == SUBDOMAIN]
        found: dict[str, list[str]] = {}
        finished = set()
        notes: dict[str, list[SeenNote]] = {}
        public = []
        for ticket in account["tickets"]:
            claim = ticket["external_id"] if ticket["external_id"] in claims else "?"
            found.setdefault(claim, []).append(str(ticket["id"]))
            if ticket["status"] == "pending":
                finished.add(claim)
            public += [claim for comment in ticket["comments"][:1] if comment["public"]]  # the notes are counted
            if ticket["notes"]:  # plain text, shown as written
                notes.setdefault(claim, []).extend(SeenNote(n["body"], n["public"]) for n in ticket["notes"])
        requests = self.sandbox.state.view_requests()
        writes = {f"{r['method']} {'tickets/{id}' if r['method'] == 'PUT' else 'tickets'}"
                  for r in requests if r["method"] != "GET"}
        if public:  # a public first comment would have emailed the customer
            writes.add(f"a public comment on {sorted(set(public))}")
        return Outcome(found, finished, writes, sum(1 for r in requests if r.get("status") == 429), notes,
                       account["public_comments_after_creation"], account["writes_to_unknown_tickets"])

    def tickets_url(self) -> str | None:
        return None if self.sandbox is None else f"{self.sandbox.url}/_sandbox/tickets"

    def stop(self) -> None:
        if self.sandbox is not None:
            self.sandbox.stop()
