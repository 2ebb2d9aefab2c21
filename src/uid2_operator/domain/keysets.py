"""Keysets, encryption keys at rest, and the key rotation schedule (operator-api §5.6).

The service generates and rotates the keys that seal advertising tokens (master keyset -1 and the
publishers' site keysets), refresh tokens (keyset -2), and the fallback keyset of site 2 used for
publishers without a usable keyset of their own. Key ids are handed out by a store sequence: they
are globally unique, increase with every key, and are never reused, because an SDK that sees one
id with two different secrets raises instead of answering (sdk-compat §6.11).

Times: key records use epoch **seconds** (``created``/``activates``/``expires``, as the wire layer
and the key endpoints do); every "now" is epoch **milliseconds**.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import pairwise
from typing import Final, Protocol, TypeVar

from uid2_operator.domain.material_sealing import (
    ENCRYPTION_KEY_LABEL,
    SealedMaterial,
    open_material,
    seal_material,
)
from uid2_operator.domain.participants import ParticipantType
from uid2_operator.domain.roles import ClientRole
from uid2_operator.domain.sealing import Keyring
from uid2_operator.errors import InvalidInput, SealedSecretUnreadable
from uid2_operator.wire.aead import KEY_SIZE, RandomBytes
from uid2_operator.wire.keys import (
    FALLBACK_PUBLISHER_KEYSET_ID,
    FALLBACK_PUBLISHER_SITE_ID,
    MASTER_KEYSET_ID,
    MASTER_KEYSET_ID_IN_KEY_JSON,
    MASTER_SITE_ID,
    MAX_RESERVED_SITE_ID,
    REFRESH_KEYSET_ID,
    REFRESH_SITE_ID,
    EncryptionKey,
)

HOUR_S: Final = 3_600
DAY_S: Final = 86_400
MAX_KEYSET_NAME: Final = 200
LAST_RESERVED_KEYSET_ID: Final = 3
"""Keyset ids up to 3 are kept for the service's own keysets; site keysets start above."""
MAX_KEYSET_ID: Final = MASTER_KEYSET_ID_IN_KEY_JSON - 1
"""Keyset ids must stay below the stand-in the key endpoints publish for the master keyset."""


class SharingMode(StrEnum):
    """Who besides the owning site may download a keyset's keys (operator-api §6.15).

    ``OWNER_ONLY`` is the reference's empty ``allowed_sites`` list, ``BIDDERS`` its
    ``allowed_sites: null`` (every ID_READER caller, i.e. every DSP), ``LIST`` names the sites.
    """

    OWNER_ONLY = "owner_only"
    BIDDERS = "bidders"
    LIST = "list"


@dataclass(frozen=True, slots=True)
class Keyset:
    """A set of keys owned by one site. ``is_default``: the site's keyset for new tokens.

    ``sharing`` and ``allowed_sites`` are the stored mode and sites. The participant types a list
    may name live only in the keyset's ``domain.sharing.SharingPolicy``, which is why the
    operator's snapshot keeps that policy beside each keyset rather than a keyset type of its own.
    """

    keyset_id: int
    site_id: int
    name: str
    enabled: bool
    is_default: bool
    created_at_ms: int
    sharing: SharingMode = SharingMode.OWNER_ONLY
    allowed_sites: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        if len(self.name) > MAX_KEYSET_NAME:
            raise InvalidInput(f"A keyset name is at most {MAX_KEYSET_NAME} characters")
        if self.allowed_sites and self.sharing is not SharingMode.LIST:
            raise InvalidInput("Only a keyset shared with a list of sites names sites")


def reserved_keysets(now_ms: int) -> tuple[Keyset, ...]:
    """The service's own keysets: master (-1), refresh (-2) and the fallback publisher (2).

    The fallback keyset is shared with bidders: tokens minted with it must open in the bid stream
    like any publisher's. The refresh keyset is never published (the key endpoints skip it), and
    the master keyset is visible to every caller by rule, so their sharing mode is moot.
    """
    return (
        Keyset(MASTER_KEYSET_ID, MASTER_SITE_ID, "Master", True, True, now_ms),
        Keyset(REFRESH_KEYSET_ID, REFRESH_SITE_ID, "Refresh", True, True, now_ms),
        Keyset(
            FALLBACK_PUBLISHER_KEYSET_ID,
            FALLBACK_PUBLISHER_SITE_ID,
            "Fallback publisher",
            True,
            True,
            now_ms,
            sharing=SharingMode.BIDDERS,
        ),
    )


