"""A running write-behind writes the opt-outs stops saved, without waiting for a restart.

A worker of ``serve --workers N`` that stops while the store refuses writes saves what it holds
to the data directory while the others serve on; a worker of an earlier serve may have left a
file too. The running workers look for such files on their own schedule: every
``SAVED_SCAN_INTERVAL_MS`` by their clock, and at once when writes work again after failing. A
look writes each file once, whoever else looks; a file another process holds is left to it; a
stopping worker claims nothing, and gives back the file it is writing after the chunk under way.
A look writes ``SAVED_CHUNKS_PER_LOOK`` chunks at most, so that the worker's own opt-outs reach
the store between two looks, however much the stops saved.

The store is a real migrated SQLite file and the clock a ``FixedClock`` the tests move. What a
running writer did is read from the store: an opt-out recorded after the clock moved is written
by a turn of ``run`` that saw the moved clock, and the look that turn found due has ended before
the next opt-out recorded is written (``Turns``).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from store_wrapper import StoreWrapper
from uid2_operator.clock import FixedClock
from uid2_operator.domain.optout import OptOutRecord
from uid2_operator.services.write_behind import (
    OPTOUT_WRITE_CHUNK,
    SAVED_CHUNKS_PER_LOOK,
    SAVED_SCAN_INTERVAL_MS,
    WriteBehind,
    read_saved,
    save_optouts,
)
from uid2_operator.storage import SqlStore
from uid2_operator.storage.interface import Tx
from uid2_operator.wire.encoding import b64encode

LOGGER = "uid2_operator.services.write_behind"
WAIT_STEPS = 1_500
"""How many 10 ms pauses a test waits for a running writer to write something before it fails
(a bound for a broken writer, never a measure of a working one)."""


def _records(count: int, tag: str, at_ms: int = 1_700_000_000_000) -> list[OptOutRecord]:
    return [
        OptOutRecord(
            hashlib.sha256(f"{tag}-{n}".encode()).digest(),
            at_ms + n,
            b64encode(hashlib.sha256(f"raw-uid-{tag}-{n}".encode()).digest()),
        )
        for n in range(count)
    ]


def _events(store: SqlStore, records: Sequence[OptOutRecord]) -> list[str]:
    """The ``optout.add`` events of ``records`` (first-level hash, base64), in order."""
    wanted = {b64encode(r.first_level_hash) for r in records}
    with store.read() as tx:
        return [
            e.target_id for e in tx.audit.list_events(action="optout.add") if e.target_id in wanted
        ]


def _written_once(store: SqlStore, records: Sequence[OptOutRecord]) -> bool:
    events = _events(store, records)
    return sorted(events) == sorted(b64encode(r.first_level_hash) for r in records)


def _stored(store: SqlStore, record: OptOutRecord) -> bool:
    with store.read() as tx:
        return record.first_level_hash in tx.optouts.get_many([record.first_level_hash])


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


async def _until(check: Callable[[], bool], what: str) -> None:
    for _ in range(WAIT_STEPS):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


class Turns:
    """Opt-outs of its own, recorded on running writers one at a time, each waited for until
    the store has it: a writer that wrote one has made a turn since it was recorded."""

    def __init__(self, store: SqlStore) -> None:
        self._store = store
        self._count = 0

    async def through(self, *writers: WriteBehind, turns: int = 2) -> None:
        """Each of ``writers`` makes ``turns`` turns after this call, one after the other: with
        two, a look found due by the first has ended by the second (``run`` waits for it before
        its next flush)."""
        for _ in range(turns):
            for writer in writers:
                self._count += 1
                [marker] = _records(1, tag=f"turn-{self._count}")
                writer.record_optout(marker)
                await _until(functools.partial(_stored, self._store, marker), "a turn")


def _running(*writers: WriteBehind) -> Callable[[Callable[[], Awaitable[None]]], None]:
    """Run ``scenario`` with ``writers`` running, then stop them (each makes its last flush)."""

    def run(scenario: Callable[[], Awaitable[None]]) -> None:
        async def main() -> None:
            tasks = [asyncio.create_task(w.run()) for w in writers]
            try:
                await scenario()
            finally:
                for writer in writers:
                    writer.stop()
                await asyncio.gather(*tasks)
                for writer in writers:
                    writer.close()

        asyncio.run(main())

    return run


# ----------------------------------------------------------------------------- the schedule


def test_a_file_saved_after_the_start_is_written_once_its_look_is_due(
    store: SqlStore, clock: FixedClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    saved_dir = tmp_path / "saved"
    saved = saved_dir / "4242-1.json"
    records = _records(3, tag="stopped-worker")
    writer = WriteBehind(store, clock, flush_interval_s=0.02, saved_dir=saved_dir)
    turns = Turns(store)

    async def scenario() -> None:
        await turns.through(writer)  # its first look (at the start) found nothing
        save_optouts(saved, records)  # another worker stopped meanwhile
        clock.advance(SAVED_SCAN_INTERVAL_MS - 1)
        await turns.through(writer)
        assert read_saved(saved) == records  # not yet due
        assert _events(store, records) == []
        clock.advance(1)
        await turns.through(writer)
        assert list(saved_dir.iterdir()) == []
        assert _written_once(store, records)
        clock.advance(SAVED_SCAN_INTERVAL_MS)
        await turns.through(writer)  # a look more finds nothing to write again

    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        _running(writer)(scenario)
    assert _written_once(store, records)
    assert _lines(caplog) == [
        f"write-behind: 3 opt-outs saved at an earlier stop written to the store, from {saved}"
    ]


def test_a_file_is_looked_for_at_once_when_writes_work_again(
    store: SqlStore, db_path: Path, clock: FixedClock, tmp_path: Path
) -> None:
    saved_dir = tmp_path / "saved"
    records = _records(4, tag="saved-during-outage")
    [waiting] = _records(1, tag="queued-during-outage")
    writer = WriteBehind(store, clock, flush_interval_s=0.02, saved_dir=saved_dir)
    turns = Turns(store)

    async def scenario() -> None:
        await turns.through(writer)
        _refuse_optout_writes(db_path)
        writer.record_optout(waiting)
        await _until(lambda: writer.failures > 0, "a failed flush")
        save_optouts(saved_dir / "77-1.json", records)  # a worker stopped during the outage
        _accept_optout_writes(db_path)
        await _until(lambda: _stored(store, waiting), "the queued opt-out written")
        await turns.through(writer, turns=1)  # the look the recovery made due has ended
        assert list(saved_dir.iterdir()) == []
        assert _written_once(store, records)

    _running(writer)(scenario)  # the clock never moved: only the recovery made the look due


def test_a_clock_set_back_makes_a_look_due_at_once(
    store: SqlStore, clock: FixedClock, tmp_path: Path
) -> None:
    saved_dir = tmp_path / "saved"
    records = _records(2, tag="clock-set-back")
    writer = WriteBehind(store, clock, flush_interval_s=0.02, saved_dir=saved_dir)
    turns = Turns(store)

    async def scenario() -> None:
        await turns.through(writer)
        save_optouts(saved_dir / "88-1.json", records)
        clock.advance(-60_000)  # the system clock corrected backwards
        await turns.through(writer)
        assert list(saved_dir.iterdir()) == []
        assert _written_once(store, records)

    _running(writer)(scenario)


# ------------------------------------------------------------------------------- exactness


HOLDING_WRITER = """
import sys
from pathlib import Path
from uid2_operator.clock import FixedClock
from uid2_operator.services import write_behind
from uid2_operator.storage import open_store

