"""Serving an ASGI app on a real socket: in the foreground (``opcore serve``, the sandbox commands)
or from a background thread (demo, sandboxes, tests); and what the helpdesk sandboxes share:
their fault state, the view of their tickets' notes, and losing an answer on purpose."""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
from typing import Any, Callable, Generic, Iterable, TypeVar

import click
import httpx
import uvicorn
from pydantic import BaseModel
from starlette.responses import JSONResponse
from starlette.types import ASGIApp

from .config import ConfigError


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host``:``port``, for uvicorn to serve on.

    Bound here rather than by uvicorn, whose bind failure is a log line in its own words and
    exit 3, so a port in use or an unknown host is one line saying what to change.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on connections whose socket says TCP.
    # Without it every keep-alive answer met Nagle's delay: the ingress fell from 2,300 to 350
    # events a second (bench/pipeline.py).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: restart over TIME_WAIT
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --host or "
                          "--port, or stop the process that holds it") from None
    return sock


def url_of(host: str, sock: socket.socket) -> str:
    """The http URL a bound socket answers on (its real port, when 0 asked for any)."""
    port = sock.getsockname()[1]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class ForegroundServer(uvicorn.Server):
    """uvicorn's server on a socket bound by :func:`listen` before the app starts, calling
    ``on_ready`` with its URL once it accepts connections (uvicorn's own line is hidden below
    its warning level, and says "Uvicorn", not what is served)."""

    def __init__(self, config: uvicorn.Config, on_ready: Callable[[str], None] | None = None) -> None:
        super().__init__(config)
        self.on_ready = on_ready

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        # Bound before anything else runs: the app's lifespan (worker threads) and uvicorn's log lines.
        await super().serve(sockets if sockets is not None else [listen(self.config.host, self.config.port)])

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self.on_ready is not None:
            self.on_ready(url_of(self.config.host, self.servers[0].sockets[0]))


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
        self.url = url_of(host, self.server.servers[0].sockets[0])

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=10)

    def __enter__(self) -> ThreadedServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- the helpdesk stand-ins: their faults, their notes, their lost answers --------------------------

#: A stand-in's fault configuration: a pydantic model with a ``seed`` field.
C = TypeVar("C", bound=BaseModel)


class StandInState(Generic[C]):
    """What every helpdesk stand-in keeps besides its accounts: a config validated as a whole,
    one lock for the threads its app runs in, and the RNG its faults draw from."""

    def __init__(self, config: C) -> None:
        self.lock = threading.RLock()
        self.config = config
        self.rng = random.Random(config.seed)

    def update_config(self, **changes: Any) -> C:
        """Partial update, validated as a whole; a new seed restarts the RNG."""
        with self.lock:
            self.config = type(self.config).model_validate({**self.config.model_dump(), **changes})
            if "seed" in changes:
                self.rng = random.Random(self.config.seed)
            return self.config


def with_notes(tickets: Iterable[tuple[dict[str, Any], int]], time_field: str,
               writes_to_unknown_tickets: int) -> dict[str, Any]:
    """One stand-in account's tickets as the judges read them (``GET /_sandbox/tickets``).

    ``tickets`` pairs each ticket (its ``comments`` in the order written) with how many comments
    it was created with. Each ticket is shown with ``notes``: the comments written after creation,
    in order, as ``{"position": 1, 2, ..., "public", "body", "created_at"}`` (the comment's
    ``time_field``). Beside them, what a judge flags: ``public_comments_after_creation`` (each could
    have emailed the customer) and ``writes_to_unknown_tickets`` (writes naming a ticket the
    account does not hold, answered 404: a note or finish before its ticket).
    """
    shown, public = [], 0
    for ticket, created in tickets:
        notes = [{"position": n, "public": bool(c.get("public")), "body": c.get("body"),
                  "created_at": c.get(time_field)} for n, c in enumerate(ticket.get("comments", [])[created:], 1)]
        public += sum(note["public"] for note in notes)
        shown.append({**ticket, "notes": notes})
    return {"tickets": shown, "public_comments_after_creation": public,
            "writes_to_unknown_tickets": writes_to_unknown_tickets}


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


def fault_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--error-rate`` and ``--drop-rate`` for a sandbox command: the faults every helpdesk
    stand-in injects, each a probability, so a value past 1 is a usage error, not a traceback."""
    command = click.option("--drop-rate", default=0.0, show_default=True, type=click.FloatRange(0, 1),
                           help="Fraction processed, then connection dropped.")(command)
    return click.option("--error-rate", default=0.0, show_default=True, type=click.FloatRange(0, 1),
                        help="Fraction of requests answered 500.")(command)
