"""Refusing a replayed request envelope across every worker of one serve, and across restarts.

``services.replay.ReplayCache`` remembers the envelopes one process has opened. ``uid2-operator
serve --workers N`` runs N processes, and the kernel hands each new connection to any of them, so
with a cache per process a captured envelope replayed on a fresh connection is accepted by every
worker that has not seen it yet, and a worker that is restarted forgets every nonce. The rule is
"a replayed request is refused", not "refused by the worker that saw it first", so the workers of
one serve share one record of what was seen: this table, a file in the serve's private runtime
directory (``/dev/shm`` where the machine has it) that every worker maps into memory. The serving
process creates it before it starts any worker and removes it when it stops; a restarted worker
maps the same file and still refuses what any worker accepted before. A serve that stops
cleanly keeps a copy in its data directory (``keep``) that the next one takes back (``restore``),
and the next serve after one that died without stopping takes over the table it left in its
runtime directory (``adopt``), so a restart of the whole serve does not open a window for
replays either.

Entries. An entry is the envelope's 64-bit fingerprint, made as ``ReplayCache`` makes it
(``int(nonce) XOR mask(key id)``, the mask a BLAKE2b of the key id keyed with 16 random bytes;
here those bytes are drawn when the table is created and kept only inside the table file, so
every worker computes the same fingerprints), and the second after which the entry may be
forgotten: ``(timestamp + max_past_ms) // 1000 + 1``. Rounding up to the next whole second
only ever keeps an entry longer (at most one second), never forgets it early; it lets the
instant fit 32 bits (until 2106), so a slot takes 12 bytes instead of 16. For one key the
fingerprint is a bijection of the nonce, so two envelopes of one key share a fingerprint exactly
when they share the nonce (a replay); envelopes of different keys share one with probability
2^-64. A lookup compares at most ``probe`` fingerprints, so a fresh request is refused by
mistake with probability at most ``probe / 2^64`` (about 2e-18 with 32); a collision never lets
a replay through. As with ``ReplayCache``, a replay is the captured envelope itself, timestamp
and nonce sealed inside it, and an envelope whose timestamp has left the window is not looked up
at all: the timestamp check refuses it. Unlike the cache, the table does not file entries under
their timestamps, so a client that seals one of its nonces again under another timestamp is
refused while the first envelope is remembered: only the client, which holds the secret, can
make such an envelope, and the SDKs draw a fresh random nonce for every request.

Layout. A fixed number of *home* slots, chosen by the ``UID2_REPLAY_TABLE_ENTRIES`` setting. An
entry's home is a keyed hash of its fingerprint (XOR a random 64-bit key drawn per table, then
the MurmurHash3 finalizer's xor-shift-multiply rounds, scaled to the slot count), so nonces that
differ in only a few bits, a counter say, still spread over the whole table, and a client cannot
aim its nonces at one part of it. (A bare multiplicative hash, tried first, sent 512 nonces that
differ only in their middle bits into a handful of windows for some of its random multipliers.)
Open addressing with a bounded probe window: the entry lives in one of the ``probe`` slots from
its home on, and the table has ``probe - 1`` extra slots at the end, so a window never wraps. A
slot is 12 bytes, the fingerprint and then its instant, so a window is one run of 384 bytes
(with 32 slots): a few cache lines, nearly always in one page. The request path makes no Python
object per slot: the fingerprint is looked for with ``mmap.find`` over the window's bytes
(a match that does not start a slot is skipped), the instants are read by one ``struct`` call
that skips the fingerprints, and ``min`` and ``index`` over them run in C.

One request, under the lock: if the fingerprint is in the window and its entry has not expired,
the envelope is a replay. If it is there but expired, its slot is renewed. Otherwise the
envelope takes the slot of the window with the smallest instant: a free slot (instant 0), else
an expired entry, else, when the window holds nothing but live entries, the entry closest to
expiry, which is *evicted* (counted in the header). The whole window is always searched, so an
expired slot never hides a live entry behind it. Eviction briefly weakens protection for the
oldest nonce of that window rather than refuse fresh traffic; a table sized with room to spare
(half full or less: see docs/operator.md) evicts next to nothing.

Atomicity across processes. The check and the insert happen under ``flock`` on the table file,
taken by every process through its own open file description. The kernel drops such a lock when
the process holding it dies, whatever the instant, so a worker killed by SIGKILL or the OOM
killer can never wedge the others. A worker killed half-way through writing one entry leaves at
worst the new fingerprint beside the old instant, or the reverse: an entry kept too long (a
refusal of something that was in fact seen) or forgotten early (the envelope its worker died
before answering). The lock is held for the length of one window search, a microsecond or two.

File. A 4,096-byte header (magic, version, geometry, the window's ``max_past_ms``, the home and
mask keys, a BLAKE2b checksum of all of these, and the eviction counter), then the slots, each a
fingerprint (``Q``) and its instant (``I``), in the machine's byte order: the file never leaves
the machine. ``open`` refuses, with a ``ReplayTableError`` that says why, any file whose magic,
version, geometry, checksum or size is not what this code writes, or whose window is not the
worker's own: a wrong file is never used. ``create`` writes the whole file under a temporary name
and links it into place, so nobody ever maps a half-written header, and reserves the file's
memory up front (``posix_fallocate``): a full ``/dev/shm`` is an error when serve starts, not a
SIGBUS in a worker writing to a page the filesystem cannot back.

An opened table belongs to the process that opened it: a process forked after ``open`` would
share its lock instead of contending for it, and two threads must not call ``first_use`` on one
table object at once (a worker calls it from its event loop only). Open the table in each
process.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import shutil
import stat
import struct
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from hashlib import blake2b
from pathlib import Path
from types import TracebackType
from typing import Final, Protocol

from uid2_operator.clock import RandomBytes, system_random
from uid2_operator.services.replay import KeyMasks


class ReplayGuard(Protocol):
    """What the operator asks of its replay protection (``ReplayCache``, ``ReplayTable``)."""

    def first_use(self, key_id: str, nonce: bytes, timestamp_ms: int, now_ms: int) -> bool:
        """Record the envelope; False when it was already seen and could still pass."""
        ...


class ReplayTableError(ValueError):
    """A replay table file that this code will not use (wrong, corrupt or foreign)."""


TABLE_FILE: Final = "replay-table"
"""The table's name inside the serve's runtime directory."""
_COPY_CHUNK: Final = 1 << 16
_ZEROS: Final = bytes(_COPY_CHUNK)
KEPT_FILE: Final = "replay-table.kept"
"""The table's name in the data directory between a clean stop of serve and its next start."""
DEFAULT_SLOTS: Final = 2_097_152
"""2^21 home slots (24 MiB): about 2.2 times the entries of a worker answering 8,000 envelopes a
second over the default two-minute window."""
MIN_SLOTS: Final = 1
MAX_SLOTS: Final = 1 << 27
"""1.5 GiB of table; far beyond any request rate one machine can answer."""
PROBE: Final = 32
"""Slots an entry may occupy from its home on (see docs/operator.md for the eviction figures)."""
MAX_PROBE: Final = 256
MAGIC: Final = b"UID2RPLY"
VERSION: Final = 1
HEADER_SIZE: Final = 4096
_HEADER: Final = struct.Struct("=8sIIQIIQQ16s")
"""magic, version, header size, slots, probe, reserved (0), max_past_ms, home key, mask key."""
_CHECKSUM_AT: Final = _HEADER.size
_CHECKSUM_SIZE: Final = 8
_EVICTIONS_AT: Final = 128
"""The one field of the header that changes: entries evicted before expiry, since creation."""
_SLOT: Final = struct.Struct("=QI")
"""One slot: the fingerprint, then the second after which the entry may be forgotten (0: free)."""
_SLOT_SIZE: Final = _SLOT.size
_put_slot: Final = _SLOT.pack_into
_M64: Final = (1 << 64) - 1
_MIX1: Final = 0xFF51AFD7ED558CCD
_MIX2: Final = 0xC4CEB9FE1A85EC53
"""The multipliers of the MurmurHash3 64-bit finalizer (see ``first_use``)."""