def next_keyset_id(existing: Iterable[int]) -> int:
    """One above the highest keyset id in use, and never one of the reserved ids."""
    candidate = max([LAST_RESERVED_KEYSET_ID, *existing]) + 1
    if candidate > MAX_KEYSET_ID:
        raise InvalidInput("No keyset id is left")
    return candidate


def new_keyset_sharing(
    participant_type: ParticipantType, roles: Iterable[ClientRole]
) -> SharingMode:
    """The sharing a participant's default keyset is created with, from the participant's type
    and the roles it may grant its keys (``Participant.allowed_roles``).

    ``BIDDERS`` for a publisher and for any participant holding GENERATOR: its tokens go into the
    bid stream, where every DSP must open them (the reference's ``allowed_sites: null``). A
    publisher's tokens do whether it holds GENERATOR or not: client-side token generation needs
    no role, only a keypair, and the reference creates the keyset of a participant's first
    keypair with that sharing. ``OWNER_ONLY`` for any other (an advertiser or data provider that
    shares raw UIDs, a DSP): nobody else reads its keys until a sharing change names them (the
    reference's ``allowed_sites: []``).

    Only the creation follows the type and roles: a keyset keeps its sharing when they change
    later (an administrator changes it).
    """
    if participant_type is ParticipantType.PUBLISHER or ClientRole.GENERATOR in set(roles):
        return SharingMode.BIDDERS
    return SharingMode.OWNER_ONLY


def new_site_keyset(
    keyset_id: int,
    site_id: int,
    now_ms: int,
    name: str | None = None,
    *,
    sharing: SharingMode = SharingMode.BIDDERS,
) -> Keyset:
    """A participant's default keyset, shared as ``sharing`` says.

    The service creates it with ``new_keyset_sharing`` of the participant's type and roles; the
    default is that of a publisher. Changing it is a sharing decision made later.
    """
    if site_id <= MAX_RESERVED_SITE_ID:
        raise InvalidInput(f"Site id {site_id} is reserved and cannot own a keyset")
    if keyset_id <= LAST_RESERVED_KEYSET_ID or keyset_id > MAX_KEYSET_ID:
        raise InvalidInput(f"Keyset id {keyset_id} is reserved")
    return Keyset(
        keyset_id=keyset_id,
        site_id=site_id,
        name=f"Site {site_id}" if name is None else name,
        enabled=True,
        is_default=True,
        created_at_ms=now_ms,
        sharing=sharing,
    )


def site_default_keyset(keysets: Iterable[Keyset], site_id: int) -> Keyset | None:
    """The site's default keyset, enabled or not (a disabled one is an administrator's choice
    and is not silently replaced). More than one is refused: the choice would be arbitrary."""
    found = [k for k in keysets if k.site_id == site_id and k.is_default]
    if len(found) > 1:
        raise InvalidInput(f"Site {site_id} has more than one default keyset")
    return found[0] if found else None


# ------------------------------------------------------------------------------ rotation


@dataclass(frozen=True, slots=True)
class KeyPolicy:
    """How long keys live and how early successors are made (seconds).

    ``renew_before_s``: once a keyset's unbroken coverage by active keys (``coverage_span``) ends
    this soon, a successor is created; it activates ``activation_lead_s`` later, so caches that
    poll the key endpoints have fetched it before tokens are minted with it, and it is active
    before the old key expires as long as rotation runs at least every
    ``renew_before_s - activation_lead_s``.
    """

    lifetime_s: int = 30 * DAY_S
    activation_lead_s: int = HOUR_S
    renew_before_s: int = 7 * DAY_S

    def __post_init__(self) -> None:
        if not 0 < self.activation_lead_s < self.renew_before_s < self.lifetime_s:
            raise InvalidInput("Key policy needs 0 < activation lead < renew before < lifetime")

    @property
    def run_interval_s(self) -> int:
        """The longest gap between two rotation runs that still leaves no key gap."""
        return self.renew_before_s - self.activation_lead_s


