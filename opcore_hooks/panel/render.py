"""The panel's HTML and headers: escaped text, no script, a strict CSP, answers cached by version.

The panel runs no script at all and its CSP allows only its own stylesheet, so escaped
customer text could not run even if escaping failed.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader

from ..config import ConfigError

_HERE = Path(__file__).parent
CSS = (_HERE / "static" / "widget.css").read_bytes()
#: Relative to the panel's own URL, with the content's hash so a new stylesheet is fetched at once.
CSS_PATH = "static/widget.css"
_CSS_HREF = f"{CSS_PATH}?v={hashlib.sha256(CSS).hexdigest()[:12]}"
_SOURCE = re.compile(r"'(self|none)'|https?://(\*\.)?[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*(:\d{1,5})?")


def frame_ancestors(value: str, setting: str) -> str:
    """Validated CSP sources: a stray ``;`` in the setting must not smuggle in a directive."""
    sources = value.split()
    bad = [s for s in sources if not _SOURCE.fullmatch(s)]
    if bad:
        raise ConfigError(f"{setting} has invalid sources: {' '.join(bad)}")
    return " ".join(sources) or "'none'"


def security_headers(ancestors: str, setting: str) -> dict[str, str]:
    csp = ("default-src 'none'; style-src 'self'; base-uri 'none'; form-action 'none'; "
           f"frame-ancestors {frame_ancestors(ancestors, setting)}")
    return {"Content-Security-Policy": csp, "Cache-Control": "no-store", "Vary": "Accept",
            "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


def wants_json(accept: str) -> bool:
    types = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    return "application/json" in types and "text/html" not in types[: types.index("application/json")]


def _label(value: str | None) -> str:
    return (value or "").replace("_", " ").capitalize()


_TONES = {"NEW": "blue", "OPEN": "blue", "APPROVED": "green", "RESOLVED": "green",
          "RESOLVED_BY_BRAND": "green", "DENIED": "red", "COMMUNICATING": "amber",
          "WAITING_FOR_BRAND": "amber", "WAITING_FOR_CUSTOMER": "amber", "WAITING_FOR_OP": "amber"}
_MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()


def _day(value: str | None) -> str:
    """``2026-11-20T08:00:00Z`` as ``20 Nov 2026`` (strftime is the slowest part of a render)."""
    try:
        day = datetime.fromisoformat(value) if value else None
    except ValueError:
        return ""
    return f"{day.day} {_MONTHS[day.month - 1]} {day.year}" if day else ""


_env = Environment(loader=FileSystemLoader(_HERE / "templates"), autoescape=True,
                   trim_blocks=True, lstrip_blocks=True)
_env.filters.update(label=_label, day=_day, tone=lambda s: _TONES.get(s, "grey"),
                    web_url=lambda u: isinstance(u, str) and u.startswith(("https://", "http://")))
_template = _env.get_template("widget.html")


def render(view: dict[str, Any]) -> str:
    return _template.render(view=view, css_href=_CSS_HREF)


class Answers:
    """Rendered panels by (store, email, context version, kind), a few hundred, a minute at most.

    A panel is a function of the customer's context alone, and the read model bumps the
    version on every change to it, so an answer stays right until the version moves; the age
    limit only bounds the damage if Redis lost its data and versions start over. Skipping the
    read, the hook and the rendering is what keeps a busy agent's panel within a few ms.
    """

    def __init__(self, size: int = 256, ttl: float = 60.0) -> None:
        self.size, self.ttl = size, ttl
        self._data: OrderedDict[tuple, tuple[float, bytes]] = OrderedDict()

    def get(self, key: tuple, now: float) -> bytes | None:
        hit = self._data.get(key)
        if hit is None or now - hit[0] > self.ttl:
            return None
        self._data.move_to_end(key)
        return hit[1]

    def put(self, key: tuple, body: bytes, now: float) -> None:
        self._data[key] = (now, body)
        self._data.move_to_end(key)
        while len(self._data) > self.size:
            self._data.popitem(last=False)
