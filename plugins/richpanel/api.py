"""The internal settings API: ``/internal/integrations/richpanel/stores/{store_id}[/teams]``.

The host mounts these routes behind the admin bearer token. Each handler only translates HTTP
to a call in ``stores`` and its outcome back to JSON; the rules live in ``stores`` so the CLI
obeys the same ones. Errors are ``{"error": ..., "details": [...]}``: 422 for anything the admin
can fix, 404 for an unknown store, 409 when the stored key cannot be decrypted (fail closed:
the admin must enter the key again), 502 when Richpanel failed to answer a read.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from opcore_hooks import Host
from opcore_hooks.bodies import BodyError, read_json
from opcore_hooks.config import ConfigError
from opcore_hooks.crypto import DecryptionError

from . import stores
from .stores import SettingsError

log = logging.getLogger("opcore.richpanel.api")

MAX_BODY = 16 * 1024


def _error(status: int, message: str, details: list[dict[str, Any]] | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "details": details or []}, status_code=status, headers=headers)


def _not_found(store_id: str) -> JSONResponse:
    return _error(404, f"Richpanel is not configured for store {store_id!r}")


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    """Run a blocking ``stores`` call (Redis, Richpanel) off the event loop; map its errors."""
    try:
        return await run_in_threadpool(fn, *args)
    except SettingsError as exc:
        headers = {"Retry-After": str(int(exc.retry_after))} if exc.retry_after else None
        return _error(exc.status, exc.message, exc.details, headers)
    except DecryptionError as exc:
        return _error(409, str(exc), [{"field": "api_key", "message": "stored key cannot be decrypted"}])
    except ConfigError as exc:
        log.error("richpanel settings API: %s", exc)
        return _error(503, str(exc))


async def _body(request: Request) -> Any:
    """The JSON body, or a SettingsError an admin can act on, with the ingress's status for the
    same fault (400 not JSON, 413 too large), so every door of the service answers alike."""
    try:
        return await read_json(request, MAX_BODY)
    except BodyError as exc:
        raise SettingsError(f"{exc.message}; send e.g. {{\"api_key\": \"rp_...\", "
                            f"\"default_channel\": \"email\", \"enabled\": true}}", status=exc.status) from None


def internal_routes(host: Host) -> list[Route]:
    """The settings routes for ``host``; mounted under ``/internal/integrations/richpanel``."""

    async def put_store(request: Request) -> JSONResponse:
        store_id = request.path_params["store_id"]
        try:
            changes = stores.parse_update(await _body(request))
        except SettingsError as exc:
            return _error(exc.status, exc.message, exc.details)
        result = await _call(stores.update, host, store_id, changes)
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
