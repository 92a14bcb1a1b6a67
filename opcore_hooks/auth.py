"""Shared-secret checks, always in constant time so a secret cannot be guessed byte by byte."""

from __future__ import annotations

import hmac

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send


def secret_matches(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


class BearerAuth:
    """ASGI middleware guarding a whole mount: every path under it, known or not, needs the token."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            scheme, _, given = header.partition(" ")
            if self.token is None or scheme.lower() != "bearer" or not secret_matches(given.strip(), self.token):
                response = JSONResponse(
                    {"error": "missing or wrong admin token: send 'Authorization: Bearer <OPCORE_ADMIN_TOKEN>'"},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
