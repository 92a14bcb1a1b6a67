"""What a plugin's stand-in helpdesk and its demo use: the host's API for test and demo support.

A plugin's ``sandbox.py`` serves a local stand-in of its helpdesk (``StandInState`` for its
state and faults, ``ThreadedServer``/``ForegroundServer`` to run it, ``DroppedResponse`` and
``fault_options`` for the faults every stand-in injects, ``with_notes``/``hide_drops``), and
its ``demo.py`` drives it through ``opcore demo`` (``DemoHelpdesk``, ``Plan``, ``Outcome``,
``SeenNote``). None of this is on the path that serves webhooks or delivers claims.
"""

from .demo import DemoHelpdesk, Outcome, Plan, SeenNote
from .serving import (
    DroppedResponse,
    ForegroundServer,
    StandInState,
    ThreadedServer,
    fault_options,
    hide_drops,
    with_notes,
)

__all__ = [
    "DemoHelpdesk",
    "DroppedResponse",
    "ForegroundServer",
    "Outcome",
    "Plan",
    "SeenNote",
    "StandInState",
    "ThreadedServer",
    "fault_options",
    "hide_drops",
    "with_notes",
]
