"""The replay table the workers of one serve share: the rule (first use, replay, expiry), the
bounded probe window and its evictions, the file's header check, and the behaviour across
processes (one winner per envelope, a lock that dies with its holder, a table outliving a
process)."""

from __future__ import annotations

import errno
import fcntl
import multiprocessing
import os
import random
import signal
import struct
import sys
import threading
from collections.abc import Iterator
from multiprocessing.synchronize import Event
from pathlib import Path

import pytest

from uid2_operator.services import replay_table
from uid2_operator.services.replay import ReplayCache
from uid2_operator.services.replay_table import (
    HEADER_SIZE,
    MAGIC,
    PROBE,
    VERSION,
    ReplayGuard,
    ReplayTable,
    ReplayTableError,
    keep,
    restore,
    table_size,
)

T0 = 1_700_000_000_000
MAX_PAST_MS = 120_000
DEADLINE_S = 60.0
SPAWN = multiprocessing.get_context("spawn")


def _nonce(n: int) -> bytes:
    return n.to_bytes(8, "big")


def _zeros(n: int) -> bytes:
    """A random source that draws zeros (home key and mask key): a test can then work out the
    nonce of any fingerprint it wants."""
    return bytes(n)


def _fingerprint_nonce(table: ReplayTable, key_id: str, fingerprint: int) -> bytes:
    """The nonce that gives ``fingerprint`` under ``key_id`` in ``table``."""
    mask = table._masks.compute(key_id)
    return (fingerprint ^ mask).to_bytes(8, "big")


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "replay-table"


@pytest.fixture
def table(path: Path) -> Iterator[ReplayTable]:
    ReplayTable.create(path, max_past_ms=MAX_PAST_MS, slots=4096)
    with ReplayTable.open(path, max_past_ms=MAX_PAST_MS) as opened:
        yield opened


def _small(path: Path, *, probe: int) -> ReplayTable:
    """One home slot: every entry shares the same window of ``probe`` slots."""
    ReplayTable.create(path, max_past_ms=MAX_PAST_MS, slots=1, probe=probe)
    return ReplayTable.open(path)


@pytest.mark.skipif(not hasattr(os, "posix_fallocate"), reason="no posix_fallocate here")
def test_creating_a_table_reserves_its_memory_up_front(path: Path) -> None:
    """A full filesystem is an error at creation, not a SIGBUS in a worker later: the file's
    blocks are allocated, not left as a hole."""
    slots = 65_536
    ReplayTable.create(path, max_past_ms=MAX_PAST_MS, slots=slots)
    assert os.stat(path).st_blocks * 512 >= table_size(slots, PROBE)


# ----------------------------------------------------------------------------------- the rule


def test_both_guards_satisfy_the_protocol(table: ReplayTable) -> None:
    guards: list[ReplayGuard] = [table, ReplayCache(max_past_ms=MAX_PAST_MS)]
    for guard in guards:
        assert guard.first_use("k", _nonce(1), T0, T0)
        assert not guard.first_use("k", _nonce(1), T0, T0)


def test_first_use_is_accepted_and_a_replay_refused(table: ReplayTable) -> None:
    assert table.first_use("k", _nonce(1), T0, T0)
    assert not table.first_use("k", _nonce(1), T0, T0 + 5)
    assert table.first_use("k", _nonce(2), T0, T0 + 5)
    assert table.live_entries(T0) == 2


def test_the_same_nonce_of_another_key_is_not_a_replay(table: ReplayTable) -> None:
    assert table.first_use("k1", _nonce(7), T0, T0)
    assert table.first_use("k2", _nonce(7), T0, T0)
    assert not table.first_use("k2", _nonce(7), T0, T0)
    assert not table.first_use("k1", _nonce(7), T0, T0)


def test_an_envelope_is_refused_until_its_timestamp_leaves_the_window(table: ReplayTable) -> None:
    assert table.first_use("k", _nonce(1), T0, T0)
    assert not table.first_use("k", _nonce(1), T0, T0 + MAX_PAST_MS)
    # Past the window the timestamp check refuses it; the table neither refuses nor records it.
    assert table.first_use("k", _nonce(1), T0, T0 + MAX_PAST_MS + 1)
    assert table.live_entries(T0 + MAX_PAST_MS) == 1
    # Entries are kept to the next whole second, never less.
    assert table.live_entries(T0 + MAX_PAST_MS + 999) == 1
    assert table.live_entries(T0 + MAX_PAST_MS + 1000) == 0


