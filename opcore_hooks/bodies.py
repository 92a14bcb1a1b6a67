"""Reading a JSON request body: bounded in size and in depth, with errors that say what to send.

Python's json parser recurses, so a body of a few thousand nested brackets raises
RecursionError, and one a few hundred deep breaks later serialisation (found by the fuzzer);
no legitimate payload nests more than a handful of levels. It also refuses integers of more
than 4,300 digits with a ValueError; both are a 400, never a 500 with a traceback. And JSON can
spell a lone surrogate (``"\\udcff"``), which Python keeps in a ``str`` that no UTF-8 request,
Redis key or log line can carry: a body holding one anywhere is refused, naming where.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from starlette.requests import ClientDisconnect, Request

from .errors import Detail, RequestError, not_an_object, problem

#: No webhook or settings body comes near this; anything deeper is refused before validation.
MAX_DEPTH = 32


class BodyError(RequestError):
    """The body cannot be used; ``status`` is what the ingress answers (413, 400 or 422)."""

    def __init__(self, status: int, message: str, details: list[Detail] | None = None) -> None:
        super().__init__(message, details, status=status)


async def read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BodyError(413, f"body is larger than {limit // 1024} KiB")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BodyError(413, f"body is larger than {limit // 1024} KiB")
            chunks.append(chunk)
    except ClientDisconnect:
        raise BodyError(400, "the request body was not fully received") from None
    return b"".join(chunks)


#: Only an escape can put a surrogate in a parsed string (UTF-8 bytes cannot encode one), so a
#: body without such an escape is never walked.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _lone_surrogate_at(value: Any) -> str | None:
    """The path of the first string (or key) holding a lone surrogate, else None."""
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, str):
            try:
                node.encode("utf-8")
            except UnicodeEncodeError:
                return path
        elif isinstance(node, dict):
            for key, child in node.items():
                here = f"{path}.{key}" if path else str(key)
                try:
                    key.encode("utf-8")
                except UnicodeEncodeError:
                    return path or "(a key)"
                stack.append((child, here))
        elif isinstance(node, list):
            stack.extend((child, f"{path}.{i}" if path else str(i)) for i, child in enumerate(node))
    return None


def _depth_exceeds(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            if depth > limit:
                return True
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


async def read_json(request: Request, limit: int) -> Any:
    raw = await read_limited(request, limit)
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BodyError(400, f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BodyError(400, f"body is not usable JSON: it nests deeper than {MAX_DEPTH} levels") from None
    except ValueError:  # Python's cap on int-string conversion (CVE-2020-10735) guards json.loads too
        raise BodyError(400, "body is not usable JSON: a number has more than "
                             f"{sys.get_int_max_str_digits()} digits") from None
    # Each nested object or array opens with a bracket byte (in any encoding json.loads
    # takes), so a body with few brackets cannot nest deep: only the rare one is walked.
    if raw.count(b"{") + raw.count(b"[") > MAX_DEPTH and _depth_exceeds(data, MAX_DEPTH):
        raise BodyError(422, f"body nests deeper than {MAX_DEPTH} levels")
    if _SURROGATE_ESCAPE.search(raw) and (where := _lone_surrogate_at(data)) is not None:
        field, rule = where.encode("utf-8", "backslashreplace").decode("ascii"), "must be valid Unicode text"
        raise BodyError(422, f"{field or 'body'} {rule} (it holds a lone surrogate)",
                        [problem(field, f"{rule} (it holds a lone surrogate)", "string_unicode")])
    return data


async def read_object(request: Request, limit: int, example: str) -> dict[str, Any]:
    """The body as a JSON object, refused as the ingress refuses the same body otherwise.

    Every settings PUT takes an object; ``example`` (a short valid body) ends each refusal, so
    the admin learns what to send along with what was wrong.
    """
    try:
        data = await read_json(request, limit)
    except BodyError as exc:
        raise BodyError(exc.status, f"{exc.message}; send e.g. {example}", exc.details) from None
    if not isinstance(data, dict):
        wrong = not_an_object(example)
        raise BodyError(422, wrong["message"], [wrong])
    return data
