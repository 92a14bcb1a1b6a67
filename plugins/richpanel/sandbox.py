"""A local stand-in for Richpanel's REST API, with the faults the real one can show.

No call to the real API can be made while developing, so this app follows
shared/reference/richpanel-api.md: the per-key quota with 429/492 and Retry-After, 5xx, slow
answers, and answers lost after the work was done. The comments a ticket gets after its creation
are its notes: one is private only when sent `public: false` by an operator, and
`/_sandbox/tickets` counts the public ones and every write to a ticket that does not exist.
Tests inspect `app.state.sandbox` directly; a separately running sandbox is set up and inspected
through the `/_sandbox/*` routes, which have no authentication: bind it to localhost only.
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import formatdate
from typing import Any, Callable, Literal

import anyio
import uvicorn
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
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

from .client import KEY_HEADER, mask_key

MAX_BODY = 1024 * 1024
STATUSES = {"OPEN", "CLOSED"}


class SandboxConfig(BaseModel):
    """Fault knobs; every rate is a probability per /v1 request, drawn from one seeded RNG."""

    model_config = ConfigDict(extra="forbid")
    quota: int | None = Field(50, ge=1)
    window: float = Field(30.0, gt=0)
    limit_status: Literal[429, 492] = 429
    retry_after_form: Literal["seconds", "date", "mixed"] = "seconds"
    latency_ms: tuple[NonNegativeInt, NonNegativeInt] = (0, 0)  # uniform in [low, high]
    error_rate: float = Field(0.0, ge=0, le=1)
    rate_limit_rate: float = Field(0.0, ge=0, le=1)
    drop_rate: float = Field(0.0, ge=0, le=1)
    seed: int | None = None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _inner(body: Any, name: str) -> dict[str, Any]:
    if not isinstance(body, dict) or not isinstance(body.get(name), dict):
        raise HTTPException(400, f'body must be {{"{name}": {{...}}}}')
    return body[name]


def _tag_ids(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise HTTPException(400, "tags must be a list of tag ids")
    return list(dict.fromkeys(value))


def _comments(comment: Any, via: Any, now: str) -> list[dict[str, Any]]:
    """As stored: a comment is private only when sent ``public: false`` by an operator (an internal
    note); without ``public`` or from anyone else it is public, as a judge must count it."""
    items = comment if isinstance(comment, list) else [comment] if isinstance(comment, dict) else []
    return [{"id": str(uuid.uuid4()), "body": c.get("body", ""), "plain_body": c.get("body", ""),
             "sender_type": c.get("sender_type", "customer"),
             "public": not (c.get("public") is False and c.get("sender_type") == "operator"),
             "author_id": c.get("author_id"), "created_at": now, "via": via} for c in items]


@dataclass
class Account:
    """One Richpanel account and its API; the quota is per key, so the request window lives here.

    The API methods take the request's JSON body, answer the JSON to send with 200, and raise
    HTTPException for errors. They run with the state's lock held.
    """

    api_key: str = field(repr=False)
    organization_id: str
    teams: list[dict[str, Any]]
    tickets: dict[str, dict[str, Any]] = field(default_factory=dict)
    tags: dict[str, dict[str, Any]] = field(default_factory=dict)
    window: deque[float] = field(default_factory=deque, repr=False)
    #: How many comments each ticket was created with: the ones after are its notes.
    created_with: dict[str, int] = field(default_factory=dict)
    #: Writes (update, comment, snooze, tags) naming a ticket this account does not hold.
    unknown_writes: int = 0

    @property
    def masked_key(self) -> str:
        return mask_key(self.api_key)

    def ticket(self, ticket_id: str) -> dict[str, Any]:
        if ticket_id not in self.tickets:
            raise HTTPException(404, "ticket not found")
        return self.tickets[ticket_id]

    def written(self, ticket_id: str) -> dict[str, Any]:
        """The ticket a write names; a write to one that does not exist is counted, then a 404."""
        if ticket_id not in self.tickets:
            self.unknown_writes += 1
        return self.ticket(ticket_id)

    def update(self, ticket_id: str, body: Any) -> dict[str, Any]:
        """``PUT /v1/tickets/{id}``: a comment in it is appended (a note, public unless private)."""
        return self.update_ticket(self.written(ticket_id), _inner(body, "ticket"))

    def create_ticket(self, body: Any) -> dict[str, Any]:
        fields = _inner(body, "ticket")
        # The reference: a supplied id is made unique before creating, so a taken one gets a new id.
        wanted = str(fields.get("id") or "")
        ticket_id = wanted if wanted and wanted not in self.tickets else uuid.uuid4().hex[:20]
        ticket = {"id": ticket_id, "created_at": _now(), "status": "OPEN", "subject": None,
                  "priority": None, "assignee_id": "unassigned", "via": {}, "tags": [],
                  "customer_profile": {}, "comments": []}
        answer = self.update_ticket(ticket, fields)
        self.tickets[ticket_id] = ticket
        self.created_with[ticket_id] = len(ticket["comments"])
        return answer

    @staticmethod
    def update_ticket(ticket: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
        """Partial, as Richpanel's is: only the attributes sent change; a comment is appended."""
        now = _now()
        for name, value in changes.items():
            if name == "comment":
                ticket["comments"].extend(_comments(value, ticket.get("via"), now))
            elif name == "status":
                if str(value).upper() not in STATUSES:
                    raise HTTPException(400, "status must be OPEN or CLOSED")
                ticket["status"] = str(value).upper()
            elif name != "id":
                ticket[name] = _tag_ids(value) if name == "tags" else value
        ticket["updated_at"] = now
        return {"ticket": ticket}

    def snooze(self, ticket_id: str, body: Any) -> dict[str, Any]:
        ticket = self.written(ticket_id)
        if not isinstance(body, dict) or "snoozed_till" not in body:
            raise HTTPException(400, "snoozed_till is required")
        ticket.update(snoozed_till=body["snoozed_till"], snoozed_at=_now())
        return {"ticket": ticket}

    def by_email(self, email: str) -> dict[str, Any]:
        """Matches `via.source.from.address` case-insensitively; none found is an empty list."""
        def sender(t: dict[str, Any]) -> str:
            source = (t.get("via") or {}).get("source") or {}
            return str((source.get("from") or {}).get("address") or "").strip().lower()
        return {"tickets": [t for t in self.tickets.values() if sender(t) == email.strip().lower()]}

    def change_tags(self, ticket_id: str, body: Any, adding: bool) -> dict[str, Any]:
        ticket = self.written(ticket_id)
        tags = _tag_ids(body.get("tags") if isinstance(body, dict) else None)
        kept = [t for t in ticket["tags"] if t not in tags]
        return self.update_ticket(ticket, {"tags": kept + tags if adding else kept})

    def create_tag(self, body: Any) -> dict[str, Any]:
        fields = body.get("tag", body) if isinstance(body, dict) else None
        name = fields.get("name") if isinstance(fields, dict) else None
        if not isinstance(name, str) or not name.strip():
            raise HTTPException(400, "tag name is required")
        if any(t["name"].lower() == name.lower() for t in self.tags.values()):
            raise HTTPException(409, "a tag with this name already exists")
        tag = {"id": str(uuid.uuid4()), "name": name,
               "description": fields.get("description", ""), "created_at": _now()}
        self.tags[tag["id"]] = tag
        return {"tag": tag}


