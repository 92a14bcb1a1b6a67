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
from typing import Any

import httpx
from dramatiq import Actor, Message
from dramatiq.broker import MessageProxy

_HIDDEN = "(not logged: it may hold customer data)"


class _Relabel(logging.Filter):
    """Logs each argument of one of ``kinds`` as ``label(argument)``, every other one as it is."""

    kinds: tuple[type, ...] = ()

    def label(self, arg: Any) -> str:
        raise NotImplementedError

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(a, self.kinds) for a in record.args):
            record.args = tuple(self.label(a) if isinstance(a, self.kinds) else a for a in record.args)
        return True


class HideMessageArgs(_Relabel):
    kinds = (Message, MessageProxy)

    def label(self, arg: Any) -> str:
        return f"{arg.actor_name}[{arg.message_id}]"

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and isinstance(record.msg, str) and record.msg.startswith("Received args="):
            record.args = (_HIDDEN, _HIDDEN)  # an actor's own DEBUG line
            return True
        return super().filter(record)


class HideRequestPaths(_Relabel):
    kinds = (httpx.URL,)

    def label(self, arg: Any) -> str:
        return f"{arg.scheme}://{arg.netloc.decode('ascii', 'replace')}/…"


def _install(logger: logging.Logger | str, kind: type[logging.Filter]) -> None:
    logger = logging.getLogger(logger) if isinstance(logger, str) else logger
    if not any(isinstance(f, kind) for f in logger.filters):
        logger.addFilter(kind())


def hide_message_args(logger: logging.Logger | str) -> None:
    """Put the filter on ``logger`` (a Dramatiq worker's, a consumer's or an actor's), once."""
    _install(logger, HideMessageArgs)


def hide_actor_args(actor: Actor) -> Actor:
    hide_message_args(actor.logger)
    return actor


def hide_request_paths() -> None:
    """Put the filter on httpx's logger, once (``Host`` does, so an embedding app gets it too)."""
    _install("httpx", HideRequestPaths)
