"""What a store id or a claim id may hold: 1 to 128 of ``A-Z a-z 0-9 . _ -`` (CONTRACT.md),
and what counts as a customer's email address.

They become parts of Redis keys, URLs, idempotency keys and log lines, so anything else (a ``:``
that would join two stores' keys, a newline that would forge a log line) is refused at every
door: the ingress, the settings APIs, the widget, with a 422 that names the field. Keys encode
each part as well (``opcore_hooks.keys``), so the rule is one of two locks, not the only one.

The email rule is deliberately plain (one ``@`` with text either side, no space or control
character, at most 320 characters): a claim is never refused for an address its store accepted,
and the widget refuses only what cannot be an address at all.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field

PATTERN = r"^[A-Za-z0-9._-]{1,128}$"
_ID = re.compile(PATTERN)
RULE = "1 to 128 characters from A-Z a-z 0-9 . _ -"

def _not_dots(value: str) -> str:
    if value in (".", ".."):
        raise ValueError("cannot be '.' or '..' (they cannot stand in a URL path)")
    return value


#: A pydantic field type for ids in models (the ingress's events).
Identifier = Annotated[str, Field(pattern=PATTERN), AfterValidator(_not_dots)]

EMAIL_PATTERN = r"^[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+$"
_EMAIL = re.compile(EMAIL_PATTERN)
EMAIL_MAX = 320

#: A pydantic field type for a customer's email address.
Email = Annotated[str, Field(min_length=3, max_length=EMAIL_MAX, pattern=EMAIL_PATTERN)]


def id_problem(field: str, value: str) -> str | None:
    """None when ``value`` is a valid id, else a message naming ``field`` and the rule.

    ``.`` and ``..`` fit the characters but no URL can carry them as a path segment (browsers
    and HTTP clients resolve them, even percent-encoded), so their widget could never open.
    """
    if value in (".", ".."):
        return f"{field} cannot be '.' or '..' (they cannot stand in a URL path); use {RULE}"
    return None if _ID.fullmatch(value) else f"{field} must be {RULE}"


def email_problem(field: str, value: str) -> str | None:
    """None when ``value`` is an email address by the plain rule above, else what is wrong."""
    if len(value) <= EMAIL_MAX and _EMAIL.fullmatch(value):
        return None
    return f"{field} must be one email address (name@domain, at most {EMAIL_MAX} characters)"
