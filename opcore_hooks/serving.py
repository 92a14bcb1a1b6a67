"""Serving an ASGI app on a real socket from a background thread (demo, sandboxes, tests), and
losing an answer on purpose, as the helpdesk sandboxes do to test lost answers."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import httpx
import uvicorn
from starlette.responses import JSONResponse
from starlette.types import ASGIApp


class ThreadedServer:
    """A uvicorn server in a daemon thread; ``url`` is ready when the constructor returns."""

    def __init__(self, app: ASGIApp, *, host: str = "127.0.0.1", port: int = 0, lifespan: str = "on",
                 name: str = "opcore-server", **options: Any) -> None:
        options.setdefault("log_config", None)
        options.setdefault("access_log", False)
        options.setdefault("timeout_graceful_shutdown", 1)
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, lifespan=lifespan, **options))
        self._thread = threading.Thread(target=self.server.run, name=name, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.server.should_exit = True
                raise RuntimeError(f"{name} did not start on {host}:{port}")
            time.sleep(0.01)
        bound = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://{host}:{bound}"

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=10)

    def __enter__(self) -> ThreadedServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- losing an answer on purpose (the helpdesk sandboxes) -------------------------------------------

class DroppedConnection(httpx.RemoteProtocolError):
    """Raised after a request was processed to lose its answer.

    Under uvicorn the status line is already written when this is raised, so the server closes
    the socket mid-answer and the client gets no complete response. It subclasses httpx's error
    so in-process tests through starlette's TestClient see the same failure a real socket gives.
    """


class DroppedResponse(JSONResponse):
    """Starts the answer, then fails: uvicorn closes the socket before any body is sent."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        raise DroppedConnection("sandbox dropped the connection after processing the request")


class _HideDrops(logging.Filter):
    """A deliberate drop is not a server bug: keep uvicorn from logging its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], DroppedConnection))


def hide_drops() -> None:
    """Call after uvicorn's Config (which may reconfigure logging) of a server that drops answers."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _HideDrops) for f in logger.filters):
        logger.addFilter(_HideDrops())
