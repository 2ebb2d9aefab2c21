"""Memory per entry and time per request of the replay cache, against the previous design, and
of the replay table that the workers of one serve share.

    .venv/bin/python bench/replay_memory.py [--entries 1000000] [--rate 8500] [--slots 2097152]
                                            [--json out.json]

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

The shared table (``services.replay_table``, ``--slots`` home slots, the served default unless
given) is fed the same streams, in a file in ``/dev/shm`` (where the machine has it), through
the same ``first_use`` and the same loop. Its memory is that file, mapped by every worker, not
Python heap: the figures are the file's bytes per slot and per entry held (entries still live
at the end of the stream), and the entries evicted before their expiry. Its time is measured
twice on the same streams: alone, and with a second process (spawned) inserting fresh envelopes
into the same table at ``--rate`` a second (wall clock) for the whole timed half, as another
worker would, each insert taking the same lock. The second process's envelopes carry timestamps
that, seen from the timed stream's clock, have already expired, so they contend for the lock and
the memory without filling the table for the timed stream (from its own clock every entry looks
live, so the evictions it counts are its own, not reported). A third time, the loop alone (a
``first_use`` that does nothing), is printed so that it can be subtracted. Last, how often a
full probe window evicts a live entry: steady streams of ``--eviction-seconds`` (default 250)
at each of ``--eviction-rates`` into a new table, counted over each stream's second half.
"""

from __future__ import annotations

import argparse
import gc
import heapq
import json
import multiprocessing
import os
import random
import tempfile
import time
import tracemalloc
from array import array
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any, Protocol

from uid2_operator.services.replay import ReplayCache
from uid2_operator.services.replay_table import DEFAULT_SLOTS, PROBE, ReplayTable, table_size
from uid2_operator.wire.envelope import DEFAULT_TIMESTAMP_WINDOW

MB = 1024 * 1024
T0 = 1_700_000_000_000
MAX_PAST_MS = DEFAULT_TIMESTAMP_WINDOW.max_past_ms
MAX_FUTURE_MS = DEFAULT_TIMESTAMP_WINDOW.max_future_ms


class Guard(Protocol):
    def first_use(self, key_id: str, nonce: bytes, timestamp_ms: int, now_ms: int) -> bool: ...


class Cache(Guard, Protocol):
    def __len__(self) -> int: ...


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


def feed(cache: Guard, stream: Stream, start: int = 0, stop: int | None = None) -> int:
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


class Idle:
    """A guard that does nothing: the cost of the loop alone."""

    def __len__(self) -> int:
        return 0

    def first_use(self, key_id: str, nonce: bytes, timestamp_ms: int, now_ms: int) -> bool:
        del key_id, nonce, timestamp_ms, now_ms
        return True


def _shm_dir() -> str | None:
    shm = Path("/dev/shm")  # noqa: S108 (a private temporary directory is made inside)
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


@contextmanager
def new_table(slots: int) -> Iterator[Path]:
    """The path of a new, empty table in a temporary directory (removed afterwards)."""
    with tempfile.TemporaryDirectory(prefix="replay-bench-", dir=_shm_dir()) as directory:
        path = Path(directory) / "replay-table"
        ReplayTable.create(path, max_past_ms=MAX_PAST_MS, slots=slots)
        yield path


def _insert_until(
    path: Path, *, ready: Event, stop: Event, stamp_ms: int, rate: int, done: Any
) -> None:
    """A second worker: ``rate`` fresh envelopes a second (in bursts of 100) into the table at
    ``path`` until ``stop``; counts them in ``done``."""
    with ReplayTable.open(path) as table:
        ready.set()
        first_use = table.first_use
        started = time.monotonic()
        count = 0
        while not stop.is_set():
            nonces = os.urandom(8 * 100)
            for i in range(100):
                first_use("other-worker", nonces[8 * i : 8 * i + 8], stamp_ms, stamp_ms)
            count += 100
            done.value = count
            ahead = started + count / rate - time.monotonic()
            if ahead > 0:
                stop.wait(ahead)


def beside_a_second_process(
    table: ReplayTable, path: Path, timed: Stream, *, half: int, stale_ms: int, rate: int
) -> tuple[int, int]:
    """Time (ns) of the timed half of ``timed`` fed into ``table`` (the table at ``path``, its
    first half already in) while a spawned process inserts ``rate`` envelopes a second stamped
    ``stale_ms`` into the same file; and how many that process inserted."""
    context = multiprocessing.get_context("spawn")
    ready, stop, done = context.Event(), context.Event(), context.Value("q", 0)
    other = context.Process(
        target=_insert_until,
        args=(path,),
        kwargs={"ready": ready, "stop": stop, "stamp_ms": stale_ms, "rate": rate, "done": done},
        daemon=True,
    )
    other.start()
    try:
        if not ready.wait(60):
            raise RuntimeError("the second process did not start")
        started = time.perf_counter_ns()
        feed(table, timed, half)
        elapsed = time.perf_counter_ns() - started
    finally:
        stop.set()
        other.join(60)
    inserted: int = done.value
    return elapsed, inserted


