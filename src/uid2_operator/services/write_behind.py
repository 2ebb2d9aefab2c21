"""What the request path writes, collected in memory and written to the store in batches.

Two things change because requests arrive: each API key's usage (per-endpoint counts and when
it was last used) and the opt-outs recorded by ``/v2/token/logout``. Neither may make a request
wait for the database, so the request path only touches plain dicts and lists (a few hundred
nanoseconds), and ``WriteBehind.run`` writes what accumulated in short transactions, off the
request path: every ``flush_interval_s``, and once more when the worker stops. Usage is one
transaction per flush; opt-outs are written ``OPTOUT_WRITE_CHUNK`` at a time, each chunk its own
transaction, so that a backlog (up to ``MAX_PENDING_OPTOUTS`` after the store was unreachable)
never holds the store's write lock for longer than one chunk takes.

Everything here runs on the worker's event loop except the store calls, which ``run`` hands to a
thread after swapping the pending batch out on the loop, so an increment can never land in a
batch that is being written. Opt-outs and usage are written in separate transactions, and a
failed write puts back only what it did not commit (counts are added, times are maxed), to be
retried on the next flush: for opt-outs, the chunk that failed and every one after it, never the
chunks already committed (their records and audit events would be written twice). The opt-out
queue is bounded so an unreachable store cannot grow it without limit. An opt-out dropped for
want of room is never written and is lost at the worker's next snapshot reload, so drops are
counted (``OptOutQueue.dropped``, exported as a metric) and logged at WARNING, at most once per
``DROP_WARNING_INTERVAL_MS`` (``WriteBehind.report_drops``).

The worker's snapshot source applies each opt-out again to every snapshot it loads until the
store holds it (``services.snapshot_source``): so each one recorded (``on_optouts``) is reported
once committed (``on_written``, on the event loop, after the commit) or once given up
(``on_dropped``: dropped for want of room, or lost at a stop that could not save it). Reports
give the very record objects ``record_optout`` was given.

Failing writes (the store unreachable, or its write lock held elsewhere) are logged at WARNING
once when they start, at most once per ``FAILURE_REPORT_INTERVAL_MS`` while they go on (how many
failed, how much is waiting), and once when writes work again. A line names the error by its
class and, for the project's own errors, their message (``StoreUnavailable`` names the store and
the driver's reason); any other error by its class and the file:line frames it came through.
Never its text or a traceback: a database error's text holds the statement's parameters, the
opted-out person's raw UID and first-level hash among them.

A logout answered ``{"optout": "OK"}`` is a promise, so a stop never drops a pending opt-out
silently. After ``stop``, ``run`` goes on writing what is pending, a failed write retried every
``STOP_RETRY_PAUSE_S``, until ``STOP_BUDGET_S`` after ``stop`` (a write already waiting for the
store is waited for within that bound, never beyond: a SQLite write waits up to 10 s for the lock).
Then it closes the ``CommitGate`` of the write still under way, if any: every write transaction
asks its batch's gate just before it commits and holds it through the commit, so that once the
gate is closed, what the batch committed is known and the rest never commits. The opt-outs not
committed are saved to ``<saved_dir>/<pid>-<ms>.json`` (``PENDING_OPTOUTS_DIR`` under the data
directory; mode 0600 in a 0700 directory; written whole under a temporary name, then renamed),
or logged at ERROR with their count and that path when even saving fails. Usage still pending is
logged with its count and not kept (it is no compliance data).

A running worker writes the saved opt-outs, whichever worker saved them (another worker of the same
serve, stopped while this one serves on, or one of an earlier serve): when ``run`` starts; every
``SAVED_SCAN_INTERVAL_MS`` after (by the worker's clock), since a stop may have saved a file
meanwhile, above all while the store refused writes; at once when writes work again after failing;
and every ``flush_interval_s`` while the store refuses them or another process holds one
(``_SavedScans``). A look is one listing of a directory that is usually missing or empty, made on
the write-behind's thread like every write. It claims each file by taking an exclusive ``flock`` on
it, checking under the lock that the file still has the name it was opened by, and only then
renaming it to ``<name>.claimed-<pid>`` (one of two workers starting together gets it, the other
skips it); it holds the lock for as long as it works on the file (``_claim``). The lock, not the
process id in the name, says whether a claim is live: the kernel releases it when its holder exits,
however it exits, whereas process ids repeat (after a restart in a container, a new worker may have
the very pid of the one killed while it held a file). So a claimed file whose lock can be taken is
abandoned, and is claimed again; a file whose lock another process holds is skipped, with a WARNING
naming it (once per worker while the file is there), and tried again ``flush_interval_s`` later. Its
records are written ``OPTOUT_WRITE_CHUNK`` per transaction (``write_optout_chunk``: the same records
and audit events as if they had been written in time; a record already stored keeps the later time,
as when a chunk is retried); after each chunk committed, the file is rewritten whole to hold only
the records still not written (the new file locked before it takes the claimed name), so that a
worker killed meanwhile leaves at most one chunk to be written twice; then it is removed. A write
that fails gives the file its name back (without the chunks that committed). The worker's own
opt-outs wait while a look writes, so a look writes ``SAVED_CHUNKS_PER_LOOK`` chunks at most,
whichever files they come from: then it gives the file under way its name back, holding the rest,
``run`` flushes the worker's own opt-outs and looks again at once, and so on until the saved files
are written. Once ``stop`` is called, no file is claimed any more (the one this stop may save among
them) and the file under way is given its name back after the chunk under way, holding the rest: the
stop's budget is for the worker's own opt-outs. A file that cannot be claimed or read is left in
place (given its name back when it was claimed). When the file itself is at fault (what it holds is
not saved opt-outs, or it is a directory, a loop of symbolic links...), it is logged at ERROR and
skipped for the rest of the worker's life; any other error may pass (the process out of file
descriptors or memory, an I/O error once) or end when an operator acts (a permission), so the file
is tried again at the next look, each cause logged once per file (``WriteBehind._skipped``).

``last_used_at`` is coarse by design: it is the time of the last tick of the flusher before the
request (``UsageMeter.now_ms``), not a clock read per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import functools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from uid2_operator.clock import Clock
from uid2_operator.domain.optout import OptOutRecord, latest
from uid2_operator.error_text import described, some_of
from uid2_operator.errors import UID2Error
from uid2_operator.services.audit_trail import EventDetails, record_events
from uid2_operator.services.context import Actor
from uid2_operator.stop_signals import leave_to_main_thread
from uid2_operator.storage.interface import Store, UsageEntry
from uid2_operator.wire.encoding import b64decode, b64encode

log = logging.getLogger(__name__)

MAX_PENDING_OPTOUTS: Final = 100_000
USAGE_TICK_S: Final = 0.5
"""How coarse the time of a key's last use is: the usage clock moves at least this often, also
while a write waits on the store."""
OPTOUT_WRITE_CHUNK: Final = 500
"""The most opt-outs written in one transaction (each with its audit event): a flush of a long
queue is many short transactions, between which other writers get the store."""
DROP_WARNING_INTERVAL_MS: Final = 60_000
"""At most one warning about dropped opt-outs per this interval (each says how many since the
last)."""
FAILURE_REPORT_INTERVAL_MS: Final = 60_000
"""While writes keep failing, at most one line about it per this interval (after the first)."""
STOP_BUDGET_S: Final = 6.0
"""How long after ``stop`` the last flush may go on trying. ``serve`` gives a stopping worker
15 s from its SIGTERM before it kills it (``_STOP_TIMEOUT_S`` in ``cli/serve.py``); the rest is
for the connections to end before the flush and for saving what is left after it."""
STOP_RETRY_PAUSE_S: Final = 0.5
"""The pause between two attempts of the last flush when a write failed at once."""
COMMIT_WAIT_S: Final = 1.0
"""How long closing a ``CommitGate`` waits for a commit already under way to end."""
PENDING_OPTOUTS_DIR: Final = "pending-optouts"
"""The directory, in the data directory, of the opt-outs a stop could not write."""
SAVED_SCAN_INTERVAL_MS: Final = 5_000
"""How often a running worker looks for opt-outs saved by a stop (``_SavedScans``). Until they
are written no worker's snapshot has them; a look costs one listing of a directory that is
usually missing or empty, off the event loop."""
SAVED_CHUNKS_PER_LOOK: Final = 4
"""The most chunks of saved opt-outs (``OPTOUT_WRITE_CHUNK`` records, one transaction each) one
look writes. The worker's own opt-outs wait for a look under way (``run`` flushes them between
two looks), so a directory of big files (several workers stopped during an outage, each saving
up to ``MAX_PENDING_OPTOUTS``) delays them by this many transactions, never by all of those
files; a look that reaches it makes the next one due at once."""
OPERATOR_ACTOR: Final = Actor("operator", source="operator-api")
"""Who the audit trail names for an opt-out received through ``/v2/token/logout``."""

_SAVED_KIND: Final = "uid2-operator pending opt-outs"
_SAVED_VERSION: Final = 1
_CLAIMED: Final = ".claimed-"
_FILE_AT_FAULT: Final = frozenset(
    {errno.EISDIR, errno.ENOTDIR, errno.ELOOP, errno.ENAMETOOLONG, errno.ENXIO, errno.ENODEV}
)
"""The errors of claiming or reading a saved file that the file itself causes, by its kind (a
directory, a loop of symbolic links, a socket or device) or its name (too long to be claimed):
every later try gives the same error until someone replaces the file, so the file is skipped for
the worker's life, like one whose content is not saved opt-outs (``Unreadable``)."""
_NEEDS_OPERATOR: Final = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
"""The errors of claiming or reading a saved file that last until an operator changes the file's
owner or mode, or the file system it is on: tried again at each look like any error not in
``_FILE_AT_FAULT`` (so the look after the change writes the file, with no restart), but logged
at ERROR, where a passing error (EMFILE, ENFILE, ENOMEM, EINTR, EAGAIN, EIO...) is a WARNING."""


