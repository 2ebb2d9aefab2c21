"""The write-behind through store outages and stops.

While writes fail, the log says so once when they start, at most once a minute while they go on,
and once when they work again, never with a traceback or a database error's text (which holds the
statement's parameters: raw UIDs and first-level hashes). A stop that cannot write the opt-outs it
holds (already confirmed to their callers) saves them to a file; the next start writes them once
and removes the file; a file it cannot read is left in place: for the worker's life when the file
is at fault, until the next look when the error may pass.

The store is a real migrated SQLite file. It is made to refuse writes the way a database does: a
trigger on ``optouts`` that names a table that does not exist (every opt-out write fails, as an
``OperationalError`` on the parameterised INSERT), or its write lock held by another connection.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import logging
import os
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest
from service_fixtures import ACTOR

from store_wrapper import StoreWrapper
from uid2_operator.clock import FixedClock
from uid2_operator.domain.optout import OptOutRecord
from uid2_operator.errors import StoreUnavailable
from uid2_operator.services import write_behind
from uid2_operator.services.credentials import CredentialService
from uid2_operator.services.write_behind import (
    FAILURE_REPORT_INTERVAL_MS,
    OPTOUT_WRITE_CHUNK,
    SAVED_CHUNKS_PER_LOOK,
    STOP_RETRY_PAUSE_S,
    WriteBehind,
    read_saved,
    save_optouts,
)
from uid2_operator.storage import SqlStore
from uid2_operator.storage.interface import Tx, UsageEntry
from uid2_operator.wire.encoding import b64encode

LOGGER = "uid2_operator.services.write_behind"
ENDPOINT = "/v2/token/generate"
CREATE_REFUSING_TRIGGER = (
    "CREATE TRIGGER refuse_optouts BEFORE INSERT ON optouts "
    "BEGIN INSERT INTO nowhere VALUES (1); END"
)


def _records(count: int, tag: str = "person", at_ms: int = 1_700_000_000_000) -> list[OptOutRecord]:
    return [
        OptOutRecord(
            hashlib.sha256(f"{tag}-{n}".encode()).digest(),
            at_ms + n,
            b64encode(hashlib.sha256(f"raw-uid-{tag}-{n}".encode()).digest()),
        )
        for n in range(count)
    ]


def _sqlite(db_path: Path) -> sqlite3.Connection:
    return sqlite3.connect(db_path, timeout=30, isolation_level=None)


def _refuse_optout_writes(db_path: Path) -> None:
    """Every INSERT into ``optouts`` fails in the database (no such table), with its
    parameters in the driver's error, as a broken or unreachable store's would be."""
    conn = _sqlite(db_path)
    try:
        conn.execute(CREATE_REFUSING_TRIGGER)
    finally:
        conn.close()


def _accept_optout_writes(db_path: Path) -> None:
    conn = _sqlite(db_path)
    try:
        conn.execute("DROP TRIGGER refuse_optouts")
    finally:
        conn.close()


@contextmanager
def _write_lock_held(db_path: Path) -> Iterator[None]:
    """Another connection holds the store's write lock (``BEGIN EXCLUSIVE``) meanwhile."""
    conn = _sqlite(db_path)
    conn.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def _optout_events(store: SqlStore) -> list[str]:
    """The first-level hash (base64) of every ``optout.add`` event, in order."""
    with store.read() as tx:
        return [e.target_id for e in tx.audit.list_events(action="optout.add")]


def _stored(store: SqlStore) -> dict[bytes, OptOutRecord]:
    with store.read() as tx:
        return {r.first_level_hash: r for r in tx.optouts.list_all()}


def _lines(caplog: pytest.LogCaptureFixture, level: int = logging.WARNING) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno >= level]


def _assert_private(caplog: pytest.LogCaptureFixture, records: Sequence[OptOutRecord]) -> None:
    """No captured record carries a traceback, and none names an identity, in any form."""
    assert all(r.exc_info is None and r.exc_text is None for r in caplog.records)
    text = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    assert "Traceback" not in text
    assert "INSERT" not in text
    assert "parameters" not in text
    for record in records:
        assert record.advertising_id is not None
        assert record.advertising_id not in text
        assert b64encode(record.first_level_hash) not in text
        assert record.first_level_hash.hex() not in text
        assert repr(record.first_level_hash)[2:-1] not in text


class _SteppedMonotonic:
    """The monotonic clock, stepped forward when a test says so."""

    def __init__(self) -> None:
        self._offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self._offset

    def step(self, seconds: float) -> None:
        self._offset += seconds


def _writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "write-behind" and t.is_alive()]


