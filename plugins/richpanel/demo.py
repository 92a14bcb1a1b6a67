"""Richpanel's part of ``opcore demo`` (``opcore_hooks.demo``): its sandbox, a connected store
mirroring its claims' messages as notes, and what the sandbox received, read back for the verdict.

The sandbox enforces a short quota window, answers some requests 492 with ``Retry-After`` in
either form, and adds latency, so the burst of claims meets the quota and its rate limits.
"""

from __future__ import annotations

import html
import os
import re
import secrets
import uuid
from typing import Any

import httpx

from opcore_hooks.standins import DemoHelpdesk, Outcome, Plan, SeenNote

from .client import mask_key
from .sandbox import SandboxConfig, SandboxServer, run_in_thread

#: A write as the verdict names it: any ticket's id as ``{id}`` ("PUT /v1/tickets/{id}/snooze").
_TICKET_ID = re.compile(r"^/v1/tickets/[^/]+")


def _ticket_claim(ticket: dict[str, Any], claims: set[str]) -> str | None:
    text = " ".join(c.get("body") or "" for c in ticket.get("comments") or [])
    return next((c for c in claims if f"/claims/view/{c}<" in text or f"/claims/view/{c}\"" in text), None)


def _as_read(body: str | None) -> str:
    """An HTML note as the agent reads it: line breaks kept, tags dropped, entities unescaped (a
    message's own markup shows only if the note escaped it)."""
    return html.unescape(re.sub(r"<[^>]*>", "", re.sub(r"<br\s*/?>", "\n", body or "")))


class RichpanelDemo(DemoHelpdesk):
    plugin, title, finished_label = "richpanel", "Richpanel", "snoozed"
    allowed_writes = frozenset({"POST /v1/tickets", "PUT /v1/tickets/{id}/snooze", "PUT /v1/tickets/{id}"})

    def __init__(self) -> None:
        self.api_key = "rp_demo_" + secrets.token_urlsafe(16)
        self.team_id = str(uuid.uuid4())
        self.sandbox: SandboxServer | None = None

    def start(self, quota: int, window: float) -> None:
        self.sandbox = run_in_thread(SandboxConfig(quota=quota, window=window, latency_ms=(5, 40),
                                                   rate_limit_rate=0.04, limit_status=492, retry_after_form="mixed",
                                                   seed=7))
        self.sandbox.state.add_account(self.api_key, teams=[{"id": self.team_id, "name": "Claims"},
                                                            {"id": str(uuid.uuid4()), "name": "Support"}])
        os.environ.update(OPCORE_RICHPANEL_API_URL=self.sandbox.url, OPCORE_RICHPANEL_QUOTA=str(quota),
                          OPCORE_RICHPANEL_WINDOW_SECONDS=str(window))

    def connect(self, http: httpx.Client, admin: dict[str, str], store_id: str) -> None:
        http.put(f"/internal/integrations/richpanel/stores/{store_id}", headers=admin, json={
            "api_key": self.api_key, "default_team_id": self.team_id, "default_channel": "email", "enabled": True,
            "mirror_messages": True,
        }).raise_for_status()

    def outcome(self, plan: Plan) -> Outcome:
        assert self.sandbox is not None
        claims = set(plan.claims)
        [account] = [a for a in self.sandbox.state.view_tickets()["accounts"] if a["account"] == mask_key(self.api_key)]
        found: dict[str, list[str]] = {}
        finished = set()
        notes: dict[str, list[SeenNote]] = {}
        for ticket in account["tickets"]:
            claim = _ticket_claim(ticket, claims) or "?"
            found.setdefault(claim, []).append(ticket["id"])
            if ticket.get("snoozed_till") == "0":
                finished.add(claim)
            if ticket["notes"]:
                notes.setdefault(claim, []).extend(SeenNote(_as_read(n["body"]), n["public"]) for n in ticket["notes"])
        requests = self.sandbox.state.view_requests()["requests"]
        writes = {f"{r['method']} {_TICKET_ID.sub('/v1/tickets/{id}', r['path'])}" for r in requests if r["method"] != "GET"}
        return Outcome(found, finished, writes, sum(1 for r in requests if r["status"] in (429, 492)), notes,
                       account["public_comments_after_creation"], account["writes_to_unknown_tickets"])

    def tickets_url(self) -> str | None:
        return None if self.sandbox is None else f"{self.sandbox.url}/_sandbox/tickets"

    def stop(self) -> None:
        if self.sandbox is not None:
            self.sandbox.stop()