class UsageMeter:
    """Per-(key id, endpoint) request counts and the coarse time of the last one."""

    __slots__ = ("_pending", "now_ms")

    def __init__(self, now_ms: int = 0) -> None:
        self._pending: dict[tuple[str, str], list[int]] = {}
        self.now_ms = now_ms

    def add(self, key_id: str, endpoint: str) -> None:
        entry = self._pending.get((key_id, endpoint))
        if entry is None:
            self._pending[(key_id, endpoint)] = [1, self.now_ms]
        else:
            entry[0] += 1
            entry[1] = self.now_ms

    def take(self) -> list[UsageEntry]:
        """Everything counted since the last take, as store entries; the meter starts over."""
        pending, self._pending = self._pending, {}
        return [(k, e, n, at) for (k, e), (n, at) in pending.items()]

    def restore(self, batch: Sequence[UsageEntry]) -> None:
        """Put back a batch that could not be written (added to what came in since)."""
        for key_id, endpoint, count, at in batch:
            entry = self._pending.setdefault((key_id, endpoint), [0, at])
            entry[0] += count
            entry[1] = max(entry[1], at)

    def __len__(self) -> int:
        return len(self._pending)


class OptOutQueue:
    """Opt-outs received by this worker and not yet in the store."""

    __slots__ = ("_pending", "dropped")

    def __init__(self) -> None:
        self._pending: list[OptOutRecord] = []
        self.dropped = 0

    def add(self, record: OptOutRecord) -> bool:
        """Queue ``record``; False when it was dropped for want of room."""
        if len(self._pending) >= MAX_PENDING_OPTOUTS:
            self.dropped += 1
            return False
        self._pending.append(record)
        return True

    def take(self) -> list[OptOutRecord]:
        pending, self._pending = self._pending, []
        return pending

    def restore(self, records: Sequence[OptOutRecord]) -> list[OptOutRecord]:
        """Put back records a write did not commit, ahead of those queued since; returns those
        dropped for want of room."""
        room = max(MAX_PENDING_OPTOUTS - len(self._pending), 0)
        self.dropped += max(0, len(records) - room)
        self._pending[:0] = records[:room]
        return list(records[room:])

    def __len__(self) -> int:
        return len(self._pending)


class OptOutsNotWritten(Exception):
    """A chunk of opt-outs failed (the cause is chained); the ``committed`` records before it
    stay written."""

    def __init__(self, committed: int) -> None:
        super().__init__(f"{committed} opt-outs committed before a chunk failed")
        self.committed = committed


class WritesClosed(Exception):
    """A write transaction was refused its commit: its ``CommitGate`` is closed."""


class CommitGate:
    """Whether the write transactions of one batch may still commit, and how many opt-outs
    they committed.

    A transaction calls the ``admit`` that ``admitting`` gives it last thing before its commit,
    and holds the gate until the commit has ended. ``close`` waits for a commit under way, so
    once it returns ``committed`` is final: the rest of the batch is not in the store and never
    will be from this batch (a later transaction's ``admit`` raises ``WritesClosed``, and the
    transaction rolls back)."""

    __slots__ = ("_closed", "_lock", "committed")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._closed = False
        self.committed = 0

    @property
    def closed(self) -> bool:
        return self._closed

    @contextlib.contextmanager
    def admitting(self, count: int) -> Iterator[Callable[[], None]]:
        """Around one write transaction of ``count`` opt-outs (entered before it, so left after
        its commit): counts them once it committed."""
        held = False

        def admit() -> None:
            nonlocal held
            self._lock.acquire()
            held = True
            if self._closed:
                raise WritesClosed

        try:
            yield admit
            if held:
                self.committed += count
        finally:
            if held:
                self._lock.release()

    def close(self, wait_s: float = COMMIT_WAIT_S) -> bool:
        """Refuse every later commit. False when a commit under way did not end within
        ``wait_s``: its opt-outs are then not counted, though they may be committed."""
        acquired = self._lock.acquire(timeout=wait_s)
        self._closed = True
        if acquired:
            self._lock.release()
        return acquired


