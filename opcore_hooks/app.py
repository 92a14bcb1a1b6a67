"""The web tier: ingress, health, and every plugin's routes under the host's prefixes."""

from __future__ import annotations

import contextlib
import gc
import logging
from typing import AsyncIterator

from prometheus_client import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import Receive, Scope, Send

from .auth import BearerAuth
from .guards import replicated_writes, store_ids_checked
from .host import Host
from .ingress import Ingress
from .replication import replication_status
from .routes import Routes
from .worker import EmbeddedWorker

log = logging.getLogger("opcore.app")


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def _store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.error("%s %r: Redis is unavailable: %s", request.method, request.url.path, type(exc).__name__)
    return JSONResponse({"error": "the store is unavailable; nothing was changed, retry later"}, status_code=503,
                        headers={"Retry-After": "5"})


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("%s %r failed", request.method, request.url.path)
    return JSONResponse({"error": "internal error; it has been logged"}, status_code=500)


#: Every answer is JSON, even a 404 for an unknown path or a Redis outage in any plugin route.
ERROR_HANDLERS = {HTTPException: _http_error, RedisError: _store_unavailable, Exception: _internal_error}


def create_app(host: Host, *, with_worker: bool = False, worker_threads: int = 4) -> Starlette:
    """The ASGI app for ``host``; ``with_worker`` runs Dramatiq threads for the app's lifetime."""

    async def healthz(request: Request) -> JSONResponse:
        try:
            host.redis.ping()
        except Exception as exc:  # noqa: BLE001 - any failure means unhealthy, and says which
            return JSONResponse({"status": "unavailable", "redis": type(exc).__name__}, status_code=503)
        status = replication_status(host.redis)
        return JSONResponse({
            "status": "ok",
            "store": "embedded" if host.settings.embedded else "redis",
            "plugins": host.plugin_names,
            "plugin_failures": sorted(host.loaded.failures),
            # Redis answers, so this process is healthy; with fewer replicas in sync than
            # required, events are refused (503) until one is back: said here, and in /metrics.
            "replication": {"required": host.replication.required, **(status.as_dict() if status else {})},
        })

    internal: list[Mount] = []
    widgets: list[Mount] = []
    for name in host.plugin_names:
        routes: Routes = host.call_plugin(name, "register_routes", host=host) or Routes()
        panel = host.panel(name)
        plugin_internal = [*routes.internal, *(panel.internal_routes() if panel else [])]
        plugin_widget = [*routes.widget, *(panel.widget_routes() if panel else [])]  # the panel's /{store_id} last
        if plugin_internal:
            guards = [Middleware(store_ids_checked)]  # a malformed store id never reaches a plugin
            if panel:
                guards.append(Middleware(panel.revoking_on_store_delete))  # a store's DELETE ends its widget
            internal.append(Mount(f"/integrations/{name}", routes=plugin_internal, middleware=guards))
        if plugin_widget:
            widgets.append(Mount(f"/{name}", routes=plugin_widget))

    token = host.settings.admin_token.get_secret_value() if host.settings.admin_token else None

    async def metrics(scope: Scope, receive: Receive, send: Send) -> None:
        body = await run_in_threadpool(host.metrics.render)
        await Response(body, media_type=CONTENT_TYPE_LATEST)(scope, receive, send)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Everything built so far lives as long as the process: keeping it out of the
        # collector's generations removes most of the tail latency of a full collection.
        gc.freeze()
        worker = EmbeddedWorker(host, threads=worker_threads) if with_worker else None
        if worker:
            worker.start()
        try:
            yield
        finally:
            # uvicorn has answered every request by now; what they handed to Redis is
            # finished before the process goes.
            host.dispatcher.close()
            if worker:
                worker.stop()

    app = Starlette(
        exception_handlers=ERROR_HANDLERS,
        routes=[
            Route("/healthz", healthz),
            Route("/metrics", BearerAuth(metrics, token=token), methods=["GET"]),
            Route("/webhooks/orderprotection", Ingress(host).handle, methods=["POST"]),
            Mount("/internal", routes=internal, middleware=[
                Middleware(BearerAuth, token=token),
                Middleware(replicated_writes, host=host)]),
            Mount("/widgets", routes=widgets),
        ],
        lifespan=lifespan,
    )
    app.state.host = host
    return app


def from_env() -> Starlette:
    """ASGI factory for ``uvicorn --factory opcore_hooks.app:from_env`` (several web processes)."""
    from .config import Settings

    settings = Settings()
    settings.require("webhook_secret", "admin_token", "master_key")
    return create_app(Host.from_env(), with_worker=settings.embedded)