def table_size(slots: int, probe: int) -> int:
    """Bytes of the file of a table with ``slots`` home slots and windows of ``probe`` slots."""
    return HEADER_SIZE + (slots + probe - 1) * _SLOT_SIZE


def _checksum(fields: bytes) -> bytes:
    return blake2b(fields, digest_size=_CHECKSUM_SIZE, person=b"uid2-replay").digest()


def _check_geometry(slots: int, probe: int) -> None:
    if not MIN_SLOTS <= slots <= MAX_SLOTS:
        raise ReplayTableError(f"a replay table has {MIN_SLOTS} to {MAX_SLOTS} slots, not {slots}")
    if not 1 <= probe <= MAX_PROBE:
        raise ReplayTableError(f"a replay table's probe window is 1 to {MAX_PROBE}, not {probe}")


class ReplayTable:
    """The replay record shared by the workers of one serve (see the module docstring)."""

    __slots__ = (
        "_evictions",
        "_fd",
        "_home_key",
        "_map",
        "_masks",
        "_max_past_ms",
        "_path",
        "_probe",
        "_read_instants",
        "_slots",
        "_window_size",
    )

    def __init__(self, path: Path, fd: int, mapped: mmap.mmap, header: _Header) -> None:
        """Use ``open``; this only wires an already checked mapping."""
        self._slots = header.slots
        probe = self._probe = header.probe
        self._path = path
        self._fd = fd
        self._map = mapped
        self._max_past_ms = header.max_past_ms
        self._home_key = header.home_key
        self._masks = KeyMasks(header.mask_key)
        with memoryview(mapped) as view:
            self._evictions = view[_EVICTIONS_AT : _EVICTIONS_AT + 8].cast("Q")
        self._window_size = _SLOT_SIZE * probe
        self._read_instants = struct.Struct("=" + "8xI" * probe).unpack_from
        """The instants of a window (struct skips the fingerprints between them)."""

    # ------------------------------------------------------------------------------ files

    @classmethod
    def create(
        cls,
        path: Path,
        *,
        max_past_ms: int,
        slots: int = DEFAULT_SLOTS,
        probe: int = PROBE,
        random: RandomBytes = system_random,
    ) -> None:
        """Write a new, empty table at ``path`` (which must not exist yet).

        The file (mode 0600) is written whole under a temporary name in the same directory,
        its memory reserved, and then linked into place: an ``OSError`` (no space, say) leaves
        nothing behind."""
        _check_geometry(slots, probe)
        if max_past_ms < 0:
            raise ReplayTableError("max_past_ms must not be negative")
        home_key = int.from_bytes(random(8), "big")
        fields = _HEADER.pack(
            MAGIC, VERSION, HEADER_SIZE, slots, probe, 0, max_past_ms, home_key, random(16)
        )
        size = table_size(slots, probe)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.new")
        fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size)
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(fd, 0, size)
            os.pwrite(fd, fields + _checksum(fields), 0)
            os.link(temporary, path)
        finally:
            os.close(fd)
            temporary.unlink(missing_ok=True)

    @classmethod
    def open(cls, path: Path, *, max_past_ms: int | None = None) -> ReplayTable:
        """Map the table at ``path`` after checking its header and size.

        ``max_past_ms``: the caller's own window; a table made for another one is refused (its
        entries would be forgotten at other instants than the caller's timestamp check uses).
        """
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError as exc:
            raise ReplayTableError(f"cannot open the replay table {path}: {exc.strerror}") from None
        try:
            header = _read_header(fd, path)
            if max_past_ms is not None and header.max_past_ms != max_past_ms:
                raise ReplayTableError(
                    f"{path} was made for a window of {header.max_past_ms} ms, not {max_past_ms} ms"
                )
            mapped = mmap.mmap(fd, table_size(header.slots, header.probe))
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, mapped, header)

    def close(self) -> None:
        """Unmap the table and close its file (the file itself stays for the other workers)."""
        if self._fd < 0:
            return
        self._evictions.release()
        self._map.close()
        os.close(self._fd)
        self._fd = -1

    def __enter__(self) -> ReplayTable:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------------------ figures

    @property
    def path(self) -> Path:
        return self._path

    @property
    def slots(self) -> int:
        """Home slots (the table holds ``probe - 1`` more, at the end)."""
        return self._slots

    @property
    def probe(self) -> int:
        return self._probe

    @property
    def max_past_ms(self) -> int:
        return self._max_past_ms

    @property
    def evictions(self) -> int:
        """Entries dropped before their expiry because their window was full, by any process
        since the table was created."""
        return int(self._evictions[0])

    def live_entries(self, now_ms: int) -> int:
        """Entries that have not expired at ``now_ms`` (a full scan, for tests and benchmarks)."""
        now_s = now_ms // 1000
        end = table_size(self._slots, self._probe)
        entries = _SLOT.iter_unpack(self._map[HEADER_SIZE:end])
        return sum(1 for _fingerprint, instant in entries if instant > now_s)

    # ------------------------------------------------------------------------------ requests

    def first_use(self, key_id: str, nonce: bytes, timestamp_ms: int, now_ms: int) -> bool:
        """Record the envelope; False when any process of the table already recorded it and it
        could still pass.

        ``nonce`` is the envelope's 8-byte nonce. An envelope whose timestamp already left the
        window is not recorded (the timestamp check refuses it anyway) and answers True.
        """
        if len(nonce) != 8:  # fingerprints must fit a slot's 64 bits
            raise ValueError("nonce must be 8 bytes")
        expires_ms = timestamp_ms + self._max_past_ms
        if expires_ms < now_ms:
            return True
        mask = self._masks.known.get(key_id)
        if mask is None:
            mask = self._masks.compute(key_id)
        fingerprint = int.from_bytes(nonce, "big") ^ mask
        # The home: the fingerprint XOR the table's home key, through the MurmurHash3 finalizer
        # (xor-shift-multiply rounds: every input bit moves every output bit), scaled to slots.
        mixed = fingerprint ^ self._home_key
        mixed = ((mixed ^ (mixed >> 33)) * _MIX1) & _M64
        mixed = ((mixed ^ (mixed >> 33)) * _MIX2) & _M64
        home = ((mixed ^ (mixed >> 33)) * self._slots) >> 64
        at = HEADER_SIZE + _SLOT_SIZE * home
        end = at + self._window_size
        packed = fingerprint.to_bytes(8, sys.byteorder)
        table = self._map
        now_s = now_ms // 1000
        fd = self._fd
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            instants = self._read_instants(table, at)
            # The fingerprint's bytes may also match across two slots' fields: only a match at
            # a slot's start counts, and every slot holding it is looked at.
            reuse = -1
            found = table.find(packed, at, end)
            while found >= 0:
                place, misaligned = divmod(found - at, _SLOT_SIZE)
                if not misaligned:
                    if instants[place] > now_s:
                        return False
                    reuse = place  # the same envelope, expired: its slot is taken again
                found = table.find(packed, found + 1, end)
            if reuse < 0:
                oldest = min(instants)
                reuse = instants.index(oldest)
                if oldest > now_s:
                    self._evictions[0] += 1
            _put_slot(table, at + _SLOT_SIZE * reuse, fingerprint, expires_ms // 1000 + 1)
            return True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the table's lock (what ``first_use`` takes for each request); for tests."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)


@dataclass(frozen=True, slots=True)
class _Header:
    """The fixed part of a table's header, checked."""

    slots: int
    probe: int
    max_past_ms: int
    home_key: int
    mask_key: bytes = field(repr=False)


def _read_header(fd: int, path: Path) -> _Header:
    """The header of the table file ``fd``, refused unless it is one this code writes."""
    size = os.fstat(fd).st_size
    raw = os.pread(fd, _CHECKSUM_AT + _CHECKSUM_SIZE, 0)
    if len(raw) < _CHECKSUM_AT + _CHECKSUM_SIZE or raw[:8] != MAGIC:
        raise ReplayTableError(f"{path} is not a replay table")
    _magic, version, header_size, slots, probe, reserved, max_past_ms, home_key, key = (
        _HEADER.unpack_from(raw)
    )
    if version != VERSION:
        raise ReplayTableError(
            f"{path} is a version {version} replay table; this operator reads version {VERSION}"
        )
    if raw[_CHECKSUM_AT:] != _checksum(raw[:_CHECKSUM_AT]):
        raise ReplayTableError(f"{path} has a corrupt header (checksum mismatch)")
    if header_size != HEADER_SIZE or reserved != 0:
        raise ReplayTableError(f"{path} has a header this operator does not write")
    _check_geometry(slots, probe)
    if size != table_size(slots, probe):
        raise ReplayTableError(
            f"{path} is {size} bytes; a table of {slots} slots (probe {probe}) is "
            f"{table_size(slots, probe)}"
        )
    return _Header(slots, probe, max_past_ms, home_key, key)


# ------------------------------------------------------------------------------ across restarts


def keep(table_path: Path, kept_path: Path) -> None:
    """Copy a table that no process writes any more (every worker has stopped) to ``kept_path``,
    mode 0600, whole under a temporary name and then renamed: a reader never sees half of it.

    ``serve`` does this when it stops cleanly, into its data directory, so that the next
    ``serve`` still refuses the envelopes seen in the last minutes (``restore``). A copy cut
    short (serve killed while it kept its table) is left under its temporary name, which
    ``sweep_unfinished_keeps`` removes."""
    temporary = kept_path.with_name(f".{kept_path.name}.{os.getpid()}.new")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        # Runs of free slots are zeros: they are skipped (a hole where the file system has them),
        # so a quiet serve does not leave tens of MiB of zeros in its data directory.
        with table_path.open("rb") as source:
            offset = 0
            while chunk := source.read(_COPY_CHUNK):
                if chunk != _ZEROS[: len(chunk)]:
                    os.pwrite(fd, chunk, offset)
                offset += len(chunk)
        os.ftruncate(fd, offset)
        os.fsync(fd)
        os.replace(temporary, kept_path)
    finally:
        os.close(fd)
        temporary.unlink(missing_ok=True)


def sweep_unfinished_keeps(kept_path: Path) -> list[Path]:
    """Remove the copies of ``keep`` into ``kept_path`` that a killed process left under their
    temporary names (each named for its process: every such kill adds one, as large as the
    table); only while no ``keep`` into it can be under way (``serve`` holds its lock). The
    paths removed; one that cannot be is left for the next sweep."""
    removed = []
    for temporary in kept_path.parent.glob(f".{kept_path.name}.*.new"):
        with suppress(OSError):
            temporary.unlink()
            removed.append(temporary)
    return removed


def _unusable(path: Path, *, max_past_ms: int, slots: int) -> str | None:
    """Why the table file at ``path`` cannot serve a serve with this window and size (not one
    this code wrote, a corrupt header, another window, size or probe window), or None."""
    try:
        with ReplayTable.open(path, max_past_ms=max_past_ms) as table:
            geometry = (table.slots, table.probe)
    except ReplayTableError as exc:
        return str(exc)
    if geometry != (slots, PROBE):
        return f"{path} has {geometry[0]} slots (probe {geometry[1]}), not {slots}"
    return None


def restore(kept_path: Path, table_path: Path, *, max_past_ms: int, slots: int) -> str | None:
    """Put the table ``keep`` left at ``kept_path`` in place at ``table_path`` (which must not
    exist yet), when it is one this code wrote for the same window, size and probe window.

    Returns None when it was restored, else why not (no table kept, or one of another geometry
    or window, or a file that is not a table: the caller then creates a fresh one). The kept
    file is removed once restored, or once found unusable: its entries matter for minutes, and a
    copy restored once must not come back after a later crash. An ``OSError`` while restoring (a
    full ``/dev/shm``, the process out of descriptors) is raised with the kept file left in
    place, so that the start it fails does not cost the next one the envelopes it holds. The
    table is copied (the data directory and the runtime directory are usually on different file
    systems), under a temporary name, then linked into place, like ``ReplayTable.create``."""
    if not kept_path.exists():
        return "no table kept"
    # Opened as ReplayTable.open opens it: an error here (no descriptor left, a permission) is
    # this start's trouble, not the file's, so it is raised with the file kept.
    os.close(os.open(kept_path, os.O_RDWR))
    reason = _unusable(kept_path, max_past_ms=max_past_ms, slots=slots)
    if reason is not None:
        kept_path.unlink(missing_ok=True)
        return reason
    temporary = table_path.with_name(f".{table_path.name}.{os.getpid()}.new")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with kept_path.open("rb") as source, os.fdopen(fd, "wb", closefd=False) as target:
            shutil.copyfileobj(source, target, 1 << 20)
        os.link(temporary, table_path)
    finally:
        os.close(fd)
        temporary.unlink(missing_ok=True)
    kept_path.unlink(missing_ok=True)
    return None


def adopt(left_path: Path, table_path: Path, *, max_past_ms: int, slots: int) -> str | None:
    """Put the table a serve that died without stopping left in its runtime directory
    (``left_path``) in place at ``table_path`` (which must not exist yet), when ``restore``
    would take it: a regular file of this user that is a table this code wrote for the same
    window, size and probe window.

    Returns None when it was adopted, else why not. Both runtime directories share one parent,
    so the table is linked, not copied: nothing is copied or reserved again, and a worker of the
    dead serve still finishing a request records its envelope in the very table that is now in
    use. The caller removes the old runtime directory (which unlinks the old name only)."""
    try:
        found = os.lstat(left_path)
    except FileNotFoundError:
        return f"no table in {left_path.parent}"
    if not stat.S_ISREG(found.st_mode) or found.st_uid != os.getuid():
        return f"{left_path} is not a table file of this user"
    reason = _unusable(left_path, max_past_ms=max_past_ms, slots=slots)
    if reason is not None:
        return reason
    os.link(left_path, table_path, follow_symlinks=False)
    return None
