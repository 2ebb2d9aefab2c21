"""Constants and a reproducible random source for the material rules (a unique module name, so
the tests import it whatever other ``conftest`` modules a run has loaded)."""

from __future__ import annotations

import hashlib

T0 = 1_700_000_000_000


class Drbg:
    """A reproducible byte stream (SHA-256 in counter mode) standing in for the OS entropy pool."""

    def __init__(self, seed: bytes = b"seed") -> None:
        self._seed = seed
        self._counter = 0

    def __call__(self, size: int) -> bytes:
        out = bytearray()
        while len(out) < size:
            out += hashlib.sha256(self._seed + self._counter.to_bytes(8, "big")).digest()
            self._counter += 1
        return bytes(out[:size])
