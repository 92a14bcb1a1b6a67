"""The Richpanel widget: a signed, read-only panel of one customer's orders and claims.

Richpanel loads ``GET /widgets/richpanel/{store_id}?email=...`` beside a ticket, signing each
request with the store's own secret (``opcore_hooks.signing``), so one store's secret never
opens another store's customers. Provisioning returns the secret once; it is kept sealed by
the host's vault and the previous secret keeps working for ``GRACE_SECONDS`` after a rotation,
long enough to update Richpanel without a gap. The panel runs no script at all and its CSP
allows only its own stylesheet, so escaped customer text could not run even if escaping failed.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets as random
import time
from collections import OrderedDict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import redis
from jinja2 import Environment, FileSystemLoader
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from opcore_hooks import CustomerContext, Host
from opcore_hooks.config import ConfigError
from opcore_hooks.crypto import DecryptionError
from opcore_hooks.signing import HEADER, WINDOW, SignatureError, join, sign, verify

from .settings import RichpanelSettings

NAME = "richpanel"
log = logging.getLogger("opcore.richpanel.widget")

#: How long the secret replaced by a rotation still verifies (stated in the provisioning answer).
GRACE_SECONDS = 24 * 3600
#: Orders shown beside a ticket; every claim the read model keeps is shown.
RECENT_ORDERS = 20
_CURRENT, _PREVIOUS = "richpanel.widget_secret", "richpanel.widget_previous_secret"
_HERE = Path(__file__).parent
_CSS = (_HERE / "static" / "widget.css").read_bytes()
_CSS_HREF = f"static/widget.css?v={hashlib.sha256(_CSS).hexdigest()[:12]}"  # relative to the panel
_SOURCE = re.compile(r"'(self|none)'|https?://(\*\.)?[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*(:\d{1,5})?")
_REFUSALS = {
    "missing": f"missing {HEADER} header",
    "malformed": f"malformed {HEADER} header: expected t=<unix seconds>,v1=<hex HMAC-SHA256>",
    "expired": f"{HEADER} timestamp is more than {WINDOW} s from the server's clock",
    "mismatch": f"{HEADER} does not match this store's signing secret, path and query",
}


def shape_context(host: Host, store_id: str, context: CustomerContext) -> dict[str, Any]:
    """The ``widget_context`` hook: the contract's JSON, recent orders only, every claim.

    The host's CustomerContext is already field for field the contract's shape, so this only
    trims; validating it a second time would cost a third of the request.
    """
    return context.model_copy(update={"orders": context.orders[:RECENT_ORDERS]}).model_dump(mode="json")


# -- secrets --------------------------------------------------------------------------------
class Provisioned(BaseModel):
    signing_secret: str
    previous_secret_valid_until: datetime | None = None


def _key(host: Host, store_id: str) -> str:
    return host.key(NAME, "widget", store_id)


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(int(ts), tz=timezone.utc)


def provision(host: Host, store_id: str, now: float | None = None) -> Provisioned:
    """Give the store a new signing secret; the one it replaces verifies for GRACE_SECONDS more.

    Optimistic transaction, so two concurrent rotations cannot both demote the same secret and
    leave one caller holding a secret that never verifies. A current secret the vault can no
    longer open (its master key is gone) is dropped: re-provisioning is the way out of that.
    """
    now = time.time() if now is None else now
    secret = "opw_" + random.token_urlsafe(32)
    key, vault = _key(host, store_id), host.vault
    with host.redis.pipeline() as pipe:
        while True:
            try:
                pipe.watch(key)
                current, until = pipe.hget(key, "secret"), None
                fields: dict[str, Any] = {"secret": vault.encrypt(store_id, _CURRENT, secret), "at": int(now)}
                if current:
                    try:
                        old = vault.decrypt(store_id, _CURRENT, current.decode())
                        fields["previous"] = vault.encrypt(store_id, _PREVIOUS, old)
                        until = fields["previous_until"] = int(now) + GRACE_SECONDS
                    except DecryptionError as exc:
                        log.warning("widget of store %r: previous secret dropped: %s", store_id, exc)
                pipe.multi()
                pipe.hdel(key, "previous", "previous_until")
                pipe.hset(key, mapping=fields)
                pipe.sadd(host.key(NAME, "widgets"), store_id)
                pipe.execute()
                break
            except redis.WatchError:
                continue
    return Provisioned(signing_secret=secret, previous_secret_valid_until=_utc(until) if until else None)


def active_secrets(host: Host, store_id: str, now: float) -> list[str] | None:
    """The secrets that verify now (current first); None when no widget was provisioned."""
    return _open(host, store_id, host.redis.hgetall(_key(host, store_id)), now)


def _open(host: Host, store_id: str, raw: dict[bytes, bytes], now: float) -> list[str] | None:
    if b"secret" not in raw:
        return None
    found = [host.vault.decrypt(store_id, _CURRENT, raw[b"secret"].decode())]
    if b"previous" in raw and int(raw.get(b"previous_until", b"0")) >= now:
        found.append(host.vault.decrypt(store_id, _PREVIOUS, raw[b"previous"].decode()))
    return found


def rotate(host: Host) -> int:
    """Reseal every widget secret under the newest master key; returns how many were resealed."""
    count = 0
    for member in host.redis.smembers(host.key(NAME, "widgets")):
        store_id, key = member.decode(), _key(host, member.decode())
        with host.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.hgetall(key)
                    fresh = {}
                    for field, place in ((b"secret", _CURRENT), (b"previous", _PREVIOUS)):
                        if field in raw and not host.vault.is_current(raw[field].decode()):
                            fresh[field] = host.vault.reseal(store_id, place, raw[field].decode())
                    pipe.multi()
                    if fresh:
                        pipe.hset(key, mapping=fresh)
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue
        count += len(fresh)
    return count


def widget_path(store_id: str) -> str:
    return f"/widgets/{NAME}/{quote(store_id, safe='')}"


def signed_request_example(
    host: Host, store_id: str, email: str, base_url: str, now: float | None = None
) -> dict[str, Any]:
    """A ready-to-send signed request for the demo and for integrators: URL and headers."""
    now = time.time() if now is None else now
    found = active_secrets(host, store_id, now)
    if found is None:
        raise LookupError(f"store {store_id!r} has no widget; provision it first")
    path, query = widget_path(store_id), urlencode({"email": email})
    return {
        "url": f"{base_url.rstrip('/')}{path}?{query}",
        "headers": {HEADER: sign(found[0], join(path, query), int(now))},
        "valid_until": _utc(now + WINDOW).isoformat(),
    }


# -- HTTP -----------------------------------------------------------------------------------
def _frame_ancestors(value: str) -> str:
    """Validated CSP sources: a stray ``;`` in the setting must not smuggle in a directive."""
    sources = value.split()
    bad = [s for s in sources if not _SOURCE.fullmatch(s)]
    if bad:
        raise ConfigError(f"OPCORE_RICHPANEL_FRAME_ANCESTORS has invalid sources: {' '.join(bad)}")
    return " ".join(sources) or "'none'"


def security_headers(settings: RichpanelSettings) -> dict[str, str]:
    csp = ("default-src 'none'; style-src 'self'; base-uri 'none'; form-action 'none'; "
           f"frame-ancestors {_frame_ancestors(settings.frame_ancestors)}")
    return {"Content-Security-Policy": csp, "Cache-Control": "no-store", "Vary": "Accept",
            "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


def _wants_json(accept: str) -> bool:
    types = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    return "application/json" in types and "text/html" not in types[: types.index("application/json")]


def _label(value: str | None) -> str:
    return (value or "").replace("_", " ").capitalize()


_TONES = {"NEW": "blue", "OPEN": "blue", "APPROVED": "green", "RESOLVED": "green",
          "RESOLVED_BY_BRAND": "green", "DENIED": "red", "COMMUNICATING": "amber",
          "WAITING_FOR_BRAND": "amber", "WAITING_FOR_CUSTOMER": "amber", "WAITING_FOR_OP": "amber"}
_MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()


def _day(value: str | None) -> str:
    """``2026-11-20T08:00:00Z`` as ``20 Nov 2026`` (strftime is the slowest part of a render)."""
    try:
        day = datetime.fromisoformat(value) if value else None
    except ValueError:
        return ""
    return f"{day.day} {_MONTHS[day.month - 1]} {day.year}" if day else ""


_env = Environment(loader=FileSystemLoader(_HERE / "templates"), autoescape=True,
                   trim_blocks=True, lstrip_blocks=True)
_env.filters.update(label=_label, day=_day, tone=lambda s: _TONES.get(s, "grey"),
                    web_url=lambda u: isinstance(u, str) and u.startswith(("https://", "http://")))
_template = _env.get_template("widget.html")


def render(view: dict[str, Any]) -> str:
    return _template.render(view=view, css_href=_CSS_HREF)


class _Answers:
    """Rendered panels by (store, email, context version, kind), a few hundred, a minute at most.

    A panel is a function of the customer's context alone, and the read model bumps the
    version on every change to it, so an answer stays right until the version moves; the age
    limit only bounds the damage if Redis lost its data and versions start over. Skipping the
    read, the hook and the rendering is what keeps a busy agent's panel within a few ms.
    """

    def __init__(self, size: int = 256, ttl: float = 60.0) -> None:
        self.size, self.ttl = size, ttl
        self._data: OrderedDict[tuple, tuple[float, bytes]] = OrderedDict()

    def get(self, key: tuple, now: float) -> bytes | None:
        hit = self._data.get(key)
        if hit is None or now - hit[0] > self.ttl:
            return None
        self._data.move_to_end(key)
        return hit[1]

    def put(self, key: tuple, body: bytes, now: float) -> None:
        self._data[key] = (now, body)
        self._data.move_to_end(key)
        while len(self._data) > self.size:
            self._data.popitem(last=False)


def widget_routes(host: Host) -> list[Route]:
    settings = host.plugin_settings(NAME)
    headers = security_headers(settings if isinstance(settings, RichpanelSettings) else RichpanelSettings())
    answers = _Answers()

    def refuse(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    async def panel(request: Request) -> Response:
        store_id, now = request.path_params["store_id"], time.time()
        email = request.query_params.get("email", "").strip().lower()
        pipe = host.redis.pipeline(transaction=False)  # secrets and context version: one round trip
        pipe.hgetall(_key(host, store_id))
        pipe.get(host.readmodel.version_key(store_id, email))
        raw, version = pipe.execute()
        try:
            found = _open(host, store_id, raw, now)
        except DecryptionError as exc:
            log.error("widget of store %r: %s", store_id, exc)
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
        kind = "application/json" if _wants_json(request.headers.get("accept", "")) else "text/html"
        key = (store_id, email, version, kind)
        body = answers.get(key, now)
        if body is None:  # the version was read first, so a body is never older than its key
            context = host.readmodel.customer_context(store_id, email)
            shaped = host.call_plugin(NAME, "widget_context", host=host, store_id=store_id, context=context)
            view = shaped if shaped is not None else context.model_dump(mode="json")
            body = JSONResponse(view).body if kind == "application/json" else render(view).encode()
            answers.put(key, body, now)
        return Response(body, media_type=kind, headers=headers)

    async def stylesheet(request: Request) -> Response:
        return Response(_CSS, media_type="text/css", headers={
            "Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"})

    return [Route("/static/widget.css", stylesheet), Route("/{store_id}", panel)]


def internal_routes(host: Host) -> list[Route]:
    async def provision_widget(request: Request) -> JSONResponse:
        store_id = request.path_params["store_id"]
        if len(store_id) > 512 or not store_id.isprintable():
            return JSONResponse({"error": "store id must be at most 512 printable characters"}, status_code=422)
        made = provision(host, store_id)
        return JSONResponse({
            "widget_url": str(request.base_url).rstrip("/") + widget_path(store_id),
            "signing_secret": made.signing_secret,
            "signature_header": HEADER,
            "previous_secret_valid_until": made.previous_secret_valid_until.isoformat()
            if made.previous_secret_valid_until else None,
        }, headers={"Cache-Control": "no-store"})

    return [Route("/stores/{store_id}/widget", provision_widget, methods=["POST"])]