def _wait_for_writer_threads(timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while _writer_threads():
        assert time.monotonic() < deadline, "a write-behind thread never ended"
        time.sleep(0.02)


def _saved_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.json")) if directory.exists() else []


def _key_id(svc: CredentialService) -> str:
    site = svc.create_participant(ACTOR, name="Publisher", type="publisher", roles=("GENERATOR",))
    return svc.create_key(ACTOR, site_id=site.site_id, name="web", roles=["GENERATOR"]).key_id


# --------------------------------------------------------------------------------- logging


def test_an_outage_is_logged_when_it_starts_once_a_minute_and_when_it_ends(
    store: SqlStore,
    db_path: Path,
    svc: CredentialService,
    clock: FixedClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    key_id = _key_id(svc)
    records = _records(3)
    writer = WriteBehind(store, clock, flush_interval_s=60)
    _refuse_optout_writes(db_path)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        for record in records:
            writer.record_optout(record)
        for _ in range(20):  # 20 flushes within the minute: one line
            writer.usage.add(key_id, ENDPOINT)
            writer.flush()
            clock.advance(1_000)
        [started] = _lines(caplog)
        assert started.startswith("write-behind: store writes failing (StoreUnavailable: ")
        assert "no such table: main.nowhere" in started  # the project's own message says why
        assert started.endswith("; 3 opt-outs and 0 usage rows kept for the next flush")

        clock.advance(FAILURE_REPORT_INTERVAL_MS)
        writer.flush()
        writer.flush()
        assert len(_lines(caplog)) == 2
        still = _lines(caplog)[1]
        assert still.startswith("write-behind: store writes still failing after 80 s (21 failed ")
        assert still.endswith("; 3 opt-outs and 0 usage rows waiting")

        _accept_optout_writes(db_path)
        clock.advance(5_000)
        writer.flush()
        assert _lines(caplog)[2:] == [
            "write-behind: store writes work again, after 22 failed writes over 85 s"
        ]
        writer.flush()
        assert len(_lines(caplog)) == 3
    assert sorted(_optout_events(store)) == sorted(b64encode(r.first_level_hash) for r in records)
    _assert_private(caplog, records)


def test_a_store_that_fails_and_recovers_over_and_over_is_logged_twice_a_minute_at_most(
    store: SqlStore,
    db_path: Path,
    svc: CredentialService,
    clock: FixedClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Out of connections, say: every other write fails. One line when it starts and one when it
    # works again, then nothing for the rest of the minute; the next minute's first failure says
    # how many came and went unlogged meanwhile.
    key_id = _key_id(svc)
    writer = WriteBehind(store, clock, flush_interval_s=60)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        for _ in range(10):  # ten failures and ten recoveries within the minute
            _refuse_optout_writes(db_path)
            writer.record_optout(_records(1, tag=f"t{clock.now_ms()}")[0])
            writer.usage.add(key_id, ENDPOINT)
            writer.flush()
            clock.advance(1_000)
            _accept_optout_writes(db_path)
            writer.flush()
            clock.advance(1_000)
        first = _lines(caplog)
        assert len(first) == 2
        assert first[0].startswith("write-behind: store writes failing (StoreUnavailable: ")
        assert first[1] == "write-behind: store writes work again, after 1 failed writes over 1 s"

        clock.advance(FAILURE_REPORT_INTERVAL_MS)
        _refuse_optout_writes(db_path)
        writer.record_optout(_records(1, tag="late")[0])
        writer.flush()
        _accept_optout_writes(db_path)
        clock.advance(1_000)
        writer.flush()
        later = _lines(caplog)[2:]
        assert len(later) == 2
        assert later[0].startswith("write-behind: store writes failing (StoreUnavailable: ")
        assert later[0].endswith(
            "; 1 opt-outs and 0 usage rows kept for the next flush (9 more failures came and "
            "went since the last line)"
        )
        assert later[1] == "write-behind: store writes work again, after 1 failed writes over 1 s"
    assert len(_optout_events(store)) == 11


def test_a_failure_right_after_a_logged_recovery_is_not_logged_at_once(
    store: SqlStore,
    db_path: Path,
    svc: CredentialService,
    clock: FixedClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The interval counts from the last of these lines, whichever: a long failure's recovery
    # line is not followed a second later by a new pair.
    writer = WriteBehind(store, clock, flush_interval_s=60)

    def flush_at(second: int, failing: bool) -> None:
        clock.advance(second * 1000 - (clock.now_ms() - start))
        if failing:
            _refuse_optout_writes(db_path)
        writer.record_optout(_records(1, tag=f"at-{second}")[0])
        writer.flush()
        if failing:
            _accept_optout_writes(db_path)

    start = clock.now_ms()
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        flush_at(0, failing=True)  # logged: it starts
        flush_at(1, failing=False)  # logged: it works again
        for second in (30, 60, 90):  # quiet at first, logged once it has lasted a minute
            flush_at(second, failing=True)
        flush_at(95, failing=False)  # logged: the long one ended
        flush_at(96, failing=True)  # a second after that line: not logged
        flush_at(97, failing=False)
    lines = _lines(caplog)
    assert [line.split(" (")[0].split(",")[0] for line in lines] == [
        "write-behind: store writes failing",
        "write-behind: store writes work again",
        "write-behind: store writes still failing after 60 s",
        "write-behind: store writes work again",
    ]


def test_an_unexpected_error_is_named_by_class_and_frames_not_its_text(
    store: SqlStore, db_path: Path, clock: FixedClock, caplog: pytest.LogCaptureFixture
) -> None:
    conn = _sqlite(db_path)
    try:
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON optouts "
            "BEGIN SELECT RAISE(ABORT, 'refused by a secret rule'); END"
        )
    finally:
        conn.close()
    records = _records(2)
    writer = WriteBehind(store, clock, flush_interval_s=60)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        for record in records:
            writer.record_optout(record)
        writer.flush()
    [line] = _lines(caplog)
    assert line.startswith("write-behind: store writes failing (IntegrityError at ")
    assert "write_behind.py:" in line
    assert " write_optout_chunk" in line
    assert "refused by a secret rule" not in line
    assert len(writer.optouts) == 2
    _assert_private(caplog, records)


# --------------------------------------------------------------------------------- stopping


def test_a_stop_saves_the_optouts_the_store_refuses(
    store: SqlStore,
    db_path: Path,
    svc: CredentialService,
    clock: FixedClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    key_id = _key_id(svc)
    saved_dir = db_path.parent / "data" / write_behind.PENDING_OPTOUTS_DIR
    records = _records(3)
    _refuse_optout_writes(db_path)
    monotonic = _SteppedMonotonic()
    writer = WriteBehind(
        store,
        clock,
        flush_interval_s=60,
        saved_dir=saved_dir,
        stop_budget_s=60,
        monotonic=monotonic,
    )

    async def scenario() -> bool:
        task = asyncio.create_task(writer.run())
        await asyncio.sleep(0.05)
        for record in records:
            writer.record_optout(record)
        writer.usage.add(key_id, ENDPOINT)
        await asyncio.sleep(0.7)  # the flusher tried, and failed
        writer.stop()
        await asyncio.sleep(STOP_RETRY_PAUSE_S * 2)  # retrying, the budget far from spent
        retrying = not task.done()
        monotonic.step(60)  # the budget spent: the stop ends after its next try, not later
        await asyncio.wait_for(task, timeout=STOP_RETRY_PAUSE_S + 10)
        return retrying

    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        retrying = asyncio.run(scenario())
    writer.close()
    assert retrying
    [saved] = _saved_files(saved_dir)
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert stat.S_IMODE(saved_dir.stat().st_mode) == 0o700
    assert saved.name.startswith(f"{os.getpid()}-")
    assert read_saved(saved) == records
    assert not [p for p in saved_dir.iterdir() if p.name.startswith(".")]
    assert _optout_events(store) == []
    with store.read() as tx:  # the usage, which the store takes, is written by the stop
        assert [(u.endpoint, u.count) for u in tx.usage.list_for_key(key_id)] == [(ENDPOINT, 1)]
    lines = _lines(caplog)
    assert lines[0].startswith("write-behind: store writes failing (StoreUnavailable: ")
    assert lines[1:] == [  # the retries of the stop add no line
        f"write-behind: 3 opt-outs not written to the store before stopping were saved to "
        f"{saved}; a worker running on this data directory, or the next one started, writes them"
    ]
    _assert_private(caplog, records)


def test_a_stop_does_not_wait_out_a_write_lock_and_the_write_left_behind_commits_nothing(
    store: SqlStore,
    db_path: Path,
    svc: CredentialService,
    clock: FixedClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    key_id = _key_id(svc)
    saved_dir = db_path.parent / "saved"
    records = _records(4)
    writer = WriteBehind(store, clock, flush_interval_s=60, saved_dir=saved_dir, stop_budget_s=0.5)

    async def scenario() -> bool:
        task = asyncio.create_task(writer.run())
        await asyncio.sleep(0.05)
        for record in records:
            writer.record_optout(record)
        writer.usage.add(key_id, ENDPOINT)
        writer.usage.add(key_id, ENDPOINT)
        await asyncio.sleep(0.7)  # the write waits for the lock (SQLite: up to 10 s)
        assert _writer_threads()
        writer.stop()
        await task
        return bool(_writer_threads())

    with caplog.at_level(logging.DEBUG, logger=LOGGER), _write_lock_held(db_path):
        # The stop ended with the write still waiting for the lock: it did not wait it out.
        assert asyncio.run(scenario()) is True
        writer.close()
        [saved] = _saved_files(saved_dir)
        assert read_saved(saved) == records
    # The lock released, the write left behind gets it, and must not commit: its records are
    # in the saved file.
    _wait_for_writer_threads()
    assert _optout_events(store) == []
    assert _stored(store) == {}
    assert _lines(caplog) == [
        "write-behind: 1 usage rows (2 requests) not written to the store before stopping; "
        "usage is not kept across a stop",
        f"write-behind: 4 opt-outs not written to the store before stopping were saved to "
        f"{saved}; a worker running on this data directory, or the next one started, writes them",
    ]
    _assert_private(caplog, records)


def test_what_a_write_waiting_for_the_store_holds_is_still_counted_pending(
    store: SqlStore, db_path: Path, svc: CredentialService, clock: FixedClock
) -> None:
    # The write under way took the queue's records: until it lands they are neither queued nor
    # in the store, and the pending gauges must still count them.
    key_id = _key_id(svc)
    writer = WriteBehind(
        store, clock, flush_interval_s=0.1, saved_dir=db_path.parent / "saved", stop_budget_s=0.5
    )

    async def scenario() -> tuple[int, int, int, int]:
        task = asyncio.create_task(writer.run())
        for record in _records(5):
            writer.record_optout(record)
        writer.usage.add(key_id, ENDPOINT)
        await asyncio.sleep(0.7)  # the write waits for the lock (SQLite: up to 10 s)
        assert _writer_threads()
        seen = (len(writer.optouts), len(writer.usage))
        pending = (writer.pending_optouts, writer.pending_usage_rows)
        writer.stop()
        await task
        return (*seen, *pending)

    with _write_lock_held(db_path):
        queued_optouts, queued_usage, pending_optouts, pending_usage = asyncio.run(scenario())
        writer.close()
    _wait_for_writer_threads()
    assert (queued_optouts, queued_usage) == (0, 0)  # all of it in the write under way
    assert (pending_optouts, pending_usage) == (5, 1)


class _UsageWriteHeld(StoreWrapper):
    """Its first usage write waits until ``release`` is set (a store that holds a lock)."""

    def __init__(self, inner: SqlStore) -> None:
        super().__init__(inner)
        self.entered = threading.Event()
        self.release = threading.Event()

    def record_usage(self, batch: Sequence[UsageEntry]) -> list[str]:
        if not self.entered.is_set():
            self.entered.set()
            self.release.wait(timeout=30)
        return super().record_usage(batch)


def test_requests_answered_while_a_write_waits_are_stamped_with_their_time(
    store: SqlStore, svc: CredentialService, clock: FixedClock
) -> None:
    key_id = _key_id(svc)
    held = _UsageWriteHeld(store)
    writer = WriteBehind(held, clock, flush_interval_s=0.05, stop_budget_s=5)

    async def scenario() -> tuple[int, int]:
        task = asyncio.create_task(writer.run())
        writer.usage.add(key_id, ENDPOINT)
        while not held.entered.is_set():  # the first usage write is under way, and waits
            await asyncio.sleep(0.01)
        clock.advance(12_000)  # the store keeps it waiting for seconds
        for _ in range(500):  # until the usage clock catches up (never, if it stays frozen)
            if writer.usage.now_ms == clock.now_ms():
                break
            await asyncio.sleep(0.01)
        writer.usage.add(key_id, ENDPOINT)  # a request answered meanwhile
        stamped = writer.usage.take()[0][3]
        writer.usage.restore([(key_id, ENDPOINT, 1, stamped)])
        held.release.set()
        writer.stop()
        await asyncio.wait_for(task, timeout=10)
        return stamped, clock.now_ms()

    stamped, now = asyncio.run(scenario())
    writer.close()
    assert stamped == now
    assert svc.get_key(ACTOR, key_id).last_used_at_ms == now
    assert svc.get_key(ACTOR, key_id).usage == {ENDPOINT: 2}


def test_a_stop_retries_a_refused_write_within_its_budget(
    store: SqlStore, db_path: Path, clock: FixedClock
) -> None:
    saved_dir = db_path.parent / "saved"
    records = _records(2)
    _refuse_optout_writes(db_path)
    writer = WriteBehind(store, clock, flush_interval_s=60, saved_dir=saved_dir, stop_budget_s=10)

    async def scenario() -> None:
        task = asyncio.create_task(writer.run())
        for record in records:
            writer.record_optout(record)
        writer.stop()
        await asyncio.sleep(0.8)  # the last flush fails and is retried meanwhile
        _accept_optout_writes(db_path)
        await asyncio.wait_for(task, timeout=5)

    asyncio.run(scenario())
    writer.close()
    assert _saved_files(saved_dir) == []
    assert sorted(_optout_events(store)) == sorted(b64encode(r.first_level_hash) for r in records)


def test_optouts_that_cannot_be_saved_either_are_logged_at_error_with_count_and_path(
    store: SqlStore, db_path: Path, clock: FixedClock, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    blocker = tmp_path / "data"
    blocker.write_text("a file where the data directory should be")
    saved_dir = blocker / write_behind.PENDING_OPTOUTS_DIR
    records = _records(5)
    _refuse_optout_writes(db_path)
    writer = WriteBehind(store, clock, flush_interval_s=60, saved_dir=saved_dir, stop_budget_s=0.2)

    async def scenario() -> None:
        task = asyncio.create_task(writer.run())
        for record in records:
            writer.record_optout(record)
        writer.stop()
        await task

    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        asyncio.run(scenario())
    writer.close()
    [error] = _lines(caplog, logging.ERROR)
    assert error.startswith(
        f"write-behind: 5 opt-outs confirmed to their callers were not written to the store, "
        f"and saving them to {saved_dir}{os.sep}{os.getpid()}-"
    )
    assert error.endswith("(Not a directory): they are lost")
    _assert_private(caplog, records)


# --------------------------------------------------------------------------------- starting


def test_a_start_writes_the_saved_optouts_once_and_removes_the_file(
    store: SqlStore, clock: FixedClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    saved_dir = tmp_path / "saved"
    records = _records(3)
    already = records[0]
    write_behind.write_optouts(store, [already], clock.now_ms)  # committed before the stop
    save_optouts(saved_dir / "4242-1.json", records)
    writer = WriteBehind(store, clock, flush_interval_s=0.05, saved_dir=saved_dir)

    async def scenario() -> None:
        task = asyncio.create_task(writer.run())
        for _ in range(200):
            await asyncio.sleep(0.02)
            if not list(saved_dir.iterdir()):
                break
        writer.stop()
        await task

    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        asyncio.run(scenario())
    writer.close()
    assert list(saved_dir.iterdir()) == []
    events = _optout_events(store)
    # The one committed before the stop is stored as it was, and audited once, not again.
    assert events == [b64encode(r.first_level_hash) for r in records]
    assert _stored(store) == {r.first_level_hash: r for r in records}  # the same record kept
    assert _lines(caplog) == [
        f"write-behind: 3 opt-outs saved at an earlier stop written to the store, from "
        f"{saved_dir / '4242-1.json'}"
    ]
    WriteBehind(store, clock, flush_interval_s=60, saved_dir=saved_dir).write_saved()
    assert len(_optout_events(store)) == 3
    _assert_private(caplog, records)


def test_two_workers_starting_together_write_each_saved_file_once(
    store: SqlStore, clock: FixedClock, tmp_path: Path
) -> None:
    saved_dir = tmp_path / "saved"
    files = 12
    for n in range(files):
        save_optouts(saved_dir / f"{1000 + n}-1.json", _records(3, tag=f"file{n}"))
    writers = [WriteBehind(store, clock, flush_interval_s=60, saved_dir=saved_dir) for _ in "ab"]
    threads = [threading.Thread(target=w.write_saved) for w in writers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert list(saved_dir.iterdir()) == []
    events = _optout_events(store)
    assert len(events) == len(set(events)) == files * 3


HOLDER = """
import fcntl, os, sys
own = sys.argv[1]
claimed = f"{own}.claimed-{os.getpid()}"
os.rename(own, claimed)
fd = os.open(claimed, os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
print(claimed, flush=True)
sys.stdin.readline()
fcntl.flock(fd, fcntl.LOCK_UN)
print("released", flush=True)
sys.stdin.read()
"""
"""A worker writing a saved file: claims ``argv[1]`` as the write-behind does and holds its lock
until told (a line on its standard input), then goes on running without it."""


def test_a_claimed_file_whose_lock_no_one_holds_is_claimed_again_whatever_its_pid(
    store: SqlStore, clock: FixedClock, tmp_path: Path
) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    saved_dir = tmp_path / "saved"
    claimants = {
        "gone": int(dead.stdout),
        "this one": os.getpid(),  # a restarted worker given the pid of the one killed
        "init": 1,  # a container's first process
        "parent": os.getppid(),
    }
    records: list[OptOutRecord] = []
    for n, (tag, pid) in enumerate(claimants.items()):
        written = _records(2, tag=tag)
        save_optouts(saved_dir / f"{7 + n}-1.json.claimed-{pid}", written)
        records += written
    WriteBehind(store, clock, flush_interval_s=60, saved_dir=saved_dir).write_saved()
    assert list(saved_dir.iterdir()) == []
    events = _optout_events(store)
    assert sorted(events) == sorted(b64encode(r.first_level_hash) for r in records)


def test_a_file_another_worker_holds_is_skipped_then_written_once_released(
    store: SqlStore, clock: FixedClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    saved_dir = tmp_path / "saved"
    records = _records(3)
    save_optouts(saved_dir / "6-1.json", records)
    holder = subprocess.Popen(  # noqa: S603 (this interpreter, a fixed script)
        [sys.executable, "-c", HOLDER, str(saved_dir / "6-1.json")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdin is not None
    assert holder.stdout is not None
    try:
        held = Path(holder.stdout.readline().strip())
        assert held.name == f"6-1.json.claimed-{holder.pid}"
        writer = WriteBehind(store, clock, flush_interval_s=60, saved_dir=saved_dir)
        with caplog.at_level(logging.DEBUG, logger=LOGGER):
            writer.write_saved()
            writer.write_saved()  # logged once per worker
        assert [p.name for p in saved_dir.iterdir()] == [held.name]
        assert read_saved(held) == records
        assert _optout_events(store) == []
        assert _lines(caplog) == [
            f"write-behind: the saved opt-outs in {held} are skipped: another running worker "
            "holds the file and writes them"
        ]

        holder.stdin.write("release\n")
        holder.stdin.flush()
        assert holder.stdout.readline() == "released\n"
        assert holder.poll() is None  # its process still runs: the lock alone decides
        writer.write_saved()
        assert list(saved_dir.iterdir()) == []
        events = _optout_events(store)
        assert sorted(events) == sorted(b64encode(r.first_level_hash) for r in records)
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)
        holder.stdout.close()
    _assert_private(caplog, records)


def test_two_workers_reclaiming_abandoned_files_write_each_once(
    store: SqlStore, clock: FixedClock, tmp_path: Path
) -> None:
    saved_dir = tmp_path / "saved"
    files = 12
    for n in range(files):
        claimant = os.getpid() if n % 2 else 1
        save_optouts(saved_dir / f"{2000 + n}-1.json.claimed-{claimant}", _records(3, tag=f"f{n}"))
    writers = [WriteBehind(store, clock, flush_interval_s=60, saved_dir=saved_dir) for _ in "ab"]
    threads = [threading.Thread(target=w.write_saved) for w in writers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert list(saved_dir.iterdir()) == []
    events = _optout_events(store)
    assert len(events) == len(set(events)) == files * 3


def test_a_file_the_store_refuses_keeps_only_what_was_not_written(
    store: SqlStore, clock: FixedClock, tmp_path: Path
) -> None:
    saved_dir = tmp_path / "saved"
    records = _records(OPTOUT_WRITE_CHUNK * 2 + 200)
    save_optouts(saved_dir / "5-1.json", records)

    class SecondChunkRefused(StoreWrapper):
        def __init__(self, inner: SqlStore) -> None:
            super().__init__(inner)
            self.transactions = 0

        def transaction(self) -> AbstractContextManager[Tx]:
            self.transactions += 1
            if self.transactions == 2:
                raise StoreUnavailable("The store is unavailable: switched off")
            return self._inner.transaction()

    flaky = SecondChunkRefused(store)
    writer = WriteBehind(flaky, clock, flush_interval_s=60, saved_dir=saved_dir)  # type: ignore[arg-type]
    writer.write_saved()
    [kept] = _saved_files(saved_dir)
    assert kept.name == "5-1.json"
    assert read_saved(kept) == records[OPTOUT_WRITE_CHUNK:]
    assert len(_optout_events(store)) == OPTOUT_WRITE_CHUNK

    writer.write_saved()
    assert _saved_files(saved_dir) == []
    events = _optout_events(store)
    assert len(events) == len(set(events)) == len(records)  # each exactly once


def test_a_file_that_cannot_be_cut_down_is_written_on_past_the_bound_and_never_twice(
    store: SqlStore,
    clock: FixedClock,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    saved_dir = tmp_path / "saved"
    saved = saved_dir / "5-1.json"
    records = _records(OPTOUT_WRITE_CHUNK * (SAVED_CHUNKS_PER_LOOK + 2))
    save_optouts(saved, records)
    real_open = os.open

    def open_on_a_full_disk(path: str | Path, flags: int, *args: int, **kwargs: int) -> int:
        if Path(path).name.endswith(".new"):  # the file rewritten after a chunk
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_open(path, flags, *args, **kwargs)

    class Counted(StoreWrapper):
        """Refuses writes once the file could have been written twice (a writer that would
        give the file back holding what it wrote would write it again for ever)."""

        def __init__(self, inner: SqlStore) -> None:
            super().__init__(inner)
            self.transactions = 0

        def transaction(self) -> AbstractContextManager[Tx]:
            self.transactions += 1
            if self.transactions > 2 * (SAVED_CHUNKS_PER_LOOK + 2):
                raise StoreUnavailable("The store is unavailable: written too often")
            return self._inner.transaction()

    counted = Counted(store)
    writer = WriteBehind(counted, clock, flush_interval_s=60, saved_dir=saved_dir)  # type: ignore[arg-type]
    monkeypatch.setattr(os, "open", open_on_a_full_disk)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        writer.write_saved()
    monkeypatch.undo()
    assert counted.transactions == SAVED_CHUNKS_PER_LOOK + 2
    assert _saved_files(saved_dir) == []
    events = _optout_events(store)
    assert len(events) == len(set(events)) == len(records)  # each exactly once
    assert _lines(caplog) == [
        f"write-behind: {len(records)} opt-outs saved at an earlier stop written to the store, "
        f"from {saved}"
    ]


def test_a_file_that_cannot_be_read_is_left_in_place_and_logged(
    store: SqlStore, clock: FixedClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    saved_dir = tmp_path / "saved"
    saved_dir.mkdir()
    corrupt = saved_dir / "9-1.json"
    corrupt.write_bytes(b'{"kind": "uid2-operator pending opt-outs", "version": 1, "optouts": [')
    malformed = saved_dir / "9-2.json"
    good = _records(1)
    save_optouts(malformed, good)
    document = json.loads(malformed.read_bytes())
    document["optouts"].append({"flh": "AAAA", "at_ms": 1, "advertising_id": None})
    malformed.write_text(json.dumps(document))
    before = {p.name: p.read_bytes() for p in saved_dir.iterdir()}
    writer = WriteBehind(store, clock, flush_interval_s=60, saved_dir=saved_dir)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        writer.write_saved()
        writer.write_saved()  # logged once per worker
    assert {p.name: p.read_bytes() for p in saved_dir.iterdir()} == before
    assert _lines(caplog, logging.ERROR) == [
        f"write-behind: the saved opt-outs in {corrupt} cannot be read (not JSON); the file is "
        "left in place",
        f"write-behind: the saved opt-outs in {malformed} cannot be read (opt-out 1 is "
        "malformed); the file is left in place",
    ]
    assert _optout_events(store) == []
    _assert_private(caplog, good)


def test_a_directory_that_cannot_be_listed_is_no_store_failure_and_is_looked_at_again(
    store: SqlStore, clock: FixedClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A file where the directory of saved opt-outs should be: the look logs it once, as the
    directory's fault (the store is not said to fail, no failure is counted), and a look after
    the directory is put right writes what it holds."""
    saved_dir = tmp_path / "saved"
    saved_dir.write_text("a file where the directory should be")
    writer = WriteBehind(store, clock, flush_interval_s=60, saved_dir=saved_dir)
    records = _records(3)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        writer.write_saved()
        writer.write_saved()  # the same cause: logged once
        assert writer.failures == 0
        assert _lines(caplog) == [
            f"write-behind: {saved_dir} cannot be listed (Not a directory); the saved opt-outs "
            "in it wait for a look that can list it"
        ]
        saved_dir.unlink()
        saved_dir.mkdir()
        save_optouts(saved_dir / "5-1.json", records)
        writer.write_saved()
    assert writer.failures == 0
    assert list(saved_dir.iterdir()) == []
    assert sorted(_optout_events(store)) == sorted(b64encode(r.first_level_hash) for r in records)
    assert f"write-behind: {saved_dir} can be listed again" in _lines(caplog)
    assert not [line for line in _lines(caplog) if "store writes failing" in line]


def test_a_directory_or_a_loop_of_links_in_a_files_place_is_skipped_and_logged_once(
    store: SqlStore, clock: FixedClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    saved_dir = tmp_path / "saved"
    directory = saved_dir / "9-1.json"
    directory.mkdir(parents=True)
    loop = saved_dir / "9-2.json"
    loop.symlink_to(loop.name)
    good = saved_dir / "9-3.json"
    records = _records(2)
    save_optouts(good, records)
    writer = WriteBehind(store, clock, flush_interval_s=60, saved_dir=saved_dir)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        writer.write_saved()
        writer.write_saved()  # skipped for the worker's life: logged once
    assert sorted(p.name for p in saved_dir.iterdir()) == [directory.name, loop.name]
    assert directory.is_dir()
    assert loop.is_symlink()
    assert [(r.levelno, r.getMessage()) for r in caplog.records if r.name == LOGGER] == [
        (
            logging.ERROR,
            f"write-behind: the saved opt-outs in {directory} cannot be read (Is a directory); "
            "the file is left in place",
        ),
        (
            logging.ERROR,
            f"write-behind: the saved opt-outs in {loop} cannot be claimed (Too many levels of "
            "symbolic links); the file is left in place",
        ),
        (
            logging.WARNING,
            f"write-behind: 2 opt-outs saved at an earlier stop written to the store, from {good}",
        ),
    ]
    assert sorted(_optout_events(store)) == sorted(b64encode(r.first_level_hash) for r in records)


def _mend_in_place(path: Path, good: bytes) -> None:
    path.write_bytes(good)  # the same file (inode), holding something else


def _replace(path: Path, good: bytes) -> None:
    spare = path.with_name(".spare")
    spare.write_bytes(good)
    os.replace(spare, path)  # another file under the name


def _directory_to_file(path: Path, good: bytes) -> None:
    path.rmdir()
    path.write_bytes(good)


@pytest.mark.parametrize(
    ("bad", "mend"),
    [
        pytest.param("corrupt", _mend_in_place, id="mended in place"),
        pytest.param("corrupt", _replace, id="replaced by a good file"),
        pytest.param("directory", _directory_to_file, id="a directory replaced by a file"),
    ],
)
def test_a_file_at_fault_is_written_once_mended_with_no_restart(  # noqa: PLR0917 (fixtures)
    store: SqlStore,
    clock: FixedClock,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    bad: str,
    mend: Callable[[Path, bytes], None],
) -> None:
    """A saved file skipped for its content or kind stays skipped, logged once, while it stays
    as it was; once an operator mends it where it is, or puts a good file in its place, the next
    look of the same running worker writes it."""
    saved_dir = tmp_path / "saved"
    saved_dir.mkdir()
    path = saved_dir / "9-1.json"
    if bad == "directory":
        path.mkdir()
    else:
        path.write_bytes(b'{"kind": "uid2-operator pending opt-outs", "version": 1, "optouts": [')
    records = _records(3)
    good_file = tmp_path / "good.json"
    save_optouts(good_file, records)
    writer = WriteBehind(store, clock, flush_interval_s=60, saved_dir=saved_dir)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        writer.write_saved()
        writer.write_saved()  # as it was: skipped without a word
        assert len(_lines(caplog, logging.ERROR)) == 1
        assert path.exists()
        assert _optout_events(store) == []
        mend(path, good_file.read_bytes())
        writer.write_saved()
    assert not path.exists()
    assert sorted(_optout_events(store)) == sorted(b64encode(r.first_level_hash) for r in records)
    assert _lines(caplog)[-1] == (
        f"write-behind: 3 opt-outs saved at an earlier stop written to the store, from {path}"
    )


def test_a_file_at_fault_replaced_by_another_at_fault_is_logged_again_once(
    store: SqlStore, clock: FixedClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    saved_dir = tmp_path / "saved"
    saved_dir.mkdir()
    path = saved_dir / "9-1.json"
    path.write_bytes(b"not json")
    writer = WriteBehind(store, clock, flush_interval_s=60, saved_dir=saved_dir)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        writer.write_saved()
        _replace(path, b'{"kind": "something else"}')
        writer.write_saved()
        writer.write_saved()
    assert [line.split(" (")[1].split(")")[0] for line in _lines(caplog, logging.ERROR)] == [
        "not JSON",
        "not a file of saved opt-outs",
    ]
    assert path.exists()


@pytest.mark.parametrize(
    ("step", "error", "level"),
    [
        pytest.param(step, error, level, id=f"{errno.errorcode[error]} when {step}")
        for step, error, level in [
            ("claimed", errno.EMFILE, logging.WARNING),  # out of file descriptors, a burst
            ("claimed", errno.ENOMEM, logging.WARNING),
            ("claimed", errno.EACCES, logging.ERROR),  # until its owner or mode is fixed
            ("read", errno.EIO, logging.WARNING),
            ("read", errno.ENFILE, logging.WARNING),
        ]
    ],
)
def test_a_file_a_passing_os_error_keeps_from_a_look_is_written_by_the_next(  # noqa: PLR0917 (fixtures)
    store: SqlStore,
    clock: FixedClock,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    step: str,
    error: int,
    level: int,
) -> None:
    saved_dir = tmp_path / "saved"
    saved = saved_dir / "9-1.json"
    other = saved_dir / "9-2.json"
    records, others = _records(3, tag="failing"), _records(2, tag="other")
    save_optouts(saved, records)
    save_optouts(other, others)
    failures = 2  # the same error at two looks in a row: logged once
    # claimed: opened under its own name; read: under the name it is claimed by
    failing_name = saved.name if step == "claimed" else f"{saved.name}.claimed-{os.getpid()}"

    def failing(path: str | Path) -> bool:
        nonlocal failures
        if failures and Path(path).name == failing_name:
            failures -= 1
            return True
        return False

    if step == "claimed":
        real_open = os.open

        def open_failing(path: str | Path, flags: int, *args: int, **kwargs: int) -> int:
            if failing(path):
                raise OSError(error, os.strerror(error), str(path))
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", open_failing)
    else:
        real_read = Path.read_bytes

        def read_failing(path: Path) -> bytes:
            if failing(path):
                raise OSError(error, os.strerror(error), str(path))
            return real_read(path)

        monkeypatch.setattr(Path, "read_bytes", read_failing)
    writer = WriteBehind(store, clock, flush_interval_s=60, saved_dir=saved_dir)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        for _ in range(2):
            writer.write_saved()
            assert [p.name for p in saved_dir.iterdir()] == [saved.name]  # under its own name
            assert read_saved(saved) == records
            assert sorted(_optout_events(store)) == sorted(
                b64encode(r.first_level_hash) for r in others
            )
        writer.write_saved()
    assert list(saved_dir.iterdir()) == []
    assert failures == 0
    assert sorted(_optout_events(store)) == sorted(
        b64encode(r.first_level_hash) for r in [*records, *others]
    )
    assert [(r.levelno, r.getMessage()) for r in caplog.records if r.name == LOGGER] == [
        (
            level,
            f"write-behind: the saved opt-outs in {saved} cannot be {step} "
            f"({os.strerror(error)}); the file is tried again at the next look",
        ),
        (
            logging.WARNING,
            f"write-behind: 2 opt-outs saved at an earlier stop written to the store, from {other}",
        ),
        (
            logging.WARNING,
            f"write-behind: 3 opt-outs saved at an earlier stop written to the store, from {saved}",
        ),
    ]
    _assert_private(caplog, [*records, *others])


GIVING_BACK = """
import fcntl, os, sys
own = sys.argv[1]
claimed = f"{own}.claimed-{os.getpid()}"
fd = os.open(own, os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
os.rename(own, claimed)
os.rename(claimed, own)
print("given back", flush=True)
sys.stdin.readline()
os.close(fd)
print("released", flush=True)
sys.stdin.read()
"""
"""A worker whose write of a saved file failed: it has given ``argv[1]`` its name back and not
yet released its lock, until told (a line on its standard input)."""


def test_a_file_given_its_name_back_under_a_lock_still_held_is_written_once_released(
    store: SqlStore, clock: FixedClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    saved_dir = tmp_path / "saved"
    own = saved_dir / "6-1.json"
    records = _records(3)
    save_optouts(own, records)
    holder = subprocess.Popen(  # noqa: S603 (this interpreter, a fixed script)
        [sys.executable, "-c", GIVING_BACK, str(own)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdin is not None
    assert holder.stdout is not None
    writer = WriteBehind(store, clock, flush_interval_s=0.1, saved_dir=saved_dir)
    skipped = (
        f"write-behind: the saved opt-outs in {own} are skipped: another running worker holds "
        "the file and writes them"
    )

    async def scenario() -> None:
        task = asyncio.create_task(writer.run())
        for _ in range(250):
            await asyncio.sleep(0.02)
            if _lines(caplog):
                break
        assert _lines(caplog) == [skipped]
        assert [p.name for p in saved_dir.iterdir()] == [own.name]  # left as it was
        assert holder.stdin is not None
        assert holder.stdout is not None
        holder.stdin.write("release\n")
        holder.stdin.flush()
        assert holder.stdout.readline() == "released\n"
        for _ in range(250):  # scanned again, the store accepting writes all along
            await asyncio.sleep(0.02)
            if not list(saved_dir.iterdir()):
                break
        writer.stop()
        await task

    try:
        assert holder.stdout.readline() == "given back\n"
        with caplog.at_level(logging.DEBUG, logger=LOGGER):
            asyncio.run(scenario())
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)
        holder.stdout.close()
    writer.close()
    assert list(saved_dir.iterdir()) == []
    events = _optout_events(store)
    assert sorted(events) == sorted(b64encode(r.first_level_hash) for r in records)
    assert _lines(caplog) == [
        skipped,
        f"write-behind: 3 opt-outs saved at an earlier stop written to the store, from {own}",
    ]
    _assert_private(caplog, records)


UNOPENED = """
import json, logging
from pathlib import Path
from uid2_operator.clock import FixedClock
from uid2_operator.services.write_behind import WriteBehind

lines = []
handler = logging.Handler()
handler.emit = lambda record: lines.append(f"{record.levelname} {record.getMessage()}")
logging.getLogger("uid2_operator").addHandler(handler)
writer = WriteBehind(None, FixedClock(), flush_interval_s=60, saved_dir=Path("."))
writer.write_saved()
writer.write_saved()
print(json.dumps({"lines": lines, "files": sorted(p.name for p in Path(".").iterdir())}))
"""
"""A worker in the directory of saved files (its working directory), scanning it twice: what it
logged and the files left. It never reaches the store (it has none)."""


def test_a_file_the_worker_may_not_open_is_left_under_its_name_and_logged_once(
    tmp_path: Path,
) -> None:
    saved_dir = tmp_path / "saved"
    saved = saved_dir / "9-1.json"
    save_optouts(saved, _records(1))
    user: int | None = None
    if os.geteuid() == 0:  # a file root left, mode 0600, in the service user's directory
        user = 65534
        os.chown(saved_dir, user, user)
    else:
        saved.chmod(0)
    scanned = subprocess.run(  # noqa: S603 (this interpreter, a fixed script)
        [sys.executable, "-c", UNOPENED],
        cwd=saved_dir,  # entered before the user changes: its parents may be closed to it
        user=user,
        group=user,
        extra_groups=[] if user is not None else None,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(scanned.stdout) == {
        "lines": [
            "ERROR write-behind: the saved opt-outs in 9-1.json cannot be claimed (Permission "
            "denied); the file is tried again at the next look"
        ],
        "files": ["9-1.json"],
    }


KILLED = """
import os, sys
from pathlib import Path
from uid2_operator.clock import FixedClock
from uid2_operator.services import write_behind
from uid2_operator.storage import open_store

store = open_store(f"sqlite:///{sys.argv[1]}")
chunks = 0
real = write_behind.write_optout_chunk

def write_optout_chunk(*args, **kwargs):
    global chunks
    chunks += 1
    if chunks == 2:
        os._exit(9)  # killed while writing its second chunk, the first committed
    real(*args, **kwargs)

write_behind.write_optout_chunk = write_optout_chunk
saved_dir = Path(sys.argv[2])
writer = write_behind.WriteBehind(store, FixedClock(), flush_interval_s=60, saved_dir=saved_dir)
writer.write_saved()
"""
"""A worker writing the saved files of ``argv[2]`` to the store at ``argv[1]``, killed once its
first chunk committed."""


def test_a_worker_killed_after_a_chunk_of_a_saved_file_committed_leaves_only_the_rest(
    store: SqlStore,
    db_path: Path,
    clock: FixedClock,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    saved_dir = tmp_path / "saved"
    records = _records(OPTOUT_WRITE_CHUNK * 2 + 200)
    save_optouts(saved_dir / "7-1.json", records)
    killed = subprocess.run(  # noqa: S603 (this interpreter, a fixed script)
        [sys.executable, "-c", KILLED, str(db_path), str(saved_dir)],
        capture_output=True,
        check=False,
    )
    assert killed.returncode == 9, killed.stderr
    [left] = saved_dir.iterdir()
    assert left.name.startswith("7-1.json.claimed-")
    assert read_saved(left) == records[OPTOUT_WRITE_CHUNK:]
    assert len(_optout_events(store)) == OPTOUT_WRITE_CHUNK

    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        WriteBehind(store, clock, flush_interval_s=60, saved_dir=saved_dir).write_saved()
    assert list(saved_dir.iterdir()) == []
    events = _optout_events(store)
    assert len(events) == len(set(events)) == len(records)  # each exactly once
    assert _lines(caplog) == [
        f"write-behind: {len(records) - OPTOUT_WRITE_CHUNK} opt-outs saved at an earlier stop "
        f"written to the store, from {saved_dir / '7-1.json'}"
    ]
