"""Redis key names: the deployment's namespace, then parts joined by ``:``, each part encoded.

Store ids, claim ids, event ids and customer emails all end up in key names. Joined raw, a
part holding ``:`` could pose as two parts and read or overwrite another store's keys (the
security review's finding 1: an email ``eu:ana@example.com`` under store ``shop`` named store
``shop:eu``'s customer). Each part is percent-encoded wherever it holds ``:`` or ``%``, so
parts never run into each other whatever a future field holds. Also encoded: the glob
characters ``* ? [ ] \\`` (a part never widens a SCAN pattern), ``{ }`` (a part never picks
a Redis Cluster hash slot) and anything outside printable ASCII. Every id the contract
allows, and ordinary emails, encode to themselves, so keys written before this encoding
existed are still found.
"""

from __future__ import annotations

from urllib.parse import quote

_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in ":%*?[]\\{}")


def part(value: str) -> str:
    """One key part, encoded so it can never contain the ``:`` that separates parts."""
    return quote(value, safe=_SAFE)


def join(prefix: str, *parts: str) -> str:
    """``prefix:part:part``: the prefix is the operator's namespace and is used as given."""
    return ":".join((prefix, *map(part, parts)))
