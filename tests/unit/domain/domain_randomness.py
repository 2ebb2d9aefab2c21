"""Reproducible randomness and a fixed instant for the domain rules' tests.

A module of its own, not ``conftest``: tests import these names, and ``conftest`` is the name of
several modules in this tree, so which one an ``import conftest`` finds depends on what else ran.
"""

from __future__ import annotations

import hashlib

PEPPER = bytes(range(1, 33))
T0 = 1_700_000_000_000


class Drbg:
    """A reproducible byte stream (SHA-256 in counter mode) standing in for the OS entropy pool."""

    def __init__(self, seed: bytes = b"seed") -> None:
        self._seed = seed
        self._counter = 0

    def __call__(self, size: int) -> bytes:
        out = b""
        while len(out) < size:
            out += hashlib.sha256(self._seed + self._counter.to_bytes(8, "big")).digest()
            self._counter += 1
        return out[:size]
