"""Serving an ASGI app on a real socket from a background thread (demo, sandbox, tests)."""

from __future__ import annotations

import threading
import time
from typing import Any

import uvicorn
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
