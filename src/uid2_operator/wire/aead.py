"""AES-256-GCM as the UID2 protocol lays it out: ``IV(12) || ciphertext || tag(16)``.

This is the only module that touches the AEAD primitive. ``seal_in_parts`` gives the same layout
for a plaintext that arrives in parts (a response too large to hold at once). ``open_`` raises
``AeadFailure`` (a plain exception local to the wire layer) so each caller can turn it into its
own typed error.

Cipher objects are cached per key (``cipher``): building one runs the AES key schedule and costs
about as much as sealing a token layer, and every request seals or opens several layers under the
same few keys. The cache is bounded and least-recently-used, holds nothing but the cipher objects
(the key bytes are its lookup keys, which the caller already keeps in memory), and shows neither
in any ``repr``. A key that leaves the snapshot (rotated out, secret revoked) is no longer looked
up and ages out of the cache; what the cache retains is never more than process memory already
held.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

RandomBytes = Callable[[int], bytes]

IV_SIZE = 12
TAG_SIZE = 16
KEY_SIZE = 32
OVERHEAD = IV_SIZE + TAG_SIZE

CIPHER_CACHE_SIZE: Final = 4096
"""How many keys keep a ready cipher: every token key and client secret of a large deployment."""


class AeadFailure(Exception):
    """The blob is too short, the key has the wrong size, or authentication failed."""


@lru_cache(maxsize=CIPHER_CACHE_SIZE)
def _cached_cipher(key: bytes) -> AESGCM:
    return AESGCM(key)


def cipher(key: bytes | bytearray | memoryview) -> AESGCM:
    """A ready AES-GCM cipher for ``key`` (16, 24 or 32 bytes), shared by every caller.

    ``ValueError`` for a key of any other size. Keys that are not ``bytes`` (a ``bytearray``, a
    ``memoryview``) are copied to ``bytes`` first, since only immutable keys can be cached.
    """
    if type(key) is not bytes:
        key = bytes(key)
    return _cached_cipher(key)


def seal(key: bytes, plaintext: bytes, random: RandomBytes, aad: bytes | None = None) -> bytes:
    """Encrypt ``plaintext`` under ``key`` with a fresh IV drawn from ``random``."""
    return seal_with_iv(key, random(IV_SIZE), plaintext, aad)


def seal_with_iv(key: bytes, iv: bytes, plaintext: bytes, aad: bytes | None = None) -> bytes:
    if len(iv) != IV_SIZE:
        raise ValueError(f"IV must be {IV_SIZE} bytes")
    return iv + cipher(key).encrypt(iv, plaintext, aad)


class PartSealer:
    """Seals one plaintext given in parts: ``update`` per part, then ``finish`` once."""

    __slots__ = ("_encryptor", "_head")

    def __init__(self, key: bytes, iv: bytes) -> None:
        self._encryptor = Cipher(algorithms.AES(key), modes.GCM(iv)).encryptor()
        self._head = iv

    def update(self, plaintext: bytes) -> bytes:
        sealed = self._encryptor.update(plaintext)
        head = self._head
        if head:
            self._head = b""
            return head + sealed
        return sealed

    def finish(self) -> bytes:
        encryptor = self._encryptor
        head, self._head = self._head, b""
        return head + encryptor.finalize() + encryptor.tag


def seal_in_parts(key: bytes, iv: bytes) -> PartSealer:
    """``seal_with_iv`` (no AAD) for a plaintext given in parts, each encrypted as it comes.

    The first output (of ``update``, or of ``finish`` when there was none) begins with the IV;
    ``finish`` gives the tag. Joined, the outputs are ``seal_with_iv(key, iv, parts joined)``.
    """
    if len(iv) != IV_SIZE:
        raise ValueError(f"IV must be {IV_SIZE} bytes")
    return PartSealer(key, iv)


def open_(key: bytes, blob: bytes, aad: bytes | None = None) -> bytes:
    """Decrypt and authenticate ``blob``; raise ``AeadFailure`` on any problem."""
    if len(key) != KEY_SIZE or len(blob) < OVERHEAD:
        raise AeadFailure
    try:
        return cipher(key).decrypt(blob[:IV_SIZE], blob[IV_SIZE:], aad)
    except InvalidTag as exc:
        raise AeadFailure from exc
