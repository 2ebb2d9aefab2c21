"""Writing logout opt-outs to the store: the batched chunk write against one write per record.

    .venv/bin/python bench/optout_write.py [--count 2000] [--rounds 5] [--json out.json]

In one process, on SQLite files in a temporary directory (one store migrated once, copied fresh
for every run), the same ``--count`` opt-outs (distinct first-level hashes, each with a raw UID,
as ``/v2/token/logout`` records them) are written ``OPTOUT_WRITE_CHUNK`` per unit of work, each
with its audit event, in two ways:

- baseline: per record, ``tx.optouts.get``, ``tx.optouts.put`` and ``record_event`` (one read of
  the chain end, one insert and one head write per event): how chunks were written before;
- batched: ``write_optouts`` as the write-behind calls it (per chunk, one ``get_many``, one
  ``put_many`` and one ``record_events``).

Each round times one run of each, the two in alternating order from round to round, so that a
change in background load hits both sides of the ratio alike. It prints, per round and as the
median over the rounds, records/s of each, the time one chunk holds the write lock, and the ratio
batched/baseline. The two stores of the last round are compared (opt-outs, audit events and the
recorded chain head) and the result printed: the batched write must store exactly what the
baseline stores. Nothing else is asserted: the figures depend on the machine, the ratio much less.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from uid2_operator.domain.audit import AuditEvent, ChainHead
from uid2_operator.domain.optout import OptOutRecord, latest
from uid2_operator.services.audit_trail import record_event
from uid2_operator.services.write_behind import OPERATOR_ACTOR, OPTOUT_WRITE_CHUNK, write_optouts
from uid2_operator.storage import open_store, upgrade
from uid2_operator.storage.sql import SqlStore
from uid2_operator.wire.encoding import b64encode

NOW_MS = 1_700_000_000_000

Writer = Callable[[SqlStore, Sequence[OptOutRecord], Callable[[], int]], None]
Stored = tuple[list[OptOutRecord], list[AuditEvent], ChainHead | None]


def records(count: int) -> list[OptOutRecord]:
    return [
        OptOutRecord(
            hashlib.sha256(n.to_bytes(8, "big")).digest(),
            NOW_MS - n,
            b64encode(hashlib.sha256(b"raw" + n.to_bytes(8, "big")).digest()),
        )
        for n in range(count)
    ]


def write_each(store: SqlStore, batch: Sequence[OptOutRecord], now_ms: Callable[[], int]) -> None:
    """The baseline: a get, a put and an audit event per record, a chunk per unit of work."""
    for start in range(0, len(batch), OPTOUT_WRITE_CHUNK):
        with store.transaction() as tx:
            at_ms = now_ms()
            for record in batch[start : start + OPTOUT_WRITE_CHUNK]:
                tx.optouts.put(latest(tx.optouts.get(record.first_level_hash), record))
                record_event(
                    tx,
                    OPERATOR_ACTOR,
                    at_ms=at_ms,
                    action="optout.add",
                    target_type="optout",
                    target_id=b64encode(record.first_level_hash),
                    after={"timestamp_ms": record.timestamp_ms, "via": "/v2/token/logout"},
                )


def timed(template: Path, path: Path, write: Writer, batch: Sequence[OptOutRecord]) -> float:
    """Seconds ``write`` takes for ``batch`` on a fresh copy of the template store."""
    shutil.copyfile(template, path)
    store = open_store(f"sqlite:///{path}")
    try:
        gc.collect()
        started = time.perf_counter()
        write(store, batch, lambda: NOW_MS)
        return time.perf_counter() - started
    finally:
        store.close()


def stored(path: Path) -> Stored:
    store = open_store(f"sqlite:///{path}")
    try:
        with store.read() as rx:
            return rx.optouts.list_all(), rx.audit.list_events(), rx.audit.head()
    finally:
        store.close()


def run(count: int, rounds: int) -> dict[str, Any]:
    batch = records(count)
    chunks = -(-count // OPTOUT_WRITE_CHUNK)
    sides: dict[str, Writer] = {"baseline": write_each, "batched": write_optouts}
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    with tempfile.TemporaryDirectory() as folder:
        template = Path(folder) / "template.db"
        upgrade(f"sqlite:///{template}")
        paths = {name: Path(folder) / f"{name}.db" for name in sides}
        timed(template, paths["batched"], write_optouts, batch[:10])  # warm-up: imports, caches
        for round_no in range(rounds):
            order = list(sides) if round_no % 2 == 0 else list(reversed(sides))
            for name in order:
                seconds[name].append(timed(template, paths[name], sides[name], batch))
            print(
                f"round {round_no + 1}: "
                + " | ".join(
                    f"{name} {count / seconds[name][-1]:9,.0f} records/s" for name in sides
                )
                + f" | x{seconds['baseline'][-1] / seconds['batched'][-1]:.1f}",
                flush=True,
            )
        identical = stored(paths["baseline"]) == stored(paths["batched"])
    median = {name: statistics.median(values) for name, values in seconds.items()}
    return {
        "count": count,
        "chunk": OPTOUT_WRITE_CHUNK,
        "rounds": rounds,
        **{f"{name}_records_per_s": round(count / median[name]) for name in sides},
        **{f"{name}_ms_per_chunk": round(median[name] * 1000 / chunks, 1) for name in sides},
        "ratio": round(median["baseline"] / median["batched"], 2),
        "stored_identical": identical,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = run(args.count, args.rounds)
    print(
        f"N={result['count']:,} opt-outs, {result['chunk']} per unit of work, median of "
        f"{result['rounds']} rounds: "
        f"baseline {result['baseline_records_per_s']:,} records/s "
        f"({result['baseline_ms_per_chunk']} ms per chunk) | "
        f"batched {result['batched_records_per_s']:,} records/s "
        f"({result['batched_ms_per_chunk']} ms per chunk) | "
        f"batched/baseline x{result['ratio']} | "
        f"stored results identical: {'yes' if result['stored_identical'] else 'NO'}",
        flush=True,
    )
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
