"""Memory per entry and time per request of the replay cache, against the previous design.

    .venv/bin/python bench/replay_memory.py [--entries 1000000] [--rate 8500] [--json out.json]

The previous design (a dict of ``(key id, nonce) -> expiry`` plus a heap of expiries) is kept
below as ``HeapReplayCache``, as the baseline. Both caches are fed the same stream of requests,
as a worker sees it: ``--rate`` requests a second for ``--entries`` requests, the clock advancing
accordingly, 64 API keys in turn, fresh random 8-byte nonces (a new ``bytes`` object per
request, as parsing an envelope makes), over the default window (119,999 ms past).
With the defaults (8,500 a second) every request is still inside the window at the end, so the
cache holds ``--entries`` entries.

Two timestamp patterns:

- ``steady``: each timestamp 0-300 ms behind the clock (network and queueing delay), as clients
  with synchronised clocks send them;
- ``scattered``: each timestamp uniform over the whole window (119,999 ms behind to 119,000 ms
  ahead): the worst case for the compact layout, every slice receiving inserts all the time.

Memory is the Python heap the cache holds once the stream ends (tracemalloc sees every allocation
of the interpreter; the inputs are made before tracing starts, except the nonces, which the old
design keeps alive). Time is the wall time of ``first_use`` per request (tracing off), best of
``--repeat``, on a second stream twice the window long: its first half fills the window untimed,
its second half is timed (the steady state: every request also ages older entries out). It
includes the loop, equally for both designs. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import gc
import heapq
import json
import os
import random
import time
import tracemalloc
from array import array
from collections.abc import Callable
from typing import Any, Protocol

from uid2_operator.services.replay import ReplayCache
from uid2_operator.wire.envelope import DEFAULT_TIMESTAMP_WINDOW

MB = 1024 * 1024
T0 = 1_700_000_000_000
MAX_PAST_MS = DEFAULT_TIMESTAMP_WINDOW.max_past_ms
MAX_FUTURE_MS = DEFAULT_TIMESTAMP_WINDOW.max_future_ms


class Cache(Protocol):
    def __len__(self) -> int: ...

    def first_use(self, key_id: str, nonce: bytes, timestamp_ms: int, now_ms: int) -> bool: ...


class HeapReplayCache:
    """The previous design, for comparison: exact per-entry expiry, a dict and a heap."""

    __slots__ = ("_expiry", "_heap", "_max_entries", "_max_past_ms")

    def __init__(self, *, max_past_ms: int, max_entries: int = 1_000_000) -> None:
        self._max_past_ms = max_past_ms
        self._max_entries = max_entries
        self._expiry: dict[tuple[str, bytes], int] = {}
        self._heap: list[tuple[int, str, bytes]] = []

    def __len__(self) -> int:
        return len(self._expiry)

    def first_use(self, key_id: str, nonce: bytes, timestamp_ms: int, now_ms: int) -> bool:
        heap = self._heap
        while heap and heap[0][0] < now_ms:
            popped, old_key, old_nonce = heapq.heappop(heap)
            if self._expiry.get((old_key, old_nonce)) == popped:
                del self._expiry[(old_key, old_nonce)]
        entry = (key_id, nonce)
        known = self._expiry.get(entry)
        if known is not None and known >= now_ms:
            return False
        while len(self._expiry) >= self._max_entries:
            _, old_key, old_nonce = heapq.heappop(heap)
            self._expiry.pop((old_key, old_nonce), None)
        expires = timestamp_ms + self._max_past_ms
        self._expiry[entry] = expires
        heapq.heappush(heap, (expires, key_id, nonce))
        return True


Stream = tuple[list[str], bytes, "array[int]", "array[int]"]


def make_stream(entries: int, rate: int, pattern: str, seed: int) -> Stream:
    rng = random.Random(seed)  # noqa: S311 (reproducible test data, not secrets)
    keys = [f"key-{n:02d}" for n in range(64)]
    key_ids = [keys[i % len(keys)] for i in range(entries)]
    nonces = rng.randbytes(8 * entries)
    now = array("q", (T0 + i * 1000 // rate for i in range(entries)))
    if pattern == "steady":
        stamps = array("q", (t - rng.randrange(300) for t in now))
    else:
        stamps = array("q", (t + rng.randrange(-MAX_PAST_MS, MAX_FUTURE_MS + 1) for t in now))
    return key_ids, nonces, stamps, now


def feed(cache: Cache, stream: Stream, start: int = 0, stop: int | None = None) -> int:
    key_ids, nonces, stamps, now = stream
    accepted = 0
    first_use = cache.first_use
    for i in range(start, len(now) if stop is None else stop):
        accepted += first_use(key_ids[i], nonces[8 * i : 8 * i + 8], stamps[i], now[i])
    return accepted


def held_bytes(make: Callable[[], Cache], stream: Stream) -> tuple[int, int]:
    """(entries held, heap bytes held by the cache after the stream)."""
    gc.collect()
    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    cache = make()
    feed(cache, stream)
    gc.collect()
    after, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return len(cache), after - before


def ns_per_request(make: Callable[[], Cache], stream: Stream, repeat: int) -> float:
    """Time of the second half of ``stream``: the first half fills the window, so every timed
    request also ages older ones out (the steady state)."""
    half = len(stream[3]) // 2
    best = float("inf")
    for _ in range(repeat):
        cache = make()
        feed(cache, stream, 0, half)
        gc.collect()
        start = time.perf_counter_ns()
        feed(cache, stream, half)
        best = min(best, time.perf_counter_ns() - start)
        del cache
    return best / (len(stream[3]) - half)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--rate", type=int, default=8_500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args()

    designs: dict[str, Callable[[], Cache]] = {
        "before": lambda: HeapReplayCache(max_past_ms=MAX_PAST_MS),
        "after": lambda: ReplayCache(max_past_ms=MAX_PAST_MS, mask_key=os.urandom(16)),
    }
    figures: dict[str, Any] = {"entries_fed": args.entries, "rate_per_s": args.rate}
    timed_requests = 2 * args.rate * (MAX_PAST_MS // 1000 + 2)
    for pattern in ("steady", "scattered"):
        stream = make_stream(args.entries, args.rate, pattern, seed=1)
        timed = make_stream(timed_requests, args.rate, pattern, seed=2)
        row: dict[str, Any] = {}
        for name, make in designs.items():
            held, size = held_bytes(make, stream)
            row[name] = {
                "entries_held": held,
                "heap_mb": round(size / MB, 1),
                "bytes_per_entry": round(size / held, 1),
                "ns_per_request": round(ns_per_request(make, timed, args.repeat)),
            }
        row["memory_ratio_before_over_after"] = round(
            row["before"]["bytes_per_entry"] / row["after"]["bytes_per_entry"], 1
        )
        row["time_ratio_after_over_before"] = round(
            row["after"]["ns_per_request"] / row["before"]["ns_per_request"], 2
        )
        figures[pattern] = row
        del stream, timed

    for pattern in ("steady", "scattered"):
        row = figures[pattern]
        print(f"{pattern}:")
        for name in designs:
            r = row[name]
            print(
                f"  {name:6} {r['entries_held']:>9,} entries  {r['heap_mb']:7.1f} MB  "
                f"{r['bytes_per_entry']:6.1f} B/entry  {r['ns_per_request']:5} ns/request"
            )
        print(
            f"  memory before/after: {row['memory_ratio_before_over_after']}x, "
            f"time after/before: {row['time_ratio_after_over_before']}"
        )
    if args.json_path:
        with open(args.json_path, "w", encoding="utf-8") as out:
            json.dump(figures, out, indent=2)


if __name__ == "__main__":
    main()
