"""Memory and load time of the salt table as the operator loads it (``MaterialService``).

    .venv/bin/python bench/salts_memory.py [--buckets 1048576] [--repeat 3] [--json out.json]

In one process, on a fresh SQLite file in a temporary directory:

1. ``initialise`` creates the material with ``--buckets`` buckets; ``rotate_salts(0.05)`` is timed
   (a typical run), then ``rotate_salts(1.0)`` rotates every other bucket, so that every bucket
   holds a previous salt: the steady state, and the largest form of the table;
2. baseline: read the raw chunk blobs in one read transaction, nothing decoded or opened (the
   floor for any loader of this layout on this database);
3. ``load_material()``: the same read plus opening the sealed chunks (AES-GCM) and assembling the
   columns, plus keys and opt-outs; and ``load_material(previous)``, the reload after a change that
   left the salts alone;
4. memory of one loaded table: the Python heap still held once loading ends (tracemalloc, which
   sees every allocation of the interpreter), the transient peak while loading, and the growth of
   the resident set size (``/proc/self/statm``; kernel-reported, includes allocator slack).

It prints the figures and the ratio load/baseline. Nothing is asserted: the figures depend on the
machine, the ratio much less. ``process_max_rss_mb`` is this process's peak, which includes the
rotations (old and new table side by side), not what an operator worker holds.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select

from uid2_operator.clock import SystemClock
from uid2_operator.domain.sealing import generate_keyring
from uid2_operator.services.material import Material, MaterialConfig, MaterialService
from uid2_operator.storage import open_store, upgrade
from uid2_operator.storage import schema as t
from uid2_operator.storage.sql import SqlStore

MB = 1024 * 1024


def rss_bytes() -> int:
    """The current resident set size (Linux); 0 where /proc is not available."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def best_of(repeat: int, work: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        result = work()
        times.append(time.perf_counter() - start)
        del result
    return min(times)


def read_raw_blobs(store: SqlStore) -> int:
    """The baseline: every chunk's blobs fetched, nothing opened or assembled."""
    total = 0
    c = t.salt_chunks.c
    with store.engine.connect() as conn:
        query = select(c.salts, c.has_previous, c.last_updated, c.refresh_from).order_by(c.chunk)
        for row in conn.execute(query):
            total += sum(len(bytes(value)) for value in row)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--buckets", type=int, default=1 << 20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'uid2.db'}"
        upgrade(url)
        store = open_store(url)
        try:
            config = MaterialConfig(bucket_count=args.buckets)
            service = MaterialService(
                store, generate_keyring(os.urandom), config, SystemClock(), os.urandom
            )
            start = time.perf_counter()
            service.initialise()
            created_s = time.perf_counter() - start
            start = time.perf_counter()
            daily = service.rotate_salts(0.05)
            rotate_share_s = time.perf_counter() - start
            rotated = service.rotate_salts(1.0)  # every other bucket: all now hold a previous salt
            db_mb = sum(p.stat().st_size for p in Path(tmp).iterdir()) / MB

            raw_bytes = read_raw_blobs(store)
            baseline_s = best_of(args.repeat, lambda: read_raw_blobs(store))
            load_s = best_of(args.repeat, service.load_material)
            previous = service.load_material()
            reload_s = best_of(args.repeat, lambda: service.load_material(previous))

            gc.collect()
            rss_before = rss_bytes()
            tracemalloc.start()
            held_before, _ = tracemalloc.get_traced_memory()
            material: Material = service.load_material()
            gc.collect()
            held_after, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            rss_after = rss_bytes()
            max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        finally:
            store.close()

    figures: dict[str, Any] = {
        "buckets": material.salts.bucket_count,
        "buckets_rotated": daily.rotated + rotated.rotated,
        "database_mb": round(db_mb, 1),
        "raw_blob_mb": round(raw_bytes / MB, 1),
        "create_s": round(created_s, 3),
        "rotate_5_percent_s": round(rotate_share_s, 3),
        "baseline_raw_read_s": round(baseline_s, 4),
        "load_material_s": round(load_s, 4),
        "reload_unchanged_salts_s": round(reload_s, 4),
        "load_over_baseline": round(load_s / baseline_s, 2),
        "heap_held_mb": round((held_after - held_before) / MB, 1),
        "heap_peak_while_loading_mb": round((peak - held_before) / MB, 1),
        "rss_growth_mb": round((rss_after - rss_before) / MB, 1),
        "process_max_rss_mb": round(max_rss / MB, 1),
        "heap_bytes_per_bucket": round((held_after - held_before) / material.salts.bucket_count, 1),
    }
    width = max(len(name) for name in figures)
    for name, value in figures.items():
        print(f"{name.ljust(width)}  {value}")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
