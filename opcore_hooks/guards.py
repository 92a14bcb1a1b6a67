"""What the host checks before any plugin's internal route runs.

Every plugin's settings API lives under ``/internal/integrations/<plugin>/stores/{store_id}``.
A store id outside the id rule is refused here, for every route under it (settings, teams or
groups, widget), with the 422 the contract names, so no plugin route can forget it. A PUT is
the exception: a plugin checks its store id with the body (``errors.check_settings``), so one
answer lists every invalid field, the id among them.
"""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import error_response, problem
from .ids import id_problem

#: A store's path under a plugin's internal mount: the store id, then the rest ("" or "/...").
STORE_PATH = re.compile(r"/stores/([^/]+)(/.*)?")


def store_path(scope: Scope) -> tuple[str, str] | None:
    """(store id, rest of the path) of a request under a plugin's internal mount; the path is
    decoded already. None for a path outside ``/stores/{store_id}``."""
    path, root = scope["path"], scope.get("root_path", "")
    found = STORE_PATH.fullmatch(path[len(root):] if path.startswith(root) else path)
    return (found[1], found[2] or "") if found else None


def store_ids_checked(app: ASGIApp) -> ASGIApp:
    """ASGI middleware: a store id outside the rule gets 422 naming ``store_id``."""

    async def guard(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] != "PUT" and (found := store_path(scope)):
            if message := id_problem("store_id", found[0]):
                await error_response(422, message, [problem("store_id", message, "string_pattern_mismatch")])(
                    scope, receive, send)
                return
        await app(scope, receive, send)

    return guard
