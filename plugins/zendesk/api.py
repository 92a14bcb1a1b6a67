"""The internal settings API: ``/internal/integrations/zendesk/stores/{store_id}[/groups]``.

Mounted by the host behind the admin token. Handlers translate HTTP to ``stores`` calls, run off
the event loop, and their outcomes back to JSON in the ingress's style (``opcore_hooks.errors``):
``{"error": ..., "details": [...]}`` with 400 for a body that is not JSON, 413 for one over the
limit, 422 for anything the admin can fix (every invalid field at once), 404 for an unknown
store, 409 when the stored token cannot be decrypted (the admin enters it again), 502 when
Zendesk failed to answer.
"""

from __future__ import annotations

from typing import Any, Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from opcore_hooks import Host, RequestError, error_response, problem, read_object
from opcore_hooks.crypto import DecryptionError

from . import stores
from .stores import SettingsError

MAX_BODY = 16 * 1024


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    """Run a blocking ``stores`` call (Redis, Zendesk) in a thread; its refusals become answers."""
    try:
        return await run_in_threadpool(fn, *args)
    except RequestError as exc:
        return exc.response()
    except DecryptionError as exc:
        return error_response(409, str(exc), [problem(stores.TOKEN, "the stored token cannot be decrypted: "
                                                                    "send api_token again", "unreadable")])


def _not_found(store_id: str) -> SettingsError:
    return SettingsError(f"Zendesk is not configured for store {store_id!r}", status=404)


def _configured(host: Host, store_id: str) -> stores.StoreConfig:
    found = stores.load(host, store_id)
    if found is None:
        raise _not_found(store_id)
    return found


def internal_routes(host: Host) -> list[Route]:
    async def put_store(request: Request) -> JSONResponse:
        try:
            body = await read_object(request, MAX_BODY, stores.EXAMPLE)
        except RequestError as exc:
            return exc.response()
        # The raw body goes to update, so its faults and the stored settings' are answered at once.
        result = await _call(stores.update, host, request.path_params["store_id"], body)
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
            return _not_found(store_id).response()
        return JSONResponse(stores.view(await run_in_threadpool(_configured, host, store_id)))

    def list_groups(store_id: str) -> list[Any]:
        config = _configured(host, store_id)
        if config.api_token is None:
            raise SettingsError(details=[problem(stores.TOKEN, "no Zendesk API token is stored for this store; "
                                                               "save one first", "missing")])
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