def test_a_nonce_sealed_again_under_another_timestamp_is_refused(table: ReplayTable) -> None:
    # Entries are not filed by timestamp (the in-process cache's are): the client's own reuse
    # of a nonce is refused while the first envelope is remembered.
    assert table.first_use("k", _nonce(3), T0, T0)
    assert not table.first_use("k", _nonce(3), T0 + 10_000, T0 + 10_000)
    assert table.first_use("k", _nonce(3), T0 + 10_000, T0 + MAX_PAST_MS + 1000)


def test_a_nonce_must_be_eight_bytes(table: ReplayTable) -> None:
    with pytest.raises(ValueError, match="8 bytes"):
        table.first_use("k", b"short", T0, T0)


def test_another_opening_of_the_file_sees_the_same_entries(path: Path, table: ReplayTable) -> None:
    assert table.first_use("k", _nonce(1), T0, T0)
    with ReplayTable.open(path) as other:
        assert not other.first_use("k", _nonce(1), T0, T0)
        assert other.first_use("k", _nonce(2), T0, T0)
    assert not table.first_use("k", _nonce(2), T0, T0)


# ------------------------------------------------------------------------ the probe window


def test_expired_slots_are_reused_without_eviction(path: Path) -> None:
    with _small(path, probe=2) as table:
        assert table.first_use("k", _nonce(1), T0, T0)
        assert table.first_use("k", _nonce(2), T0, T0)
        later = T0 + MAX_PAST_MS + 1000
        assert table.first_use("k", _nonce(3), later, later)
        assert table.first_use("k", _nonce(4), later, later)
        assert table.evictions == 0
        assert not table.first_use("k", _nonce(3), later, later)
        assert not table.first_use("k", _nonce(4), later, later)


def test_a_full_window_evicts_the_entry_closest_to_expiry(path: Path) -> None:
    with _small(path, probe=4) as table:
        stamps = {n: T0 + 1000 * n for n in (3, 1, 4, 2)}
        for n, stamp in stamps.items():
            assert table.first_use("k", _nonce(n), stamp, T0 + 5000)
        assert table.evictions == 0
        assert table.first_use("k", _nonce(5), T0 + 5000, T0 + 5000)  # fresh traffic: accepted
        assert table.evictions == 1
        for n in (2, 3, 4, 5):
            assert not table.first_use("k", _nonce(n), T0 + 5000, T0 + 5000)
        # Nonce 1 had the oldest timestamp: it was forgotten, and is accepted once more.
        assert table.first_use("k", _nonce(1), stamps[1], T0 + 5000)
        assert table.evictions == 2


def test_a_lookup_scans_past_expired_slots(path: Path) -> None:
    with _small(path, probe=3) as table:
        assert table.first_use("k", _nonce(1), T0, T0)  # slot 0, expires first
        assert table.first_use("k", _nonce(2), T0 + 10_000, T0)  # slot 1
        later = T0 + MAX_PAST_MS + 2_000  # nonce 1 expired, nonce 2 still live
        assert not table.first_use("k", _nonce(2), T0 + 10_000, later)
        assert table.first_use("k", _nonce(3), later, later)  # takes the expired slot 0
        assert not table.first_use("k", _nonce(2), T0 + 10_000, later)
        assert table.evictions == 0


def test_an_envelope_seen_again_after_expiry_takes_its_old_slot(path: Path) -> None:
    """One slot per fingerprint: the expired entry is renewed, not copied to a free slot."""
    with _small(path, probe=4) as table:
        assert table.first_use("k", _nonce(1), T0, T0)
        later = T0 + MAX_PAST_MS + 1000
        assert table.first_use("k", _nonce(2), later, later)
        assert table.first_use("k", _nonce(1), later, later)
        window = table._map[HEADER_SIZE : HEADER_SIZE + 4 * 12]
        fingerprints = [f for f, _ in struct.iter_unpack("=QI", window)]
        assert fingerprints[2:] == [0, 0]  # two slots still free
        assert not table.first_use("k", _nonce(1), later, later)
        assert table.live_entries(later) == 2


