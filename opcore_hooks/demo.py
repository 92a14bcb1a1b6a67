"""``opcore demo``: the whole product on one machine, checked end to end against each helpdesk's stand-in.

Everything is real but the helpdesks: the embedded store (fakeredis) under the same Dramatiq
broker and actors as production, the web app on a socket, the settings API, the ingress. Each
plugin that offers a demo (``register_demo``: a :class:`DemoHelpdesk`) starts its local stand-in
and connects a store of its own; the host sends every store its claims, of every type, some
finished (a few before their creation arrives), some delivered twice, some with messages of
their conversation (the stores mirror them as notes), and then asks each stand-in what it
received. The run exits 0 only when every claim has exactly one ticket in its own helpdesk,
every finished claim's ticket was finished there, and every message is one private note on its
claim's ticket, in ``created_at`` order, with nothing public written to any ticket after its
creation and nothing written to a ticket that does not exist.
"""

from __future__ import annotations

import copy
import json
import logging
import secrets
import shlex
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple
from urllib.parse import quote

import click
import fakeredis
import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .config import Settings
from .crypto import generate_master_key
from .events import ClaimType
from .samples import CLAIM_CREATED, MESSAGE_CREATED

CUSTOMERS = [("ana@example.com", "Ana", "Lima"), ("bo@example.com", "Bo", "Chen"),
             ("cleo@example.com", "Cleo", "Okafor"), ("dev@example.com", "Dev", "Patel"),
             ("eli@example.com", "Eli", "García"), ("fay@example.com", "Fay", "Müller")]
PRODUCTS = [("Wireless Mouse", "24.99"), ("USB-C Hub", "39.00"), ("Desk Lamp", "45.50"),
            ("Water Bottle", "18.00"), ("Headphones", "89.99"), ("Phone Case", "15.00")]
FINISHING = ["APPROVED", "RESOLVED", "RESOLVED_BY_BRAND"]


@dataclass
class Plan:
    """One store's claims: the events to send, and what must be true of its helpdesk afterwards."""

    store_id: str
    events: list[dict[str, Any]] = field(default_factory=list)
    claims: list[str] = field(default_factory=list)
    finished: set[str] = field(default_factory=set)
    #: claim id -> the text of each of its messages, in ``created_at`` order (each is distinct)
    messages: dict[str, list[str]] = field(default_factory=dict)


class SeenNote(NamedTuple):
    """A note on a ticket after its creation, as the stand-in holds it."""

    text: str  # what the agent reads (an HTML note's tags dropped, its entities unescaped)
    public: bool  # a public comment may have emailed the customer


@dataclass
class Outcome:
    """What a helpdesk's stand-in received, as its plugin reads it back."""

    tickets: dict[str, list[str]]  # claim id -> ids of the tickets that carry it
    finished: set[str]  # claims whose ticket was finished (snoozed, pending)
    writes: set[str]  # every kind of write it received ("POST /v1/tickets", ...)
    rate_limited: int  # requests it answered with a rate limit
    notes: dict[str, list[SeenNote]]  # claim id -> the notes on its tickets, in the order written
    public_comments_after_creation: int  # the stand-in's count (``GET /_sandbox/tickets``)
    writes_to_unknown_tickets: int  # writes naming a ticket it does not hold (a note before its ticket)


class DemoHelpdesk:
    """A plugin's part of the demo; ``register_demo`` returns one (built before the host, so
    ``start`` can point the plugin's settings at its stand-in through the environment)."""

    plugin: str
    title: str
    #: The only writes the helpdesk may receive ("POST /v1/tickets", ...).
    allowed_writes: frozenset[str]
    #: What the finishing call is called in the summary ("snoozed", "pending").
    finished_label: str

    def start(self, quota: int, window: float) -> None:
        raise NotImplementedError

    def connect(self, http: httpx.Client, admin: dict[str, str], store_id: str) -> None:
        raise NotImplementedError

    def outcome(self, plan: Plan) -> Outcome:
        raise NotImplementedError

    def tickets_url(self) -> str | None:
        """Where the stand-in shows its tickets and their notes (``GET /_sandbox/tickets``), if it does."""
        return None

    def stop(self) -> None:
        raise NotImplementedError


