"""The Richpanel plugin's hook implementations: thin, each delegating to the module that owns it."""

from __future__ import annotations

from opcore_hooks import ClaimCreated, ClaimStatusChanged, Event, Host, hookimpl

NAME = "richpanel"


@hookimpl
def on_claim_created(host: Host, event: Event, claim: ClaimCreated) -> None:
    return None


@hookimpl
def on_claim_status_changed(host: Host, event: Event, change: ClaimStatusChanged) -> None:
    return None