def test_a_match_straddling_two_fields_is_not_an_entry(path: Path) -> None:
    """The lookup searches the window's bytes; only a match at a slot's start is an entry."""
    ReplayTable.create(path, max_past_ms=MAX_PAST_MS, slots=1, probe=4, random=_zeros)
    with ReplayTable.open(path) as table:
        first = 0x0123456789ABCDEF
        assert table.first_use("k", _fingerprint_nonce(table, "k", first), T0, T0)
        # The bytes from the middle of slot 0's fingerprint through its instant.
        window = table._map[HEADER_SIZE : HEADER_SIZE + 12]
        straddling = int.from_bytes(window[4:12], sys.byteorder)
        nonce = _fingerprint_nonce(table, "k", straddling)
        assert table.first_use("k", nonce, T0, T0)
        assert not table.first_use("k", nonce, T0, T0)


@pytest.mark.parametrize("shift", [0, 20, 48], ids=["low bits", "middle bits", "high bits"])
def test_nonces_that_differ_in_a_few_bits_spread_over_the_table(path: Path, shift: int) -> None:
    """Whichever bits of its nonces a client varies, they do not land in a few windows: with one
    window, 508 of these 512 inserts would evict; spread at random over a table half full with
    windows of four, about 14 do (at most 34 in 200 draws of the keys)."""
    ReplayTable.create(path, max_past_ms=MAX_PAST_MS, slots=1024, probe=4)
    with ReplayTable.open(path) as table:
        for n in range(512):
            assert table.first_use("k", _nonce(n << shift), T0, T0)
        assert table.evictions < 100
        assert table.live_entries(T0) == 512 - table.evictions


# ------------------------------------------------------------------------------- the file


def test_the_header_records_the_geometry(path: Path) -> None:
    ReplayTable.create(path, max_past_ms=MAX_PAST_MS, slots=5000, probe=8)
    raw = path.read_bytes()
    assert len(raw) == table_size(5000, 8) == HEADER_SIZE + (5000 + 7) * 12
    assert raw[:8] == MAGIC
    assert struct.unpack_from("=IIQI", raw, 8) == (VERSION, HEADER_SIZE, 5000, 8)
    assert raw[HEADER_SIZE:] == bytes(len(raw) - HEADER_SIZE)  # every slot free
    assert path.stat().st_mode & 0o777 == 0o600
    with ReplayTable.open(path, max_past_ms=MAX_PAST_MS) as table:
        assert (table.slots, table.probe, table.max_past_ms) == (5000, 8, MAX_PAST_MS)
        assert table.evictions == 0


def test_the_default_geometry(path: Path) -> None:
    ReplayTable.create(path, max_past_ms=MAX_PAST_MS)
    with ReplayTable.open(path) as table:
        assert (table.slots, table.probe) == (2_097_152, PROBE)
    assert path.stat().st_size == table_size(2_097_152, PROBE)


def test_create_refuses_an_existing_table_and_leaves_nothing_behind(
    path: Path, table: ReplayTable
) -> None:
    assert table.first_use("k", _nonce(1), T0, T0)
    with pytest.raises(FileExistsError):
        ReplayTable.create(path, max_past_ms=MAX_PAST_MS, slots=4096)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
    assert not table.first_use("k", _nonce(1), T0, T0)


@pytest.mark.parametrize(("slots", "probe"), [(0, 4), (1 << 28, 4), (16, 0), (16, 257)])
def test_create_refuses_a_geometry_out_of_range(path: Path, slots: int, probe: int) -> None:
    with pytest.raises(ReplayTableError):
        ReplayTable.create(path, max_past_ms=MAX_PAST_MS, slots=slots, probe=probe)
    assert not path.exists()


def _rewrite(path: Path, offset: int, data: bytes) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset : offset + len(data)] = data
    path.write_bytes(bytes(raw))


def _flip(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 1
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: p.write_bytes(b""), "is not a replay table"),
        (lambda p: p.write_bytes(os.urandom(table_size(16, 4))), "is not a replay table"),
        (lambda p: _rewrite(p, 0, b"NOTATABL"), "is not a replay table"),
        (lambda p: _rewrite(p, 8, struct.pack("=I", VERSION + 1)), "version 2 replay table"),
        (lambda p: _flip(p, 48), "corrupt header"),
        (lambda p: _rewrite(p, 16, struct.pack("=Q", 17)), "corrupt header"),
        (lambda p: os.truncate(p, table_size(16, 4) - 1), "bytes; a table of 16 slots"),
        (lambda p: os.truncate(p, table_size(16, 4) + 4096), "bytes; a table of 16 slots"),
    ],
    ids=[
        "empty",
        "noise",
        "magic",
        "version",
        "mask key",
        "geometry",
        "truncated",
        "extended",
    ],
)
def test_a_wrong_or_corrupt_file_is_refused(path: Path, damage: object, message: str) -> None:
    ReplayTable.create(path, max_past_ms=MAX_PAST_MS, slots=16, probe=4)
    assert callable(damage)
    damage(path)
    with pytest.raises(ReplayTableError, match=message):
        ReplayTable.open(path)


