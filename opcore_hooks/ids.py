"""What a store id or a claim id may hold: 1 to 128 of ``A-Z a-z 0-9 . _ -`` (CONTRACT.md).

They become parts of Redis keys, URLs, idempotency keys and log lines, so anything else (a ``:``
that would join two stores' keys, a newline that would forge a log line) is refused at every
door: the ingress, the settings APIs, the widget, with a 422 that names the field.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field

PATTERN = r"^[A-Za-z0-9._-]{1,128}$"
_ID = re.compile(PATTERN)
RULE = "1 to 128 characters from A-Z a-z 0-9 . _ -"

#: A pydantic field type for ids in models (the ingress's events).
Identifier = Annotated[str, Field(pattern=PATTERN)]


def id_problem(field: str, value: str) -> str | None:
    """None when ``value`` is a valid id, else a message naming ``field`` and the rule."""
    return None if _ID.match(value) else f"{field} must be {RULE}"