class SandboxState(StandInState[SandboxConfig]):
    """Everything the sandbox knows; every access goes through `lock` (apps run in many threads)."""

    def __init__(self, config: SandboxConfig | None = None) -> None:
        super().__init__(config or SandboxConfig())
        self.accounts: dict[str, Account] = {}
        self.requests: list[dict[str, Any]] = []
        self.rate_limited: Counter[str] = Counter()  # api key -> rate-limited answers
        self._date_turn = False
        self._keys_pattern: re.Pattern[str] | None = None  # every known key, for masking; None: rebuild

    def add_account(self, api_key: str, teams: list[dict[str, Any]] | None = None) -> Account:
        """Registers a key; re-adding one keeps its tickets and replaces its teams if given."""
        with self.lock:
            account = self.accounts.get(api_key)
            if account is None:
                account = Account(api_key, str(uuid.uuid4()), [])
                self.accounts[api_key] = account
                self._keys_pattern = None
                teams = teams if teams is not None else [{"name": "Support"}, {"name": "Claims"}]
            if teams is not None:
                now = _now()
                account.teams = [{"id": t.get("id") or str(uuid.uuid4()), "name": t.get("name", ""),
                                  "organization_id": account.organization_id,
                                  "created_at": t.get("created_at", now), "updated_at": now}
                                 for t in teams]
            return account

    def tickets(self, api_key: str) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.accounts[api_key].tickets.values())

    def view_requests(self) -> dict[str, Any]:
        """Every request received, oldest first, keys masked (what GET /_sandbox/requests shows)."""
        with self.lock:
            return {"requests": list(self.requests)}

    def view_tickets(self) -> dict[str, Any]:
        """What GET /_sandbox/tickets shows: per account (key masked) its rate-limited answers and
        its tickets, each with its ``notes`` (``serving.with_notes``), the count of public
        comments written after creation and of writes to tickets it does not hold."""
        with self.lock:
            return {"accounts": [{"account": a.masked_key, "rate_limited": self.rate_limited[a.api_key],
                                  **with_notes(((t, a.created_with.get(i, 0)) for i, t in a.tickets.items()),
                                               "created_at", a.unknown_writes)}
                                 for a in self.accounts.values()]}

    def reset(self) -> None:
        """Forgets accounts, tickets, requests and counters; keeps the fault config."""
        with self.lock:
            self.accounts.clear()
            self._keys_pattern = None
            self.requests.clear()
            self.rate_limited.clear()

    # Called with the lock held.
    def _admit(self, account: Account) -> float | None:
        """Counts the request in the key's sliding window, or returns the seconds until it may."""
        quota, window, now = self.config.quota, self.config.window, time.monotonic()
        if quota is None:
            return None
        w = account.window
        while w and w[0] <= now - window:
            w.popleft()
        if len(w) >= quota:
            return w[0] + window - now
        w.append(now)
        return None

    def _retry_after(self, wait: float) -> str:
        seconds = max(1, math.ceil(wait))
        form = self.config.retry_after_form
        if form == "mixed":
            self._date_turn = not self._date_turn
            form = "date" if self._date_turn else "seconds"
        if form == "date":  # rounded up: an HTTP date has whole seconds and must not come early
            return formatdate(math.ceil(time.time() + seconds), usegmt=True)
        return str(seconds)

    def _mask(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: mask_key(v) if k == "api_key" and isinstance(v, str) else self._mask(v)
                    for k, v in value.items()}
        if isinstance(value, list):
            return [self._mask(v) for v in value]
        if isinstance(value, str) and self.accounts:
            # One regular expression over every key (longest first), not a replace per account:
            # with a thousand accounts that loop dominated the sandbox's time per request.
            if self._keys_pattern is None:
                keys = sorted(self.accounts, key=len, reverse=True)
                self._keys_pattern = re.compile("|".join(map(re.escape, keys)))
            return self._keys_pattern.sub(lambda m: mask_key(m.group()), value)
        return value

    def _record(self, request: Request, status: int | None, key: str | None, body: Any,
                retry_after: str | None = None) -> None:
        self.requests.append({
            "method": request.method, "path": request.url.path, "status": status,
            "dropped": status is None, "time": time.time(), "retry_after": retry_after,
            "account": mask_key(key) if key else None, "body": self._mask(body)})


