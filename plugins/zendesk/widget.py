"""The Zendesk widget: the host's panel (``opcore_hooks.panel``) in Zendesk's ticket sidebar.

Zendesk's app framework loads the panel's URL in an iframe; what is Zendesk's own is who may
frame it (``OPCORE_ZENDESK_FRAME_ANCESTORS``, Zendesk's domains by default).
"""

from __future__ import annotations

from opcore_hooks import Host, Panel

from .settings import ZendeskSettings


def panel(host: Host) -> Panel:
    found = host.plugin_settings("zendesk")
    settings = found if isinstance(found, ZendeskSettings) else ZendeskSettings()
    return Panel(frame_ancestors=settings.frame_ancestors, setting="OPCORE_ZENDESK_FRAME_ANCESTORS")
