"""AES-256-GCM as the UID2 protocol lays it out: ``IV(12) || ciphertext || tag(16)``.

This is the only module that touches the AEAD primitive. ``open_`` raises ``AeadFailure`` (a
plain exception local to the wire layer) so each caller can turn it into its own typed error.
"""

from __future__ import annotations

from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

RandomBytes = Callable[[int], bytes]

IV_SIZE = 12
TAG_SIZE = 16
KEY_SIZE = 32
OVERHEAD = IV_SIZE + TAG_SIZE


class AeadFailure(Exception):
    """The blob is too short, the key has the wrong size, or authentication failed."""


def seal(key: bytes, plaintext: bytes, random: RandomBytes, aad: bytes | None = None) -> bytes:
    """Encrypt ``plaintext`` under ``key`` with a fresh IV drawn from ``random``."""
    return seal_with_iv(key, random(IV_SIZE), plaintext, aad)


def seal_with_iv(key: bytes, iv: bytes, plaintext: bytes, aad: bytes | None = None) -> bytes:
    if len(iv) != IV_SIZE:
        raise ValueError(f"IV must be {IV_SIZE} bytes")
    return iv + AESGCM(key).encrypt(iv, plaintext, aad)


def open_(key: bytes, blob: bytes, aad: bytes | None = None) -> bytes:
    """Decrypt and authenticate ``blob``; raise ``AeadFailure`` on any problem."""
    if len(key) != KEY_SIZE or len(blob) < OVERHEAD:
        raise AeadFailure
    try:
        return AESGCM(key).decrypt(blob[:IV_SIZE], blob[IV_SIZE:], aad)
    except InvalidTag as exc:
        raise AeadFailure from exc
