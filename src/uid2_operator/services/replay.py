"""Refusing a request envelope seen before (same API key, same nonce) while it could still pass.

The reference operator only echoes the nonce; anyone who captures an envelope can replay it for
as long as its timestamp is inside the window (about two minutes). Here every opened envelope is
remembered until its own timestamp falls out of the window (``timestamp + max_past_ms``): after
that the timestamp check alone refuses it, so the entry can be forgotten. Memory is therefore
bounded by the request rate times the window, and by a hard cap.

Layout. At 8,000 requests a second a worker remembers about a million envelopes, so the cost of
one entry decides the worker's memory. An entry is one 64-bit fingerprint (below), filed in the
*slice* of ``SLICE_MS`` milliseconds holding the envelope's timestamp. A slice keeps its
fingerprints in two parts: a Python ``set`` for recent inserts (fast, but some 70 bytes an
entry) and a sorted ``array('Q')`` (8 bytes an entry, searched by bisection). The slices around
the clock's own take nearly all inserts and stay sets, so the usual request costs one set
lookup. Once a slice's timestamps are all ``COLD_AFTER_MS`` behind the clock, clients have
stopped sending them, and its set is sorted into the array. Late arrivals, and timestamps more
than a slice ahead of the clock (clients whose clocks run fast), go to the set, which is merged
into the array when it grows past an eighth of it (a linear merge, amortised O(1) an insert).
Whole slices are dropped once every timestamp in them has left the window: there is no
per-entry expiry bookkeeping. A replay carries the timestamp of the captured envelope (the
timestamp and the nonce are both inside the authenticated plaintext), so a lookup searches the
one slice that timestamp belongs to. A client that reuses its own nonce under another timestamp
is not refused: doing so takes the client's secret, and whoever holds it can make fresh nonces
anyway.

Fingerprint. ``int(nonce) XOR mask(key id)``, where the mask is a 64-bit BLAKE2b of the key id
keyed with 16 random bytes drawn per cache. For one key the map nonce -> fingerprint is a
bijection, so two envelopes of the same key collide exactly when their nonces are equal (a
replay). Envelopes of two different keys collide when ``n1 XOR n2 == m1 XOR m2``; the right side
is a pseudo-random 64-bit value unknown outside the process, so whatever the nonces are, that
holds with probability 2^-64 per pair. A fresh request is therefore refused by mistake with
probability at most ``entries in its slice / 2^64``: with 16,000 entries a slice (8,000
requests a second, two-second slices) about 9e-16 per request, one false refusal per ~4,500
years of a worker serving 8,000 requests a second; even a whole cap of 1,000,000 entries in one
slice gives 5.4e-14 per request. A false refusal costs the client one retry with a new nonce; a
collision never makes the cache accept a replay.

When the cap is reached the oldest slice (the timestamps closest to expiry) is dropped whole.
That briefly weakens replay protection for the oldest nonces instead of refusing legitimate
traffic; the cap is sized so that this only happens under a flood.

The cache lives in one process's memory and dies with it. That suits an operator application
on its own (tests, benchmarks, an embedding with one process), not ``uid2-operator serve``:
with several workers each would hold its own cache, so a replay sent on a new connection to
another worker would be accepted there, and a restarted worker would forget every nonce. Served
workers therefore share ``replay_table.ReplayTable`` instead, a table in a file they all map.
"""

from __future__ import annotations

import os
from array import array
from bisect import bisect_left
from hashlib import blake2b
from typing import Final

DEFAULT_MAX_ENTRIES: Final = 1_000_000
SLICE_MS: Final = 2_000
"""Width of a timestamp slice: the granularity of expiry and of eviction at the cap."""
COLD_AFTER_MS: Final = 2 * SLICE_MS
"""How long after a slice's last timestamp its set is sorted into its compact array."""
NONCE_SIZE: Final = 8
_MIN_LOOSE: Final = 256
"""A cold slice's set is merged into its array once it holds more than this plus an eighth of the
array: merges stay rare (amortised O(1) per insert) and the set at most doubles the slice's
memory."""
_NEVER: Final = -(1 << 63)
_MAX_MASKS: Final = 65_536
"""Bound on remembered key masks (key ids come from authenticated callers: only a guard)."""


class KeyMasks:
    """The 64-bit mask of each key id: a BLAKE2b of the id keyed with ``mask_key`` (see
    "Fingerprint" above). ``known`` is read on the request path; ``compute`` fills it on a miss,
    forgetting everything past a bound (key ids come from authenticated callers: only a guard)."""

    __slots__ = ("_mask_key", "known")

    def __init__(self, mask_key: bytes) -> None:
        self._mask_key = mask_key
        self.known: dict[str, int] = {}

    def compute(self, key_id: str) -> int:
        digest = blake2b(key_id.encode(), digest_size=8, key=self._mask_key).digest()
        mask = int.from_bytes(digest, "big")
        if len(self.known) >= _MAX_MASKS:
            self.known.clear()
        self.known[key_id] = mask
        return mask


