"""The internal settings API: ``/internal/integrations/zendesk/stores/{store_id}[/groups]``.

Mounted by the host behind the admin token. Handlers translate HTTP to ``stores`` calls, run off
the event loop, and their outcomes back to JSON: ``{"error": ..., "details": [...]}`` with 422
for anything the admin can fix, 404 for an unknown store, 409 when the stored token cannot be
decrypted (the admin enters it again), 502 when Zendesk failed to answer.
"""

from __future__ import annotations

from typing import Any, Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from opcore_hooks import BodyError, Host, read_json
from opcore_hooks.crypto import DecryptionError

from . import stores
from .stores import SettingsError

MAX_BODY = 16 * 1024


def _error(exc: SettingsError) -> JSONResponse:
    headers = {"Retry-After": str(int(exc.retry_after))} if exc.retry_after else None
    return JSONResponse({"error": exc.message, "details": exc.details}, status_code=exc.status, headers=headers)


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    """Run a blocking ``stores`` call (Redis, Zendesk) in a thread; its refusals become answers."""
    try:
        return await run_in_threadpool(fn, *args)
    except SettingsError as exc:
        return _error(exc)
    except DecryptionError as exc:
        return _error(SettingsError(str(exc), [{"field": stores.TOKEN, "message": "stored token cannot be decrypted"}],
                                    status=409))


def _configured(host: Host, store_id: str) -> stores.StoreConfig:
    found = stores.load(host, store_id)
    if found is None:
        raise SettingsError(f"Zendesk is not configured for store {store_id!r}", status=404)
    return found


def internal_routes(host: Host) -> list[Route]:
    async def put_store(request: Request) -> JSONResponse:
        try:
            changes = stores.parse_update(await read_json(request, MAX_BODY))
        except BodyError as exc:
            return _error(SettingsError(exc.message, status=exc.status))
        except SettingsError as exc:
            return _error(exc)
        result = await _call(stores.update, host, request.path_params["store_id"], changes)
        return result if isinstance(result, JSONResponse) else JSONResponse(stores.view(result))

    async def get_store(request: Request) -> JSONResponse:
        result = await _call(_configured, host, request.path_params["store_id"])
        return result if isinstance(result, JSONResponse) else JSONResponse(stores.view(result))

    async def delete_store(request: Request) -> JSONResponse:
        store_id = request.path_params["store_id"]
        result = await _call(stores.disconnect, host, store_id)
        if isinstance(result, JSONResponse):
            return result
        if not result:
            return _error(SettingsError(f"Zendesk is not configured for store {store_id!r}", status=404))
        return JSONResponse(stores.view(await run_in_threadpool(_configured, host, store_id)))

    def list_groups(store_id: str) -> list[Any]:
        config = _configured(host, store_id)
        if config.api_token is None:
            raise SettingsError("no Zendesk API token is stored for this store; save one first",
                                [{"field": stores.TOKEN, "message": "required"}])
        return stores.groups(host, config, "the stored credentials", unavailable_status=502)

    async def get_groups(request: Request) -> JSONResponse:
        result = await _call(list_groups, request.path_params["store_id"])
        if isinstance(result, JSONResponse):
            return result
        return JSONResponse({"groups": [{"id": g.id, "name": g.name} for g in result]})

    return [
        Route("/stores/{store_id}", put_store, methods=["PUT"]),
        Route("/stores/{store_id}", get_store, methods=["GET"]),
        Route("/stores/{store_id}", delete_store, methods=["DELETE"]),
        Route("/stores/{store_id}/groups", get_groups, methods=["GET"]),
    ]
