"""A small Zendesk Support API client: the calls opcore makes, over a shared client (a connection per thread).

Authentication is HTTP Basic ``{agent email}/token:{api token}``. Failures are left as httpx
raises them (``raise_for_status``, transport errors); the adapter says what each one means. The
rate-limit headers of every answer go to ``observe``, failures included.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from opcore_hooks import header_count

#: A Zendesk subdomain: it becomes part of a host name, so nothing else is let through. Matched
#: whole (``fullmatch``): ``$`` would let a trailing newline through to httpx, an InvalidURL (a 500).
SUBDOMAIN = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
MAX_GROUP_PAGES = 10
#: How far back ``find_note`` reads (newest first, 100 a page): a note whose answer was lost is
#: recent, so more than 300 comments written after it on one ticket would be needed to miss it.
MAX_COMMENT_PAGES = 3


class UnreadableAnswer(ValueError):
    """Zendesk answered, but not with what the call expects (the create may have acted)."""


class Group(BaseModel):
    id: int
    name: str = ""


@dataclass(frozen=True)
class RateLimit:
    limit: int | None
    remaining: int | None

    @classmethod
    def of(cls, response: httpx.Response) -> RateLimit:
        return cls(header_count(response.headers, "x-rate-limit"),
                   header_count(response.headers, "x-rate-limit-remaining"))


class ZendeskClient:
    def __init__(self, base_url: str, email: str, api_token: str, *, http: httpx.Client,
                 observe: Callable[[RateLimit], None] | None = None) -> None:
        """``observe`` receives every answer's rate-limit headers (the engine's pacing follows them)."""
        self.base_url = base_url.rstrip("/")
        self._auth = httpx.BasicAuth(f"{email}/token", api_token)
        self.http = http
        self._observe = observe

    def __repr__(self) -> str:  # never the token
        return f"ZendeskClient({self.base_url!r})"

    def list_groups(self) -> list[Group]:
        return [Group.model_validate(g) for g in self._pages(f"{self.base_url}/api/v2/groups", "groups",
                                                             MAX_GROUP_PAGES)]

    def create_ticket(self, ticket: dict[str, Any], idempotency_key: str) -> str:
        answer = self._request("POST", f"{self.base_url}/api/v2/tickets", json={"ticket": ticket},
                               headers={"Idempotency-Key": idempotency_key})
        try:
            return str(answer["ticket"]["id"])
        except (KeyError, TypeError):
            raise UnreadableAnswer("POST /api/v2/tickets answered without a ticket id") from None

    def find_by_external_id(self, external_id: str) -> list[dict[str, Any]]:
        answer = self._request("GET", f"{self.base_url}/api/v2/tickets", params={"external_id": external_id})
        return list(answer.get("tickets") or [])

    def update_ticket(self, ticket_id: str, changes: dict[str, Any]) -> None:
        self._request("PUT", self._ticket_url(ticket_id), json={"ticket": changes})

    def add_note(self, ticket_id: str, body: str) -> None:
        """A private note (``public: false``: Zendesk's standard triggers email the requester on
        public updates only). ``body`` is shown as written. On a lost answer the note may exist."""
        self.update_ticket(ticket_id, {"comment": {"body": body, "public": False}})

    def comments(self, ticket_id: str, *, pages: int = MAX_COMMENT_PAGES) -> Iterator[dict[str, Any]]:
        """The ticket's comments, newest first (List Comments, ``sort_order=desc``), 100 a page, for at
        most ``pages`` pages; each page is read only when the one before did not satisfy the caller."""
        url = f"{self._ticket_url(ticket_id)}/comments"
        yield from self._pages(url, "comments", pages, params={"sort_order": "desc", "per_page": 100})

    def _ticket_url(self, ticket_id: str) -> str:
        """The ticket's URL; its id is Zendesk's, but quoted as any path segment from outside."""
        return f"{self.base_url}/api/v2/tickets/{quote(str(ticket_id), safe='')}"

    def _pages(self, url: str, name: str, pages: int, params: dict[str, Any] | None = None
               ) -> Iterator[dict[str, Any]]:
        """The objects listed under ``name``, following ``next_page`` for at most ``pages`` pages and
        only to this account's own API (a next page elsewhere would be sent the credentials)."""
        for _ in range(pages):
            answer = self._request("GET", url, params=params)
            yield from answer.get(name) or []
            following = answer.get("next_page")
            if not following or not str(following).startswith(self.base_url + "/"):
                return
            url, params = str(following), None  # the next page's URL carries the query

    def _request(self, method: str, url: str, **options: Any) -> dict[str, Any]:
        response = self.http.request(method, url, auth=self._auth, **options)
        if self._observe is not None and response.status_code != 429:  # a 429's remaining 0 says nothing of others
            self._observe(RateLimit.of(response))
        response.raise_for_status()
        body = response.json() if response.content else {}
        if not isinstance(body, dict):
            raise UnreadableAnswer(f"{method} answered {response.status_code} with a body that is not an object")
        return body
