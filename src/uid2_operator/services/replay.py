"""Refusing a request envelope seen before (same API key, same nonce) while it could still pass.

The reference operator only echoes the nonce; anyone who captures an envelope can replay it for
as long as its timestamp is inside the window (about two minutes). Here the pair (key id, nonce)
of every opened envelope is remembered until the envelope's own timestamp falls out of the window
(``timestamp + max_past_ms``): after that the timestamp check alone refuses it, so the entry can
be forgotten. Memory is therefore bounded by the request rate times the window, and by a hard cap.

When the cap is reached the entries closest to expiry are dropped first. That briefly weakens
replay protection for the oldest nonces instead of refusing legitimate traffic; the cap is sized
so that this only happens under a flood.

The cache is per process. Several workers each hold their own, so a replay sent to a different
worker is only caught by the timestamp window.
"""

from __future__ import annotations

import heapq
from typing import Final

DEFAULT_MAX_ENTRIES: Final = 1_000_000


class ReplayCache:
    """Remembers (key id, nonce) pairs until their envelope could no longer be accepted."""

    __slots__ = ("_expiry", "_heap", "_max_entries", "_max_past_ms")

    def __init__(self, *, max_past_ms: int, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        self._max_past_ms = max_past_ms
        self._max_entries = max_entries
        self._expiry: dict[tuple[str, bytes], int] = {}
        self._heap: list[tuple[int, str, bytes]] = []

    def __len__(self) -> int:
        return len(self._expiry)

    def first_use(self, key_id: str, nonce: bytes, timestamp_ms: int, now_ms: int) -> bool:
        """Record the pair; False when it was already seen and has not expired."""
        self._evict(now_ms)
        entry = (key_id, nonce)
        expires = self._expiry.get(entry)
        if expires is not None and expires >= now_ms:
            return False
        while len(self._expiry) >= self._max_entries:
            _, old_key, old_nonce = heapq.heappop(self._heap)
            self._expiry.pop((old_key, old_nonce), None)
        expires = timestamp_ms + self._max_past_ms
        self._expiry[entry] = expires
        heapq.heappush(self._heap, (expires, key_id, nonce))
        return True

    def _evict(self, now_ms: int) -> None:
        heap = self._heap
        while heap and heap[0][0] < now_ms:
            expires, key_id, nonce = heapq.heappop(heap)
            if self._expiry.get((key_id, nonce)) == expires:
                del self._expiry[(key_id, nonce)]
