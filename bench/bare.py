"""The yardstick for bench/ingress.py: a bare Starlette endpoint that only parses the JSON."""

from __future__ import annotations

import json

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def accept(request: Request) -> JSONResponse:
    data = json.loads(await request.body())
    return JSONResponse({"status": "accepted", "event_id": data["id"]}, status_code=202)


app = Starlette(routes=[Route("/webhooks/orderprotection", accept, methods=["POST"])])
