"""A plugin's widget panel over HTTP: the signed panel, its stylesheet, and provisioning.

``GET /widgets/<plugin>/{store_id}?email=...`` is loaded by the helpdesk beside a ticket, each
request signed with the store's own secret (``opcore_hooks.signing``), so one store's secret
never opens another store's customers. ``POST /internal/integrations/<plugin>/stores/{store_id}
/widget`` provisions or rotates the secret (behind the admin token, as every internal route).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..crypto import DecryptionError
from ..ids import id_problem
from ..signing import HEADER, WINDOW, SignatureError, join, sign, verify
from . import render
from .secrets import WidgetSecrets, utc

if TYPE_CHECKING:
    from ..host import Host

log = logging.getLogger("opcore.panel")

_REFUSALS = {
    "missing": f"missing {HEADER} header",
    "malformed": f"malformed {HEADER} header: expected t=<unix seconds>,v1=<hex HMAC-SHA256>",
    "expired": f"{HEADER} timestamp is more than {WINDOW} s from the server's clock",
    "mismatch": f"{HEADER} does not match this store's signing secret, path and query",
}


def widget_path(plugin: str, store_id: str) -> str:
    return f"/widgets/{plugin}/{quote(store_id, safe='')}"


def signed_request_example(secrets: WidgetSecrets, plugin: str, store_id: str, email: str, base_url: str,
                           now: float | None = None) -> dict[str, Any]:
    """A ready-to-send signed request for the demo and for integrators: URL and headers."""
    now = time.time() if now is None else now
    found = secrets.active(store_id, now)
    if found is None:
        raise LookupError(f"store {store_id!r} has no widget; provision it first")
    path, query = widget_path(plugin, store_id), urlencode({"email": email})
    return {
        "url": f"{base_url.rstrip('/')}{path}?{query}",
        "headers": {HEADER: sign(found[0], join(path, query), int(now))},
        "valid_until": utc(now + WINDOW).isoformat(),
    }


def widget_routes(host: Host, plugin: str, secrets: WidgetSecrets, headers: dict[str, str]) -> list[Route]:
    answers = render.Answers()

    def refuse(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    async def panel(request: Request) -> Response:
        store_id, now = request.path_params["store_id"], time.time()
        if problem := id_problem("store_id", store_id):
            return refuse(422, problem)
        email = request.query_params.get("email", "").strip().lower()
        pipe = host.redis.pipeline(transaction=False)  # secrets and context version: one round trip
        pipe.hgetall(secrets.key(store_id))
        pipe.get(host.readmodel.version_key(store_id, email))
        raw, version = pipe.execute()
        try:
            found = secrets.open(store_id, raw, now)
        except DecryptionError as exc:
            log.error("%s widget of store %r: %s", plugin, store_id, exc)
            return refuse(503, "this store's widget secret cannot be opened; provision the widget again")
        if found is None:
            return refuse(404, f"no widget is provisioned for store {store_id!r}")
        scope = request.scope
        path = scope.get("raw_path", scope["path"].encode()).decode("utf-8", "surrogateescape")
        try:
            verify(request.headers.get(HEADER), path, scope["query_string"].decode("utf-8", "surrogateescape"),
                   found, now)
        except SignatureError as exc:
            return refuse(401, _REFUSALS[exc.reason])
        if not email or len(email) > 320:
            return refuse(400, "the email query parameter is required: ?email=<customer email>, "
                               "at most 320 characters")
        kind = "application/json" if render.wants_json(request.headers.get("accept", "")) else "text/html"
        key = (store_id, email, version, kind)
        body = answers.get(key, now)
        if body is None:  # the version was read first, so a body is never older than its key
            context = host.readmodel.customer_context(store_id, email)
            shaped = host.call_plugin(plugin, "widget_context", host=host, store_id=store_id, context=context)
            view = shaped if shaped is not None else context.model_dump(mode="json")
            body = JSONResponse(view).body if kind == "application/json" else render.render(view).encode()
            answers.put(key, body, now)
        return Response(body, media_type=kind, headers=headers)

    async def stylesheet(request: Request) -> Response:
        return Response(render.CSS, media_type="text/css", headers={
            "Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"})

    return [Route(f"/{render.CSS_PATH}", stylesheet), Route("/{store_id}", panel)]


def internal_routes(plugin: str, secrets: WidgetSecrets) -> list[Route]:
    async def provision_widget(request: Request) -> JSONResponse:
        store_id = request.path_params["store_id"]
        if problem := id_problem("store_id", store_id):
            return JSONResponse({"error": problem, "details": [{"field": "store_id", "message": problem}]},
                                status_code=422)
        made = secrets.provision(store_id)
        return JSONResponse({
            "widget_url": str(request.base_url).rstrip("/") + widget_path(plugin, store_id),
            "signing_secret": made.signing_secret,
            "signature_header": HEADER,
            "previous_secret_valid_until": made.previous_secret_valid_until.isoformat()
            if made.previous_secret_valid_until else None,
        }, headers={"Cache-Control": "no-store"})

    return [Route("/stores/{store_id}/widget", provision_widget, methods=["POST"])]
