"""The Richpanel clients of a host: one transport per host (a connection per thread), a cheap client per key.

Delivery and the settings check share the transport, and both send through the delivery engine
(``host.delivery("richpanel")``), so a 429/492 met by either blocks the key for both and
Richpanel's rate-limit headers tighten the pacing whichever request they came back with.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

import httpx

from opcore_hooks import Host, transport_for

from .client import RichpanelClient, transport_of
from .settings import RichpanelSettings

NAME = "richpanel"

_http: weakref.WeakKeyDictionary[Host, httpx.BaseTransport] = weakref.WeakKeyDictionary()
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
    """A client for one key over the host's shared transport; cheap enough per call."""
    settings = settings_of(host)
    with _lock:
        http = _http.get(host)
        if http is None:
            http = _http[host] = transport_for(settings.api_url)
            weakref.finalize(host, http.close)  # its connections live exactly as long as its host
    return RichpanelClient(settings.api_url, api_key, http=http, timeout=settings.timeout_seconds)
