"""The settings API every helpdesk plugin has: ``PUT``/``GET``/``DELETE /stores/{store_id}``.

What differs between helpdesks is what a store's settings are and how they are checked; the
HTTP around them does not. A plugin gives its four store functions and gets the routes, answered
in the one error style (``opcore_hooks.errors``): 400/413 for a body that cannot be read, 422 for
anything the admin can fix (every invalid field at once), 404 for a store never configured, 409
when a stored secret cannot be decrypted (the admin enters it again), 503 for a configuration
fault. The blocking calls (Redis, the helpdesk's key check) run in a thread, never on the loop.
Routes of the plugin's own (teams, groups) use ``call`` for the same treatment.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .bodies import read_object
from .config import ConfigError
from .crypto import DecryptionError
from .errors import RequestError, error_response, problem

if TYPE_CHECKING:
    from .host import Host

log = logging.getLogger("opcore.settings")


@dataclass(frozen=True)
class StoreSettingsAPI:
    """One helpdesk's settings API, from what its ``stores`` module does.

    - ``update(host, store_id, body)``: check and save the PUT's body as sent (a mapping, so every
      local fault is refused in one answer), raising ``RequestError``; returns the settings.
    - ``load(host, store_id)``: the stored settings, or None.
    - ``disconnect(host, store_id)``: disable and forget the secret; False when never configured.
    - ``view(settings)``: what an admin may see, secrets masked.
    """

    title: str  # the helpdesk as people read it, e.g. "Richpanel"
    example: str  # a body to show whoever sent one that could not be used
    secret_field: str  # the field whose stored value may fail to decrypt
    update: Callable[[Host, str, Mapping[str, Any]], Any]
    load: Callable[[Host, str], Any]
    disconnect: Callable[[Host, str], bool]
    view: Callable[[Any], dict[str, Any]]
    max_body: int = 16 * 1024

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking call in a thread; a refusal comes back as the answer to send."""
        try:
            return await run_in_threadpool(fn, *args)
        except RequestError as exc:
            return exc.response()
        except DecryptionError as exc:
            return error_response(409, str(exc), [problem(self.secret_field, "the stored value cannot be "
                                                          f"decrypted: send {self.secret_field} again", "unreadable")])
        except ConfigError as exc:
            log.error("%s settings API: %s", self.title, exc)
            return error_response(503, str(exc))

    def not_found(self, store_id: str) -> RequestError:
        return RequestError(f"{self.title} is not configured for store {store_id!r}: PUT its settings first",
                            status=404)

    def configured(self, host: Host, store_id: str) -> Any:
        """The stored settings, or a 404 ``RequestError`` (for routes that need a configured store)."""
        found = self.load(host, store_id)
        if found is None:
            raise self.not_found(store_id)
        return found

    def routes(self, host: Host, *extra: Route) -> list[Route]:
        """The settings routes (to mount under ``/internal/integrations/<plugin>``), then ``extra``."""

        async def put_store(request: Request) -> Response:
            try:
                body = await read_object(request, self.max_body, self.example)
            except RequestError as exc:
                return exc.response()
            result = await self.call(self.update, host, request.path_params["store_id"], body)
            return result if isinstance(result, Response) else JSONResponse(self.view(result))

        async def get_store(request: Request) -> Response:
            result = await self.call(self.configured, host, request.path_params["store_id"])
            return result if isinstance(result, Response) else JSONResponse(self.view(result))

        async def delete_store(request: Request) -> Response:
            store_id = request.path_params["store_id"]
            result = await self.call(self.disconnect, host, store_id)
            if isinstance(result, Response):
                return result
            if not result:
                return self.not_found(store_id).response()
            return await get_store(request)  # the settings as they are now: disabled, secret forgotten

        return [
            Route("/stores/{store_id}", put_store, methods=["PUT"]),
            Route("/stores/{store_id}", get_store, methods=["GET"]),
            Route("/stores/{store_id}", delete_store, methods=["DELETE"]),
            *extra,
        ]