class KeyTimes(Protocol):
    """What the schedule reads of a key: ``EncryptionKey`` and ``SealedKey`` both qualify, so
    planning never needs a key's secret."""

    @property
    def id(self) -> int: ...

    @property
    def keyset_id(self) -> int: ...

    @property
    def activates(self) -> int: ...

    @property
    def expires(self) -> int: ...


_K = TypeVar("_K", bound=KeyTimes)


@dataclass(frozen=True, slots=True)
class PlannedKey:
    """A key the schedule wants created (seconds); the store gives it an id."""

    keyset_id: int
    created: int
    activates: int
    expires: int


def coverage_span(keys: Iterable[KeyTimes], at_s: int) -> tuple[int, int] | None:
    """The unbroken stretch of time around ``at_s`` (epoch seconds) during which some key of
    ``keys`` is active, as ``[start, end)``; None when none is active at ``at_s``.

    A key is active from ``activates`` (included) to ``expires`` (excluded), as ``active_key``
    decides, so two keys where one activates the second the other expires leave no gap. The
    keys are walked by activation from ``at_s`` on for the end, and by expiry back from it for
    the start: a key that activates only after a gap never extends the stretch, however late
    it expires.
    """
    ordered = sorted(keys, key=lambda k: k.activates)
    end = at_s
    for key in ordered:
        if key.activates > end:
            break
        end = max(end, key.expires)
    if end == at_s:
        return None
    start = at_s
    for key in sorted(ordered, key=lambda k: k.expires, reverse=True):
        if key.expires < start:
            break
        start = min(start, key.activates)
    return start, end


def _keys_by_keyset(keys: Iterable[_K]) -> dict[int, list[_K]]:
    by_keyset: dict[int, list[_K]] = {}
    for key in keys:
        by_keyset.setdefault(key.keyset_id, []).append(key)
    return by_keyset


def plan_rotation(
    keysets: Iterable[Keyset],
    keys: Iterable[KeyTimes],
    now_ms: int,
    policy: KeyPolicy,
) -> list[PlannedKey]:
    """The keys to create now, at most one per enabled keyset, in keyset id order.

    What counts is a keyset's coverage from now on (``coverage_span``): how long some key of
    it stays active without a break. A keyset with no key active now gets one active
    immediately (nothing else could serve it), whatever keys it has that activate later (a
    run on a clock that was ahead makes such keys). Otherwise, when its coverage ends
    ``renew_before_s`` or less from now, a successor activates ``activation_lead_s`` from
    now, or when the coverage ends if that comes first, so coverage never has a gap. A key
    that only activates after a gap in the coverage does not put off the renewal.
    """
    now_s = now_ms // 1000
    by_keyset = _keys_by_keyset(keys)
    planned: list[PlannedKey] = []
    for keyset in sorted(keysets, key=lambda k: k.keyset_id):
        if not keyset.enabled:
            continue
        span = coverage_span(by_keyset.get(keyset.keyset_id, ()), now_s)
        if span is None:
            activates = now_s
        else:
            coverage_end = span[1]
            if coverage_end - now_s > policy.renew_before_s:
                continue
            activates = min(now_s + policy.activation_lead_s, coverage_end)
        planned.append(
            PlannedKey(keyset.keyset_id, now_s, activates, activates + policy.lifetime_s)
        )
    return planned


_EARLIEST_MS: Final = -(1 << 63)
_LATEST_MS: Final = 1 << 63


@dataclass(frozen=True, slots=True)
class Coverage:
    """``[start_ms, end_ms)``: while the clock reads a time in there, every enabled keyset has
    an active key (``key_coverage_ms``)."""

    start_ms: int
    end_ms: int

    def covers(self, now_ms: int) -> bool:
        return self.start_ms <= now_ms < self.end_ms


def key_coverage_ms(keysets: Iterable[Keyset], keys: Iterable[KeyTimes], now_ms: int) -> Coverage:
    """The stretch of time around ``now_ms`` during which every enabled keyset has an active
    key, in epoch milliseconds (``Coverage``): the intersection of each keyset's
    ``coverage_span``. Empty (``start_ms == end_ms == now_ms``) when some enabled keyset has
    no key active at ``now_ms``; unbounded when there is no enabled keyset."""
    by_keyset = _keys_by_keyset(keys)
    now_s = now_ms // 1000
    start_ms, end_ms = _EARLIEST_MS, _LATEST_MS
    for keyset in keysets:
        if not keyset.enabled:
            continue
        span = coverage_span(by_keyset.get(keyset.keyset_id, ()), now_s)
        if span is None:
            return Coverage(now_ms, now_ms)
        start_ms = max(start_ms, span[0] * 1000)
        end_ms = min(end_ms, span[1] * 1000)
    return Coverage(start_ms, end_ms)


