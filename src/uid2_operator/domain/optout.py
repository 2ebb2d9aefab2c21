"""Opt-outs: records by first-level hash, the built-in test identities, the FLH rules (§7).

A person who opted out is recorded by the first-level hash of their identity (what every token
and map request derives first), with the time of the opt-out and, when it is known, the raw UID
they had then (``advertising_id``, standard base64, for ``/v2/optout/status``). Nothing here
holds an e-mail address or phone number: the input is hashed before a record is made.

A person who opts out again keeps one record, with the latest time (what lookups by hash
answer), the newest raw UID, and every raw UID of their earlier opt-outs, each with the time it
was first opted out: DSPs and advertisers still hold a raw UID from before a salt rotation (no
token or mapping is issued after an opt-out), so ``/v2/optout/status`` must go on answering for
it, and answers every raw UID with its earliest opt-out time, as the reference does.

Decisions, in order (operator-api §7.2-§7.3):

1. the "refresh opt-out" test identities are opted out at refresh and never anywhere else,
   whatever the records hold (a logout of one must not break the generate that the
   refresh scenario starts with);
2. the all-0xFF FLH and the "never opted out" test identities are never opted out;
3. a recorded FLH, the all-zero FLH and the "always opted out" test identities are opted out.

The records are indexed by ``OptOutIndex`` for the request path. Opt-outs only grow (the
reference service holds hundreds of millions) and arrive a few thousand at a time, so the index
is changed by the records that changed rather than rebuilt: its maps are ``LayeredMap``s, a
frozen base shared from one index to the next plus a small overlay of later changes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Final, Generic, TypeVar, overload

from uid2_operator.errors import InvalidInput
from uid2_operator.wire.identity import InputKind, hash_identity, normalize_email
from uid2_operator.wire.raw_uid import first_level_hash
from uid2_operator.wire.scope import IdentityType

FLH_SIZE: Final = 32
ALWAYS_OPTED_OUT_FLH: Final = bytes(FLH_SIZE)
NEVER_OPTED_OUT_FLH: Final = b"\xff" * FLH_SIZE
MAX_ADVERTISING_ID_LENGTH: Final = 64

ALWAYS_OPTED_OUT_EMAIL: Final = "optout@example.com"
ALWAYS_OPTED_OUT_PHONE: Final = "+00000000000"
REFRESH_OPTED_OUT_EMAIL: Final = "refresh-optout@example.com"
REFRESH_OPTED_OUT_PHONE: Final = "+00000000002"
NEVER_OPTED_OUT_EMAIL: Final = "validate@example.com"
NEVER_OPTED_OUT_PHONE: Final = "+12345678901"


MAX_EARLIER_ADVERTISING_IDS: Final = 32
"""How many raw UIDs besides the newest one a record keeps. A person's raw UID changes when their
salt bucket rotates (about once a year, at most once a day), and only an opt-out after that
records the new one; past this many, the raw UIDs first opted out longest ago are dropped. It
keeps what a stored record holds of them under 3 KB."""

AdvertisingIdTimes = tuple[tuple[str, int], ...]
"""(raw UID, time of its first opt-out in epoch ms) pairs, sorted by raw UID."""


def _is_advertising_id(value: object) -> bool:
    return (
        isinstance(value, str) and 0 < len(value) <= MAX_ADVERTISING_ID_LENGTH and value.isascii()
    )


@dataclass(frozen=True, slots=True)
class OptOutRecord:
    """One opt-out: the first-level hash, when (epoch ms), and the raw UID then, if known.

    A record merged from several opt-outs (``latest``) has the time of the latest one and the
    newest known raw UID; ``earlier_advertising_ids`` holds what these two leave out: each other
    raw UID the hash was opted out with, and the newest one when it was first opted out before
    ``timestamp_ms``, with the time of its first opt-out (at most ``timestamp_ms``), sorted by raw
    UID, at most ``MAX_EARLIER_ADVERTISING_IDS`` besides the newest. ``advertising_id_times``
    gives every raw UID with its earliest time.
    """

    first_level_hash: bytes = field(repr=False)
    timestamp_ms: int
    advertising_id: str | None = field(default=None, repr=False)
    earlier_advertising_ids: AdvertisingIdTimes = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if len(self.first_level_hash) != FLH_SIZE:
            raise InvalidInput(f"A first-level hash is {FLH_SIZE} bytes")
        if self.timestamp_ms < 0:
            raise InvalidInput("An opt-out time cannot be before 1970")
        if self.advertising_id is not None and not _is_advertising_id(self.advertising_id):
            raise InvalidInput("An advertising id is base64 text of a raw UID")
        if self.earlier_advertising_ids:
            self._check_earlier()

    def _check_earlier(self) -> None:
        earlier = self.earlier_advertising_ids
        newest = self.advertising_id
        if newest is None:
            raise InvalidInput("Earlier advertising ids come with the newest one")
        if not all(
            isinstance(pair, tuple)
            and len(pair) == 2
            and _is_advertising_id(pair[0])
            and type(pair[1]) is int
            and 0 <= pair[1] <= self.timestamp_ms
            for pair in earlier
        ):
            raise InvalidInput(
                "An earlier advertising id is a raw UID and a time before the latest"
            )
        ids = [ad_id for ad_id, _ in earlier]
        if ids != sorted(set(ids)):
            raise InvalidInput("Earlier advertising ids are sorted and given once")
        if len(ids) - (newest in ids) > MAX_EARLIER_ADVERTISING_IDS:
            raise InvalidInput(
                f"A record keeps at most {MAX_EARLIER_ADVERTISING_IDS} earlier advertising ids"
            )
        if dict(earlier).get(newest) == self.timestamp_ms:
            raise InvalidInput("The newest advertising id is earlier only if opted out before")

    def advertising_id_times(self) -> dict[str, int]:
        """Every raw UID this hash was opted out with, with the time of its first opt-out."""
        times = dict(self.earlier_advertising_ids)
        if self.advertising_id is not None:
            times.setdefault(self.advertising_id, self.timestamp_ms)
        return times


def merged_record(
    first_level_hash: bytes,
    timestamp_ms: int,
    advertising_id: str | None,
    times: Mapping[str, int],
) -> OptOutRecord:
    """The record of an FLH opted out last at ``timestamp_ms`` with ``advertising_id``, and with
    the raw UIDs of ``times`` (each with its first opt-out time, none after ``timestamp_ms``):
    past ``MAX_EARLIER_ADVERTISING_IDS`` besides the newest, those first opted out longest ago
    are dropped."""
    others = sorted((at, ad_id) for ad_id, at in times.items() if ad_id != advertising_id)
    kept = {ad_id: at for at, ad_id in others[max(0, len(others) - MAX_EARLIER_ADVERTISING_IDS) :]}
    if advertising_id is not None:
        first = times.get(advertising_id, timestamp_ms)
        if first < timestamp_ms:
            kept[advertising_id] = first
    return OptOutRecord(first_level_hash, timestamp_ms, advertising_id, tuple(sorted(kept.items())))


def latest(existing: OptOutRecord | None, new: OptOutRecord) -> OptOutRecord:
    """What a store keeps when an FLH opts out again: the later time (§7.2: lookups answer the
    latest), the newest known raw UID, and every raw UID of both with its earliest time."""
    if existing is None:
        return new
    later, earlier = (
        (new, existing) if new.timestamp_ms >= existing.timestamp_ms else (existing, new)
    )
    times = earlier.advertising_id_times()
    for ad_id, at in later.advertising_id_times().items():
        times[ad_id] = min(at, times.get(ad_id, at))
    return merged_record(
        later.first_level_hash,
        later.timestamp_ms,
        later.advertising_id or earlier.advertising_id,
        times,
    )


def identity_first_level_hash(kind: InputKind, value: object, first_level_salt: str) -> bytes:
    """The FLH of one identity input (email, phone, or their hashes), validated as requests are.

    Raises ``InvalidIdentifier`` (a WireError) for input a request would refuse.
    """
    return first_level_hash(kind.digest(value), first_level_salt)


# -------------------------------------------------------------------- built-in identities

BuiltInIdentity = tuple[IdentityType, bytes]


@dataclass(frozen=True, slots=True)
class BuiltInIdentities:
    """The built-in test identities of §7.3 as (type, FLH) pairs, for one first-level salt."""

    always: frozenset[BuiltInIdentity] = field(repr=False)
    at_refresh: frozenset[BuiltInIdentity] = field(repr=False)
    never: frozenset[BuiltInIdentity] = field(repr=False)


def _identity(kind: IdentityType, text: str, first_level_salt: str) -> BuiltInIdentity:
    normalised = normalize_email(text) if kind is IdentityType.EMAIL else text
    return kind, first_level_hash(hash_identity(normalised), first_level_salt)


def builtin_identities(first_level_salt: str) -> BuiltInIdentities:
    email, phone = IdentityType.EMAIL, IdentityType.PHONE

    def pair(email_text: str, phone_text: str) -> frozenset[BuiltInIdentity]:
        return frozenset(
            {
                _identity(email, email_text, first_level_salt),
                _identity(phone, phone_text, first_level_salt),
            }
        )

    return BuiltInIdentities(
        always=pair(ALWAYS_OPTED_OUT_EMAIL, ALWAYS_OPTED_OUT_PHONE),
        at_refresh=pair(REFRESH_OPTED_OUT_EMAIL, REFRESH_OPTED_OUT_PHONE),
        never=pair(NEVER_OPTED_OUT_EMAIL, NEVER_OPTED_OUT_PHONE),
    )


def is_opted_out(
    kind: IdentityType,
    flh: bytes,
    records: Mapping[bytes, int],
    builtins: BuiltInIdentities,
    *,
    at_refresh: bool = False,
) -> bool:
    """The decision of token generate and identity map (and, with ``at_refresh``, of refresh).

    ``records`` maps a first-level hash to its opt-out time (any value counts: §7.1, the time is
    no longer compared with the token's).
    """
    identity = (kind, flh)
    if identity in builtins.at_refresh:
        return at_refresh
    if flh == NEVER_OPTED_OUT_FLH or identity in builtins.never:
        return False
    return flh in records or flh == ALWAYS_OPTED_OUT_FLH or identity in builtins.always


# ------------------------------------------------------------------------------ the index

K = TypeVar("K", bytes, str)
V = TypeVar("V", int, str, AdvertisingIdTimes)
_T = TypeVar("_T")


class _Gone(Enum):
    """An overlay entry that hides its key in the base (the key was removed since the fold)."""

    GONE = 0


_GONE: Final = _Gone.GONE

FOLD_DIVISOR: Final = 16
"""An overlay is folded into its base once it holds more than a sixteenth of the base..."""
FOLD_MINIMUM: Final = 8192
"""...and more than this many entries (so a small index is not re-copied on every change)."""


class LayeredMap(Mapping[K, V], Generic[K, V]):
    """An immutable map made of a large frozen base and a small overlay of later changes.

    Opt-outs only grow, by a few thousand between two loads of a store that holds millions, and
    every load must hand the request path a new immutable map while the previous one may still
    be in use. Copying a dict of a million entries costs about 30 ms (and two of them a load);
    so a change copies only the overlay and leaves the base shared between the old map and the
    new one. Lookups stay two dict probes. When the overlay outgrows ``FOLD_DIVISOR`` of the base
    (and ``FOLD_MINIMUM``), ``updated`` folds it into a fresh base: one full copy, amortised over
    the many changes that filled the overlay, so each change costs what it adds and no more than
    a fixed fraction of the base. A removed key is a ``_GONE`` entry in the overlay until then.

    Neither dict is ever written after the map is made: whoever holds a map may read it from
    any thread while the next one is built.
    """

    __slots__ = ("_base", "_overlay", "_size")

    def __init__(
        self,
        base: dict[K, V] | None = None,
        overlay: dict[K, V | _Gone] | None = None,
        size: int | None = None,
    ) -> None:
        self._base: dict[K, V] = {} if base is None else base
        self._overlay: dict[K, V | _Gone] = {} if overlay is None else overlay
        self._size = len(self._base) if size is None else size

    def __getitem__(self, key: K) -> V:
        value = self._overlay.get(key)
        if value is None:
            return self._base[key]
        if value is _GONE:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        overlay = self._overlay
        if key in overlay:
            return overlay[key] is not _GONE
        return key in self._base

    @overload
    def get(self, key: K, /) -> V | None: ...
    @overload
    def get(self, key: K, /, default: V | _T) -> V | _T: ...
    def get(self, key: K, /, default: object = None) -> object:
        value = self._overlay.get(key)
        if value is None:
            return self._base.get(key, default)
        return default if value is _GONE else value

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[K]:
        overlay = self._overlay
        for key, value in overlay.items():
            if value is not _GONE:
                yield key
        for key in self._base:
            if key not in overlay:
                yield key

    @property
    def layer_sizes(self) -> tuple[int, int]:
        """``(base entries, overlay entries)``, removals included: what the next change copies."""
        return len(self._base), len(self._overlay)

    def updated(self, changes: Mapping[K, V | _Gone], *, fold: bool = True) -> LayeredMap[K, V]:
        """A new map with ``changes`` applied (``_GONE`` removes a key); this one is unchanged.

        ``fold=False`` never folds, so the cost is the overlay's size whatever the base's: for
        a caller on a latency-sensitive thread, which leaves the fold to the next ``updated``.
        """
        base = self._base
        overlay = dict(self._overlay)
        size = self._size
        for key, value in changes.items():
            present = key in self
            if value is _GONE:
                if key in base:
                    overlay[key] = _GONE
                else:
                    overlay.pop(key, None)
                size -= present
            else:
                overlay[key] = value
                size += not present
        if fold and len(overlay) > max(FOLD_MINIMUM, len(base) // FOLD_DIVISOR):
            return LayeredMap(_folded(base, overlay), None, size)
        return LayeredMap(base, overlay, size)


def _folded(base: dict[K, V], overlay: dict[K, V | _Gone]) -> dict[K, V]:
    if not base:  # a first build: the overlay (a fresh dict, never shared) holds no removal
        return {key: value for key, value in overlay.items() if not isinstance(value, _Gone)}
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, _Gone):
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


_NO_RAW_UID: Final[Mapping[bytes, str]] = {}
_NO_PAIRS: Final[Mapping[bytes, AdvertisingIdTimes]] = {}


@dataclass(frozen=True, slots=True)
class OptOutIndex:
    """Every opt-out record, indexed for the request path, and changed by the records that
    changed: iterating it gives the records back (rebuilt, by no particular order).

    - ``by_flh``: first-level hash -> its latest opt-out time (token generate, refresh, map);
    - ``by_advertising_id``: raw UID -> its earliest opt-out time (``/v2/optout/status``), for
      every raw UID of every record: the newest one and the earlier ones alike;
    - ``advertising_ids``: first-level hash -> its newest raw UID;
    - ``earlier_advertising_ids``: first-level hash -> its record's ``earlier_advertising_ids``,
      for the records that have some.

    A record that replaces another adds its raw UIDs; the raw UIDs of the record it replaces
    stay, since a record keeps them (``latest``), unless it no longer holds one (one dropped
    past ``MAX_EARLIER_ADVERTISING_IDS``), which is then taken out, as a full rebuild would.
    A raw UID is derived from its first-level hash, so two records never share one; were they
    to, the raw UID would answer with the time of the record written last.
    """

    by_flh: LayeredMap[bytes, int]
    by_advertising_id: LayeredMap[str, int]
    advertising_ids: LayeredMap[bytes, str]
    earlier_advertising_ids: LayeredMap[bytes, AdvertisingIdTimes]

    @classmethod
    def empty(cls) -> OptOutIndex:
        return cls(LayeredMap(), LayeredMap(), LayeredMap(), LayeredMap())

    @classmethod
    def of(cls, records: Iterable[OptOutRecord]) -> OptOutIndex:
        """The index of stored records (one per first-level hash)."""
        return cls.empty().replaced(records)

    def __len__(self) -> int:
        return len(self.by_flh)

    def __iter__(self) -> Iterator[OptOutRecord]:
        ads, earlier = self.advertising_ids, self.earlier_advertising_ids
        for flh, timestamp_ms in self.by_flh.items():
            yield OptOutRecord(flh, timestamp_ms, ads.get(flh), earlier.get(flh, ()))

    def record(self, flh: bytes) -> OptOutRecord | None:
        timestamp_ms = self.by_flh.get(flh)
        if timestamp_ms is None:
            return None
        earlier = self.earlier_advertising_ids.get(flh, ())
        return OptOutRecord(flh, timestamp_ms, self.advertising_ids.get(flh), earlier)

    def replaced(self, records: Iterable[OptOutRecord], *, fold: bool = True) -> OptOutIndex:
        """A new index where each record replaces the one of its first-level hash, as the store
        holds them now: the result equals ``of`` over the store's records whatever order the
        changes came in, which is what lets a reload read only what changed."""
        times: dict[bytes, int | _Gone] = {}
        ids: dict[str, int | _Gone] = {}
        newest: dict[bytes, str | _Gone] = {}
        earlier: dict[bytes, AdvertisingIdTimes | _Gone] = {}
        # A first build holds nothing yet: a plain dict's lookup is cheaper than a layered one's.
        current_newest: Callable[[bytes], str | None] = (
            self.advertising_ids.get if self.advertising_ids else _NO_RAW_UID.get
        )
        current_earlier: Callable[[bytes], AdvertisingIdTimes | None] = (
            self.earlier_advertising_ids.get if self.earlier_advertising_ids else _NO_PAIRS.get
        )
        for record in records:
            flh, ad_id, pairs = (
                record.first_level_hash,
                record.advertising_id,
                record.earlier_advertising_ids,
            )
            times[flh] = record.timestamp_ms
            old = newest[flh] if flh in newest else current_newest(flh)
            old_pairs = earlier[flh] if flh in earlier else current_earlier(flh)
            held = [i for i, _ in old_pairs] if isinstance(old_pairs, tuple) else []
            if isinstance(old, str) and old != ad_id:
                held.append(old)
            if held:  # raw UIDs of the record it replaces: those it no longer holds go
                kept = record.advertising_id_times()
                for old_id in held:
                    if old_id not in kept:
                        ids[old_id] = _GONE
            if pairs:
                ids.update(record.advertising_id_times())
            elif ad_id is not None:  # most records: one raw UID, first opted out at their time
                ids[ad_id] = record.timestamp_ms
            if ad_id is not None:
                newest[flh] = ad_id
            elif isinstance(old, str):
                newest[flh] = _GONE
            if pairs:
                earlier[flh] = pairs
            elif isinstance(old_pairs, tuple):
                earlier[flh] = _GONE
        if not times:  # nothing changed (a reload that read no opt-out): nothing to copy
            return self
        return OptOutIndex(
            self.by_flh.updated(times, fold=fold),
            self.by_advertising_id.updated(ids, fold=fold),
            self.advertising_ids.updated(newest, fold=fold),
            self.earlier_advertising_ids.updated(earlier, fold=fold),
        )

    def merged(self, records: Iterable[OptOutRecord], *, fold: bool = True) -> OptOutIndex:
        """A new index with new opt-outs added as a store keeps them (``latest``): what the
        store will hold once they are written, so a reload that reads them changes nothing."""
        pending: dict[bytes, OptOutRecord] = {}
        for record in records:
            flh = record.first_level_hash
            known = pending.get(flh) or self.record(flh)
            pending[flh] = latest(known, record)
        return self.replaced(pending.values(), fold=fold)