def _claim(store_id: str, i: int) -> dict[str, Any]:
    email, first, last = CUSTOMERS[i % len(CUSTOMERS)]
    name, price = PRODUCTS[i % len(PRODUCTS)]
    body = dict(CLAIM_CREATED["body"])
    body.update(
        store_id=store_id, claim_id=f"{store_id}-claim-{i:03d}", claim_number=f"OP-{2000 + i}",
        order_id=f"order-{i}", source_order_id=str(5000 + i),
        claim_type=list(ClaimType)[i % len(ClaimType)].value, claim_state="NEW",
        claim_description=f"{name} — see photos", created_at=f"2026-11-27T10:{i % 60:02d}:00Z",
        items=[{"item_id": f"i{i}", "item_name": name, "sku": f"SKU-{i:03d}", "quantity": 1}],
        customer={"email": email, "first_name": first, "last_name": last, "phone": f"+1555000{i:04d}"},
        order={"order_number": f"#{1000 + i}", "currency": "USD", "placed_at": f"2026-11-{1 + i % 25:02d}T08:00:00Z",
               "line_items": [{"item_id": f"i{i}", "item_name": name, "quantity": 1, "unit_price": price}],
               "subtotal": price, "shipping": "4.99", "tax": "1.00", "total": f"{float(price) + 5.99:.2f}"},
    )
    return {"id": str(uuid.uuid4()), "topic": "claim.created", "created_at": body["created_at"], "body": body}


def _change(store_id: str, claim_id: str, state: str) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "topic": "claim.state_changed", "created_at": "2026-11-27T11:00:00Z",
            "body": {"store_id": store_id, "claim_id": claim_id, "claim_state": state}}