def table_figures(
    stream: Stream, timed: Stream, slots: int, repeat: int, rate: int
) -> dict[str, Any]:
    """Entries held, file size, evictions and ns per request (alone and beside a second
    process inserting) of the shared table over the same streams as the caches. Of the runs
    beside a second process, the fastest is kept, with that same run's count of inserts."""
    with new_table(slots) as path, ReplayTable.open(path) as table:
        feed(table, stream)
        held = table.live_entries(stream[3][-1])
        size = path.stat().st_size
        evictions = table.evictions
    half = len(timed[3]) // 2
    # Seen from the timed half's clock, the second process's envelopes have expired.
    stale_ms = timed[3][half] - MAX_PAST_MS - 2_000
    alone = float("inf")
    beside_runs: list[tuple[int, int]] = []
    for _ in range(repeat):
        with new_table(slots) as path, ReplayTable.open(path) as table:
            feed(table, timed, 0, half)
            gc.collect()
            started = time.perf_counter_ns()
            feed(table, timed, half)
            alone = min(alone, time.perf_counter_ns() - started)
        with new_table(slots) as path, ReplayTable.open(path) as table:
            feed(table, timed, 0, half)
            gc.collect()
            beside_runs.append(
                beside_a_second_process(table, path, timed, half=half, stale_ms=stale_ms, rate=rate)
            )
    beside, inserted = min(beside_runs, key=lambda run: run[0])
    timed_requests = len(timed[3]) - half
    return {
        "entries_held": held,
        "slots": slots,
        "file_mb": round(size / MB, 1),
        "bytes_per_slot": round(size / slots, 2),
        "bytes_per_entry": round(size / held, 1),
        "evictions": evictions,
        "ns_per_request": round(alone / timed_requests),
        "ns_per_request_beside_a_second_process": round(beside / timed_requests),
        "second_process_inserts_per_s": round(inserted / (beside / 1e9)),
    }


def eviction_sweep(slots: int, rates: list[int], seconds: int) -> list[dict[str, Any]]:
    """Per rate: a steady stream of ``seconds`` into a new table; how full it is at the end and
    the share of the second half's inserts that evicted a live entry."""
    rows = []
    for rate in rates:
        stream = make_stream(rate * seconds, rate, "steady", seed=3)
        half = len(stream[3]) // 2
        with new_table(slots) as path, ReplayTable.open(path) as table:
            feed(table, stream, 0, half)
            before = table.evictions
            feed(table, stream, half)
            evicted = table.evictions - before
            live = table.live_entries(stream[3][-1])
        rows.append(
            {
                "rate_per_s": rate,
                "fill": round(live / slots, 2),
                "evictions": evicted,
                "inserts": len(stream[3]) - half,
                "evicted_share": round(evicted / (len(stream[3]) - half), 6),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--rate", type=int, default=8_500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--slots", type=int, default=DEFAULT_SLOTS)
    parser.add_argument("--eviction-rates", default="8000,12000,15000")
    parser.add_argument("--eviction-seconds", type=int, default=250)
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args()

    designs: dict[str, Callable[[], Cache]] = {
        "before": lambda: HeapReplayCache(max_past_ms=MAX_PAST_MS),
        "after": lambda: ReplayCache(max_past_ms=MAX_PAST_MS, mask_key=os.urandom(16)),
    }
    figures: dict[str, Any] = {
        "entries_fed": args.entries,
        "rate_per_s": args.rate,
        "table_bytes_per_slot": round(table_size(args.slots, PROBE) / args.slots, 2),
    }
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
        row["table"] = table_figures(stream, timed, args.slots, args.repeat, args.rate)
        row["loop_ns_per_request"] = round(ns_per_request(Idle, timed, args.repeat))
        row["time_ratio_table_over_after"] = round(
            row["table"]["ns_per_request"] / row["after"]["ns_per_request"], 2
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
        t = row["table"]
        print(
            f"  {'table':6} {t['entries_held']:>9,} entries  {t['file_mb']:7.1f} MB  "
            f"{t['bytes_per_entry']:6.1f} B/entry  {t['ns_per_request']:5} ns/request "
            f"({t['ns_per_request_beside_a_second_process']} beside a second process; "
            f"{t['slots']:,} slots of {figures['table_bytes_per_slot']} B, "
            f"{t['evictions']:,} evictions)"
        )
        print(f"  the loop alone: {row['loop_ns_per_request']} ns/request")
        print(
            f"  memory before/after: {row['memory_ratio_before_over_after']}x, "
            f"time after/before: {row['time_ratio_after_over_before']}, "
            f"time table/after: {row['time_ratio_table_over_after']}"
        )
    rates = [int(rate) for rate in args.eviction_rates.split(",") if rate]
    figures["table_evictions"] = eviction_sweep(args.slots, rates, args.eviction_seconds)
    print(f"table of {args.slots:,} slots, steady streams of {args.eviction_seconds} s:")
    for row in figures["table_evictions"]:
        print(
            f"  {row['rate_per_s']:>6,}/s  {row['fill']:.0%} full  {row['evictions']:>8,} of "
            f"{row['inserts']:,} inserts evicted ({row['evicted_share']:.4%})"
        )
    if args.json_path:
        with open(args.json_path, "w", encoding="utf-8") as out:
            json.dump(figures, out, indent=2)


if __name__ == "__main__":
    main()