def write_optouts(
    store: Store,
    records: Sequence[OptOutRecord],
    now_ms: Callable[[], int],
    gate: CommitGate | None = None,
) -> None:
    """Record opt-outs, ``OPTOUT_WRITE_CHUNK`` per transaction (``write_optout_chunk``), in
    order. When a chunk fails, OptOutsNotWritten says how many records were committed before
    it (they stay written). ``gate``: the batch's, when the caller may have to stop its commits
    (``CommitGate``)."""
    for start in range(0, len(records), OPTOUT_WRITE_CHUNK):
        try:
            write_optout_chunk(store, records[start : start + OPTOUT_WRITE_CHUNK], now_ms, gate)
        except Exception as exc:
            raise OptOutsNotWritten(start) from exc


def write_optout_chunk(
    store: Store,
    records: Sequence[OptOutRecord],
    now_ms: Callable[[], int],
    gate: CommitGate | None = None,
) -> None:
    """Record opt-outs in one transaction, each that changes what is stored with its audit
    event, keeping the latest time (a record met again, in this chunk or an earlier one, keeps
    the later of the two). One already stored as it is changes nothing and gets no event: a
    chunk written again because its commit was never answered, though it landed, is recorded
    once.

    ``now_ms``: a clock's ``now_ms``, read once the transaction holds the write lock: a chunk
    that waited for the lock is stamped with the time it took it, so the audit trail's times
    follow its order.

    The store is asked in bulk: one read of the records already stored, one write of the
    merged ones, one append of the events (in the order of ``records``). What it stores is what
    a ``get``, ``put`` and ``record_event`` per record would store, in less time under the
    write lock."""
    admission = (gate or CommitGate()).admitting(len(records))
    with admission as admit, store.transaction() as tx:
        at_ms = now_ms()
        kept = tx.optouts.get_many(record.first_level_hash for record in records)
        changed: dict[bytes, None] = {}
        recorded: list[OptOutRecord] = []
        for record in records:
            flh = record.first_level_hash
            before = kept.get(flh)
            after = latest(before, record)
            if after == before:
                # Already stored as it is: written again after a commit whose answer never
                # came (or a chunk a killed worker committed, saved again): no second event.
                continue
            kept[flh] = after
            changed[flh] = None
            recorded.append(record)
        if not recorded:
            admit()
            return
        tx.optouts.put_many([kept[flh] for flh in changed])
        record_events(
            tx,
            OPERATOR_ACTOR,
            (
                EventDetails(
                    at_ms=at_ms,
                    action="optout.add",
                    target_type="optout",
                    target_id=b64encode(record.first_level_hash),
                    after={"timestamp_ms": record.timestamp_ms, "via": "/v2/token/logout"},
                )
                for record in recorded
            ),
        )
        admit()


# --------------------------------------------------------------------------- what is logged


class _FailureLog:
    """The WARNINGs about failing writes: one when they start, at most one per
    ``FAILURE_REPORT_INTERVAL_MS`` while they go on, one when writes work again. A store that
    fails and recovers over and over (out of connections, say) gets those two lines at most
    once per interval: a failure starting less than an interval after the last of these lines
    is not logged, nor its recovery, unless it lasts an interval; the next start line counts
    them."""

    __slots__ = ("_failed", "_last_line_ms", "_quiet", "_reported_ms", "_since_ms", "_unlogged")

    def __init__(self) -> None:
        self._since_ms: int | None = None
        self._reported_ms = 0
        self._failed = 0
        self._last_line_ms: int | None = None
        """When the last of these lines was logged."""
        self._quiet = False
        """The failure under way was not logged when it started."""
        self._unlogged = 0
        """Failures that came and went since the last start line, neither logged."""

    def failed(self, now_ms: int, error: BaseException, optouts: int, usage: int) -> None:
        self._failed += 1
        if self._since_ms is None:
            self._since_ms = self._reported_ms = now_ms
            last = self._last_line_ms
            if last is not None and now_ms - last < FAILURE_REPORT_INTERVAL_MS:
                self._quiet = True
                return
            self._last_line_ms = now_ms
            unlogged, self._unlogged = self._unlogged, 0
            log.warning(
                "write-behind: store writes failing (%s); %d opt-outs and %d usage rows kept "
                "for the next flush%s",
                described(error),
                optouts,
                usage,
                f" ({unlogged} more failures came and went since the last line)"
                if unlogged
                else "",
            )
        elif now_ms - self._reported_ms >= FAILURE_REPORT_INTERVAL_MS:
            self._reported_ms = self._last_line_ms = now_ms
            self._quiet = False  # it went on: its end is logged too
            log.warning(
                "write-behind: store writes still failing after %d s (%d failed writes, the "
                "last: %s); %d opt-outs and %d usage rows waiting",
                (now_ms - self._since_ms) // 1000,
                self._failed,
                described(error),
                optouts,
                usage,
            )

    def succeeded(self, now_ms: int) -> None:
        if self._since_ms is None:
            return
        if self._quiet:
            self._unlogged += 1
        else:
            self._last_line_ms = now_ms
            log.warning(
                "write-behind: store writes work again, after %d failed writes over %d s",
                self._failed,
                (now_ms - self._since_ms) // 1000,
            )
        self._since_ms = None
        self._failed = 0
        self._quiet = False


# ----------------------------------------------------------------- opt-outs saved at a stop


class Unreadable(Exception):
    """A file of saved opt-outs that does not hold what ``save_optouts`` writes; ``reason`` is
    a fixed phrase (never any of the file's text)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _document(records: Sequence[OptOutRecord]) -> bytes:
    return _framed(_items(records))


def _items(records: Sequence[OptOutRecord]) -> list[bytes]:
    """Each record as it is in a file of saved opt-outs (``_framed`` makes the file of them)."""
    return [
        json.dumps(
            {
                "flh": b64encode(record.first_level_hash),
                "at_ms": record.timestamp_ms,
                "advertising_id": record.advertising_id,
            },
            separators=(",", ":"),
        ).encode()
        for record in records
    ]


def _framed(items: Sequence[bytes]) -> bytes:
    head = json.dumps({"kind": _SAVED_KIND, "version": _SAVED_VERSION}, separators=(",", ":"))
    return b"".join((head[:-1].encode(), b',"optouts":[', b",".join(items), b"]}"))


def _write_whole(path: Path, data: bytes) -> None:
    """``data`` at ``path``, mode 0600: written and synced under a temporary name, then renamed
    over it, so that ``path`` holds either all of it or what it held before."""
    os.close(_replaced(path, data, lock=False))


def _replaced(path: Path, data: bytes, *, lock: bool) -> int:
    """``_write_whole``, returning the new file's open descriptor (the caller closes it); with
    ``lock``, holding the file's exclusive ``flock``, taken before the file has ``path``."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.new")
    temporary.unlink(missing_ok=True)  # a leftover of this process id's: never anyone else's
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        if lock:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: no one else has it
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
        os.replace(temporary, path)
    except BaseException:
        os.close(fd)
        temporary.unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # the rename made durable, where the platform can
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    return fd


