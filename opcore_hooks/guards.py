"""What the host checks around every plugin's internal route: before it runs, and before its answer goes.

Every plugin's settings API lives under ``/internal/integrations/<plugin>/stores/{store_id}``.
A store id outside the id rule is refused here, for every route under it (settings, teams or
groups, widget), with the 422 the contract names, so no plugin route can forget it. A PUT is
the exception: a plugin checks its store id with the body (``errors.check_settings``), so one
answer lists every invalid field, the id among them.

A change a route made (settings saved, a widget provisioned or revoked) is answered only once
the replicas ``OPCORE_REDIS_REPLICAS`` asks for hold it (``replicated_writes``); otherwise the
answer is 503, and the admin's retry of the same request is safe.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import error_response, problem
from .ids import id_problem

if TYPE_CHECKING:
    from .host import Host

log = logging.getLogger("opcore.guards")

#: Methods that change nothing: their answers wait for no replica.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

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


def replicated_writes(app: ASGIApp, host: Host) -> ASGIApp:
    """ASGI middleware: a successful change is answered once ``host.replication`` holds; else 503.

    The answer's start is held back, the replicas are asked (``Replication.confirm``, in a
    thread: it blocks), and only then is the route's own answer sent. A 4xx or 5xx changed
    nothing and goes at once.
    """
    replication = host.replication
    if not replication.required:
        return app

    async def guard(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
            await app(scope, receive, send)
            return
        refused = False

        async def answer(message: Message) -> None:
            nonlocal refused
            if refused:
                return
            if message["type"] == "http.response.start" and 200 <= message["status"] < 300:
                try:
                    await run_in_threadpool(replication.confirm, host.redis)
                except Exception as exc:  # noqa: BLE001 - NotReplicated or Redis gone: not promised
                    log.error("%s %r: the change was not confirmed by Redis replicas: %s", scope["method"],
                              scope["path"], exc)
                    refused = True
                    await run_in_threadpool(host.metrics.count_refusal, "settings")
                    await error_response(503, "the change is saved on the Redis primary but its replicas did not "
                                         "confirm it in time; send the same request again",
                                         headers={"Retry-After": "2"})(scope, receive, send)
                    return
            await send(message)

        await app(scope, receive, answer)

    return guard
