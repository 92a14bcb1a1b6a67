"""The internal settings API: ``/internal/integrations/richpanel/stores/{store_id}[/teams]``.

The host mounts these routes behind the admin bearer token and builds the settings routes
themselves (``opcore_hooks.settings_api``); the rules live in ``stores`` so the CLI obeys the
same ones. What is Richpanel's own here is the teams route: the account's teams, straight from
Richpanel (502 when Richpanel failed to answer).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from opcore_hooks import Host, StoreSettingsAPI

from . import stores

SETTINGS = StoreSettingsAPI(title="Richpanel", example=stores.EXAMPLE, secret_field=stores.FIELD,
                            update=stores.update, load=stores.load, disconnect=stores.disconnect, view=stores.view)


def internal_routes(host: Host) -> list[Route]:
    """The settings routes for ``host``; mounted under ``/internal/integrations/richpanel``."""

    async def get_teams(request: Request) -> Response:
        result = await SETTINGS.call(stores.list_teams, host, request.path_params["store_id"])
        if isinstance(result, Response):
            return result
        return JSONResponse({"teams": [{"id": t.id, "name": t.name} for t in result]})

    return SETTINGS.routes(host, Route("/stores/{store_id}/teams", get_teams, methods=["GET"]))