# -- the request pipeline ----------------------------------------------------------------------

Handler = Callable[[Account, dict[str, str], Any], dict[str, Any]]


def _api(handler: Handler) -> Callable[[Request], Any]:
    """Auth, quota and injected faults around a handler, in the order a client would meet them."""
    async def endpoint(request: Request) -> Response:
        state: SandboxState = request.app.state.sandbox
        raw = await request.body()
        key = request.headers.get(KEY_HEADER)
        with state.lock:
            cfg, rng, account = state.config, state.rng, state.accounts.get(key or "")
            if account is None:
                state._record(request, 401, None, None)
                return JSONResponse({"error": "missing or invalid x-richpanel-key"}, 401)
            wait = 1.0 if rng.random() < cfg.rate_limit_rate else state._admit(account)
            left = 0 if wait is not None or cfg.quota is None else cfg.quota - len(account.window)
            headers = {} if cfg.quota is None else {
                "X-RateLimit-Limit": str(cfg.quota), "X-RateLimit-Remaining": str(left)}
            if wait is not None:  # limited answers do not count against the quota
                state.rate_limited[account.api_key] += 1
                headers["Retry-After"] = state._retry_after(wait)
                state._record(request, cfg.limit_status, key, None, retry_after=headers["Retry-After"])
                return JSONResponse({"error": "Too Many Requests"}, cfg.limit_status, headers)
            delay = rng.uniform(*cfg.latency_ms) / 1000
            fail, drop = rng.random() < cfg.error_rate, rng.random() < cfg.drop_rate
        if delay:
            await anyio.sleep(delay)
        body: Any = None
        try:
            if fail:
                raise HTTPException(500, "internal server error (injected)")
            if len(raw) > MAX_BODY:
                raise HTTPException(413, "payload too large")
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                raise HTTPException(400, "body is not valid JSON") from None
            with state.lock:
                status, answer = 200, handler(account, request.path_params, body)
        except HTTPException as exc:
            status, answer = exc.status_code, {"error": exc.detail}
        with state.lock:
            state._record(request, None if drop else status, key, body)
        return (DroppedResponse if drop else JSONResponse)(answer, status, headers)
    return endpoint


# -- control routes: (state, JSON body) -> (status, answer); views are not recorded -----------

def _control(fn: Callable[[SandboxState, Any], tuple[int, Any]]) -> Callable[[Request], Any]:
    async def endpoint(request: Request) -> Response:
        state: SandboxState = request.app.state.sandbox
        try:
            body = json.loads(await request.body() or b"null")
        except ValueError:
            return JSONResponse({"error": "body is not valid JSON"}, 400)
        status, answer = fn(state, body)
        if request.method != "GET":
            with state.lock:
                state._record(request, status, None, body)
        return JSONResponse(answer, status)
    return endpoint


