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

from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..bodies import BodyError, read_limited
from ..crypto import DecryptionError
from ..errors import field_errors
from ..ids import email_problem, id_problem
from ..signing import FUTURE_WINDOW, HEADER, WINDOW, SignatureError, join, sign, verify
from . import render
from .secrets import WidgetSecrets, iframe_token, token_matches, utc

if TYPE_CHECKING:
    from ..host import Host

log = logging.getLogger("opcore.panel")

_REFUSALS = {
    "missing": f"missing credential: open the widget's iframe_url, or sign the request with {HEADER}",
    "malformed": f"malformed {HEADER} header: expected t=<unix seconds>,v1=<hex HMAC-SHA256>",
    "expired": f"{HEADER} timestamp is outside the accepted window of the server's clock "
               f"(at most {WINDOW} s old, {FUTURE_WINDOW} s ahead)",
    "mismatch": f"{HEADER} does not match this store's signing secret, path and query",
    "token": "this widget link is not valid for this store: it may have been replaced or revoked; "
             "ask the store admin for the current iframe URL",
}
#: The iframe URL's credential, as a query parameter: the only place a plain iframe can carry one.
TOKEN_PARAM = "token"
EMAIL_PLACEHOLDER = "{email}"


def widget_path(plugin: str, store_id: str) -> str:
    return f"/widgets/{plugin}/{quote(store_id, safe='')}"


def iframe_url(plugin: str, store_id: str, secret: str, base_url: str) -> str:
    """The URL template a helpdesk frames: the store's token, then the literal ``{email}``.

    The token comes first so that whatever the helpdesk puts in place of ``{email}`` cannot
    end it or push it out of the query.
    """
    query = urlencode({TOKEN_PARAM: iframe_token(secret, plugin, store_id)})
    return f"{base_url.rstrip('/')}{widget_path(plugin, store_id)}?{query}&email={EMAIL_PLACEHOLDER}"


def current_secret(secrets: WidgetSecrets, store_id: str, now: float) -> str:
    """The store's newest signing secret; LookupError when it has no widget."""
    found = secrets.active(store_id, now)
    if not found:
        raise LookupError(f"store {store_id!r} has no widget; provision it first")
    return found[0]


def signed_request_example(secrets: WidgetSecrets, plugin: str, store_id: str, email: str, base_url: str,
                           now: float | None = None) -> dict[str, Any]:
    """A ready-to-send signed request for the demo and for integrators: URL and headers."""
    now = time.time() if now is None else now
    secret = current_secret(secrets, store_id, now)
    path, query = widget_path(plugin, store_id), urlencode({"email": email})
    return {
        "url": f"{base_url.rstrip('/')}{path}?{query}",
        "headers": {HEADER: sign(secret, join(path, query), int(now))},
        "valid_until": utc(now + WINDOW).isoformat(),
    }


def widget_routes(host: Host, plugin: str, secrets: WidgetSecrets, headers: dict[str, str]) -> list[Route]:
    answers = render.Answers()

    def refuse(status: int, message: str, extra: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers={**headers, **(extra or {})})

    async def panel(request: Request) -> Response:
        if request.method != "GET":  # Starlette adds HEAD to every GET route; the panel has no use for it
            return refuse(405, "only GET is served here", {"Allow": "GET"})
        store_id, now = request.path_params["store_id"], time.time()
        if problem := id_problem("store_id", store_id):
            return refuse(422, problem)
        emails = request.query_params.getlist("email")
        email = emails[0].strip().lower() if len(emails) == 1 else ""
        pipe = host.redis.pipeline(transaction=False)  # secrets and context version: one round trip
        pipe.hgetall(secrets.key(store_id))
        pipe.get(host.readmodel.version_key(store_id, email))
        raw, version = pipe.execute()
        try:
            found = secrets.open(store_id, raw, now) or []
        except DecryptionError as exc:  # answered as any bad credential: the store's state stays private
            log.error("%s widget of store %r: %s", plugin, store_id, exc)
            found = []
        # Never provisioned, revoked, or unopenable: no secret matches, so the answer is the
        # one a wrong credential gets, and says nothing of which stores exist.
        tokens = request.query_params.getlist(TOKEN_PARAM)
        if tokens:
            if len(tokens) != 1 or not token_matches(tokens[0], found, plugin, store_id):
                return refuse(401, _REFUSALS["token"])
        else:
            scope = request.scope
            path = scope.get("raw_path", scope["path"].encode()).decode("utf-8", "surrogateescape")
            try:
                verify(request.headers.get(HEADER), path,
                       scope["query_string"].decode("utf-8", "surrogateescape"), found, now)
            except SignatureError as exc:
                return refuse(401, _REFUSALS[exc.reason])
        if not email:
            return refuse(400, "the email query parameter is required once: ?email=<customer email>")
        if problem := email_problem("email", email):
            return refuse(422, problem)
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

    return [Route(f"/{render.CSS_PATH}", stylesheet), Route("/{store_id}", panel, methods=["GET"])]


class Rotation(BaseModel):
    """The optional body of a provisioning POST."""

    model_config = ConfigDict(extra="forbid")
    revoke_previous: bool = False


async def _rotation(request: Request) -> Rotation:
    raw = await read_limited(request, 1024)
    if not raw.strip():
        return Rotation()
    try:
        return Rotation.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors()
        if any(e["type"] == "json_invalid" for e in errors):
            raise BodyError(400, 'body is not valid JSON; send {"revoke_previous": true} or nothing') from None
        details = field_errors(exc, model=Rotation)
        fields = ", ".join(d["field"] or "body" for d in details)
        raise BodyError(422, f'invalid body field(s) {fields}: send {{"revoke_previous": true}} or nothing',
                        details) from None


def internal_routes(plugin: str, secrets: WidgetSecrets) -> list[Route]:
    """Provisioning and revocation; the host's guard (``opcore_hooks.guards``) has refused a
    malformed store id before these run, as for every route of the plugin's mount."""

    async def provision_widget(request: Request) -> JSONResponse:
        store_id = request.path_params["store_id"]
        try:
            rotation = await _rotation(request)
        except BodyError as exc:
            return exc.response()
        made = secrets.provision(store_id, revoke_previous=rotation.revoke_previous)
        base = str(request.base_url)
        return JSONResponse({
            "widget_url": base.rstrip("/") + widget_path(plugin, store_id),
            "iframe_url": iframe_url(plugin, store_id, made.signing_secret, base),
            "signing_secret": made.signing_secret,
            "signature_header": HEADER,
            "previous_secret_valid_until": made.previous_secret_valid_until.isoformat()
            if made.previous_secret_valid_until else None,
        }, headers={"Cache-Control": "no-store"})

    async def revoke_widget(request: Request) -> JSONResponse:
        store_id = request.path_params["store_id"]
        return JSONResponse({"store_id": store_id, "revoked": secrets.revoke(store_id)})

    return [Route("/stores/{store_id}/widget", provision_widget, methods=["POST"]),
            Route("/stores/{store_id}/widget", revoke_widget, methods=["DELETE"])]
