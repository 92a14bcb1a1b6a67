"""Redis key names: the deployment's namespace, then parts joined by ``:``, each part encoded.

Store ids, claim ids, event ids and customer emails all end up in key names. Joined raw, a
part holding ``:`` could pose as two parts and read or overwrite another store's keys (the
security review's finding 1: an email ``eu:ana@example.com`` under store ``shop`` named store
``shop:eu``'s customer). Each part has its ``%`` written ``%25`` and its ``:`` written ``%3A``,
so parts never run into each other whatever a future field holds, and two different parts
never encode alike. Nothing else changes: every id the contract allows and every email
without ``:`` or ``%`` (non-ASCII ones included) encode to themselves, so keys written before
this encoding existed are still found. No key pattern (SCAN) is ever built from an outside
value, so glob characters need no encoding.
"""

from __future__ import annotations


def part(value: str) -> str:
    """One key part, encoded so it can never contain the ``:`` that separates parts."""
    return value.replace("%", "%25").replace(":", "%3A")


def join(prefix: str, *parts: str) -> str:
    """``prefix:part:part``: the prefix is the operator's namespace and is used as given.

    Almost every part needs no encoding; checking the joined parts at once (no ``%``, and no
    ``:`` but the separators) spares a call per part on every key a claim's work names.
    """
    body = ":".join(parts)
    if parts and "%" not in body and body.count(":") == len(parts) - 1:
        return f"{prefix}:{body}"
    return ":".join((prefix, *map(part, parts)))
