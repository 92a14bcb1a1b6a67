"""``opcore demo``: the whole product on one machine, checked end to end against the sandbox.

Everything is real but Richpanel: the embedded store (fakeredis) under the same Dramatiq
broker and actors as production, the web app on a socket, the settings API, the ingress.
The sandbox enforces a short quota window so the burst of claims meets it. The verdict is
read from what the sandbox received, not from opcore's own bookkeeping.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import click
import fakeredis
import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from opcore_hooks import ClaimType
from opcore_hooks.delivery import FINISH_STATES
from opcore_hooks.app import create_app
from opcore_hooks.config import Settings
from opcore_hooks.crypto import generate_master_key
from opcore_hooks.host import Host
from opcore_hooks.serving import ThreadedServer
from opcore_hooks.testing import CLAIM_CREATED

from .sandbox import SandboxConfig, run_in_thread


STORE = "demo-store"
CUSTOMERS = [("ana@example.com", "Ana", "Lima"), ("bo@example.com", "Bo", "Chen"),
             ("cleo@example.com", "Cleo", "Okafor"), ("dev@example.com", "Dev", "Patel"),
             ("eli@example.com", "Eli", "García"), ("fay@example.com", "Fay", "Müller")]
PRODUCTS = [("Wireless Mouse", "24.99"), ("USB-C Hub", "39.00"), ("Desk Lamp", "45.50"),
            ("Water Bottle", "18.00"), ("Headphones", "89.99"), ("Phone Case", "15.00")]


@dataclass
class Plan:
    """The claims the demo sends and what must be true of Richpanel afterwards."""

    events: list[dict[str, Any]] = field(default_factory=list)
    claims: list[str] = field(default_factory=list)
    finished: set[str] = field(default_factory=set)


def _claim(i: int) -> dict[str, Any]:
    email, first, last = CUSTOMERS[i % len(CUSTOMERS)]
    name, price = PRODUCTS[i % len(PRODUCTS)]
    body = dict(CLAIM_CREATED["body"])
    body.update(
        store_id=STORE, claim_id=f"demo-claim-{i:03d}", claim_number=f"OP-{2000 + i}",
        order_id=f"order-{i}", source_order_id=str(5000 + i),
        claim_type=list(ClaimType)[i % len(ClaimType)].value, claim_state="NEW",
        claim_description=f"{name} — see photos", created_at=f"2026-11-27T10:{i % 60:02d}:00Z",
        items=[{"item_id": f"i{i}", "item_name": name, "sku": f"SKU-{i:03d}", "quantity": 1}],
        customer={"email": email, "first_name": first, "last_name": last, "phone": f"+1555000{i:04d}"},
        order={"order_number": f"#{1000 + i}", "currency": "USD", "placed_at": f"2026-11-{1 + i % 25:02d}T08:00:00Z",
               "line_items": [{"item_id": f"i{i}", "item_name": name, "quantity": 1, "unit_price": price}],
               "subtotal": price, "shipping": "4.99", "tax": "1.00",
               "total": f"{float(price) + 5.99:.2f}"},
    )
    return {"id": str(uuid.uuid4()), "topic": "claim.created", "created_at": body["created_at"], "body": body}


def _change(claim_id: str, state: str) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "topic": "claim.state_changed", "created_at": "2026-11-27T11:00:00Z",
            "body": {"store_id": STORE, "claim_id": claim_id, "claim_state": state}}


def plan(count: int) -> Plan:
    """Every claim type; a third finished (approved, resolved, resolved by brand), some of them
    before their ticket exists; some events delivered twice, as Order Protection may."""
    p = Plan()
    finishing = ["APPROVED", "RESOLVED", "RESOLVED_BY_BRAND"]
    for i in range(count):
        created = _claim(i)
        claim_id = created["body"]["claim_id"]
        p.claims.append(claim_id)
        state = finishing[(i // 3) % 3] if i % 3 == 0 else None
        if state and i % 9 == 0:  # auto-approved: the approval arrives before the creation
            p.events += [_change(claim_id, state), created]
        else:
            p.events.append(created)
            if state:
                p.events.append(_change(claim_id, state))
        if state:
            p.finished.add(claim_id)
        if i % 7 == 0:
            p.events.append(created)  # a redelivery
    return p


def _ticket_claim(ticket: dict[str, Any], claims: set[str]) -> str | None:
    text = " ".join(c.get("body") or "" for c in ticket.get("comments") or [])
    return next((c for c in claims if f"/claims/view/{c}<" in text or f"/claims/view/{c}\"" in text), None)


def run(count: int = 36, quota: int = 20, window: float = 5.0, keep_serving: bool = False,
        console: Console | None = None) -> int:
    console = console or Console()
    for noisy in ("uvicorn", "uvicorn.error", "dramatiq", "opcore.store"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    started = time.monotonic()
    api_key = "rp_demo_" + secrets.token_urlsafe(16)
    team_id = str(uuid.uuid4())
    sandbox = run_in_thread(SandboxConfig(quota=quota, window=window, latency_ms=(5, 40), rate_limit_rate=0.04,
                                          limit_status=492, retry_after_form="mixed", seed=7))
    sandbox.state.add_account(api_key, teams=[{"id": team_id, "name": "Claims"}, {"id": str(uuid.uuid4()), "name": "Support"}])
    os.environ.update(OPCORE_RICHPANEL_API_URL=sandbox.url, OPCORE_RICHPANEL_QUOTA=str(quota),
                      OPCORE_RICHPANEL_WINDOW_SECONDS=str(window))
    settings = Settings(redis_url=None, webhook_secret=secrets.token_urlsafe(16),
                        admin_token=secrets.token_urlsafe(16), master_key=generate_master_key())
    host = Host(settings, redis_client=fakeredis.FakeRedis(server=fakeredis.FakeServer()))
    web = ThreadedServer(create_app(host, with_worker=True, worker_threads=8), name="opcore-demo")
    admin = {"Authorization": f"Bearer {settings.admin_token.get_secret_value()}"}
    p = plan(count)
    with httpx.Client(base_url=web.url, timeout=10) as http:
        base = f"/internal/integrations/richpanel/stores/{STORE}"
        answer = http.put(base, headers=admin, json={"api_key": api_key, "default_team_id": team_id,
                                                     "default_channel": "email", "enabled": True})
        answer.raise_for_status()
        widget = http.post(f"{base}/widget", headers=admin).json()
        console.print(f"[bold]opcore demo[/]: sandbox Richpanel at {sandbox.url} "
                      f"({quota} requests per {window:g} s), opcore at {web.url}, store {STORE} connected")
        hook = {"x-webhook-secret": settings.webhook_secret.get_secret_value()}
        with _progress(console) as bar:
            sending = bar.add_task("events sent", total=len(p.events))
            ticketing = bar.add_task("tickets", total=len(p.claims))
            snoozing = bar.add_task("snoozes", total=len(p.finished))
            for event in p.events:
                http.post("/webhooks/orderprotection", json=event, headers=hook).raise_for_status()
                bar.advance(sending)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                tickets = sandbox.state.tickets(api_key)
                snoozed = [t for t in tickets if t.get("snoozed_till") == "0"]
                bar.update(ticketing, completed=len(tickets))
                bar.update(snoozing, completed=len(snoozed))
                if len(tickets) >= len(p.claims) and len(snoozed) >= len(p.finished):
                    time.sleep(0.5)  # anything extra (a duplicate) would show up now
                    break
                time.sleep(0.1)
        ok = _report(console, host, sandbox, api_key, p, time.monotonic() - started)
        panel = host.panel("richpanel")
        assert panel is not None
        example = panel.signed_request_example(STORE, CUSTOMERS[0][0], web.url)
        header = "; ".join(f"{k}: {v}" for k, v in example["headers"].items())
        console.print(f"\nWidget for {CUSTOMERS[0][0]} (signature valid until {example['valid_until']}):")
        console.print(f"  curl -H '{header}' '{example['url']}'", soft_wrap=True)
        console.print(f"  signing secret for this store: {widget['signing_secret'][:8]}… (from POST {base}/widget)")
        if not keep_serving:
            console.print("  (the servers stop now; `opcore demo --keep-serving` keeps them up to try it)")
        else:
            console.print("serving until Ctrl-C …")
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
    web.stop()
    sandbox.stop()
    host.close()
    return 0 if ok else 1


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description:>12}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=False)


def _report(console: Console, host: Host, sandbox: Any, api_key: str, p: Plan, elapsed: float) -> bool:
    tickets = sandbox.state.tickets(api_key)
    requests = sandbox.state.view_requests()["requests"]
    claims = set(p.claims)
    by_claim: dict[str, list[dict[str, Any]]] = {}
    for ticket in tickets:
        by_claim.setdefault(_ticket_claim(ticket, claims) or "?", []).append(ticket)
    stats = host.delivery("richpanel").stats()
    limited = sum(1 for r in requests if r["status"] in (429, 492))
    problems = []
    for claim_id in p.claims:
        found = by_claim.get(claim_id, [])
        if len(found) != 1:
            problems.append(f"{claim_id}: {len(found)} tickets")
        elif claim_id in p.finished and found[0].get("snoozed_till") != "0":
            problems.append(f"{claim_id}: finished but not snoozed")
    writes = {(r["method"], r["path"].rsplit("/", 1)[-1]) for r in requests if r["method"] != "GET"}
    if writes - {("POST", "tickets"), ("PUT", "snooze")}:
        problems.append(f"unexpected writes to Richpanel: {sorted(writes)}")
    summary = Table(title="opcore demo", show_header=True)
    for column in ("claims", "tickets", "snoozes", "rate-limit waits", "429/492 answers", "failures", "seconds"):
        summary.add_column(column, justify="right")
    summary.add_row(str(len(p.claims)), str(len(tickets)),
                    str(sum(1 for t in tickets if t.get("snoozed_till") == "0")),
                    str(stats.get("paced_waits", 0) + stats.get("rate_limit_waits", 0)), str(limited),
                    str(stats.get("dead_letters", 0) + len(problems)), f"{elapsed:.1f}")
    console.print(summary)
    listing = Table(title="claim → Richpanel ticket", show_header=True)
    for column in ("claim", "type", "ticket", "snoozed"):
        listing.add_column(column)
    types = {e["body"]["claim_id"]: e["body"]["claim_type"] for e in p.events if e["topic"] == "claim.created"}
    for claim_id in p.claims:
        found = by_claim.get(claim_id, [])
        listing.add_row(claim_id, types[claim_id], ", ".join(t["id"] for t in found) or "—",
                        "yes" if found and found[0].get("snoozed_till") == "0" else "")
    console.print(listing)
    if problems:
        console.print("[bold red]FAILED[/]: " + "; ".join(problems))
        return False
    console.print(f"[bold green]OK[/]: {len(p.claims)} claims, one ticket each; "
                  f"{len(p.finished)} finished claims snoozed ({', '.join(sorted(FINISH_STATES))}).")
    return True


def register(cli: click.Group) -> None:
    @cli.command("demo")
    @click.option("--claims", default=36, show_default=True, help="How many claims to send.")
    @click.option("--quota", default=20, show_default=True, help="Sandbox requests per window.")
    @click.option("--window", default=5.0, show_default=True, help="Sandbox quota window, seconds.")
    @click.option("--keep-serving", is_flag=True, help="Keep the app and sandbox up to try the widget URL.")
    def demo(claims: int, quota: int, window: float, keep_serving: bool) -> None:
        """Run the whole flow on this machine against a local Richpanel sandbox."""
        raise SystemExit(run(claims, quota, window, keep_serving))
