"""Keeping customer data out of the libraries' log lines.

An opcore message's arguments are the event: the customer's email, name and phone. Dramatiq
logs a failed, skipped or unacked message whole (``actor(args)``, at ERROR and WARNING), and each
actor logs the arguments it received (DEBUG). The filter here logs the actor and the message id
in their place, which is what an operator greps for (``opcore dead-letters`` shows the work
itself). httpx logs every request's URL (INFO), and a helpdesk lookup carries the customer's
email in its path; its filter keeps the origin only. The filters sit on the loggers themselves,
so they hold for every handler, pytest's caplog too.
"""

from __future__ import annotations

import logging

import httpx
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


class HideRequestPaths(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(a, httpx.URL) for a in record.args):
            record.args = tuple(f"{a.scheme}://{a.netloc.decode('ascii', 'replace')}/…" if isinstance(a, httpx.URL)
                                else a for a in record.args)
        return True


def hide_request_paths() -> None:
    """Put the filter on httpx's logger, once (``Host`` does, so an embedding app gets it too)."""
    logger = logging.getLogger("httpx")
    if not any(isinstance(f, HideRequestPaths) for f in logger.filters):
        logger.addFilter(HideRequestPaths())
