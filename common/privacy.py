"""Identifiers in logs and traces, hashed: ``IdHasher(key).hash_id("u00042") -> "3f9c0a6e1b2d4c57"``.

Request bodies are never logged. Identifiers that do reach logs or span attributes (user ids, product ids,
request ids a caller chose) go through ``hash_id`` first, so logs can still be joined on an identifier ("every
line about this user") without holding it.

The hash is keyed BLAKE2b with a per-deployment secret salt (``privacy_salt`` in the settings, the same value
in every gateway and worker so their logs agree). Keyed, because user ids are guessable: an unkeyed hash of
``u00042`` is reversed by hashing every plausible id. Anyone holding the salt can do that, so treat it like a
password. Without a configured salt each process draws a random one: identifiers are still hidden, but the
same id hashes differently in each process and after each restart.

Pure and thread-safe: an ``IdHasher`` holds only its key.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tandem.common.settings import GatewaySettings, WorkerSettings

DIGEST_BYTES = 8
"""64-bit hashes (16 hex characters): collisions are rare enough for joining log lines, and short to read."""
RANDOM_SALT_BYTES = 32
MAX_KEY_BYTES = 64
"""BLAKE2b takes keys of at most 64 bytes; longer salts are hashed down to that."""


def hash_id(value: str, *, key: bytes) -> str:
    """The short hex keyed BLAKE2b hash of ``value`` under ``key``."""
    return hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=DIGEST_BYTES, key=key).hexdigest()


def _key_of(salt: str | bytes) -> bytes:
    raw = salt.encode() if isinstance(salt, str) else salt
    return raw if len(raw) <= MAX_KEY_BYTES else hashlib.blake2b(raw).digest()


class IdHasher:
    """Hashes identifiers under one deployment's salt; build it once per process from the settings."""

    __slots__ = ("_key", "random_salt")

    def __init__(self, salt: str | bytes = "") -> None:
        self.random_salt = not salt
        """True when no salt was configured and this process drew its own (hashes differ between processes)."""
        self._key = _key_of(salt) if salt else secrets.token_bytes(RANDOM_SALT_BYTES)

    @classmethod
    def from_settings(cls, settings: GatewaySettings | WorkerSettings) -> IdHasher:
        """The hasher for a process's settings (their ``privacy_salt``)."""
        return cls(settings.privacy_salt.get_secret_value())

    def hash_id(self, value: str) -> str:
        """The short hex hash of ``value`` (16 characters); equal ids give equal hashes under one salt."""
        return hash_id(value, key=self._key)

    def __repr__(self) -> str:  # never show the key
        return f"IdHasher(random_salt={self.random_salt})"
