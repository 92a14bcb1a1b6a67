"""Secrets at rest: each store's key derived from the master key, every value bound to its place.

A store's key is HKDF-SHA256(master key, info=store id), so a leaked store key opens one
store only. Values are sealed with AES-256-GCM whose associated data is the store id and the
field name: a ciphertext copied to another store or field fails to open instead of quietly
decrypting to someone else's credential. Several master keys may be configured (newest
first) during a rotation; each token names the key that sealed it by a short fingerprint.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from functools import lru_cache

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .config import ConfigError

_VERSION = "v1"
#: 32 bytes in URL-safe base64: 43 characters of its alphabet, then optional padding.
_MASTER_KEY = re.compile(r"[A-Za-z0-9_-]{43}=?")
_SALT = b"opcore/store-key/v1"
_DERIVED_SALT = b"opcore/derived-key/v1"


class DecryptionError(Exception):
    """A stored secret cannot be opened; the message says why it may be and what to do."""


#: 32 random bytes hold about 30 distinct values; fewer than 16 happens by chance with a
#: probability far below 1e-20, so a key with so few is typed or patterned (all zeros, "abab..."),
#: not random, and every store's credentials would rest on it.
MIN_DISTINCT_BYTES = 16


def generate_master_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def _fingerprint(master: bytes) -> str:
    return hashlib.sha256(b"opcore-kid" + master).hexdigest()[:8]


class Vault:
    def __init__(self, master_keys: list[bytes]) -> None:
        if not master_keys:
            raise ConfigError("OPCORE_MASTER_KEY holds no key")
        self._keys = {_fingerprint(key): key for key in master_keys}
        self._newest = _fingerprint(master_keys[0])

    @classmethod
    def from_setting(cls, value: str) -> Vault:
        """The vault for ``OPCORE_MASTER_KEY``: comma-separated keys, newest first.

        Decoded strictly: Python's base64 decoder skips characters outside its alphabet, so a
        key with junk in it (a stray quote, a space, a ``+``) could still decode to 32 bytes and
        hide a copy-paste error until the wrong key was in use.
        """
        keys = []
        for position, text in enumerate(part.strip() for part in value.split(",")):
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)) if _MASTER_KEY.fullmatch(text) else b""
            if len(raw) != 32:
                raise ConfigError(
                    f"OPCORE_MASTER_KEY entry {position + 1} is not 32 bytes of URL-safe base64 (43 characters "
                    "of A-Z a-z 0-9 - _, then an optional '='); generate one with `opcore keys generate`"
                )
            if len(set(raw)) < MIN_DISTINCT_BYTES:
                raise ConfigError(
                    f"OPCORE_MASTER_KEY entry {position + 1} is not random (it repeats a few bytes, such as "
                    "all zeros); generate one with `opcore keys generate`"
                )
            keys.append(raw)
        return cls(keys)

    def __repr__(self) -> str:
        return f"Vault(keys={len(self._keys)}, newest={self._newest})"

    def _store_key(self, kid: str, store_id: str) -> AESGCM:
        return _derive(self._keys[kid], store_id)

    def encrypt(self, store_id: str, field: str, plaintext: str) -> str:
        nonce = os.urandom(12)
        sealed = self._store_key(self._newest, store_id).encrypt(
            nonce, plaintext.encode(), _aad(store_id, field)
        )
        blob = base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")
        return f"{_VERSION}:{self._newest}:{blob}"

    def decrypt(self, store_id: str, field: str, token: str) -> str:
        where = f"the stored {field} of store {store_id!r}"
        try:
            version, kid, blob = token.split(":", 2)
            raw = base64.urlsafe_b64decode(blob + "=" * (-len(blob) % 4))
        except (ValueError, binascii.Error):
            raise DecryptionError(f"{where} is not an opcore ciphertext; enter the secret again") from None
        if version != _VERSION:
            raise DecryptionError(f"{where} uses an unknown format {version!r}")
        if kid not in self._keys:
            raise DecryptionError(
                f"{where} was encrypted with a master key ({kid}) that is not in OPCORE_MASTER_KEY; "
                "add that key back (after the new one) or enter the secret again"
            )
        try:
            plain = self._store_key(kid, store_id).decrypt(raw[:12], raw[12:], _aad(store_id, field))
        except (InvalidTag, ValueError):
            raise DecryptionError(
                f"{where} failed its integrity check (tampered with, or copied from another store "
                "or field); enter the secret again"
            ) from None
        return plain.decode()

    def derive(self, purpose: str) -> bytes:
        """A 32-byte key for ``purpose`` (e.g. ``"pacing"``) from the newest master key.

        Its own salt keeps it apart from every store's key (HKDF over the store id), whatever
        a store is called. It follows the newest key, so it changes when the master key rotates:
        use it only for what may start over then, never to seal anything.
        """
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=_DERIVED_SALT,
                    info=purpose.encode()).derive(self._keys[self._newest])

    def is_current(self, token: str) -> bool:
        return token.split(":", 2)[1:2] == [self._newest]

    def reseal(self, store_id: str, field: str, token: str) -> str:
        """The same secret under the newest master key (a no-op token when already current)."""
        if self.is_current(token):
            return token
        return self.encrypt(store_id, field, self.decrypt(store_id, field, token))


def _aad(store_id: str, field: str) -> bytes:
    return f"opcore\x00{store_id}\x00{field}".encode()


@lru_cache(maxsize=4096)
def _derive(master: bytes, store_id: str) -> AESGCM:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=store_id.encode()).derive(master)
    return AESGCM(key)
