"""Signed requests: ``X-OP-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>`` (CONTRACT.md, "Widget").

A helpdesk widget is loaded by the helpdesk, not by a person holding an admin token, so each
request carries an HMAC over the moment it was made and the exact path and query it asks for.
The timestamp bounds replay to a short window; covering the query means a signature for one
customer cannot be reused to read another. Several ``v1=`` entries may stand in one header so a
signer can sign with the old and the new secret while a secret rotates. Generic on purpose: any
plugin's widget routes use it with their own per-store secrets.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Iterable, Literal

HEADER = "X-OP-Signature"
#: Seconds a signature stays valid after the moment it names.
WINDOW = 300
#: Seconds a signature may name ahead of the server's clock: room for clock skew, not for
#: minting a signature that lives twice as long as WINDOW (the security review's finding 7).
FUTURE_WINDOW = 30
#: Longer headers are refused unread: nobody legitimate sends a kilobyte of signatures.
_MAX_HEADER = 1024
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")

Reason = Literal["missing", "malformed", "expired", "mismatch"]


class SignatureError(Exception):
    """The request is not signed as the contract says; ``reason`` says how, for the 401 answer."""

    def __init__(self, reason: Reason) -> None:
        super().__init__(reason)
        self.reason: Reason = reason


def signed_text(t: int, path_qs: str) -> bytes:
    """What is MACed: ``"<t>.<path>?<query>"``, or ``"<t>.<path>"`` when there is no query.

    UTF-8 with surrogateescape, so a server that decodes the raw request bytes the same way
    MACs exactly the bytes that were sent, even when they are not valid UTF-8.
    """
    return f"{t}.{path_qs}".encode("utf-8", "surrogateescape")


def _mac(secret: str, t: int, path_qs: str) -> str:
    return hmac.new(secret.encode(), signed_text(t, path_qs), hashlib.sha256).hexdigest()


def sign(secret: str, path_qs: str, t: int) -> str:
    """The header value for a request to ``path_qs`` (``/path`` or ``/path?query``) at ``t``."""
    return f"t={t},v1={_mac(secret, t, path_qs)}"


def sign_all(secrets: Iterable[str], path_qs: str, t: int) -> str:
    """One header with a ``v1=`` entry per secret, for signers that straddle a rotation."""
    return f"t={t}," + ",".join(f"v1={_mac(secret, t, path_qs)}" for secret in secrets)


def join(path: str, query: str) -> str:
    """``path?query`` as the signature covers it; ``path`` alone when the query is empty."""
    return f"{path}?{query}" if query else path


def _parse(header: str) -> tuple[int, list[str]]:
    if len(header) > _MAX_HEADER:
        raise SignatureError("malformed")
    t: int | None = None
    macs: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            raise SignatureError("malformed")
        if key == "t":
            if t is not None or not value.isascii() or not value.isdigit() or len(value) > 12:
                raise SignatureError("malformed")
            t = int(value)
        elif key == "v1":
            if not _HEX64.fullmatch(value):
                raise SignatureError("malformed")
            macs.append(value.lower())
        # other schemes (v0=, v2=) are ignored so a future scheme can be added beside v1
    if t is None or not macs:
        raise SignatureError("malformed")
    return t, macs


def verify(
    header: str | None,
    path: str,
    query: str,
    secrets: list[str],
    now: float,
    window: int = WINDOW,
    future: int = FUTURE_WINDOW,
) -> None:
    """Return quietly when one ``v1=`` entry matches one of ``secrets``; raise SignatureError if not.

    ``path`` and ``query`` must be exactly as the client sent them (the raw, still
    percent-encoded request target): re-encoding would make honest signatures fail and let
    two spellings of one request share a signature. Every candidate is compared in constant
    time, and the loop never stops early, so timing says nothing about which entry was close.
    """
    if header is None or not header.strip():
        raise SignatureError("missing")
    t, given = _parse(header)
    if now - t > window or t - now > future:
        raise SignatureError("expired")
    path_qs = join(path, query)
    matched = False
    for secret in secrets:
        expected = _mac(secret, t, path_qs)
        for mac in given:
            matched |= hmac.compare_digest(mac, expected)
    if not matched:
        raise SignatureError("mismatch")
