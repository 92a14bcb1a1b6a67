"""Every request made with a store's key goes through here, so pacing sees all of them.

Delivery and the settings check share one connection pool and one Pacer per host: a 429/492
met by either blocks the key for both, and Richpanel's rate-limit headers tighten the pacing
whichever request they came back with.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, Callable, TypeVar

import httpx

from opcore_hooks import Host

from .client import RateLimited, RichpanelClient, http_transport, transport_of
from .pacing import Pacer
from .settings import RichpanelSettings

NAME = "richpanel"
T = TypeVar("T")

_http: weakref.WeakKeyDictionary[Host, httpx.BaseTransport] = weakref.WeakKeyDictionary()
_pacers: weakref.WeakKeyDictionary[Host, Pacer] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def settings_of(host: Host) -> RichpanelSettings:
    found = host.plugin_settings(NAME)
    return found if isinstance(found, RichpanelSettings) else RichpanelSettings()


def set_http(host: Host, http: httpx.BaseTransport | Any) -> None:
    """Send every Richpanel call of ``host`` through ``http``: a transport (e.g. httpx's
    MockTransport), or a client such as Starlette's TestClient around the sandbox."""
    with _lock:
        _http[host] = transport_of(http)


def client_for(host: Host, api_key: str) -> RichpanelClient:
    """A client for one key over the host's shared connection pool; cheap enough per call."""
    settings = settings_of(host)
    with _lock:
        http = _http.get(host)
        if http is None:
            http = _http[host] = http_transport(
                settings.api_url, limits=httpx.Limits(max_connections=64, max_keepalive_connections=16))
            weakref.finalize(host, http.close)  # the pool lives exactly as long as its host
    return RichpanelClient(settings.api_url, api_key, http=http, timeout=settings.timeout_seconds)


def pacer_for(host: Host) -> Pacer:
    with _lock:
        pacer = _pacers.get(host)
        if pacer is None:
            settings = settings_of(host)
            pacer = _pacers[host] = Pacer(host.redis, host.key(NAME, "pace"), quota=settings.quota,
                                          window=settings.window_seconds)
        return pacer


def call(host: Host, api_key: str, request: Callable[[RichpanelClient], T]) -> T:
    """Send one request with ``api_key``: a rate limit blocks the key, headers tighten pacing."""
    client, pacer = client_for(host, api_key), pacer_for(host)
    try:
        return request(client)
    except RateLimited as exc:
        pacer.block(api_key, exc.retry_after)
        raise
    finally:
        if client.last_rate_limit is not None:
            pacer.observe(api_key, client.last_rate_limit.limit, client.last_rate_limit.remaining)
