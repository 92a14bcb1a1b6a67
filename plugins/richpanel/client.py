"""A small synchronous client for Richpanel's REST API.

It only translates HTTP into typed outcomes; retries and pacing belong to the caller,
which needs to know *why* a call failed (rate limit, bad key, bad request, outage, or an
answer lost in transit) to decide whether retrying is safe.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib.metadata import version as _version
from typing import Any, Callable
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError

from opcore_hooks import header_count, parse_retry_after, transport_for

DEFAULT_RETRY_AFTER = 30.0
"""Used when a rate-limited answer has no usable Retry-After: Richpanel's window is 30 s."""

KEY_HEADER = "x-richpanel-key"
#: Sent with every request, as httpx.Client would send its own: gateways may refuse requests without one.
USER_AGENT = f"opcore/{_version('opcore')}"
RATE_LIMIT_STATUSES = frozenset({429, 492})


def mask_key(api_key: str | None) -> str:
    """Show enough of a key to tell two apart in logs without making it usable."""
    if not api_key:
        return "rp_…"
    tail = api_key[-4:] if len(api_key) >= 12 else ""
    return f"rp_…{tail}"


class RichpanelError(Exception):
    """Base of every failure; `status` is None when no answer arrived."""

    def __init__(self, message: str, status: int | None = None, error: str | None = None):
        super().__init__(message)
        self.status = status
        self.error = error


class RateLimited(RichpanelError):
    """429 or 492: nothing may be sent with this key for `retry_after` seconds."""

    def __init__(self, message: str, status: int, retry_after: float, error: str | None = None):
        super().__init__(message, status, error)
        self.retry_after = retry_after


class AuthError(RichpanelError):
    """401: the key is wrong or revoked; retrying cannot help."""


class ClientError(RichpanelError):
    """A 4xx other than 401/429, or an answer we cannot use: retrying the same call cannot help."""


class ServerError(RichpanelError):
    """5xx: Richpanel failed; the call may be retried later."""


class TransportError(RichpanelError):
    """No answer (timeout, refused, dropped): Richpanel may or may not have acted on the request."""


@dataclass(frozen=True)
class RateLimitInfo:
    """What Richpanel advertised about the quota on its last answer (None when not sent)."""

    limit: int | None
    remaining: int | None

    @classmethod
    def from_headers(cls, headers: httpx.Headers) -> RateLimitInfo:
        return cls(header_count(headers, "x-ratelimit-limit"), header_count(headers, "x-ratelimit-remaining"))


def _segment(value: str) -> str:
    return quote(str(value), safe="")


@functools.lru_cache(maxsize=256)  # parsing a URL is most of building a request; few repeat often
def _url(text: str) -> httpx.URL:
    return httpx.URL(text)


class Team(BaseModel):
    """A Richpanel team; its UUID (not its name) is what ticket assignment needs."""

    model_config = ConfigDict(extra="ignore")
    id: str
    name: str = ""


