"""Salt buckets held compactly, generated and rotated by the service (operator-api §4, §6.8).

The production table has 2^20 buckets. One Python object per bucket (a record with two 44-char
strings and two ints) would cost several hundred megabytes per worker, so a ``SaltTable`` holds
flat columns instead and makes a wire ``SaltBucket`` only when a request asks for one:

- ``salts``: one blob of raw 32-byte salts, bucket ``i`` at ``[32*i, 32*i+32)``; the salt string
  that derivations use is its standard base64 (44 characters, the shape of the reference salts);
- ``previous``: the same layout for the salt each bucket had before its last rotation, plus a
  presence bitmap (bit ``i & 7`` of byte ``i >> 3``). A table that never rotated keeps an empty
  blob instead of 32 zero bytes per bucket;
- ``last_updated`` / ``refresh_from``: ``array('q')`` columns of epoch milliseconds.

That is about 80 bytes per bucket (~80 MB for 2^20 once every bucket has a previous salt).

At rest the table is split into chunks of ``chunk_size`` consecutive buckets (one row each), so
loading it is a few large reads and a rotation rewrites only the chunks it touched. The salts of a
chunk are sealed under the keyring (``domain.material_sealing``); the timestamps are not secret.

Rotation keeps the promise that ``refresh_from`` makes to mappers (§4.5: "this bucket's salt
stays until then"). A mapper that asked at any time of day was told "map again at the next UTC
midnight" (the bucket's own ``refresh_from`` once that has passed), so a rotation never changes a
salt at once: it schedules the change for ``E``, the first UTC midnight at least
``SALT_ROTATION_LEAD_MS`` away (``rotation_effective_at``), as a salt snapshot of the reference is
published ahead of its ``effective`` time. Only buckets whose ``refresh_from`` has passed
may rotate; a rotated bucket stores the salt in effect as its previous, the new salt as its
current, ``refresh_from`` = ``E`` (the time the change takes effect, as the reference's salt files
give it as ``last_updated``) and ``last_updated`` = when the salt in effect took effect. A bucket
therefore changes at most once a day, and only at a midnight.

So what a bucket holds depends on the time it is read at, and every read that derives a raw UID
takes that time. Read at ``t < refresh_from`` a bucket with a previous salt is *pending*: the
salt in effect is the stored previous one, took effect at ``last_updated``, and has no previous
salt of its own (the rotation wrote over it); its ``refresh_from`` is ``E``. From ``E`` on it
reads as stored, with ``E`` as its ``last_updated``. So the time the salt in effect took effect
is known while the next change waits: ``/v2/identity/buckets`` lists that earlier change until
the new one replaces it, however soon the bucket is rotated again.

Stored ``last_updated`` never exceeds ``refresh_from``; the two are equal in a bucket that never
rotated (both its creation time), and in one rotated by an earlier version, which stored the
change's time in both (a rotation made before midnight: pending until then, reported as updated
"long ago", 0, since the time its salt in effect took effect was not kept). Earlier still,
rotations took effect at once and stored the time they ran as ``last_updated`` with the next
midnight as ``refresh_from``; schema revision 0006 rewrites those buckets' ``refresh_from`` to
their ``last_updated`` (``legacy_refresh_from``), so they read as they did.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final

from uid2_operator.domain.material_sealing import (
    FIRST_LEVEL_SALT_LABEL,
    ID_SECRET_LABEL,
    SALT_CHUNK_LABEL,
    SealedMaterial,
    open_material,
    seal_material,
)
from uid2_operator.domain.sealing import Keyring
from uid2_operator.errors import InvalidInput, SaltError
from uid2_operator.wire.aead import RandomBytes
from uid2_operator.wire.encoding import b64encode
from uid2_operator.wire.raw_uid import (
    DAY_MS,
    PRODUCTION_BUCKET_COUNT,
    SaltBucket,
    bucket_index,
    first_level_hash,
)

SALT_SIZE: Final = 32
SECRET_SIZE: Final = 32
DEFAULT_CHUNK_SIZE: Final = 1 << 14
"""Buckets per stored chunk: 64 rows of ~1.3 MB for a production table."""
LOCAL_BUCKET_COUNT: Final = 1 << 16
"""A size for local development: fast to create and load, same code paths as production."""
MAX_BUCKET_COUNT: Final = PRODUCTION_BUCKET_COUNT
MAX_ID_PREFIX: Final = 32
_I64: Final = 8
_BIG_ENDIAN: Final = sys.byteorder == "big"


# ------------------------------------------------------------------------ column encodings


def int64_column(data: bytes, *, swap: bool = _BIG_ENDIAN) -> array[int]:
    """Little-endian int64 bytes (the stored form, on every platform) as an ``array('q')``."""
    if len(data) % _I64:
        raise SaltError("A timestamp column is not a whole number of int64 values")
    column = array("q")
    column.frombytes(data)
    if swap:
        column.byteswap()
    return column


def int64_bytes(column: array[int], *, swap: bool = _BIG_ENDIAN) -> bytes:
    """An ``array('q')`` as little-endian bytes."""
    if not swap:
        return column.tobytes()
    copy = array("q", column)
    copy.byteswap()
    return copy.tobytes()


def legacy_refresh_from(
    has_previous: bytes, last_updated: bytes, refresh_from: bytes
) -> bytes | None:
    """A stored chunk's ``refresh_from`` column with every bucket that an at-once rotation of an
    earlier version left (a previous salt, ``last_updated`` before ``refresh_from``) given its
    ``last_updated`` as ``refresh_from``; None when the chunk holds none.

    Those buckets took their new salt when the rotation ran and read so under every later rule;
    the layout this version writes reads a previous salt with ``last_updated < refresh_from`` as
    a change still to come. Moved to their ``last_updated``, they read as before: that salt, with
    that time, and the old one as previous."""
    return _aligned(has_previous, last_updated, refresh_from, to_refresh_from=False)


def scheduled_last_updated(
    has_previous: bytes, last_updated: bytes, refresh_from: bytes
) -> bytes | None:
    """A stored chunk's ``last_updated`` column as the version before schema revision 0006
    stored a rotation for a midnight: every bucket with a previous salt and ``last_updated``
    before ``refresh_from`` given ``refresh_from`` as ``last_updated``; None when the chunk holds
    none. That version reads such a bucket as pending until then, as this one does, and as
    changed then; what it cannot keep is when the salt in effect until then took effect."""
    return _aligned(has_previous, last_updated, refresh_from, to_refresh_from=True)


def _aligned(
    has_previous: bytes, last_updated: bytes, refresh_from: bytes, *, to_refresh_from: bool
) -> bytes | None:
    """One of a chunk's time columns with the two times of every bucket that has a previous
    salt and ``last_updated < refresh_from`` made equal: ``last_updated`` raised to
    ``refresh_from`` when ``to_refresh_from``, else ``refresh_from`` lowered to ``last_updated``;
    None when no bucket is such."""
    updated = int64_column(last_updated)
    refresh = int64_column(refresh_from)
    if len(updated) != len(refresh) or len(has_previous) != _bitmap_size(len(updated)):
        raise SaltError("A salt chunk's columns disagree in length")
    column = updated if to_refresh_from else refresh
    changed = False
    for index, (at, until) in enumerate(zip(updated, refresh, strict=True)):
        if at < until and _bit(has_previous, index):
            column[index] = until if to_refresh_from else at
            changed = True
    return int64_bytes(column) if changed else None


def _bit(bitmap: bytes | bytearray, index: int) -> bool:
    return bool(bitmap[index >> 3] & (1 << (index & 7)))


def _bitmap_size(count: int) -> int:
    return (count + 7) // 8


def _check_bucket_count(count: int) -> None:
    if not 1 <= count <= MAX_BUCKET_COUNT:
        raise InvalidInput(f"The bucket count must be between 1 and {MAX_BUCKET_COUNT}")


def _check_chunk_size(chunk_size: int) -> None:
    if chunk_size <= 0 or chunk_size % 8:
        raise InvalidInput("The chunk size must be a positive multiple of 8")


# ------------------------------------------------------------------------------ the table


class SaltTable:
    """The salt buckets, the first-level salt and the bucket-id parameters. Immutable.

    Build one with ``generate_salt_table``, ``rotate`` or ``assemble``; the columns are private
    and never handed out, so a table shared by every request of a snapshot cannot change.
    """

    __slots__ = (
        "_last_updated",
        "_present",
        "_previous",
        "_refresh_from",
        "_salts",
        "first_level_salt",
        "id_prefix",
        "id_secret",
        "version",
    )

    def __init__(
        self,
        *,
        first_level_salt: str,
        id_prefix: str,
        id_secret: str,
        salts: bytes | bytearray,
        previous: bytes | bytearray,
        has_previous: bytes | bytearray,
        last_updated: array[int],
        refresh_from: array[int],
        version: int = 1,
    ) -> None:
        count = len(last_updated)
        _check_bucket_count(count)
        if len(salts) != count * SALT_SIZE or len(refresh_from) != count:
            raise SaltError("Salt columns disagree in length")
        if len(has_previous) != _bitmap_size(count):
            raise SaltError("The previous-salt bitmap does not match the bucket count")
        if len(previous) not in (0, count * SALT_SIZE):
            raise SaltError("Previous salts disagree in length")
        if not previous and any(has_previous):
            raise SaltError("Previous salts are flagged but absent")
        self.first_level_salt = first_level_salt
        self.id_prefix = id_prefix
        self.id_secret = id_secret
        self.version = version
        self._salts = salts
        self._previous = previous
        self._present = has_previous
        self._last_updated = last_updated
        self._refresh_from = refresh_from

    def __repr__(self) -> str:
        return f"SaltTable(buckets={self.bucket_count}, version={self.version})"

    __str__ = __repr__

    @property
    def bucket_count(self) -> int:
        return len(self._last_updated)

    # -------------------------------------------------------------------- derivations

    def first_level_hash(self, identity_hash: bytes) -> bytes:
        return first_level_hash(identity_hash, self.first_level_salt)

    def index_of(self, flh: bytes) -> int:
        return bucket_index(flh, self.bucket_count)

    def _check(self, index: int) -> None:
        if not 0 <= index < self.bucket_count:
            raise SaltError("No such salt bucket")

    def salt(self, index: int, now_ms: int) -> str:
        """The salt of a bucket in effect at ``now_ms``, as the derivations use it (standard
        base64): the stored previous salt while a rotation is pending (``now_ms`` before
        ``refresh_from``, with a previous salt to fall back on), else the current one.

        Token issuance reads this for every token: on every read but those of a rotated bucket
        before its midnight one comparison is the whole cost of the rule."""
        self._check(index)
        column = self._salts
        if now_ms < self._refresh_from[index] and _bit(self._present, index):
            column = self._previous
        return b64encode(bytes(column[index * SALT_SIZE : (index + 1) * SALT_SIZE]))

    def previous_salt(self, index: int, now_ms: int) -> str | None:
        """The salt in effect before the one in effect at ``now_ms``. None if there was none, and
        while a rotation is pending (the previous column then holds the salt in effect)."""
        self._check(index)
        if not _bit(self._present, index) or now_ms < self._refresh_from[index]:
            return None
        return b64encode(bytes(self._previous[index * SALT_SIZE : (index + 1) * SALT_SIZE]))

    def last_updated_ms(self, index: int) -> int:
        """The stored column: when the salt in effect before ``refresh_from`` took effect."""
        self._check(index)
        return self._last_updated[index]

    def refresh_from_ms(self, index: int) -> int:
        """The stored column: from when the bucket may rotate (a pending one: when it changes)."""
        self._check(index)
        return self._refresh_from[index]

    def bucket(self, index: int, now_ms: int) -> SaltBucket:
        """The bucket at ``index`` as the wire layer's value at ``now_ms``, made on demand."""
        self._check(index)
        return _bucket_at(
            index,
            now_ms,
            salt=self._salts[index * SALT_SIZE : (index + 1) * SALT_SIZE],
            previous=(
                self._previous[index * SALT_SIZE : (index + 1) * SALT_SIZE]
                if _bit(self._present, index)
                else None
            ),
            last_updated_ms=self._last_updated[index],
            refresh_from_ms=self._refresh_from[index],
        )

    def updated_since(self, since_ms: int, now_ms: int) -> Iterator[tuple[int, int]]:
        """``(index, last_updated_ms)`` of every bucket whose salt in effect at ``now_ms`` took
        effect at or after ``since_ms`` (a pending change is not reported before it happens; the
        change before it is), by index, one at a time: a listing of every bucket of a production
        table is a million pairs, which a caller writing them out need never hold at once.

        The time is ``_bucket_at``'s: ``refresh_from`` once it has passed, else ``last_updated``
        (which is at most ``refresh_from``, and in the future only where both are)."""
        pairs = enumerate(zip(self._last_updated, self._refresh_from, strict=True))
        for index, (updated, refresh_from) in pairs:
            if updated < since_ms and refresh_from < since_ms:  # most buckets of a sync
                continue
            if refresh_from > now_ms:
                at = updated
            else:
                at = refresh_from if refresh_from >= updated else updated
            if since_ms <= at <= now_ms:
                yield index, at

    # -------------------------------------------------------------------- chunks

    def chunk_count(self, chunk_size: int = DEFAULT_CHUNK_SIZE) -> int:
        _check_chunk_size(chunk_size)
        return -(-self.bucket_count // chunk_size)

    def chunk(self, number: int, chunk_size: int = DEFAULT_CHUNK_SIZE) -> SaltChunk:
        """Buckets ``[number*chunk_size, ...)`` in their stored layout."""
        if not 0 <= number < self.chunk_count(chunk_size):
            raise SaltError("No such salt chunk")
        start = number * chunk_size
        end = min(start + chunk_size, self.bucket_count)
        present = bytes(self._present[start >> 3 : _bitmap_size(end)])
        previous = b""
        if any(present):
            previous = bytes(self._previous[start * SALT_SIZE : end * SALT_SIZE])
        return SaltChunk(
            number=number,
            first_bucket=start,
            salts=bytes(self._salts[start * SALT_SIZE : end * SALT_SIZE]),
            previous=previous,
            has_previous=present,
            last_updated=int64_bytes(self._last_updated[start:end]),
            refresh_from=int64_bytes(self._refresh_from[start:end]),
        )


@dataclass(frozen=True, slots=True)
class SaltChunk:
    """Consecutive buckets in the stored layout (columns as bytes, int64 little-endian)."""

    number: int
    first_bucket: int
    salts: bytes = field(repr=False)
    previous: bytes = field(repr=False)
    has_previous: bytes
    last_updated: bytes
    refresh_from: bytes

    def __post_init__(self) -> None:
        count = len(self.salts) // SALT_SIZE
        if (
            count == 0
            or len(self.salts) != count * SALT_SIZE
            or len(self.previous) not in (0, count * SALT_SIZE)
            or len(self.has_previous) != _bitmap_size(count)
            or len(self.last_updated) != count * _I64
            or len(self.refresh_from) != count * _I64
        ):
            raise SaltError(f"Salt chunk {self.number} has inconsistent columns")
        if not self.previous and any(self.has_previous):
            raise SaltError(f"Salt chunk {self.number} flags previous salts it does not hold")

    @property
    def bucket_count(self) -> int:
        return len(self.salts) // SALT_SIZE

    def bucket(self, index: int, now_ms: int) -> SaltBucket:
        """One bucket of this chunk at ``now_ms``, by its table-wide index (no need to load the
        table); the same value as ``SaltTable.bucket``."""
        offset = index - self.first_bucket
        if not 0 <= offset < self.bucket_count:
            raise SaltError("The bucket is not in this chunk")
        salt = slice(offset * SALT_SIZE, (offset + 1) * SALT_SIZE)
        times = slice(offset * _I64, (offset + 1) * _I64)
        return _bucket_at(
            index,
            now_ms,
            salt=self.salts[salt],
            previous=self.previous[salt] if _bit(self.has_previous, offset) else None,
            last_updated_ms=int.from_bytes(self.last_updated[times], "little", signed=True),
            refresh_from_ms=int.from_bytes(self.refresh_from[times], "little", signed=True),
        )


def _bucket_at(
    index: int,
    now_ms: int,
    *,
    salt: bytes | bytearray,
    previous: bytes | bytearray | None,
    last_updated_ms: int,
    refresh_from_ms: int,
) -> SaltBucket:
    """A bucket's stored columns as the wire value at ``now_ms``.

    A pending bucket (``now_ms < refresh_from_ms``, with a previous salt) has the previous salt in
    effect, since ``last_updated_ms``, and no previous of its own. A bucket rotated by an earlier
    version stored the change's time in both columns and not the time its salt in effect took
    effect: while pending it reports ``last_updated_ms`` 0, "long ago", so the rules that read the
    field (a previous raw UID for 90 days after a change, the changes ``/v2/identity/buckets``
    lists) see no change before ``E``. Past ``refresh_from_ms`` the bucket reads as stored, updated
    at the later of its two times.
    """
    if previous is not None and now_ms < refresh_from_ms:
        return SaltBucket(
            index=index,
            last_updated_ms=last_updated_ms if last_updated_ms < refresh_from_ms else 0,
            current_salt=b64encode(bytes(previous)),
            refresh_from_ms=refresh_from_ms,
            previous_salt=None,
        )
    return SaltBucket(
        index=index,
        last_updated_ms=max(last_updated_ms, refresh_from_ms),
        current_salt=b64encode(bytes(salt)),
        refresh_from_ms=refresh_from_ms,
        previous_salt=None if previous is None else b64encode(bytes(previous)),
    )


# ------------------------------------------------------------------------- generation


def generate_salt_table(
    bucket_count: int, now_ms: int, random: RandomBytes, *, id_prefix: str = ""
) -> SaltTable:
    """A new table: fresh salts, a first-level salt and a bucket-id secret (32 random bytes each,
    as base64 text). Every bucket counts as updated now and may rotate from now on."""
    _check_bucket_count(bucket_count)
    if len(id_prefix) > MAX_ID_PREFIX or not id_prefix.isascii():
        raise InvalidInput(f"The bucket id prefix is at most {MAX_ID_PREFIX} ASCII characters")
    times = array("q", [now_ms]) * bucket_count
    return SaltTable(
        first_level_salt=b64encode(random(SECRET_SIZE)),
        id_prefix=id_prefix,
        id_secret=b64encode(random(SECRET_SIZE)),
        salts=random(SALT_SIZE * bucket_count),
        previous=b"",
        has_previous=bytes(_bitmap_size(bucket_count)),
        last_updated=times,
        refresh_from=array("q", times),
    )


def next_utc_midnight(now_ms: int) -> int:
    return (now_ms // DAY_MS + 1) * DAY_MS


SALT_ROTATION_LEAD_MS: Final = 3_600_000
"""The least time between a rotation and the midnight it takes effect at: one hour.

Writing a rotated production table (2^20 buckets) takes seconds, and each worker then has to
poll the store and load the table before it serves it. A rotation taking effect at a midnight
seconds away would reach the workers after that midnight: in between they would answer the old
raw UIDs with an ``r`` a day on, and once loaded list the change as made at a time before syncs
that never saw it. An hour covers the write and the reload many times over. Waiting longer costs
mappers nothing: their ``r`` told them to map again at the next midnight, and doing so then gives
the same raw UIDs with the later midnight as ``r``."""


def rotation_effective_at(now_ms: int) -> int:
    """When a rotation made at ``now_ms`` takes effect: the first UTC midnight after
    ``now_ms + SALT_ROTATION_LEAD_MS``."""
    return next_utc_midnight(now_ms + SALT_ROTATION_LEAD_MS)


class _Below:
    """Unbiased integers below a bound from a random byte source (rejection sampling)."""

    def __init__(self, random: RandomBytes) -> None:
        self._random = random

    def __call__(self, bound: int) -> int:
        bits = (bound - 1).bit_length()
        size = max(1, (bits + 7) // 8)
        mask = (1 << bits) - 1
        while True:
            value = int.from_bytes(self._random(size), "big") & mask
            if value < bound:
                return value


@dataclass(frozen=True, slots=True)
class SaltRotation:
    """A rotated table, the bucket indices that changed (ascending) and when their new salts take
    effect (epoch ms, a UTC midnight)."""

    table: SaltTable
    rotated: tuple[int, ...]
    effective_at_ms: int

    def touched_chunks(self, chunk_size: int = DEFAULT_CHUNK_SIZE) -> list[int]:
        _check_chunk_size(chunk_size)
        return sorted({index // chunk_size for index in self.rotated})


def rotate(table: SaltTable, fraction: float, now_ms: int, random: RandomBytes) -> SaltRotation:
    """Rotate ``round(fraction * bucket_count)`` buckets (at least one), picked uniformly among
    those whose ``refresh_from`` has passed; fewer if fewer are eligible.

    A rotated bucket keeps the salt in effect at ``now_ms`` as previous, with the time it took
    effect as ``last_updated``, and gets a fresh random salt that takes effect at ``E`` =
    ``rotation_effective_at(now_ms)``, the first UTC midnight more than ``SALT_ROTATION_LEAD_MS``
    away, its ``refresh_from``. Until ``E`` every read gives the salt it had (see the module
    docstring), so no raw UID changes before the time mappers were told to map again, nor before
    every worker has the table. The result is a new table one version on; ``table`` is left as it
    was (requests may still be reading it).
    """
    if not 0 < fraction <= 1:
        raise InvalidInput("The fraction of buckets to rotate must be in (0, 1]")
    count = table.bucket_count
    eligible = array("q", (i for i, r in enumerate(table._refresh_from) if r <= now_ms))
    wanted = min(max(1, round(fraction * count)), len(eligible))
    below = _Below(random)
    for position in range(wanted):  # partial Fisher-Yates: the first ``wanted`` are the sample
        pick = position + below(len(eligible) - position)
        eligible[position], eligible[pick] = eligible[pick], eligible[position]
    chosen = sorted(eligible[:wanted])

    salts = bytearray(table._salts)
    previous = bytearray(table._previous) if table._previous else bytearray(count * SALT_SIZE)
    present = bytearray(table._present)
    last_updated = array("q", table._last_updated)
    refresh_from = array("q", table._refresh_from)
    fresh = random(SALT_SIZE * wanted)
    effective = rotation_effective_at(now_ms)
    for n, index in enumerate(chosen):
        # Eligible, so not pending: the stored salt is in effect, since the later of the two
        # times (``_bucket_at``). A time at or past ``E`` (a table stamped by a clock ahead)
        # cannot be kept below ``refresh_from``; stored as ``E``, it reads as "long ago" until
        # then, as an earlier version's rotation does.
        in_effect_since = max(table._last_updated[index], table._refresh_from[index])
        at = index * SALT_SIZE
        previous[at : at + SALT_SIZE] = salts[at : at + SALT_SIZE]
        salts[at : at + SALT_SIZE] = fresh[n * SALT_SIZE : (n + 1) * SALT_SIZE]
        present[index >> 3] |= 1 << (index & 7)
        last_updated[index] = min(in_effect_since, effective)
        refresh_from[index] = effective
    rotated = SaltTable(
        first_level_salt=table.first_level_salt,
        id_prefix=table.id_prefix,
        id_secret=table.id_secret,
        salts=salts if chosen else table._salts,
        previous=previous if chosen else table._previous,
        has_previous=present,
        last_updated=last_updated,
        refresh_from=refresh_from,
        version=table.version + 1,
    )
    return SaltRotation(rotated, tuple(chosen), effective)


def assemble(
    *,
    bucket_count: int,
    chunk_size: int,
    chunks: Iterable[SaltChunk],
    first_level_salt: str,
    id_prefix: str,
    id_secret: str,
    version: int,
) -> SaltTable:
    """Put stored chunks (any order, each exactly once) back together into one table.

    Consumes ``chunks`` one at a time into preallocated columns, so loading a production table
    never holds a second copy of it.
    """
    _check_bucket_count(bucket_count)
    _check_chunk_size(chunk_size)
    expected = -(-bucket_count // chunk_size)
    salts = bytearray(bucket_count * SALT_SIZE)
    previous = bytearray()
    present = bytearray(_bitmap_size(bucket_count))
    last_updated = array("q", bytes(bucket_count * _I64))
    refresh_from = array("q", bytes(bucket_count * _I64))
    seen: set[int] = set()
    for chunk in chunks:
        start = chunk.number * chunk_size
        end = min(start + chunk_size, bucket_count)
        if chunk.number in seen or chunk.first_bucket != start or chunk.bucket_count != end - start:
            raise SaltError(f"Salt chunk {chunk.number} does not fit the table")
        seen.add(chunk.number)
        salts[start * SALT_SIZE : end * SALT_SIZE] = chunk.salts
        if chunk.previous:
            if not previous:
                previous = bytearray(bucket_count * SALT_SIZE)
            previous[start * SALT_SIZE : end * SALT_SIZE] = chunk.previous
            present[start >> 3 : _bitmap_size(end)] = chunk.has_previous
        last_updated[start:end] = int64_column(chunk.last_updated)
        refresh_from[start:end] = int64_column(chunk.refresh_from)
    if len(seen) != expected:
        raise SaltError(f"The salt table has {len(seen)} of its {expected} chunks")
    return SaltTable(
        first_level_salt=first_level_salt,
        id_prefix=id_prefix,
        id_secret=id_secret,
        salts=salts,
        previous=previous,
        has_previous=present,
        last_updated=last_updated,
        refresh_from=refresh_from,
        version=version,
    )


# ------------------------------------------------------------------------------ at rest


@dataclass(frozen=True, slots=True)
class SaltHeader:
    """The stored description of the table: size, layout, version and its sealed secrets."""

    bucket_count: int
    chunk_size: int
    id_prefix: str
    version: int
    created_at_ms: int
    updated_at_ms: int
    first_level_salt: SealedMaterial = field(repr=False)
    id_secret: SealedMaterial = field(repr=False)


@dataclass(frozen=True, slots=True)
class SealedSaltChunk:
    """A chunk as stored: the salts (current, then previous if any) sealed, the rest plain."""

    number: int
    first_bucket: int
    bucket_count: int
    salts: SealedMaterial = field(repr=False)
    has_previous: bytes
    last_updated: bytes
    refresh_from: bytes


def seal_header(
    keyring: Keyring,
    table: SaltTable,
    *,
    chunk_size: int,
    created_at_ms: int,
    updated_at_ms: int,
    random: RandomBytes,
) -> SaltHeader:
    _check_chunk_size(chunk_size)
    return SaltHeader(
        bucket_count=table.bucket_count,
        chunk_size=chunk_size,
        id_prefix=table.id_prefix,
        version=table.version,
        created_at_ms=created_at_ms,
        updated_at_ms=updated_at_ms,
        first_level_salt=seal_material(
            keyring, FIRST_LEVEL_SALT_LABEL, 0, table.first_level_salt.encode(), random
        ),
        id_secret=seal_material(keyring, ID_SECRET_LABEL, 0, table.id_secret.encode(), random),
    )


def open_header_secrets(keyring: Keyring, header: SaltHeader) -> tuple[str, str]:
    """``(first_level_salt, id_secret)`` in the clear."""
    try:
        first_level = open_material(keyring, FIRST_LEVEL_SALT_LABEL, 0, header.first_level_salt)
        id_secret = open_material(keyring, ID_SECRET_LABEL, 0, header.id_secret)
        return first_level.decode("ascii"), id_secret.decode("ascii")
    except UnicodeDecodeError:
        raise SaltError("A sealed salt secret is not text") from None


def seal_chunk(keyring: Keyring, chunk: SaltChunk, random: RandomBytes) -> SealedSaltChunk:
    return SealedSaltChunk(
        number=chunk.number,
        first_bucket=chunk.first_bucket,
        bucket_count=chunk.bucket_count,
        salts=seal_material(
            keyring, SALT_CHUNK_LABEL, chunk.number, chunk.salts + chunk.previous, random
        ),
        has_previous=chunk.has_previous,
        last_updated=chunk.last_updated,
        refresh_from=chunk.refresh_from,
    )


def open_chunk(keyring: Keyring, sealed: SealedSaltChunk) -> SaltChunk:
    plain = open_material(keyring, SALT_CHUNK_LABEL, sealed.number, sealed.salts)
    size = sealed.bucket_count * SALT_SIZE
    if len(plain) not in (size, 2 * size):
        raise SaltError(f"Salt chunk {sealed.number} holds the wrong number of salts")
    return SaltChunk(
        number=sealed.number,
        first_bucket=sealed.first_bucket,
        salts=plain[:size],
        previous=plain[size:],
        has_previous=sealed.has_previous,
        last_updated=sealed.last_updated,
        refresh_from=sealed.refresh_from,
    )