class _Slice:
    """The fingerprints of the envelopes whose timestamps fall in one slice."""

    __slots__ = ("packed", "recent")

    def __init__(self) -> None:
        self.packed: array[int] = array("Q")
        """Sorted, no duplicates, disjoint from ``recent``."""
        self.recent: set[int] = set()

    def __len__(self) -> int:
        return len(self.packed) + len(self.recent)

    def pack(self) -> None:
        """Move the set's fingerprints into the sorted array (two sorted runs: a linear merge)."""
        merged = self.packed.tolist()
        merged.extend(sorted(self.recent))
        merged.sort()
        self.packed = array("Q", merged)
        self.recent = set()


class ReplayCache:
    """Remembers each (key id, nonce) until its envelope could no longer be accepted."""

    __slots__ = (
        "_cold_through",
        "_count",
        "_hot_through",
        "_masks",
        "_max_entries",
        "_max_past_ms",
        "_next_tick_ms",
        "_slices",
    )

    def __init__(
        self,
        *,
        max_past_ms: int,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        mask_key: bytes | None = None,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        self._max_past_ms = max_past_ms
        self._max_entries = max_entries
        self._masks = KeyMasks(os.urandom(16) if mask_key is None else mask_key)
        self._slices: dict[int, _Slice] = {}
        self._count = 0
        self._next_tick_ms = _NEVER
        """When ``_advance`` next runs (the start of the clock's next slice)."""
        self._cold_through = _NEVER
        """Slices up to this index are cold: their sets were packed, late arrivals are merged."""
        self._hot_through = _NEVER
        """Slices after this index hold timestamps ahead of the clock: merged like cold ones."""

    def __len__(self) -> int:
        return self._count

    def first_use(self, key_id: str, nonce: bytes, timestamp_ms: int, now_ms: int) -> bool:
        """Record the envelope; False when it was already seen and could still pass.

        ``nonce`` is the envelope's 8-byte nonce. An envelope whose timestamp already left the
        window is not remembered (the timestamp check refuses it anyway) and answers True.
        """
        if len(nonce) != 8:  # NONCE_SIZE; fingerprints must fit the arrays' 64 bits
            raise ValueError("nonce must be 8 bytes")
        if now_ms >= self._next_tick_ms:
            self._advance(now_ms)
        if timestamp_ms + self._max_past_ms < now_ms:
            return True
        mask = self._masks.known.get(key_id)
        if mask is None:
            mask = self._masks.compute(key_id)
        fingerprint = int.from_bytes(nonce, "big") ^ mask
        index = timestamp_ms // SLICE_MS
        where = self._slices.get(index)
        if where is not None:
            recent = where.recent
            if fingerprint in recent:
                return False
            packed = where.packed
            if packed:
                at = bisect_left(packed, fingerprint)
                if at < len(packed) and packed[at] == fingerprint:
                    return False
            if self._count < self._max_entries:
                recent.add(fingerprint)
                self._count += 1
                if not self._cold_through < index <= self._hot_through and len(
                    recent
                ) > _MIN_LOOSE + (len(packed) >> 3):
                    where.pack()
                return True
            self._evict()
        elif self._count >= self._max_entries:
            self._evict()
        where = self._slices.get(index)
        if where is None:
            where = self._slices[index] = _Slice()
        where.recent.add(fingerprint)
        self._count += 1
        return True

    def _advance(self, now_ms: int) -> None:
        """Once per slice of the clock: drop expired slices, pack the ones turned cold."""
        self._next_tick_ms = (now_ms // SLICE_MS + 1) * SLICE_MS
        self._hot_through = now_ms // SLICE_MS + 1
        live_from = (now_ms - self._max_past_ms) // SLICE_MS
        cold_through = (now_ms - COLD_AFTER_MS) // SLICE_MS - 1
        previous_cold = self._cold_through
        slices = self._slices
        for index in [i for i in slices if i < live_from]:
            self._count -= len(slices.pop(index))
        for index, where in slices.items():
            if where.recent and previous_cold < index <= cold_through:
                where.pack()
        self._cold_through = max(cold_through, previous_cold)

    def _evict(self) -> None:
        """Drop the slice of the oldest timestamps (the entries closest to expiry)."""
        slices = self._slices
        self._count -= len(slices.pop(min(slices)))