def _message(created: dict[str, Any], n: int, text: str, sender_type: str, author: str,
             minutes: int) -> dict[str, Any]:
    """The claim's ``n``th message, dated ``minutes`` after the claim."""
    claim = created["body"]
    at = (datetime.fromisoformat(claim["created_at"]) + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%SZ")
    body = dict(MESSAGE_CREATED["body"])
    body.update(store_id=claim["store_id"], claim_id=claim["claim_id"], message_id=f"{claim['claim_id']}-m{n}",
                message=text, sender_type=sender_type, author_name=author, created_at=at)
    return {"id": str(uuid.uuid4()), "topic": "message.created", "created_at": at, "body": body}


def _conversation(p: Plan, created: dict[str, Any], nth: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The ``nth`` messaged claim's two messages (the customer's, the brand's reply), as the
    events to send before and after its creation. The later-dated one is sent first, so the
    mirror has to put them back in order; the 2nd messaged claim's comes before the claim exists;
    the 1st's are each sent twice: one redelivered, the other again under a new event id."""
    claim = created["body"]
    customer, item = claim["customer"], claim["items"][0]["item_name"]
    asked = _message(created, 1, f"Hi, any news on {claim['claim_number']}? The {item} came in a crushed box "
                                 "<photo attached> & it does not work.", "customer",
                     f"{customer['first_name']} {customer['last_name']}", 5)
    answered = _message(created, 2, f"Sorry about that, {customer['first_name']}! A new {item} ships today; "
                                    "no need to send the old one back.", "brand", "Support team", 20)
    p.messages[claim["claim_id"]] = [asked["body"]["message"], answered["body"]["message"]]
    if nth == 1:
        return [answered], [asked]
    after = [answered, asked]
    if nth == 0:
        after += [asked, {**answered, "id": str(uuid.uuid4())}]
    return [], after


def plan(store_id: str, count: int) -> Plan:
    """Every claim type; a third finished (approved, resolved, resolved by brand), some of them
    before their ticket exists; some events delivered twice, as Order Protection may; every
    fourth claim with two messages (``_conversation``)."""
    p = Plan(store_id)
    for i in range(count):
        created = _claim(store_id, i)
        claim_id = created["body"]["claim_id"]
        p.claims.append(claim_id)
        state = FINISHING[(i // 3) % 3] if i % 3 == 0 else None
        sequence = [created]
        if state:
            change = _change(store_id, claim_id, state)
            # auto-approved: the approval arrives before the creation
            sequence = [change, created] if i % 9 == 0 else [created, change]
            p.finished.add(claim_id)
        if i % 4 == 0:
            before, after = _conversation(p, created, i // 4)
            sequence = before + sequence + after
        if i % 7 == 0:
            sequence.append(created)  # a redelivery
        p.events += sequence
    return p


def _interleave(plans: list[Plan]) -> list[dict[str, Any]]:
    longest = max(len(p.events) for p in plans)
    return [p.events[i] for i in range(longest) for p in plans if i < len(p.events)]


def run(parts: list[DemoHelpdesk], count: int = 36, quota: int = 20, window: float = 5.0,
        keep_serving: bool = False, console: Console | None = None) -> int:
    """Run the demo over ``parts``, ``count`` claims shared between them; 0 when all is right."""
    from .app import create_app  # the app pulls in every plugin: only once the stand-ins are up
    from .host import Host
    from .serving import ThreadedServer

    console = console or Console()
    for noisy in ("uvicorn", "uvicorn.error", "dramatiq", "opcore.store"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    started = time.monotonic()
    for part in parts:
        part.start(quota, window)
    settings = Settings(redis_url=None, webhook_secret=secrets.token_urlsafe(16),
                        admin_token=secrets.token_urlsafe(16), master_key=generate_master_key())
    host = Host(settings, redis_client=fakeredis.FakeRedis(server=fakeredis.FakeServer()))
    web = ThreadedServer(create_app(host, with_worker=True, worker_threads=8), name="opcore-demo")
    admin = {"Authorization": f"Bearer {settings.admin_token.get_secret_value()}"}
    plans = [plan(f"demo-{part.plugin}", max(1, count // len(parts))) for part in parts]
    try:
        with httpx.Client(base_url=web.url, timeout=10) as http:
            for part, p in zip(parts, plans, strict=True):
                part.connect(http, admin, p.store_id)
            console.print(f"[bold]opcore demo[/]: opcore at {web.url}; stores "
                          + ", ".join(f"{p.store_id} ({part.title})" for part, p in zip(parts, plans, strict=True))
                          + f" connected; stand-ins allow {quota} requests per {window:g} s")
            outcomes = _send_and_wait(console, http, settings, parts, plans)
            ok = _report(console, host, parts, plans, outcomes, time.monotonic() - started)
            for part, p in zip(parts, plans, strict=True):
                _widget_example(console, http, host, admin, part.plugin, p, web.url)
        if keep_serving:
            _try_it(console, settings, parts, plans, web.url)
            _serve_until_interrupted()
        else:
            console.print("  (the servers stop now; `opcore demo --keep-serving` keeps them up to try it)")
    finally:
        web.stop()
        for part in parts:
            part.stop()
        host.close()
    return 0 if ok else 1


def _send_and_wait(console: Console, http: httpx.Client, settings: Settings, parts: list[DemoHelpdesk],
                   plans: list[Plan]) -> list[Outcome]:
    hook = {"x-webhook-secret": settings.webhook_secret.get_secret_value()}
    events = _interleave(plans)
    with Progress(TextColumn("{task.description:>22}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as bar:
        sending = bar.add_task("events sent", total=len(events))
        tasks = [(bar.add_task(f"{part.title} tickets", total=len(p.claims)),
                  bar.add_task(f"{part.title} {part.finished_label}", total=len(p.finished)),
                  bar.add_task(f"{part.title} private notes", total=_count(p.messages)))
                 for part, p in zip(parts, plans, strict=True)]
        for event in events:
            http.post("/webhooks/orderprotection", json=event, headers=hook).raise_for_status()
            bar.advance(sending)
        deadline = time.monotonic() + 60
        while True:  # a note is written at least 2 s after its message arrived, behind the tickets
            outcomes = [part.outcome(p) for part, p in zip(parts, plans, strict=True)]
            for (ticketing, finishing, noting), seen in zip(tasks, outcomes, strict=True):
                bar.update(ticketing, completed=len(seen.tickets))
                bar.update(finishing, completed=len(seen.finished))
                bar.update(noting, completed=_count(seen.notes))
            done = all(len(seen.tickets) >= len(p.claims) and len(seen.finished) >= len(p.finished)
                       and _count(seen.notes) >= _count(p.messages) for seen, p in zip(outcomes, plans, strict=True))
            if done or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    if done:
        time.sleep(0.5)  # anything extra (a duplicate) would show up now
    return [part.outcome(p) for part, p in zip(parts, plans, strict=True)]


def _count(per_claim: dict[str, list[Any]]) -> int:
    return sum(len(items) for items in per_claim.values())


def _problems(part: DemoHelpdesk, p: Plan, seen: Outcome) -> list[str]:
    problems = [f"{claim}: {len(seen.tickets.get(claim, []))} tickets" for claim in p.claims
                if len(seen.tickets.get(claim, [])) != 1]
    problems += [f"{claim}: finished but not {part.finished_label}" for claim in sorted(p.finished - seen.finished)]
    problems += [f"{claim}: {part.finished_label} but never finished" for claim in sorted(seen.finished - p.finished)]
    if seen.writes - part.allowed_writes:
        problems.append(f"unexpected writes to {part.title}: {sorted(seen.writes - part.allowed_writes)}")
    for claim in sorted(set(p.messages) | set(seen.notes)):
        problems += _note_problems(claim, p.messages.get(claim, []), seen.notes.get(claim, []))
    if seen.public_comments_after_creation:
        problems.append(f"{seen.public_comments_after_creation} public comments after a ticket's creation "
                        "(each could have emailed the customer)")
    if seen.writes_to_unknown_tickets:
        problems.append(f"{seen.writes_to_unknown_tickets} writes to tickets that did not exist")
    return problems


def _note_problems(claim: str, messages: list[str], notes: list[SeenNote]) -> list[str]:
    """Each message (``messages`` in ``created_at`` order) is exactly one note, and the notes
    follow that order; a note that shows none of the messages is one too many."""
    shown = [[n for n, text in enumerate(messages) if text in note.text] for note in notes]
    problems = [f"{claim}: message {n + 1} is {count} notes" for n in range(len(messages))
                if (count := sum(n in found for found in shown)) != 1]
    if any(not found for found in shown):
        problems.append(f"{claim}: {sum(not found for found in shown)} notes that show none of its messages")
    order = [found[0] for found in shown if len(found) == 1]
    if order != sorted(order):
        problems.append(f"{claim}: notes out of created_at order (messages {[n + 1 for n in order]})")
    return problems


def _report(console: Console, host: Any, parts: list[DemoHelpdesk], plans: list[Plan], outcomes: list[Outcome],
            elapsed: float) -> bool:
    summary = Table(title="opcore demo", show_header=True)
    for column in ("helpdesk", "claims", "tickets", "finished", "private notes", "paced waits", "rate-limited answers",
                   "failures", "seconds"):
        summary.add_column(column, justify="right")
    problems: list[str] = []
    for part, p, seen in zip(parts, plans, outcomes, strict=True):
        found = _problems(part, p, seen)
        problems += [f"{part.title} {problem}" for problem in found]
        stats = host.delivery(part.plugin).stats()
        summary.add_row(part.title, str(len(p.claims)), str(sum(len(t) for t in seen.tickets.values())),
                        f"{len(seen.finished)} {part.finished_label}", _notes_cell(seen.notes, ""),
                        str(stats.get("paced_waits", 0) + stats.get("rate_limit_waits", 0)),
                        str(seen.rate_limited), str(stats.get("dead_letters", 0) + len(found)), f"{elapsed:.1f}")
    console.print(summary)
    listing = Table(title="claim → ticket", show_header=True)
    for column in ("claim", "helpdesk", "type", "ticket", "finished", "notes"):
        listing.add_column(column)
    for part, p, seen in zip(parts, plans, outcomes, strict=True):
        types = {e["body"]["claim_id"]: e["body"]["claim_type"] for e in p.events if e["topic"] == "claim.created"}
        for claim_id in p.claims:
            listing.add_row(claim_id, part.title, types[claim_id], ", ".join(seen.tickets.get(claim_id, [])) or "—",
                            part.finished_label if claim_id in seen.finished else "",
                            _notes_cell({claim_id: seen.notes.get(claim_id, [])}, " private") if claim_id in p.messages else "")
    console.print(listing)
    if problems:
        console.print("[bold red]FAILED[/]: " + "; ".join(problems))
        return False
    total, messages = sum(len(p.claims) for p in plans), sum(_count(p.messages) for p in plans)
    console.print(f"[bold green]OK[/]: {total} claims, one ticket each in its own helpdesk; every finished claim "
                  f"({', '.join(FINISHING)}) " + " or ".join(sorted({part.finished_label for part in parts}))
                  + f"; {messages} messages, each one private note on its claim's ticket in created_at order;"
                  " nothing public written to a ticket after its creation, nothing to a ticket that did not exist.")
    return True


def _notes_cell(notes: dict[str, list[SeenNote]], private: str) -> str:
    """How many notes are private ("3" + ``private``), and the public ones if any (a public
    comment may have emailed the customer)."""
    public = sum(note.public for found in notes.values() for note in found)
    return f"{_count(notes) - public}{private}" + (f", {public} PUBLIC" if public else "")


def _widget_example(console: Console, http: httpx.Client, host: Any, admin: dict[str, str], plugin: str, p: Plan,
                    base_url: str) -> None:
    panel = host.panel(plugin)
    if panel is None:
        return
    widget = http.post(f"/internal/integrations/{plugin}/stores/{p.store_id}/widget", headers=admin).json()
    email = CUSTOMERS[0][0]
    console.print(f"\n{plugin} widget for {email}, to open in a browser (the iframe URL with {{email}} filled in):")
    console.print("  " + widget["iframe_url"].replace("{email}", quote(email, safe="")), soft_wrap=True)
    example = panel.signed_request_example(p.store_id, email, base_url)
    header = "; ".join(f"{k}: {v}" for k, v in example["headers"].items())
    console.print(f"  or signed (valid until {example['valid_until']}): curl -H '{header}' '{example['url']}'",
                  soft_wrap=True)


def _curl(*args: str) -> str:
    return " ".join(["curl", *(shlex.quote(arg) for arg in args)])


def _try_it(console: Console, settings: Settings, parts: list[DemoHelpdesk], plans: list[Plan],
            base_url: str) -> None:
    """What following the README against the demo needs, ready to paste: its credentials are
    random and live only in this process, so nothing else can tell them."""
    admin = settings.admin_token.get_secret_value()  # type: ignore[union-attr]
    secret = settings.webhook_secret.get_secret_value()  # type: ignore[union-attr]
    store_id = plans[0].store_id
    claim, message = copy.deepcopy(CLAIM_CREATED), copy.deepcopy(MESSAGE_CREATED)
    claim["id"], message["id"] = str(uuid.uuid4()), str(uuid.uuid4())
    claim["body"].update(store_id=store_id, claim_id=f"{store_id}-claim-readme")
    message["body"].update(store_id=store_id, claim_id=f"{store_id}-claim-readme")

    def webhook(event: dict[str, Any]) -> str:
        return _curl("-X", "POST", "-H", f"x-webhook-secret: {secret}", "-H", "content-type: application/json",
                     "-d", json.dumps(event, ensure_ascii=False), f"{base_url}/webhooks/orderprotection")

    lines = [f"\nopcore serves at {base_url} until Ctrl-C. To follow the README against it:",
             f"  export OPCORE_ADMIN_TOKEN={admin} OPCORE_WEBHOOK_SECRET={secret}"]
    for part, p in zip(parts, plans, strict=True):
        settings_url = f"{base_url}/internal/integrations/{part.plugin}/stores/{p.store_id}"
        lines.append(f"  {part.title} store settings: " + _curl("-H", f"Authorization: Bearer {admin}", settings_url))
    lines.append(f"  a claim for {store_id}: " + webhook(claim))
    lines.append(f"  then open the widget URL above in a browser: the claim shows for {CUSTOMERS[0][0]}")
    lines.append("  a message of that claim, a private note on its ticket a few seconds later: " + webhook(message))
    tickets_url = parts[0].tickets_url()
    if tickets_url:
        lines.append(f"  the {parts[0].title} stand-in's tickets and their notes: " + _curl(tickets_url))
    for line in lines:
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def _serve_until_interrupted() -> None:
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass


def register(cli: click.Group) -> None:
    """``opcore demo``, over every loaded plugin that offers a demo part."""

    @cli.command("demo")
    @click.option("--claims", default=36, show_default=True, type=click.IntRange(min=1),
                  help="How many claims to send, shared by the helpdesks.")
    @click.option("--quota", default=20, show_default=True, type=click.IntRange(min=1),
                  help="Stand-in requests per window.")
    @click.option("--window", default=5.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
                  help="Stand-in quota window, seconds.")
    @click.option("--helpdesk", "only", multiple=True, help="Only this plugin's part (repeatable); default: all.")
    @click.option("--keep-serving", is_flag=True,
                  help="Keep the app and stand-ins up to try the widget URL and the printed webhooks.")
    def demo(claims: int, quota: int, window: float, only: tuple[str, ...], keep_serving: bool) -> None:
        """Run the whole flow on this machine against local stand-ins of every helpdesk."""
        from .commands import fail
        from .plugins import load_plugins

        loaded = load_plugins(allowlist=Settings().plugin_allowlist)
        parts = [part for part in loaded.pm.hook.register_demo() if not only or part.plugin in only]
        if not parts:
            offered = ", ".join(part.plugin for part in loaded.pm.hook.register_demo()) or "none"
            fail("no loaded plugin offers a demo" + (f" among {', '.join(only)}" if only else "")
                 + f"; plugins with a demo: {offered}")
        raise SystemExit(run(parts, claims, quota, window, keep_serving))