def test_a_table_made_for_another_window_is_refused(path: Path) -> None:
    ReplayTable.create(path, max_past_ms=MAX_PAST_MS, slots=16)
    with pytest.raises(ReplayTableError, match=f"window of {MAX_PAST_MS} ms, not 1000 ms"):
        ReplayTable.open(path, max_past_ms=1000)


def test_a_missing_table_is_refused(path: Path) -> None:
    with pytest.raises(ReplayTableError, match="cannot open the replay table"):
        ReplayTable.open(path)


# ------------------------------------------------------------------------------ processes


def test_the_check_and_the_insert_happen_under_the_lock(path: Path) -> None:
    """A first use waits for the lock before it reads the window: an entry written by whoever
    held the lock meanwhile is seen, and the envelope refused."""
    ReplayTable.create(path, max_past_ms=MAX_PAST_MS, slots=4096)
    answers: list[bool] = []
    with ReplayTable.open(path) as holder, ReplayTable.open(path) as table:
        with holder.locked():
            waiting = threading.Thread(
                target=lambda: answers.append(table.first_use("k", _nonce(1), T0, T0)),
                daemon=True,
            )
            waiting.start()
            waiting.join(0.5)  # long enough to have read the window, had it not waited
            assert waiting.is_alive()
            assert answers == []
            # The holder records the same envelope (its own open file: its lock; released
            # when the call returns).
            assert holder.first_use("k", _nonce(1), T0, T0)
        waiting.join(DEADLINE_S)
    assert answers == [False]


