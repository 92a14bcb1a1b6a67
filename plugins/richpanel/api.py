"""The internal settings API: ``/internal/integrations/richpanel/stores/{store_id}[/teams]``.

The host mounts these routes behind the admin bearer token. Each handler only translates HTTP
to a call in ``stores`` and its outcome back to JSON; the rules live in ``stores`` so the CLI
obeys the same ones. Errors are the ingress's (``opcore_hooks.errors``): ``{"error": ...,
"details": [...]}`` with 400 for a body that is not JSON, 413 for one over the limit, 422 for
anything the admin can fix (every invalid field at once), 404 for an unknown store, 409 when
the stored key cannot be decrypted (fail closed: the admin must enter the key again), 502
when Richpanel failed to answer a read.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from opcore_hooks import Host, RequestError, error_response, problem, read_object
from opcore_hooks.config import ConfigError
from opcore_hooks.crypto import DecryptionError

from . import stores

log = logging.getLogger("opcore.richpanel.api")

MAX_BODY = 16 * 1024


def _not_found(store_id: str) -> JSONResponse:
    return error_response(404, f"Richpanel is not configured for store {store_id!r}")


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    """Run a blocking ``stores`` call (Redis, Richpanel) off the event loop; map its errors."""
    try:
        return await run_in_threadpool(fn, *args)
    except RequestError as exc:
        return exc.response()
    except DecryptionError as exc:
        return error_response(409, str(exc), [problem(stores.FIELD, "the stored key cannot be decrypted: "
                                                                    "send api_key again", "unreadable")])
    except ConfigError as exc:
        log.error("richpanel settings API: %s", exc)
        return error_response(503, str(exc))


def internal_routes(host: Host) -> list[Route]:
    """The settings routes for ``host``; mounted under ``/internal/integrations/richpanel``."""

    async def put_store(request: Request) -> JSONResponse:
        try:
            body = await read_object(request, MAX_BODY, stores.EXAMPLE)
        except RequestError as exc:
            return exc.response()
        # The raw body goes to update, so its faults and the stored settings' are answered at once.
        result = await _call(stores.update, host, request.path_params["store_id"], body)
        return result if isinstance(result, JSONResponse) else JSONResponse(stores.view(result))

    async def get_store(request: Request) -> JSONResponse:
        store_id = request.path_params["store_id"]
        result = await _call(stores.load, host, store_id)
        if isinstance(result, JSONResponse):
            return result
        return _not_found(store_id) if result is None else JSONResponse(stores.view(result))

    async def delete_store(request: Request) -> JSONResponse:
        store_id = request.path_params["store_id"]
        result = await _call(stores.disconnect, host, store_id)
        if isinstance(result, JSONResponse):
            return result
        if not result:
            return _not_found(store_id)
        return JSONResponse(stores.status(host, store_id))

    async def get_teams(request: Request) -> JSONResponse:
        result = await _call(stores.list_teams, host, request.path_params["store_id"])
        if isinstance(result, JSONResponse):
            return result
        return JSONResponse({"teams": [{"id": t.id, "name": t.name} for t in result]})

    return [
        Route("/stores/{store_id}", put_store, methods=["PUT"]),
        Route("/stores/{store_id}", get_store, methods=["GET"]),
        Route("/stores/{store_id}", delete_store, methods=["DELETE"]),
        Route("/stores/{store_id}/teams", get_teams, methods=["GET"]),
    ]