class ClientTransport(httpx.BaseTransport):
    """Sends through an httpx-style client instead of a socket: Starlette's TestClient around
    the sandbox app, in tests. Only the answer's status, headers and body cross over, and the
    wrapped client's own timeouts apply, not the RichpanelClient's."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        # The wrapped client keeps its own timeouts (Starlette's TestClient refuses any).
        answer = self.client.request(request.method, str(request.url), content=request.read(),
                                     headers=request.headers.multi_items())
        return httpx.Response(answer.status_code, headers=answer.headers.multi_items(), content=answer.content,
                              request=request)


def transport_of(http: httpx.BaseTransport | Any) -> httpx.BaseTransport:
    """A transport as is; anything else with ``request()`` (an httpx or httpx2 Client) wrapped."""
    return http if isinstance(http, httpx.BaseTransport) else ClientTransport(http)


class RichpanelClient:
    """One Richpanel account (API key) over a possibly shared httpx transport (the host's, by default).

    Requests go straight to the transport, not through an ``httpx.Client``: the client's
    cookie jar, URL merging, auth and redirect layers cost a measurable share of a worker's CPU
    per ticket (bench/worker_cpu.py; docs/BENCHMARKS.md), and Richpanel's API uses none of them.
    Timeouts travel with each request, as httpx's own client sends them.
    """

    def __init__(self, base_url: str, api_key: str, *, http: httpx.BaseTransport | Any = None,
                 timeout: float = 10.0,
                 on_response: Callable[[httpx.Response], None] | None = None) -> None:
        base = base_url.rstrip("/")
        if base.endswith("/v1"):
            base = base[: -len("/v1")]
        self.base_url = base
        self._api_key = api_key
        self._timeout = httpx.Timeout(timeout).as_dict()
        self._owns_http = http is None
        self._http = transport_for(base) if http is None else transport_of(http)
        self._on_response = on_response
        self.last_rate_limit: RateLimitInfo | None = None

    def __repr__(self) -> str:
        return f"RichpanelClient(base_url={self.base_url!r}, api_key={mask_key(self._api_key)!r})"

    def close(self) -> None:
        """Closes the transport only if this client created it; a shared one belongs to its owner."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> RichpanelClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- API ------------------------------------------------------------------------------

    def list_teams(self) -> list[Team]:
        """Also the cheapest way to check a key: a wrong one raises AuthError."""
        body = self._request("GET", "/teams", "GET /v1/teams")
        teams = body.get("team", body.get("teams")) if isinstance(body, dict) else body
        if not isinstance(teams, list):
            raise ClientError("Richpanel GET /v1/teams answered without a team list", 200)
        try:
            return [Team.model_validate(t) for t in teams]
        except ValidationError:
            raise ClientError("Richpanel GET /v1/teams answered malformed teams", 200) from None

    def create_ticket(self, ticket: dict[str, Any]) -> str:
        """Not idempotent: on TransportError the ticket may exist; look it up before retrying."""
        op = "POST /v1/tickets"
        body = self._request("POST", "/tickets", op, payload={"ticket": ticket})
        ticket_id = None
        if isinstance(body, dict):
            inner = body.get("ticket")
            if isinstance(inner, dict):
                ticket_id = inner.get("id")
            if ticket_id in (None, ""):
                ticket_id = body.get("id")
        if ticket_id in (None, ""):
            raise ClientError(f"Richpanel {op} succeeded but its answer carried no ticket id", 200)
        return str(ticket_id)

    def get_ticket(self, ticket_id: str) -> dict[str, Any]:
        body = self._request("GET", f"/tickets/{_segment(ticket_id)}", "GET /v1/tickets/{id}")
        inner = body.get("ticket", body) if isinstance(body, dict) else None
        if not isinstance(inner, dict):
            raise ClientError("Richpanel GET /v1/tickets/{id} answered without a ticket", 200)
        return inner

    def find_tickets_by_email(self, email: str) -> list[dict[str, Any]]:
        """The answer's shape is undocumented: every plausible one is accepted; 404 means none."""
        op = "GET /v1/tickets/email/{email}"
        try:
            body = self._request("GET", f"/tickets/email/{quote(email, safe='@')}", op)
        except ClientError as exc:
            if exc.status == 404:
                return []
            raise
        found: Any = body
        if isinstance(body, dict) and ("tickets" in body or "ticket" in body):
            found = body["tickets"] if "tickets" in body else body["ticket"]
        elif not isinstance(body, list):  # guessing "none" here could create a duplicate ticket
            raise ClientError(f"Richpanel {op} answered an unknown shape", 200)
        if found is None:
            return []
        if isinstance(found, dict):
            return [found]
        if isinstance(found, list):
            return [t for t in found if isinstance(t, dict)]
        raise ClientError(f"Richpanel {op} answered an unknown shape", 200)

    def add_note(self, ticket_id: str, body: str) -> None:
        """A private note on the ticket: an operator's comment with ``public: false``, which Richpanel
        emails to no one (``body`` is HTML). Not idempotent: on TransportError the note may exist."""
        comment = {"body": body, "public": False, "sender_type": "operator"}
        self._request("PUT", f"/tickets/{_segment(ticket_id)}", "PUT /v1/tickets/{id}",
                      payload={"ticket": {"comment": comment}})

    def snooze_ticket(self, ticket_id: str) -> None:
        """Body as Order Protection's integration sends it; Richpanel documents no snooze call."""
        self._request("PUT", f"/tickets/{_segment(ticket_id)}/snooze",
                      "PUT /v1/tickets/{id}/snooze", payload={"snoozed_till": "0"})

    # -- plumbing -------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        """Belt and braces: nothing we raise may carry the key, whatever echoed it."""
        return text.replace(self._api_key, mask_key(self._api_key)) if self._api_key else text

    def _request(self, method: str, path: str, op: str, payload: Any = None) -> Any:
        """`op` names the route without its values so errors never carry customer emails."""
        request = httpx.Request(method, _url(f"{self.base_url}/v1{path}"), json=payload,
                                headers={KEY_HEADER: self._api_key, "accept": "application/json",
                                         "user-agent": USER_AGENT},
                                extensions={"timeout": self._timeout})
        try:
            response = self._http.handle_request(request)
            response.request = request  # as httpx.Client sets it, for on_response and raise_for_status
            try:
                response.read()
            finally:
                response.close()
        except httpx.TransportError as exc:
            detail = self._scrub(str(exc)) or "no detail"
            raise TransportError(
                f"Richpanel {op}: no answer ({type(exc).__name__}: {detail})") from exc
        self.last_rate_limit = RateLimitInfo.from_headers(response.headers)
        if self._on_response is not None:
            self._on_response(response)
        status = response.status_code
        if 200 <= status < 300:  # a body we cannot read is None; callers needing one complain
            try:
                return response.json() if response.content else None
            except ValueError:
                return None
        error = self._error_attribute(response)
        message = self._scrub(f"Richpanel {op} answered {status}" + (f": {error}" if error else ""))
        error = self._scrub(error) if error else None
        if status in RATE_LIMIT_STATUSES:
            wait = parse_retry_after(response.headers.get("retry-after"))
            wait = DEFAULT_RETRY_AFTER if wait is None else wait
            raise RateLimited(f"{message} (retry after {wait:g} s)", status, wait, error)
        if status == 401:
            raise AuthError(message, status, error)
        if status >= 500:
            raise ServerError(message, status, error)
        raise ClientError(message, status, error)

    @staticmethod
    def _error_attribute(response: httpx.Response) -> str | None:
        try:
            body = response.json()
        except ValueError:
            return None
        error = body.get("error") if isinstance(body, dict) else None
        if error is None or error == "":
            return None
        return error if isinstance(error, str) else json.dumps(error)[:500]