def _hammer(path: Path, start: Event, order: list[int], keys: int) -> list[int]:
    """Offer every (key, nonce) of ``order``; the indices this process was first to record."""
    won: list[int] = []
    with ReplayTable.open(path) as table:
        start.wait(DEADLINE_S)
        for n in order:
            if table.first_use(f"key-{n % keys}", _nonce(n // keys), T0, T0):
                won.append(n)
    return won


@pytest.mark.parametrize("processes", [2, 4])
def test_every_envelope_is_won_by_exactly_one_process(path: Path, processes: int) -> None:
    ReplayTable.create(path, max_past_ms=MAX_PAST_MS, slots=1 << 17)
    count, keys = 30_000, 3
    # Every process goes through the same envelopes, each in its own (reproducible) order.
    shuffled = random.Random(processes)  # noqa: S311 (test data, not secrets)
    orders = [shuffled.sample(range(count), count) for _ in range(processes)]
    with SPAWN.Manager() as manager, SPAWN.Pool(processes) as pool:
        start = manager.Event()
        pending = [pool.apply_async(_hammer, (path, start, order, keys)) for order in orders]
        start.set()
        results = [result.get(DEADLINE_S) for result in pending]
    winners = sorted(n for won in results for n in won)
    assert winners == list(range(count))
    with ReplayTable.open(path) as table:
        assert table.live_entries(T0) == count
        assert table.evictions == 0


def _hold_the_lock(path: Path, holding: Event) -> None:
    with ReplayTable.open(path) as table, table.locked():
        holding.set()
        threading.Event().wait(DEADLINE_S)


def test_a_lock_holder_killed_at_any_instant_does_not_wedge_the_others(path: Path) -> None:
    ReplayTable.create(path, max_past_ms=MAX_PAST_MS, slots=4096)
    holding = SPAWN.Event()
    holder = SPAWN.Process(target=_hold_the_lock, args=(path, holding))
    holder.start()
    try:
        assert holding.wait(DEADLINE_S), "the child never took the lock"
        probe_fd = os.open(path, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(probe_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            assert holder.pid is not None
            os.kill(holder.pid, signal.SIGKILL)
            holder.join(DEADLINE_S)
            assert holder.exitcode == -signal.SIGKILL
            fcntl.flock(probe_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released by the kernel
            fcntl.flock(probe_fd, fcntl.LOCK_UN)
        finally:
            os.close(probe_fd)
        done: list[bool] = []
        with ReplayTable.open(path) as table:
            worker = threading.Thread(
                target=lambda: done.append(table.first_use("k", _nonce(1), T0, T0)), daemon=True
            )
            worker.start()
            worker.join(DEADLINE_S)
            assert done == [True]
    finally:
        if holder.is_alive():
            holder.kill()
            holder.join()


def _offer(path: Path, nonces: list[int]) -> list[bool]:
    with ReplayTable.open(path, max_past_ms=MAX_PAST_MS) as table:
        return [table.first_use("k", _nonce(n), T0, T0 + 1000) for n in nonces]


def test_a_new_process_still_refuses_what_an_earlier_one_recorded(path: Path) -> None:
    ReplayTable.create(path, max_past_ms=MAX_PAST_MS, slots=4096)
    with ReplayTable.open(path) as table:
        for n in range(100):
            assert table.first_use("k", _nonce(n), T0, T0)
    # The process that recorded them has closed the table; a new process opens it.
    with SPAWN.Pool(1) as pool:
        answers = pool.apply(_offer, (path, [*range(100), 100]))
    assert answers == [False] * 100 + [True]


@pytest.mark.parametrize("nonces", [[], [1], list(range(0, 40_000, 997)), [2**63 + 5, 17]])
def test_a_kept_table_is_the_same_bytes_and_restores_the_same_answers(
    tmp_path: Path, nonces: list[int]
) -> None:
    table_path, kept_path = tmp_path / "table", tmp_path / "kept"
    ReplayTable.create(table_path, max_past_ms=MAX_PAST_MS, slots=20_000)
    with ReplayTable.open(table_path, max_past_ms=MAX_PAST_MS) as table:
        for nonce in nonces:
            assert table.first_use("k", nonce.to_bytes(8, "big"), T0, T0)
        # the very last slot of the file too, so a skipped run of zeros at the end is not cut
        table._map[-1] = 1
    keep(table_path, kept_path)
    assert kept_path.read_bytes() == table_path.read_bytes()
    assert kept_path.stat().st_mode & 0o777 == 0o600
    restored_path = tmp_path / "restored"
    assert restore(kept_path, restored_path, max_past_ms=MAX_PAST_MS, slots=20_000) is None
    assert not kept_path.exists()
    assert restored_path.read_bytes() == table_path.read_bytes()
    with ReplayTable.open(restored_path, max_past_ms=MAX_PAST_MS) as table:
        for nonce in nonces:
            assert not table.first_use("k", nonce.to_bytes(8, "big"), T0, T0 + 1)


@pytest.mark.parametrize("failing", ["copy", "open"])
def test_a_restore_that_fails_keeps_the_kept_table_for_the_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """A start that cannot restore the kept table (a full /dev/shm, no descriptor left) fails,
    and must not take the table with it: the next start still refuses what it holds."""
    table_path, kept_path = tmp_path / "table", tmp_path / "kept"
    ReplayTable.create(table_path, max_past_ms=MAX_PAST_MS, slots=20_000)
    with ReplayTable.open(table_path, max_past_ms=MAX_PAST_MS) as table:
        assert table.first_use("k", _nonce(7), T0, T0)
    keep(table_path, kept_path)
    restored_path = tmp_path / "restored"

    def no_space(*_args: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    real_open = os.open

    def no_descriptor_for_the_kept_table(file: object, flags: int, *args: object) -> int:
        if Path(str(file)) == kept_path:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return real_open(file, flags, *args)  # type: ignore[arg-type]

    with monkeypatch.context() as patched:
        if failing == "copy":
            patched.setattr(replay_table.shutil, "copyfileobj", no_space)
        else:
            patched.setattr(replay_table.os, "open", no_descriptor_for_the_kept_table)
        with pytest.raises(OSError, match=r"No space left|Too many open files"):
            restore(kept_path, restored_path, max_past_ms=MAX_PAST_MS, slots=20_000)
    assert kept_path.exists()
    assert not restored_path.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert restore(kept_path, restored_path, max_past_ms=MAX_PAST_MS, slots=20_000) is None
    assert not kept_path.exists()
    with ReplayTable.open(restored_path, max_past_ms=MAX_PAST_MS) as table:
        assert not table.first_use("k", _nonce(7), T0, T0 + 1)


def test_an_empty_table_is_kept_whole_though_its_zeros_are_skipped(tmp_path: Path) -> None:
    table_path, kept_path = tmp_path / "table", tmp_path / "kept"
    ReplayTable.create(table_path, max_past_ms=MAX_PAST_MS, slots=200_000)
    keep(table_path, kept_path)
    assert kept_path.stat().st_size == table_size(200_000, PROBE)
    assert kept_path.read_bytes() == table_path.read_bytes()
