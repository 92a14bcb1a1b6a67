"""Keeping customer data out of Dramatiq's log lines.

An opcore message's arguments are the event: the customer's email, name and phone. Dramatiq
logs a failed, skipped or unacked message whole (``actor(args)``, at ERROR and WARNING), and each
actor logs the arguments it received (DEBUG). The filter here logs the actor and the message id
in their place, which is what an operator greps for (``opcore dead-letters`` shows the work
itself). It sits on the loggers themselves, so it holds for every handler, pytest's caplog too.
"""

from __future__ import annotations

import logging

from dramatiq import Actor, Message
from dramatiq.broker import MessageProxy

_HIDDEN = "(not logged: it may hold customer data)"


class HideMessageArgs(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple):
            if isinstance(record.msg, str) and record.msg.startswith("Received args="):
                record.args = (_HIDDEN, _HIDDEN)  # an actor's own DEBUG line
            elif any(isinstance(a, (Message, MessageProxy)) for a in args):
                record.args = tuple(f"{a.actor_name}[{a.message_id}]" if isinstance(a, (Message, MessageProxy))
                                    else a for a in args)
        return True


def hide_message_args(logger: logging.Logger | str) -> None:
    """Put the filter on ``logger`` (a Dramatiq worker's, a consumer's or an actor's), once."""
    logger = logging.getLogger(logger) if isinstance(logger, str) else logger
    if not any(isinstance(f, HideMessageArgs) for f in logger.filters):
        logger.addFilter(HideMessageArgs())


def hide_actor_args(actor: Actor) -> Actor:
    hide_message_args(actor.logger)
    return actor