def saved_path(directory: Path, now_ms: int) -> Path:
    """A new file name for this process's opt-outs saved at ``now_ms``."""
    stem = f"{os.getpid()}-{now_ms}"
    path = directory / f"{stem}.json"
    n = 0
    while path.exists():
        n += 1
        path = directory / f"{stem}-{n}.json"
    return path


def save_optouts(path: Path, records: Sequence[OptOutRecord]) -> None:
    """Save ``records`` to ``path`` (its directory made owner-only when missing)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write_whole(path, _document(records))


def read_saved(path: Path) -> list[OptOutRecord]:
    """The records ``save_optouts`` saved at ``path``; Unreadable when it holds anything else."""
    try:
        document = json.loads(path.read_bytes())
    except ValueError:  # not UTF-8, or not JSON
        raise Unreadable("not JSON") from None
    if not isinstance(document, dict) or document.get("kind") != _SAVED_KIND:
        raise Unreadable("not a file of saved opt-outs")
    if document.get("version") != _SAVED_VERSION:
        raise Unreadable("a version this code does not read")
    items = document.get("optouts")
    if not isinstance(items, list):
        raise Unreadable("no list of opt-outs")
    records: list[OptOutRecord] = []
    for n, item in enumerate(items):
        try:
            flh, at_ms, advertising_id = item["flh"], item["at_ms"], item["advertising_id"]
            if not isinstance(flh, str) or type(at_ms) is not int:
                raise TypeError
            if advertising_id is not None and not isinstance(advertising_id, str):
                raise TypeError
            records.append(OptOutRecord(b64decode(flh), at_ms, advertising_id))
        except (LookupError, TypeError, ValueError, UID2Error):
            raise Unreadable(f"opt-out {n} is malformed") from None
    return records


def _saved_files(directory: Path) -> list[tuple[Path, Path]]:
    """``(its own name, where it is)`` of each saved file, claimed (``<name>.claimed-<pid>``) or
    not: whether a claim is still held is for ``_claim`` to find out."""
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    found: list[tuple[Path, Path]] = []
    for name in names:
        own, claimed, owner = name.partition(_CLAIMED)
        if name.startswith(".") or not own.endswith(".json"):
            continue
        if claimed and not owner.isdigit():
            continue
        found.append((directory / own, directory / name))
    return found


_Identity = tuple[int, int, int, int]
"""A file as found on disk: device, inode, size and modification time. Renaming keeps it;
replacing the file under its name, or changing what it holds, does not."""


def _identity(status: os.stat_result) -> _Identity:
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)


def _identity_at(path: Path) -> _Identity | None:
    """The identity of what is at ``path`` itself (a link is not followed); None when nothing
    can be found there."""
    try:
        return _identity(os.lstat(path))
    except OSError:
        return None


def _os_reason(error: OSError) -> str:
    """What an OS error says, without the file name: its ``strerror``, else its class."""
    return error.strerror or type(error).__name__


class _Held(Exception):
    """A saved file another running process holds (its claim's lock)."""


class _Claim:
    """A saved file this process claimed: its name (``<own>.claimed-<pid>``) and the open
    descriptor holding its exclusive ``flock``."""

    __slots__ = ("fd", "path")

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd

    def keep(self, items: Sequence[bytes]) -> None:
        """Make the claimed file hold only the records ``items`` (``_items``), locked all
        along: the new file is locked before it takes the name, the old one's lock released
        after."""
        fd = _replaced(self.path, _framed(items), lock=True)
        os.close(self.fd)
        self.fd = fd

    def release(self) -> None:
        """Release the lock (once the file is removed, or has its name back)."""
        os.close(self.fd)


def _names(path: Path, fd: int) -> bool:
    """Whether ``path`` is still the name of the file open at ``fd``."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    locked = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (locked.st_dev, locked.st_ino)


def _claim(own: Path, found: Path) -> _Claim | None:
    """Claim the saved file ``found`` (``own``, or a claimed name of it) for this process. None
    when it is gone (another worker claimed it first, or wrote it); ``_Held`` when another
    process holds its lock, under that name still; OSError when it cannot be opened or renamed.

    Whatever its name, the file is opened and locked first, and renamed only then, so that of
    two workers only one starts on it, and a file is never renamed by a worker that cannot
    work on it. Its lock taken, its claimant is gone (the kernel released the lock), or never
    was, or is this very lock's. Under the lock, the name must still be that of the locked file:
    a file written and removed, or renamed, by another worker in between is not this claim's."""
    claimed = own.with_name(f"{own.name}{_CLAIMED}{os.getpid()}")
    try:
        fd = os.open(found, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if _names(found, fd):
                raise _Held from None
            os.close(fd)  # claimed by another worker meanwhile, under another name
            return None
        if not _names(found, fd):
            os.close(fd)
            return None
        if found != claimed:
            os.rename(found, claimed)
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise
    return _Claim(claimed, fd)


def _give_back(own: Path, claim: _Claim, rest: Sequence[bytes] | None) -> None:
    """Give a claimed file its name ``own`` back, made to hold only ``rest`` (``_items``) first
    unless None (it holds them already). Still claimed when that fails: claimed again once its
    lock is released."""
    try:
        if rest is not None:
            claim.keep(rest)
        os.rename(claim.path, own)
    except OSError as error:
        log.error("write-behind: %s could not be given its name back (%s)", own, _os_reason(error))


# ------------------------------------------------------------------------------ the writer


@dataclass(frozen=True, slots=True)
class _Outcome:
    """What a write left: the usage and opt-outs not written, and the first error."""

    usage: list[UsageEntry]
    optouts: list[OptOutRecord]
    error: BaseException | None
    wrote: bool
    """Whether the store was written to, or tried (a flush with nothing to write was not)."""
    held: bool = False
    """Whether a saved file was skipped, held by another process (to be tried again later)."""
    more: bool = False
    """Whether a look at the saved opt-outs stopped at ``SAVED_CHUNKS_PER_LOOK`` with some still
    to write: the next look is due at once, after a flush of the worker's own."""


@dataclass(frozen=True, slots=True)
class _FileWrite:
    """What a look did with one claimed saved file."""

    chunks: int
    """How many chunks it committed."""
    tried: bool
    """Whether the store was tried."""
    error: BaseException | None
    """The store's error: the file has its name back, holding what is not written."""
    left: bool = False
    """Whether it stopped at the look's bound: the file has its name back, holding exactly what
    is not written, for the next look."""


@dataclass(frozen=True, slots=True)
class _Flight:
    """A write handed to a thread: what it was given, its gate, and its outcome to come."""

    usage: list[UsageEntry]
    optouts: list[OptOutRecord]
    gate: CommitGate
    done: asyncio.Future[_Outcome]

    def outcome(self) -> _Outcome:
        """Once ``done``: the write's outcome, or, when it raised, all it did not commit."""
        error = self.done.exception()
        if error is None:
            return self.done.result()
        return _Outcome(self.usage, self.optouts[self.gate.committed :], error, wrote=True)


class _SavedScans:
    """When a running ``WriteBehind`` looks for saved opt-outs (``_write_saved``): ``due``.

    First when it starts; then every ``SAVED_SCAN_INTERVAL_MS`` after the last look, by the
    worker's clock (a clock set back makes a look due at once rather than after the gap), since
    a stopping worker may have saved a file meanwhile; at once when a write succeeds after one
    failed (a stop during the failure is the likeliest to have saved one); on every usage flush
    (``flush_interval_s``) while the last look left a file behind, refused by the store or held
    by another process; and at once after a look that stopped at its bound
    (``SAVED_CHUNKS_PER_LOOK``), ``run`` flushing the worker's own opt-outs in between. Nothing
    here reads anything but the clock it is given: the looks themselves run on the
    write-behind's thread."""

    __slots__ = ("_enabled", "_failing", "_left", "_looked_ms", "due")

    def __init__(self, *, enabled: bool, now_ms: int) -> None:
        self._enabled = enabled
        self.due = enabled
        self._looked_ms = now_ms
        self._left = False
        self._failing = False

    def looked(self, now_ms: int, outcome: _Outcome | None) -> None:
        """A look ended (None: a stop came first)."""
        self.due = outcome is not None and outcome.more
        self._looked_ms = now_ms
        self._left = outcome is not None and (outcome.error is not None or outcome.held)
        if outcome is not None:
            self._recovered(outcome)

    def flushed(self, outcome: _Outcome | None) -> None:
        """A flush ended (None: a stop came first)."""
        if outcome is not None and self._recovered(outcome):
            self.due = self._enabled

    def tick(self, now_ms: int, *, usage_due: bool) -> None:
        since = now_ms - self._looked_ms
        if self._enabled and (
            (usage_due and self._left) or not 0 <= since < SAVED_SCAN_INTERVAL_MS
        ):
            self.due = True

    def _recovered(self, outcome: _Outcome) -> bool:
        """Whether ``outcome`` is a write that worked after one failed."""
        if outcome.error is not None:
            self._failing = True
            return False
        recovered = outcome.wrote and self._failing
        self._failing = self._failing and not outcome.wrote
        return recovered


class WriteBehind:
    """The usage meter and the opt-out queue of one worker, and the loop that flushes them.

    ``saved_dir`` is where a stop saves the opt-outs it could not write, and where ``run``
    looks for them, those of any worker's stop, when it starts and on its schedule
    (``PENDING_OPTOUTS_DIR`` in the data directory; ``_SavedScans``); None keeps nothing (a stop
    then logs what it loses at ERROR)."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        flush_interval_s: float,
        on_optouts: Callable[[list[OptOutRecord]], None] | None = None,
        on_written: Callable[[list[OptOutRecord]], None] | None = None,
        on_dropped: Callable[[list[OptOutRecord]], None] | None = None,
        saved_dir: Path | None = None,
        stop_budget_s: float = STOP_BUDGET_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.usage = UsageMeter(clock.now_ms())
        self.optouts = OptOutQueue()
        self._store = store
        self._clock = clock
        self._interval_s = flush_interval_s
        self._on_optouts = on_optouts
        self._on_written = on_written
        self._on_dropped = on_dropped
        self._saved_dir = saved_dir
        self._stop_budget_s = stop_budget_s
        self._monotonic = monotonic
        """What the stop budget is measured on, in seconds (``time.monotonic``)."""
        self._stop = asyncio.Event()
        self._stopping = threading.Event()
        """Set with ``stop`` (and by ``_finish``): read by the write-behind's thread."""
        self._stop_at: float | None = None
        self._flight: _Flight | None = None
        self._failing = _FailureLog()
        self._unreadable: dict[Path, _Identity | None] = {}
        """Saved files skipped while they stay as they were (``_Identity``; None: however they
        change, until they are gone): their content or kind is at fault."""
        self._retried: set[tuple[Path, int | None]] = set()
        """(file, errno) of the passing errors logged: once per file per cause."""
        self._listing_failed: int | None = None
        """The errno the last look could not list the directory for (None: it could)."""
        self._written_before: dict[Path, int] = {}
        """How many opt-outs of a saved file earlier looks wrote (stopped at their bound)."""
        self._held_elsewhere: set[Path] = set()
        """Saved files (as found: claimed names too) logged as held by another process: once."""
        self.failures = 0
        self._drops_reported = 0
        self._drop_warned_at_ms: int | None = None

    def record_optout(self, record: OptOutRecord) -> None:
        """The logout endpoint's sink: queue it for the store and apply it locally at once (a
        record dropped for want of room is reported dropped at once)."""
        queued = self.optouts.add(record)
        if self._on_optouts is not None:
            self._on_optouts([record])
        if not queued:
            self._report_dropped([record])

    def _report_written(self, records: list[OptOutRecord]) -> None:
        if records and self._on_written is not None:
            self._on_written(records)

    def _report_dropped(self, records: list[OptOutRecord]) -> None:
        if records and self._on_dropped is not None:
            self._on_dropped(records)

    def tick(self) -> None:
        """Advance the coarse usage clock (cheap; called every ``USAGE_TICK_S`` at most, by
        ``run``, while it waits and while a write waits on the store)."""
        self.usage.now_ms = self._clock.now_ms()

    # ------------------------------------------------------------------ writes (any thread)

    def _write(
        self, usage: list[UsageEntry], optouts: list[OptOutRecord], gate: CommitGate
    ) -> _Outcome:
        """Write each batch in its own transactions; return what could not be written.

        The writes are independent: when one fails, another may already be committed, so only
        what failed may be put back (putting back committed opt-outs would record them, and their
        audit events, a second time). Opt-outs are written ``OPTOUT_WRITE_CHUNK`` per
        transaction; the first chunk that fails stops them, and it and the chunks after it are
        what is returned. Nothing is logged here but usage dropped for keys that no longer
        exist: the failures are the caller's (``_settle``).
        """
        error: BaseException | None = None
        failed_optouts: list[OptOutRecord] = []
        if optouts:
            try:
                write_optouts(self._store, optouts, self._clock.now_ms, gate)
            except OptOutsNotWritten as failed:
                failed_optouts = optouts[failed.committed :]
                error = failed.__cause__ or failed
        failed_usage: list[UsageEntry] = []
        if usage and not gate.closed:
            try:
                unknown = self._store.record_usage(usage)
            except Exception as exc:
                failed_usage = usage
                error = error or exc
            else:
                if unknown:  # keys are never deleted; a store restored from a backup could do it
                    log.warning(
                        "usage of API keys the store does not hold dropped, the rest written: %s",
                        some_of(unknown, 5),
                    )
        else:
            failed_usage = usage
        return _Outcome(failed_usage, failed_optouts, error, wrote=bool(usage or optouts))

    def _write_saved(self, gate: CommitGate) -> _Outcome:
        """One look at the opt-outs earlier stops saved (``read_saved``): write them file by
        file, each claimed first, ``SAVED_CHUNKS_PER_LOOK`` chunks at most (the file under way
        given back holding the rest when they are written: the outcome's ``more``); stop at the
        first that the store refuses (its error is the outcome's). A file that cannot be
        claimed or read is skipped (``_skipped``)."""
        listed = self._listed()
        if listed is None:  # none kept, or the directory's fault: no write of the store's to retry
            return _Outcome([], [], None, wrote=False)
        self._forget_gone(listed)
        wrote = held = False
        chunks = SAVED_CHUNKS_PER_LOOK  # still to be written by this look, at most
        for own, found in listed:
            if self._stopping.is_set():  # the listing may hold the file this stop saves
                break
            if self._still_skipped(own, found):
                continue
            if chunks <= 0:
                return _Outcome([], [], None, wrote=wrote, held=held, more=True)
            try:
                claim = _claim(own, found)
            except _Held:
                held = True
                if found not in self._held_elsewhere:
                    self._held_elsewhere.add(found)
                    log.warning(
                        "write-behind: the saved opt-outs in %s are skipped: another running "
                        "worker holds the file and writes them",
                        found,
                    )
                continue
            except OSError as exc:
                self._skipped(own, found, "cannot be claimed", exc, _identity_at(found))
                continue
            if claim is None:
                continue
            try:
                done = self._write_saved_file(own, claim, gate, chunks)
            finally:
                claim.release()  # the file is removed, or has its name back
            wrote = wrote or done.tried
            chunks -= done.chunks
            if done.error is not None:
                return _Outcome([], [], done.error, wrote=True, held=held)
            if done.left:
                return _Outcome([], [], None, wrote=True, held=held, more=True)
        return _Outcome([], [], None, wrote=wrote, held=held)

    def _write_saved_file(
        self, own: Path, claim: _Claim, gate: CommitGate, chunks: int
    ) -> _FileWrite:
        """Write one claimed file's opt-outs, chunk by chunk, ``chunks`` at most, and remove it
        once all are written. After each chunk committed, the file is made to hold only what is
        still not written (``_Claim.keep``), so that a worker killed meanwhile leaves at most the
        chunk it committed last to be written again. On failure, when this worker is stopping,
        and once ``chunks`` are written, the file is given its name back, holding what is not
        written. The bound is kept only where the file holds just that: after a ``keep`` that
        failed, the file is written on, to the next ``keep`` that works or to its end, since a
        file given back holding chunks already written would have every later look write them
        again."""
        try:
            records = read_saved(claim.path)
        except (Unreadable, OSError) as exc:
            try:
                identity: _Identity | None = _identity(os.fstat(claim.fd))
            except OSError:
                identity = None
            _give_back(own, claim, None)
            self._skipped(own, own, "cannot be read", exc, identity)
            return _FileWrite(0, tried=False, error=None)
        before = self._written_before.pop(own, 0)  # by this worker's earlier looks
        items = _items(records)  # encoded once: the file is rewritten after each chunk
        written = kept = committed = 0  # the file holds records[kept:]
        bounded = False
        try:
            while written < len(records) and not self._stopping.is_set():
                if committed >= chunks and kept == written:
                    bounded = True
                    break
                chunk = records[written : written + OPTOUT_WRITE_CHUNK]
                write_optout_chunk(self._store, chunk, self._clock.now_ms, gate)
                written += len(chunk)
                committed += 1
                if written < len(records):
                    with contextlib.suppress(OSError):  # kept whole: written again after a crash
                        claim.keep(items[written:])
                        kept = written
        except Exception as exc:
            self._give_back_rest(
                own, claim, before + written, items[written:] if kept != written else None
            )
            return _FileWrite(committed, tried=True, error=exc)
        if written < len(records):  # the rest is for a later look, or a worker still running
            self._give_back_rest(
                own, claim, before + written, items[written:] if kept != written else None
            )
            if not bounded and written:
                log.warning(
                    "write-behind: %d of the %d opt-outs saved in %s written to the store before "
                    "stopping; the file keeps the rest",
                    before + written,
                    before + len(records),
                    own,
                )
            return _FileWrite(committed, tried=written > 0, error=None, left=bounded)
        try:
            claim.path.unlink()
        except OSError as exc:
            log.error("write-behind: %s could not be removed (%s)", claim.path, _os_reason(exc))
        log.warning(
            "write-behind: %d opt-outs saved at an earlier stop written to the store, from %s",
            before + written,
            own,
        )
        return _FileWrite(committed, tried=True, error=None)

    def _still_skipped(self, own: Path, found: Path) -> bool:
        """Whether the saved file ``own`` (at ``found``) is one skipped (``_skipped``) and still
        as it was then; one replaced or changed since is forgotten, to be looked at afresh."""
        if own not in self._unreadable:
            return False
        skipped = self._unreadable[own]
        if skipped is None or skipped == _identity_at(found):
            return True
        del self._unreadable[own]
        return False

    def _skipped(
        self,
        own: Path,
        shown: Path,
        what: str,
        error: Unreadable | OSError,
        identity: _Identity | None,
    ) -> None:
        """Note and log a saved file this look skips: ``shown`` ``what`` (cannot be claimed,
        read), for ``error``; ``identity``: the file's, as it was tried.

        A file whose content or kind is at fault (``Unreadable``; ``_FILE_AT_FAULT``: a
        directory in its place, a loop of symbolic links, a name too long to claim) gives the
        same error at every try: it is skipped, logged at ERROR once, for as long as it stays
        as it was tried (an operator who puts a mended file in its place, or mends it where it
        is, has it written at the next look, with no restart). Any
        other error may pass (the process out of descriptors, EMFILE, or the system, ENFILE; out
        of memory; EINTR, EAGAIN; an EIO once), or ends when an operator acts (a permission,
        ``_NEEDS_OPERATOR``): the file, given its name back when it was claimed, is tried again
        at the next look, and each cause is logged once per file (at ERROR when it needs an
        operator, else at WARNING), so that no passing error keeps its opt-outs unwritten until
        every worker restarts."""
        if isinstance(error, Unreadable) or error.errno in _FILE_AT_FAULT:
            reason = error.reason if isinstance(error, Unreadable) else _os_reason(error)
            self._unreadable[own] = identity
            log.error(
                "write-behind: the saved opt-outs in %s %s (%s); the file is left in place",
                shown,
                what,
                reason,
            )
            return
        cause = (own, error.errno)
        if cause in self._retried:
            return
        self._retried.add(cause)
        log.log(
            logging.ERROR if error.errno in _NEEDS_OPERATOR else logging.WARNING,
            "write-behind: the saved opt-outs in %s %s (%s); the file is tried again at the "
            "next look",
            shown,
            what,
            _os_reason(error),
        )

    def _listed(self) -> list[tuple[Path, Path]] | None:
        """The saved files (``_saved_files``), or None when this writer keeps none or their
        directory cannot be listed (a file in its place, a permission, the process out of
        descriptors), logged once per cause: the look ends there, and the next one tries again.
        Not a failure of the store's, so it is neither counted nor logged as one (the writes the
        store takes go on)."""
        directory = self._saved_dir
        if directory is None:
            return None
        try:
            listed = _saved_files(directory)
        except OSError as error:
            if self._listing_failed != error.errno:
                self._listing_failed = error.errno
                log.error(
                    "write-behind: %s cannot be listed (%s); the saved opt-outs in it wait for a "
                    "look that can list it",
                    directory,
                    _os_reason(error),
                )
            return None
        if self._listing_failed is not None:
            self._listing_failed = None
            log.warning("write-behind: %s can be listed again", directory)
        return listed

    def _give_back_rest(
        self, own: Path, claim: _Claim, written: int, rest: Sequence[bytes] | None
    ) -> None:
        """Give a file not written to its end its name back (``_give_back``), noting how many of
        its opt-outs this worker wrote (``written``) for the line that reports the whole file."""
        _give_back(own, claim, rest)
        if written:
            self._written_before[own] = written

    def _forget_gone(self, listed: Sequence[tuple[Path, Path]]) -> None:
        """Forget what was noted about saved files no longer ``listed`` (written, by this worker
        or another): the notes last no longer than the files."""
        owns = {own for own, _found in listed}
        if self._held_elsewhere:
            self._held_elsewhere &= {found for _own, found in listed}
        if self._retried:
            self._retried = {cause for cause in self._retried if cause[0] in owns}
        if self._written_before:
            self._written_before = {
                own: n for own, n in self._written_before.items() if own in owns
            }
        if self._unreadable:
            self._unreadable = {own: i for own, i in self._unreadable.items() if own in owns}

    @property
    def pending_optouts(self) -> int:
        """This worker's opt-outs not yet in the store: queued, and those the write under way
        took and has not committed (it takes the queue's records when it starts)."""
        flight = self._flight
        writing = 0 if flight is None else max(len(flight.optouts) - flight.gate.committed, 0)
        return len(self.optouts) + writing

    @property
    def pending_usage_rows(self) -> int:
        """Usage rows not yet in the store: counted since the last take, and those the write
        under way took."""
        flight = self._flight
        return len(self.usage) + (0 if flight is None else len(flight.usage))

    # ------------------------------------------------------------------ on the caller's side

    def flush(self) -> None:
        """Write everything pending now, once, synchronously (tests; a stop goes through
        ``run``)."""
        optouts = self.optouts.take()
        self._settle(self._write(self.usage.take(), optouts, CommitGate()), optouts)
        self.report_drops()

    def write_saved(self) -> None:
        """Write the opt-outs earlier stops saved, synchronously, look after look while one
        stops at its bound (tests; ``run`` does it when it starts, and then on its schedule,
        flushing between two looks: ``_SavedScans``)."""
        while True:
            outcome = self._write_saved(CommitGate())
            self._settle(outcome)
            if not outcome.more:
                return

    def _settle(self, outcome: _Outcome, sent: Sequence[OptOutRecord] = ()) -> None:
        """Report the worker's own opt-outs ``sent`` to the write that the store committed (all
        but what it did not write, always their tail), keep what was not written for the next
        flush, and log a failure or the end of failures (``_FailureLog``)."""
        self._report_written(list(sent[: max(len(sent) - len(outcome.optouts), 0)]))
        self._put_back(outcome.usage, outcome.optouts)
        now_ms = self._clock.now_ms()
        if outcome.error is not None:
            self._failing.failed(now_ms, outcome.error, len(self.optouts), len(self.usage))
        elif outcome.wrote:
            self._failing.succeeded(now_ms)

    def report_drops(self) -> None:
        """Log a WARNING when opt-outs were dropped since the last one, at most once per
        ``DROP_WARNING_INTERVAL_MS`` (the next line counts what was dropped meanwhile)."""
        dropped = self.optouts.dropped
        if dropped == self._drops_reported:
            return
        now_ms = self._clock.now_ms()
        last = self._drop_warned_at_ms
        if last is not None and now_ms - last < DROP_WARNING_INTERVAL_MS:
            return
        log.warning(
            "%d logout opt-outs dropped (%d since this worker started): %d were already waiting "
            "for the store; a dropped opt-out is never written and is lost at the next snapshot "
            "reload",
            dropped - self._drops_reported,
            dropped,
            MAX_PENDING_OPTOUTS,
        )
        self._drops_reported = dropped
        self._drop_warned_at_ms = now_ms

    def _put_back(self, usage: list[UsageEntry], optouts: list[OptOutRecord]) -> None:
        """Keep what could not be written for the next flush."""
        if not usage and not optouts:
            return
        self.failures += 1
        self.usage.restore(usage)
        self._report_dropped(self.optouts.restore(optouts))

    # ------------------------------------------------------------------ the loop

    def _launch(
        self,
        work: Callable[[CommitGate], _Outcome],
        usage: list[UsageEntry],
        optouts: list[OptOutRecord],
    ) -> _Flight:
        """Start ``work`` in a thread of its own; it becomes the write under way.

        A daemon thread, so that a write a stop leaves behind (waiting for the store's lock, say)
        never keeps the process from exiting; its gate is closed by then, so it commits
        nothing."""
        loop = asyncio.get_running_loop()
        gate = CommitGate()
        done: asyncio.Future[_Outcome] = loop.create_future()

        def land(outcome: _Outcome | None, error: Exception | None) -> None:
            if done.done():
                return
            if outcome is None:
                done.set_exception(error or RuntimeError("no outcome"))
            else:
                done.set_result(outcome)

        def write() -> None:
            leave_to_main_thread()
            outcome: _Outcome | None = None
            error: Exception | None = None
            try:
                outcome = work(gate)
            except Exception as exc:
                error = exc
            with contextlib.suppress(RuntimeError):  # the loop is closed: a stop left it behind
                loop.call_soon_threadsafe(land, outcome, error)

        threading.Thread(target=write, name="write-behind", daemon=True).start()
        self._flight = _Flight(usage, optouts, gate, done)
        return self._flight

    def _launch_flush(self, usage: list[UsageEntry], optouts: list[OptOutRecord]) -> _Flight:
        return self._launch(functools.partial(self._write, usage, optouts), usage, optouts)

    def _land(self, flight: _Flight) -> _Outcome:
        self._flight = None
        outcome = flight.outcome()
        self._settle(outcome, flight.optouts)
        return outcome

    async def _until_landed_or_stopped(self, flight: _Flight) -> _Outcome | None:
        """The outcome of ``flight``, or None when ``stop`` came first (the flight is left to
        ``_finish``)."""
        stopping = asyncio.ensure_future(self._stop.wait())
        either: set[asyncio.Future[Any]] = {flight.done, stopping}
        try:
            while True:
                done, _ = await asyncio.wait(
                    either, timeout=USAGE_TICK_S, return_when=asyncio.FIRST_COMPLETED
                )
                if done:
                    break
                # A write may wait on the store for long (a lock, a database that stopped
                # answering): the requests answered meanwhile are still stamped with their time.
                self.tick()
        finally:
            stopping.cancel()
        return self._land(flight) if flight.done.done() else None

    async def _landed_by(self, flight: _Flight, deadline: float) -> bool:
        """Whether ``flight`` ended (and was settled) by ``deadline`` (``_monotonic``)."""
        remaining = deadline - self._monotonic()
        if remaining > 0 and not flight.done.done():
            await asyncio.wait({flight.done}, timeout=remaining)
        if not flight.done.done():
            return False
        self._land(flight)
        return True

    async def run(self) -> None:
        """Flush every ``flush_interval_s`` until ``stop``; opt-outs are flushed on every
        poll-sized tick (they change what other workers answer), usage on the interval. First,
        and then on the schedule of ``_SavedScans``, the opt-outs stops saved are written, a
        bounded look at a time (``SAVED_CHUNKS_PER_LOOK``): after a look that reached its bound,
        the worker's own opt-outs are flushed at once, without the tick's wait, and the next
        look follows. After ``stop``: the last flush (``_finish``)."""
        loop = asyncio.get_running_loop()
        last_usage_flush = loop.time()
        saved = _SavedScans(enabled=self._saved_dir is not None, now_ms=self._clock.now_ms())
        try:
            while not self._stop.is_set():
                if saved.due:
                    outcome = await self._until_landed_or_stopped(
                        self._launch(self._write_saved, [], [])
                    )
                    saved.looked(self._clock.now_ms(), outcome)
                if not saved.due:  # due: the look reached its bound, the next one follows
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            self._stop.wait(), timeout=min(self._interval_s, USAGE_TICK_S)
                        )
                if self._stop.is_set():
                    break
                self.tick()
                self.report_drops()
                usage_due = loop.time() - last_usage_flush >= self._interval_s
                saved.tick(self.usage.now_ms, usage_due=usage_due)
                if not usage_due and not len(self.optouts):
                    continue
                usage = self.usage.take() if usage_due else []
                if usage_due:
                    last_usage_flush = loop.time()
                optouts = self.optouts.take()
                saved.flushed(
                    await self._until_landed_or_stopped(self._launch_flush(usage, optouts))
                )
        finally:
            await self._finish()

    async def _finish(self) -> None:
        """The last flush: wait for the write under way, then write what is pending, again after
        ``STOP_RETRY_PAUSE_S`` while it fails, until ``STOP_BUDGET_S`` after ``stop``; then keep
        what is still not written (``_give_up``)."""
        self._stopping.set()  # ``run`` may end without ``stop`` (cancelled)
        self.tick()
        deadline = (self._stop_at or self._monotonic()) + self._stop_budget_s
        flight = self._flight
        if flight is None or await self._landed_by(flight, deadline):
            while len(self.optouts) or len(self.usage):
                usage, optouts = self.usage.take(), self.optouts.take()
                flight = self._launch_flush(usage, optouts)
                if not await self._landed_by(flight, deadline):
                    break
                remaining = deadline - self._monotonic()
                if remaining <= 0:
                    break
                if len(self.optouts) or len(self.usage):
                    await asyncio.sleep(min(STOP_RETRY_PAUSE_S, remaining))
        self._give_up()
        self.report_drops()

    def _give_up(self) -> None:
        """Stop the write under way from committing anything more, then save the opt-outs not
        written (confirmed to their callers: never dropped without a word) and log the usage
        not written."""
        flight, self._flight = self._flight, None
        optouts: list[OptOutRecord] = []
        usage: list[UsageEntry] = []
        if flight is not None:
            flight.gate.close()
            optouts.extend(flight.optouts[flight.gate.committed :])
            usage.extend(flight.usage)
        optouts.extend(self.optouts.take())
        usage.extend(self.usage.take())
        if usage:
            log.warning(
                "write-behind: %d usage rows (%d requests) not written to the store before "
                "stopping; usage is not kept across a stop",
                len(usage),
                sum(count for _key, _endpoint, count, _at in usage),
            )
        if optouts:
            self._save(optouts)

    def _save(self, optouts: list[OptOutRecord]) -> None:
        if self._saved_dir is None:
            log.error(
                "write-behind: %d opt-outs confirmed to their callers were not written to the "
                "store and are lost: there is no directory to save them to",
                len(optouts),
            )
            self._report_dropped(optouts)
            return
        path = saved_path(self._saved_dir, self._clock.now_ms())
        try:
            save_optouts(path, optouts)
        except OSError as exc:
            log.error(
                "write-behind: %d opt-outs confirmed to their callers were not written to the "
                "store, and saving them to %s failed (%s): they are lost",
                len(optouts),
                path,
                _os_reason(exc),
            )
            self._report_dropped(optouts)
            return
        log.warning(
            "write-behind: %d opt-outs not written to the store before stopping were saved to "
            "%s; a worker running on this data directory, or the next one started, writes them",
            len(optouts),
            path,
        )

    def stop(self) -> None:
        """End ``run``: it makes its last flush, within ``STOP_BUDGET_S`` from now."""
        if self._stop_at is None:
            self._stop_at = self._monotonic()
        self._stopping.set()
        self._stop.set()

    def close(self) -> None:
        """Let no write still under way commit anything more (``run`` has saved what it held)."""
        flight = self._flight
        if flight is not None:
            flight.gate.close(0)