store = open_store(f"sqlite:///{sys.argv[1]}")
real = write_behind.write_optout_chunk
waited = False

def write_optout_chunk(*args, **kwargs):
    global waited
    if not waited:
        waited = True
        print("claimed", flush=True)
        sys.stdin.readline()
    real(*args, **kwargs)

write_behind.write_optout_chunk = write_optout_chunk
writer = write_behind.WriteBehind(
    store, FixedClock(), flush_interval_s=60, saved_dir=Path(sys.argv[2])
)
writer.write_saved()
print("written", flush=True)
"""
"""A worker of another process writing the saved files of ``argv[2]`` to the store at
``argv[1]``: it claims the first one and holds it, until told (a line on its standard input),
then writes it and exits."""


def test_a_running_writer_leaves_a_file_another_process_holds_to_it(
    store: SqlStore,
    db_path: Path,
    clock: FixedClock,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    saved_dir = tmp_path / "saved"
    own = saved_dir / "5-1.json"
    records = _records(3, tag="held")
    writer = WriteBehind(store, clock, flush_interval_s=0.02, saved_dir=saved_dir)
    turns = Turns(store)
    holder: subprocess.Popen[str] | None = None

    async def scenario() -> None:
        nonlocal holder
        await turns.through(writer)
        save_optouts(own, records)
        holder = subprocess.Popen(  # noqa: S603 (this interpreter, a fixed script)
            [sys.executable, "-c", HOLDING_WRITER, str(db_path), str(saved_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert holder.stdin is not None
        assert holder.stdout is not None
        assert holder.stdout.readline() == "claimed\n"
        [held] = saved_dir.iterdir()
        assert held.name == f"{own.name}.claimed-{holder.pid}"
        clock.advance(SAVED_SCAN_INTERVAL_MS)
        await turns.through(writer)
        assert _lines(caplog) == [
            f"write-behind: the saved opt-outs in {held} are skipped: another running worker "
            "holds the file and writes them"
        ]
        assert list(saved_dir.iterdir()) == [held]
        assert _events(store, records) == []

        holder.stdin.write("go on\n")
        holder.stdin.flush()
        assert holder.stdout.readline() == "written\n"
        assert holder.wait(timeout=30) == 0
        clock.advance(SAVED_SCAN_INTERVAL_MS)
        await turns.through(writer)

    try:
        with caplog.at_level(logging.DEBUG, logger=LOGGER):
            _running(writer)(scenario)
    finally:
        if holder is not None:
            for stream in (holder.stdin, holder.stdout):
                if stream is not None:
                    stream.close()
            if holder.poll() is None:
                holder.kill()
            holder.wait(timeout=10)
    assert list(saved_dir.iterdir()) == []
    assert _written_once(store, records)
    assert len(_lines(caplog)) == 1  # written by the holder, not here


def test_two_running_writers_looking_at_once_write_each_file_once(
    store: SqlStore, clock: FixedClock, tmp_path: Path
) -> None:
    saved_dir = tmp_path / "saved"
    writers = [WriteBehind(store, clock, flush_interval_s=0.02, saved_dir=saved_dir) for _ in "ab"]
    turns = Turns(store)
    files = {
        f"{300 + n}-1.json": _records(OPTOUT_WRITE_CHUNK + 7 if n % 4 == 0 else 3, tag=f"f{n}")
        for n in range(12)
    }

    async def scenario() -> None:
        await turns.through(*writers)
        for name, records in files.items():
            save_optouts(saved_dir / name, records)
        clock.advance(SAVED_SCAN_INTERVAL_MS)  # both find a look due at their next turn
        await turns.through(*writers)
        # 15 chunks in all: a look writes some, and the next follows at once
        await _until(lambda: not list(saved_dir.iterdir()), "every saved file written")

    _running(*writers)(scenario)
    everything = [record for records in files.values() for record in records]
    events = _events(store, everything)
    assert len(events) == len(set(events)) == len(everything)


# ---------------------------------------------------------------------------- bounded looks


class TransactionsWait(StoreWrapper):
    """The write transactions numbered in ``waiting`` (the first is 1) start only once the test
    lets them (``let_go``)."""

    def __init__(self, inner: SqlStore, waiting: Sequence[int]) -> None:
        super().__init__(inner)
        self._loop = asyncio.get_running_loop()
        self._entered = {n: asyncio.Event() for n in waiting}
        self._go = {n: threading.Event() for n in waiting}
        self._count = 0

    def transaction(self) -> AbstractContextManager[Tx]:
        self._count += 1
        if self._count in self._go:
            self._loop.call_soon_threadsafe(self._entered[self._count].set)
            assert self._go[self._count].wait(timeout=30)
        return self._inner.transaction()

    async def let_go(self, n: int, meanwhile: Callable[[], None]) -> None:
        """Once transaction ``n`` waits, do ``meanwhile``, then let it start."""
        await asyncio.wait_for(self._entered[n].wait(), timeout=30)
        meanwhile()
        self._go[n].set()


def test_a_look_writes_a_bounded_number_of_chunks_and_the_workers_own_optouts_go_between(
    store: SqlStore, clock: FixedClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    saved_dir = tmp_path / "saved"
    files = {  # workers stopped during an outage; a look takes them in this order
        "101-1.json": _records(OPTOUT_WRITE_CHUNK * 5 + 40, tag="a"),
        "102-1.json": _records(7, tag="b"),
        "103-1.json": _records(OPTOUT_WRITE_CHUNK * 2, tag="c"),
        "104-1.json": _records(OPTOUT_WRITE_CHUNK * 2 + 1, tag="d"),
    }
    for name, records in files.items():
        save_optouts(saved_dir / name, records)
    chunks = [
        len(records[start : start + OPTOUT_WRITE_CHUNK])
        for records in files.values()
        for start in range(0, len(records), OPTOUT_WRITE_CHUNK)
    ]
    assert len(chunks) > 2 * SAVED_CHUNKS_PER_LOOK  # three looks at least
    assert chunks[0] == OPTOUT_WRITE_CHUNK  # the first look stops in the first file's middle
    assert len(files["101-1.json"]) > SAVED_CHUNKS_PER_LOOK * OPTOUT_WRITE_CHUNK
    first_look = sum(chunks[:SAVED_CHUNKS_PER_LOOK])
    second_look = sum(chunks[SAVED_CHUNKS_PER_LOOK : 2 * SAVED_CHUNKS_PER_LOOK])
    own = _records(2, tag="own")
    saved = [record for records in files.values() for record in records]

    async def scenario() -> None:
        # Transactions 1 to SAVED_CHUNKS_PER_LOOK: the first look; then the flush of the first
        # of its own, then the second look.
        slow = TransactionsWait(store, waiting=(1, SAVED_CHUNKS_PER_LOOK + 2))
        writer = WriteBehind(slow, clock, flush_interval_s=0.02, saved_dir=saved_dir)  # type: ignore[arg-type]
        task = asyncio.create_task(writer.run())
        try:  # a logout while each look writes its first chunk
            await slow.let_go(1, functools.partial(writer.record_optout, own[0]))
            await slow.let_go(
                SAVED_CHUNKS_PER_LOOK + 2, functools.partial(writer.record_optout, own[1])
            )
            await _until(lambda: not list(saved_dir.iterdir()), "every saved file written")
        finally:
            writer.stop()
            await task
            writer.close()

    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        asyncio.run(scenario())  # the clock never moved: each look made the next one due
    events = _events(store, [*saved, *own])
    assert events.index(b64encode(own[0].first_level_hash)) == first_look
    assert events.index(b64encode(own[1].first_level_hash)) == first_look + 1 + second_look
    assert _written_once(store, [*saved, *own])
    assert _lines(caplog) == [  # a file written over several looks is counted whole
        f"write-behind: {len(records)} opt-outs saved at an earlier stop written to the store, "
        f"from {saved_dir / name}"
        for name, records in files.items()
    ]


# -------------------------------------------------------------------------------- stopping


def test_a_stopping_writer_opens_no_saved_file(
    store: SqlStore, clock: FixedClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    saved_dir = tmp_path / "saved"
    saved = saved_dir / "91-1.json"
    records = _records(2, tag="own-stop")
    save_optouts(saved, records)  # what its own stop saves, as it saves it
    corrupt = saved_dir / "91-2.json"
    corrupt.write_bytes(b"{")  # opened, it would be logged at ERROR
    writer = WriteBehind(store, clock, flush_interval_s=60, saved_dir=saved_dir)
    writer.stop()
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        writer.write_saved()
    assert sorted(saved_dir.iterdir()) == [saved, corrupt]
    assert read_saved(saved) == records
    assert _events(store, records) == []
    assert _lines(caplog) == []


class FirstTransactionWaits(StoreWrapper):
    """The first write transaction starts only once ``go`` is set (``entered`` says it waits)."""

    def __init__(self, inner: SqlStore) -> None:
        super().__init__(inner)
        self.entered = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self.go = threading.Event()
        self._first = True

    def transaction(self) -> AbstractContextManager[Tx]:
        if self._first:
            self._first = False
            self._loop.call_soon_threadsafe(self.entered.set)
            assert self.go.wait(timeout=30)
        return self._inner.transaction()


def test_a_stop_gives_the_file_under_way_back_after_its_chunk_and_writes_its_own(
    store: SqlStore, clock: FixedClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    saved_dir = tmp_path / "saved"
    saved = saved_dir / "92-1.json"
    records = _records(OPTOUT_WRITE_CHUNK * 2 + 100, tag="long-file")
    save_optouts(saved, records)
    [own] = _records(1, tag="confirmed-before-the-stop")

    async def scenario() -> None:
        slow = FirstTransactionWaits(store)
        writer = WriteBehind(slow, clock, flush_interval_s=0.02, saved_dir=saved_dir)  # type: ignore[arg-type]
        task = asyncio.create_task(writer.run())
        await asyncio.wait_for(slow.entered.wait(), timeout=30)  # its first chunk, under way
        writer.record_optout(own)
        writer.stop()
        slow.go.set()
        await task
        writer.close()

    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        asyncio.run(scenario())
    assert list(saved_dir.iterdir()) == [saved]  # its name back; nothing saved by the stop
    assert read_saved(saved) == records[OPTOUT_WRITE_CHUNK:]
    assert _written_once(store, records[:OPTOUT_WRITE_CHUNK])
    assert _events(store, records[OPTOUT_WRITE_CHUNK:]) == []
    assert _stored(store, own)
    assert _lines(caplog) == [
        f"write-behind: {OPTOUT_WRITE_CHUNK} of the {len(records)} opt-outs saved in {saved} "
        "written to the store before stopping; the file keeps the rest"
    ]


# --------------------------------------------------------------------------------- helpers

CREATE_REFUSING_TRIGGER = (
    "CREATE TRIGGER refuse_optouts BEFORE INSERT ON optouts "
    "BEGIN INSERT INTO nowhere VALUES (1); END"
)


def _refuse_optout_writes(db_path: Path) -> None:
    """Every INSERT into ``optouts`` fails in the database, as a broken store's would."""
    conn = sqlite3.connect(db_path, timeout=30, isolation_level=None)
    try:
        conn.execute(CREATE_REFUSING_TRIGGER)
    finally:
        conn.close()


def _accept_optout_writes(db_path: Path) -> None:
    conn = sqlite3.connect(db_path, timeout=30, isolation_level=None)
    try:
        conn.execute("DROP TRIGGER refuse_optouts")
    finally:
        conn.close()