def add_account(state: SandboxState, body: Any) -> tuple[int, Any]:
    teams = body.get("teams") if isinstance(body, dict) else None
    teams_ok = teams is None or isinstance(teams, list) and all(isinstance(t, dict) for t in teams)
    if not isinstance(body, dict) or not isinstance(body.get("api_key"), str) \
            or not body["api_key"] or not teams_ok:
        return 400, {"error": 'body must be {"api_key": "...", "teams": [{"name": ...}, ...]}'}
    account = state.add_account(body["api_key"], teams)
    return 201, {"account": account.masked_key, "organization_id": account.organization_id,
                 "teams": account.teams}


def update_config(state: SandboxState, body: Any) -> tuple[int, Any]:
    if not isinstance(body, dict):
        return 400, {"error": "body must be a JSON object"}
    try:
        return 200, state.update_config(**body).model_dump()
    except ValidationError as exc:
        return 422, {"error": "invalid config", "details": json.loads(exc.json())}


def reset(state: SandboxState, _: Any) -> tuple[int, Any]:
    state.reset()
    return 200, {"status": "reset"}


def create_sandbox(config: SandboxConfig | None = None) -> Starlette:
    """A fresh app with its own state (`app.state.sandbox`); no account exists until added."""
    one = "/v1/tickets/{id}"
    routes = [
        Route("/v1/teams", _api(lambda a, p, b: {"team": a.teams}), methods=["GET"]),
        Route("/v1/channel", _api(lambda a, p, b: {"channels": [{
            "id": "email-" + a.organization_id[:8], "type": "email",
            "business_brand_name": "Sandbox Store"}]}), methods=["GET"]),
        Route("/v1/tickets", _api(lambda a, p, b: a.create_ticket(b)), methods=["POST"]),
        Route("/v1/tickets/email/{email}", _api(lambda a, p, b: a.by_email(p["email"])),
              methods=["GET"]),
        Route(one, _api(lambda a, p, b: {"ticket": a.ticket(p["id"])}), methods=["GET"]),
        Route(one, _api(lambda a, p, b: a.update(p["id"], b)), methods=["PUT"]),
        Route(one + "/snooze", _api(lambda a, p, b: a.snooze(p["id"], b)), methods=["PUT"]),
        Route(one + "/add-tags", _api(lambda a, p, b: a.change_tags(p["id"], b, True)),
              methods=["PUT"]),
        Route(one + "/remove-tags", _api(lambda a, p, b: a.change_tags(p["id"], b, False)),
              methods=["PUT"]),
        Route("/v1/tags", _api(lambda a, p, b: {"tag": list(a.tags.values())}), methods=["GET"]),
        Route("/v1/tags", _api(lambda a, p, b: a.create_tag(b)), methods=["POST"]),
        Route("/v1/{rest:path}", _api(_not_found),
              methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
        Route("/_sandbox/accounts", _control(add_account), methods=["POST"]),
        Route("/_sandbox/config", _control(update_config), methods=["PUT"]),
        Route("/_sandbox/config", _control(lambda s, _: (200, s.config.model_dump())),
              methods=["GET"]),
        Route("/_sandbox/requests", _control(lambda s, _: (200, s.view_requests())),
              methods=["GET"]),
        Route("/_sandbox/tickets", _control(lambda s, _: (200, s.view_tickets())), methods=["GET"]),
        Route("/_sandbox/reset", _control(reset), methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    app.state.sandbox = SandboxState(config)
    return app


def _not_found(*_: Any) -> dict[str, Any]:
    raise HTTPException(404, "no such endpoint")


# -- running it --------------------------------------------------------------------------------

class SandboxServer(ThreadedServer):
    """A sandbox on a real socket in a background thread, for tests that need real transport."""

    @property
    def state(self) -> SandboxState:
        return self.app.state.sandbox

    def __repr__(self) -> str:
        return f"SandboxServer(url={self.url!r})"


def run_in_thread(config: SandboxConfig | None = None, host: str = "127.0.0.1",
                  port: int = 0) -> SandboxServer:
    """Returns once the socket listens; port 0 picks a free one (see `.url`)."""
    server = SandboxServer(create_sandbox(config), host=host, port=port, lifespan="off", name="richpanel-sandbox")
    hide_drops()
    return server


def main(port: int, host: str = "127.0.0.1", accounts: list[str] | None = None,
         on_ready: Callable[[str], None] | None = None, **config: Any) -> None:
    """Foreground server; add accounts with POST /_sandbox/accounts {"api_key": "rp_..."}."""
    app = create_sandbox(SandboxConfig(**config))
    for key in accounts or []:
        app.state.sandbox.add_account(key)
    server = ForegroundServer(uvicorn.Config(app, host=host, port=port, lifespan="off"), on_ready)
    hide_drops()
    server.run()