KEY_RETENTION_MARGIN_S: Final = DAY_S
"""What the expired key retention adds to the longest token lifetime: a day for clocks that
disagree and for caches (SDKs, workers) that see a key's expiry late."""


def purge_retention_s(configured_s: int, recorded_lifetime_s: int | None) -> int:
    """The retention a purge uses: the one configured, or the longest token lifetime the store
    has recorded for any serve (``recorded_lifetime_s``, None when none was recorded) plus
    ``KEY_RETENTION_MARGIN_S``, whichever is longer. A process whose own lifetime settings are
    shorter than those a serve issued tokens with so never deletes a key those tokens need."""
    if recorded_lifetime_s is None:
        return configured_s
    return max(configured_s, recorded_lifetime_s + KEY_RETENTION_MARGIN_S)


def plan_purge(keys: Iterable[_K], now_ms: int, retention_s: int) -> list[_K]:
    """The keys nothing can still need at ``now_ms``, by key id: those whose expiry lies
    ``retention_s`` or more in the past (``(expires + retention_s) * 1000 <= now_ms``).

    A token is decrypted with the keys it was sealed with until its own expiry, and the last
    token sealed with a key may be made just before the key expires; so the retention must be
    at least the longest token lifetime (the settings add a margin). A negative retention is
    refused, so a key that has not expired is never chosen. Every keyset follows the same rule,
    a disabled one included: this looks at the keys' times only.
    """
    if isinstance(retention_s, bool) or not isinstance(retention_s, int) or retention_s < 0:
        raise InvalidInput("The expired key retention must be a whole number of seconds, >= 0")
    chosen = [key for key in keys if (key.expires + retention_s) * 1000 <= now_ms]
    return sorted(chosen, key=lambda k: k.id)


def mint_keys(
    plans: Sequence[PlannedKey], ids: Sequence[int], random: RandomBytes
) -> list[EncryptionKey]:
    """Turn plans into keys with the store-issued ``ids`` (positive, strictly increasing) and
    fresh 32-byte secrets drawn from ``random``."""
    if len(ids) != len(plans):
        raise ValueError("one key id per planned key")
    if any(i <= 0 for i in ids) or any(b <= a for a, b in pairwise(ids)):
        raise ValueError("key ids must be positive and strictly increasing")
    return [
        EncryptionKey(
            id=key_id,
            keyset_id=plan.keyset_id,
            created=plan.created,
            activates=plan.activates,
            expires=plan.expires,
            secret=random(KEY_SIZE),
        )
        for plan, key_id in zip(plans, ids, strict=True)
    ]


# ------------------------------------------------------------------------------ at rest


@dataclass(frozen=True, slots=True)
class SealedKey:
    """An encryption key as stored: its times (seconds) and its sealed secret."""

    id: int
    keyset_id: int
    created: int
    activates: int
    expires: int
    secret: SealedMaterial = field(repr=False)


def seal_key(keyring: Keyring, key: EncryptionKey, random: RandomBytes) -> SealedKey:
    """Seal the key's secret under the active KEK, bound to the key id."""
    return SealedKey(
        id=key.id,
        keyset_id=key.keyset_id,
        created=key.created,
        activates=key.activates,
        expires=key.expires,
        secret=seal_material(keyring, ENCRYPTION_KEY_LABEL, key.id, key.secret, random),
    )


def open_key(keyring: Keyring, sealed: SealedKey) -> EncryptionKey:
    """The key with its secret in the clear (for the in-memory snapshot only)."""
    secret = open_material(keyring, ENCRYPTION_KEY_LABEL, sealed.id, sealed.secret)
    if len(secret) != KEY_SIZE:
        raise SealedSecretUnreadable(f"The sealed encryption key {sealed.id} is not a key")
    return EncryptionKey(
        id=sealed.id,
        keyset_id=sealed.keyset_id,
        created=sealed.created,
        activates=sealed.activates,
        expires=sealed.expires,
        secret=secret,
    )
