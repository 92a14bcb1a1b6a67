"""A local stand-in for Zendesk's Support API, with the behaviour opcore must cope with.

From ``shared/reference/zendesk-api.md``: accounts by subdomain (the path's first segment here:
``OPCORE_ZENDESK_API_URL=http://127.0.0.1:8710/{subdomain}``), HTTP Basic
``{email}/token:{token}``, groups, ticket creation with ``Idempotency-Key`` (the same key and
body give the first ticket back with ``x-idempotency-lookup: hit``; another body is a 400),
lookup by ``external_id``, updates (a comment without ``public`` is public; an update of a ticket
that does not exist is a 404, and counted), List Comments (``GET .../tickets/{id}/comments``,
pages of at most 100, ``sort_order``), and a budget per account per minute shared with the
account's other apps: every answer carries ``X-Rate-Limit`` and ``X-Rate-Limit-Remaining``, and
past the budget a 429 with ``Retry-After``. Faults on demand: 500s, dropped connections after
the work was done, and the other apps' share.

Control API: ``POST /_sandbox/accounts``, ``PUT /_sandbox/config``, ``GET /_sandbox/requests``,
``GET /_sandbox/tickets`` (each ticket's ``notes``, the comments after its first, with their
visibility; per account the public ones and the writes to unknown tickets). Every request is
recorded, the token never.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from html import escape
from typing import Any, Callable

import uvicorn
from pydantic import BaseModel, ConfigDict, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from opcore_hooks.standins import (
    DroppedResponse,
    ForegroundServer,
    StandInState,
    ThreadedServer,
    hide_drops,
    with_notes,
)

WINDOW = 60.0
IDEMPOTENCY_SECONDS = 2 * 3600


class SandboxConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    #: The budget's period: Zendesk's minute, shorter in tests.
    window: float = Field(WINDOW, gt=0)
    #: Share of every account's budget spent by the merchant's other apps (0 to 0.95).
    other_apps: float = Field(0.0, ge=0, le=0.95)
    error_rate: float = Field(0.0, ge=0, le=1)
    #: Processed, then the connection dropped: the client never learns the ticket exists.
    drop_rate: float = Field(0.0, ge=0, le=1)
    seed: int | None = None


@dataclass
class Account:
    subdomain: str
    email: str
    token: str
    plan: int  # requests per minute
    groups: list[dict[str, Any]]
    tickets: dict[int, dict[str, Any]] = field(default_factory=dict)
    keys: dict[str, tuple[str, int, float]] = field(default_factory=dict)  # key -> (body hash, ticket, at)
    window: deque[float] = field(default_factory=deque)  # our requests in the last minute
    next_id: int = 1
    next_comment_id: int = 1
    #: Updates (a note, a status) naming a ticket this account does not hold, each answered 404.
    unknown_writes: int = 0

    def comment(self, comment: dict[str, Any], now: float) -> dict[str, Any]:
        """As Zendesk stores it: a comment sent without ``public`` is public."""
        comment_id, self.next_comment_id = self.next_comment_id, self.next_comment_id + 1
        return {"id": comment_id, "body": comment.get("body") or comment.get("html_body") or "",
                "html": "html_body" in comment, "public": comment.get("public", True), "at": now}


class SandboxState(StandInState[SandboxConfig]):
    """Everything the sandbox knows; every access holds ``lock`` (the app runs in many threads)."""

    def __init__(self, config: SandboxConfig | None = None) -> None:
        super().__init__(config or SandboxConfig())
        self.accounts: dict[str, Account] = {}
        self.requests: list[dict[str, Any]] = []

    def add_account(self, subdomain: str, email: str, token: str, *, plan: int = 700,
                    groups: list[dict[str, Any]] | None = None) -> Account:
        with self.lock:
            account = Account(subdomain, email, token, plan,
                              groups if groups is not None else [{"id": 360001, "name": "Support"}])
            self.accounts[subdomain] = account
            return account

    def reset(self) -> None:
        """Forgets accounts, tickets and requests, and every fault."""
        with self.lock:
            self.accounts.clear()
            self.requests.clear()
            self.config = SandboxConfig()

    def tickets(self, subdomain: str) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(t) for t in self.accounts[subdomain].tickets.values()]

    def view_requests(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.requests)

    def view_tickets(self) -> dict[str, Any]:
        """What GET /_sandbox/tickets shows: per account its tickets, each with its ``notes`` (the
        comments after the first; ``serving.with_notes``), the count of public comments written
        after creation and of updates to tickets it does not hold."""
        with self.lock:
            return {"accounts": [{"subdomain": a.subdomain,
                                  **with_notes(((t, 1) for t in a.tickets.values()), "at", a.unknown_writes)}
                                 for a in self.accounts.values()]}

    # Called with the lock held: the budget left, or the seconds until there is some.
    def _spend(self, account: Account, now: float) -> tuple[int, float | None]:
        window = self.config.window
        while account.window and account.window[0] <= now - window:
            account.window.popleft()
        others = math.floor(account.plan * self.config.other_apps)
        left = account.plan - others - len(account.window)
        if left <= 0:
            oldest = account.window[0] if account.window else now
            return 0, max(1.0, math.ceil(oldest + window - now))
        account.window.append(now)
        return left - 1, None


def _authorized(account: Account, header: str | None) -> bool:
    if not header or not header.startswith("Basic "):
        return False
    try:
        user, _, token = base64.b64decode(header[6:]).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return False
    return user == f"{account.email}/token" and token == account.token


def _body_hash(raw: bytes) -> str:
    return hashlib.sha256(json.dumps(json.loads(raw or b"null"), sort_keys=True).encode()).hexdigest()


def _listed(comment: dict[str, Any]) -> dict[str, Any]:
    """A stored comment as List Comments answers it: ``body`` as sent, ``html_body`` rendered
    (a plain body escaped), ``plain_body`` without markup."""
    text = comment["body"]
    html = text if comment["html"] else "<p>" + escape(text).replace("\n", "<br>") + "</p>"
    plain = re.sub(r"<[^>]*>", "", text) if comment["html"] else text
    when = datetime.fromtimestamp(comment["at"], timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    return {"id": comment["id"], "type": "Comment", "body": text, "html_body": html, "plain_body": plain,
            "public": comment["public"], "created_at": when}


def _list_comments(request: Request, ticket: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
    """List Comments: ``sort_order`` asc (the default) or desc, offset pages of ``per_page`` (at most
    100, the default), ``next_page`` an absolute URL while more remain."""
    query = request.query_params
    try:
        per_page, page = min(100, max(1, int(query.get("per_page", 100)))), max(1, int(query.get("page", 1)))
    except ValueError:
        return 400, {"error": "InvalidPaginationParameter"}, {}
    if query.get("sort_order", "asc") not in ("asc", "desc"):
        return 400, {"error": "InvalidValue", "description": "sort_order must be asc or desc"}, {}
    ordered = ticket["comments"][::-1] if query.get("sort_order") == "desc" else ticket["comments"]
    shown = ordered[(page - 1) * per_page:page * per_page]
    following = request.url.include_query_params(page=page + 1, per_page=per_page)
    return 200, {"comments": [_listed(c) for c in shown], "count": len(ordered),
                 "next_page": str(following) if page * per_page < len(ordered) else None,
                 "previous_page": str(request.url.include_query_params(page=page - 1)) if page > 1 else None}, {}


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return raw.decode("utf-8", "replace")[:200]


def _handle(state: SandboxState, account: Account, request: Request, raw: bytes, now: float
            ) -> tuple[int, dict[str, Any], dict[str, str]]:
    """The API itself: (status, answer, extra headers)."""
    path, method = request.path_params["rest"], request.method
    body = json.loads(raw) if raw else {}
    if method == "GET" and path == "groups":
        return 200, {"groups": account.groups, "next_page": None, "count": len(account.groups)}, {}
    if method == "POST" and path == "tickets":
        ticket = body.get("ticket") if isinstance(body, dict) else None
        if not isinstance(ticket, dict) or not ticket.get("comment"):
            return 422, {"error": "RecordInvalid", "description": "a ticket needs a comment"}, {}
        key, digest = request.headers.get("idempotency-key"), _body_hash(raw)
        if key and key in account.keys and now - account.keys[key][2] < IDEMPOTENCY_SECONDS:
            if account.keys[key][0] != digest:
                return 400, {"error": "IdempotentRequestError", "description": "key reused with another body"}, {}
            return 201, {"ticket": account.tickets[account.keys[key][1]]}, {"x-idempotency-lookup": "hit"}
        ticket_id, account.next_id = account.next_id, account.next_id + 1
        account.tickets[ticket_id] = {
            "id": ticket_id, "status": "new", "subject": ticket.get("subject"), "external_id": ticket.get("external_id"),
            "requester": ticket.get("requester"), "group_id": ticket.get("group_id"), "tags": ticket.get("tags", []),
            "comments": [account.comment(ticket["comment"], now)], "created_at": now}
        if key:
            account.keys[key] = (digest, ticket_id, now)
        return 201, {"ticket": account.tickets[ticket_id]}, {"x-idempotency-lookup": "miss"} if key else {}
    if method == "GET" and path == "tickets":
        wanted = request.query_params.get("external_id")
        return 200, {"tickets": [t for t in account.tickets.values() if t["external_id"] == wanted]}, {}
    if path.startswith("tickets/") and method in ("GET", "PUT"):
        ticket_id, _, sub = path.removeprefix("tickets/").partition("/")
        found = account.tickets.get(int(ticket_id)) if ticket_id.isdigit() else None
        if sub and (sub != "comments" or method != "GET"):
            return 404, {"error": "InvalidEndpoint"}, {}
        if found is None:
            account.unknown_writes += method == "PUT"
            return 404, {"error": "RecordNotFound"}, {}
        if sub:
            return _list_comments(request, found)
        if method == "PUT":
            changes = body.get("ticket") if isinstance(body, dict) else None
            if not isinstance(changes, dict):
                return 422, {"error": "RecordInvalid"}, {}
            if "status" in changes:
                found["status"] = changes["status"]
            if isinstance(changes.get("comment"), dict):
                found["comments"].append(account.comment(changes["comment"], now))
        return 200, {"ticket": found}, {}
    return 404, {"error": "InvalidEndpoint"}, {}


async def _api(request: Request) -> Response:
    state: SandboxState = request.app.state.sandbox
    raw, now = await request.body(), time.time()
    with state.lock:
        account = state.accounts.get(request.path_params["subdomain"])
        record: dict[str, Any] = {"method": request.method, "path": request.url.path, "time": now,
                                  "subdomain": request.path_params["subdomain"], "query": dict(request.query_params),
                                  "body": _json(raw)}
        state.requests.append(record)
        if account is None or not _authorized(account, request.headers.get("authorization")):
            record["status"] = 401
            return JSONResponse({"error": "Couldn't authenticate you"}, 401)
        left, wait = state._spend(account, now)
        headers = {"X-Rate-Limit": str(account.plan), "X-Rate-Limit-Remaining": str(left)}
        if wait is not None:
            record["status"] = 429
            record["retry_after"] = int(wait)
            return JSONResponse({"error": "TooManyRequests"}, 429, {**headers, "Retry-After": str(int(wait))})
        if state.rng.random() < state.config.error_rate:
            record["status"] = 500
            return JSONResponse({"error": "InternalError (injected)"}, 500, headers)
        try:
            status, answer, extra = _handle(state, account, request, raw, now)
        except ValueError:
            status, answer, extra = 400, {"error": "InvalidJSON"}, {}
        drop = status < 300 and state.rng.random() < state.config.drop_rate
        record["status"], record["dropped"], record["idempotency"] = status, drop, extra.get("x-idempotency-lookup")
    return (DroppedResponse if drop else JSONResponse)(answer, status, {**headers, **extra})


async def _add_account(request: Request) -> Response:
    data = await request.json()
    account = request.app.state.sandbox.add_account(
        data["subdomain"], data["email"], data["api_token"], plan=int(data.get("plan", 700)), groups=data.get("groups"))
    return JSONResponse({"subdomain": account.subdomain, "plan": account.plan, "groups": account.groups})


async def _config(request: Request) -> Response:
    return JSONResponse(request.app.state.sandbox.update_config(**await request.json()).model_dump())


async def _requests(request: Request) -> Response:
    return JSONResponse({"requests": request.app.state.sandbox.view_requests()})


async def _tickets(request: Request) -> Response:
    return JSONResponse(request.app.state.sandbox.view_tickets())


def create_sandbox(config: SandboxConfig | None = None) -> Starlette:
    app = Starlette(routes=[
        Route("/_sandbox/accounts", _add_account, methods=["POST"]),
        Route("/_sandbox/config", _config, methods=["PUT"]),
        Route("/_sandbox/requests", _requests),
        Route("/_sandbox/tickets", _tickets),
        Route("/{subdomain}/api/v2/{rest:path}", _api, methods=["GET", "POST", "PUT"]),
    ])
    app.state.sandbox = SandboxState(config)
    return app


class SandboxServer(ThreadedServer):
    @property
    def state(self) -> SandboxState:
        return self.app.state.sandbox


def run_in_thread(config: SandboxConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> SandboxServer:
    server = SandboxServer(create_sandbox(config), host=host, port=port, lifespan="off", name="zendesk-sandbox")
    hide_drops()
    return server


def main(port: int, host: str = "127.0.0.1", on_ready: Callable[[str], None] | None = None, **config: Any) -> None:
    server = ForegroundServer(uvicorn.Config(create_sandbox(SandboxConfig(**config)), host=host, port=port,
                                             lifespan="off"), on_ready)
    hide_drops()
    server.run()
