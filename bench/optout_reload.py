"""Time and memory of a snapshot's opt-out reload: a full one against one that reads what changed.

    .venv/bin/python bench/optout_reload.py [--sizes 100000 1000000] [--new 1000] [--json out.json]

For each size N, in one process, on a fresh SQLite file in a temporary directory:

1. the material is initialised (2^16 salt buckets: the salts are not what is measured) and N
   opt-outs are written straight into the table in a few large transactions (what years of
   logouts leave behind; one ``put`` per row would take minutes at a million), stamped with the
   store's change sequence as ``put`` stamps them;
2. ``load_material()`` loads everything once: the previous load a worker holds;
3. ``--new`` opt-outs are written as the request path writes them (``write_optouts``, one unit
   of work with its audit events), which moves the change sequence;
4. timed, each with its Python heap peak over what was held before (tracemalloc): the full
   reload, ``load_material()`` (every row read, the index rebuilt), and the incremental one,
   ``load_material(previous)`` (the rows past the previous cursor read, the index extended).

It prints both, the ratio full/incremental, and how many rows each read. Nothing is asserted:
the figures depend on the machine, the ratio much less. Times are wall-clock of one run each
(a reload is what a worker does once per change, not in a tight loop), taken with tracemalloc
off; the memory figures come from a second run of each with it on. The first incremental reload
after the full one is timed and printed on its own: it pays a one-time cost that later reloads
do not.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select, update

from uid2_operator.clock import SystemClock
from uid2_operator.domain.optout import OptOutRecord
from uid2_operator.domain.sealing import generate_keyring
from uid2_operator.services.material import Material, MaterialConfig, MaterialService
from uid2_operator.services.write_behind import write_optouts
from uid2_operator.storage import open_store, upgrade
from uid2_operator.storage import schema as t
from uid2_operator.storage.sql import SqlStore

MB = 1024 * 1024
BATCH = 50_000


def flh(n: int) -> bytes:
    return hashlib.sha256(n.to_bytes(8, "big")).digest()


def raw_uid(n: int) -> str:
    return hashlib.sha256(b"raw" + n.to_bytes(8, "big")).hexdigest()[:44]


def fill(store: SqlStore, count: int, at_ms: int) -> None:
    """``count`` opt-outs written directly, one change sequence per batch, as ``put`` would."""
    with store.engine.connect() as conn:
        for start in range(0, count, BATCH):
            seq = conn.execute(
                select(t.store_meta.c.value).where(t.store_meta.c.name == t.CHANGE_SEQ)
            ).scalar_one()
            rows = [
                {
                    "first_level_hash": flh(n),
                    "advertising_id": raw_uid(n),
                    "timestamp_ms": at_ms - n,
                    "change_seq": seq + 1,
                }
                for n in range(start, min(start + BATCH, count))
            ]
            conn.execute(insert(t.optouts), rows)
            conn.execute(
                update(t.store_meta)
                .where(t.store_meta.c.name == t.CHANGE_SEQ)
                .values(value=seq + 1)
            )
            conn.commit()


def measure(work: Callable[[], Material]) -> tuple[float, float, Material]:
    """(seconds, peak heap MB above the start, result): timed untraced, then traced."""
    gc.collect()
    started = time.perf_counter()
    work()
    seconds = time.perf_counter() - started
    gc.collect()
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    result = work()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return seconds, (peak - base) / MB, result


def run(size: int, new: int) -> dict[str, Any]:
    clock = SystemClock()
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'uid2.db'}"
        upgrade(url)
        store = open_store(url)
        try:
            material = MaterialService(
                store,
                generate_keyring(os.urandom),
                MaterialConfig(bucket_count=1 << 16),
                clock,
                os.urandom,
            )
            material.initialise()
            fill(store, size, clock.now_ms())
            previous = material.load_material()
            now = clock.now_ms()
            records = [OptOutRecord(flh(size + n), now, raw_uid(size + n)) for n in range(new)]
            write_optouts(store, records, lambda: now)
            full_s, full_mb, full = measure(material.load_material)
            # The first reload right after the traced full one pays a one-time cost (about 0.15 s
            # of user CPU at a million rows, in the connection checkout; absent after an untraced
            # full reload: docs/benchmarks.md, run 9); a worker reloads over and over, so the
            # steady figure is a later call's.
            gc.collect()
            started = time.perf_counter()
            material.load_material(previous)
            first_s = time.perf_counter() - started
            incr_s, incr_mb, incr = measure(lambda: material.load_material(previous))
            assert len(full.optouts) == len(incr.optouts) == size + new
        finally:
            store.close()
    return {
        "existing": size,
        "new": new,
        "full_s": round(full_s, 4),
        "full_peak_mb": round(full_mb, 1),
        "full_rows_read": full.optouts_read,
        "incremental_first_s": round(first_s, 4),
        "incremental_s": round(incr_s, 4),
        "incremental_peak_mb": round(incr_mb, 1),
        "incremental_rows_read": incr.optouts_read,
        "time_ratio": round(full_s / incr_s, 1),
        "memory_ratio": round(full_mb / incr_mb, 1) if incr_mb else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--new", type=int, default=1000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = []
    for size in args.sizes:
        result = run(size, args.new)
        results.append(result)
        print(
            f"N={size:>9,} +{args.new}: full {result['full_s'] * 1000:8.1f} ms "
            f"{result['full_peak_mb']:7.1f} MB ({result['full_rows_read']:,} rows) | "
            f"incremental {result['incremental_s'] * 1000:7.1f} ms "
            f"(first {result['incremental_first_s'] * 1000:.1f} ms) "
            f"{result['incremental_peak_mb']:6.1f} MB ({result['incremental_rows_read']:,} rows) | "
            f"time x{result['time_ratio']}, memory x{result['memory_ratio']}",
            flush=True,
        )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
