"""The internal settings API: ``/internal/integrations/zendesk/stores/{store_id}[/groups]``.

The host mounts these routes behind the admin token and builds the settings routes themselves
(``opcore_hooks.settings_api``). What is Zendesk's own here is the groups route: the account's
groups, straight from Zendesk (502 when Zendesk failed to answer).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from opcore_hooks import Host, StoreSettingsAPI, problem

from . import stores
from .stores import SettingsError

SETTINGS = StoreSettingsAPI(title="Zendesk", example=stores.EXAMPLE, secret_field=stores.TOKEN,
                            update=stores.update, load=stores.load, disconnect=stores.disconnect, view=stores.view)


def internal_routes(host: Host) -> list[Route]:
    def list_groups(store_id: str) -> list[Any]:
        config = SETTINGS.configured(host, store_id)
        if config.api_token is None:
            raise SettingsError(details=[problem(stores.TOKEN, "no Zendesk API token is stored for this store; "
                                                               "save one first", "missing")])
        return stores.groups(host, config, "the stored credentials", unavailable_status=502)

    async def get_groups(request: Request) -> Response:
        result = await SETTINGS.call(list_groups, request.path_params["store_id"])
        if isinstance(result, Response):
            return result
        return JSONResponse({"groups": [{"id": g.id, "name": g.name} for g in result]})

    return SETTINGS.routes(host, Route("/stores/{store_id}/groups", get_groups, methods=["GET"]))
