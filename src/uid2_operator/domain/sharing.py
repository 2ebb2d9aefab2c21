"""Sharing permissions: who besides its owner may download a keyset's keys (operator-api §6.15).

Letting participant B download the keys of A's keyset lets B decrypt the UID2 tokens A produces;
nothing is sent. The reference stores this as ``allowed_sites``, where ``null`` means "every bidder"
and ``[]`` means "nobody else", so omitting a field in an admin request silently opens a keyset to
every DSP (credentials §h #20). Here the choice is explicit and three-way:

* ``OWNER_ONLY``: nobody but the owning site;
* ``BIDDERS``: every caller holding ``ID_READER`` (the reference's ``null``);
* ``LIST``: the named sites and/or every participant of the named types (never empty: an empty
  list would be the owner-only choice under another name).

The master keyset is readable by every caller, the refresh keyset by none, and a disabled keyset by
nobody, its owner included (the reference requires ``enabled`` for every non-master keyset).
Revoking a permission does not reach keys already downloaded, so
``revocation_requires_rotation`` tells the caller when the keyset's keys should be rotated.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from uid2_operator.domain.keysets import Keyset, SharingMode
from uid2_operator.domain.participants import ParticipantType
from uid2_operator.domain.roles import ClientRole
from uid2_operator.errors import InvalidInput
from uid2_operator.wire.keys import MASTER_KEYSET_ID, MAX_RESERVED_SITE_ID, REFRESH_KEYSET_ID

MAX_LISTED_SITES: Final = 10_000


@dataclass(frozen=True, slots=True)
class SharingPolicy:
    """One keyset's sharing choice. Only ``LIST`` names sites or types."""

    mode: SharingMode
    sites: frozenset[int] = field(default=frozenset())
    types: frozenset[ParticipantType] = field(default=frozenset())

    def __post_init__(self) -> None:
        if self.mode is not SharingMode.LIST and (self.sites or self.types):
            raise InvalidInput("Only a list sharing choice names sites or participant types")

    @property
    def sorted_sites(self) -> list[int]:
        return sorted(self.sites)

    @property
    def sorted_types(self) -> list[str]:
        return sorted(t.value for t in self.types)

    def to_json(self) -> dict[str, Any]:
        """The form shown by reads and written to audit rows (sites and types sorted)."""
        return {"mode": self.mode.value, "sites": self.sorted_sites, "types": self.sorted_types}


OWNER_ONLY: Final = SharingPolicy(SharingMode.OWNER_ONLY)
ALL_BIDDERS: Final = SharingPolicy(SharingMode.BIDDERS)


def check_mode_names(mode: str, names: bool) -> None:
    """Mode ``list`` names at least one site or participant type (``names``); the other modes
    none (an empty list names nothing). The rule the API declares for a sharing body and the
    command line's choices follow alike."""
    if mode == SharingMode.LIST.value and not names:
        raise InvalidInput("A sharing list names at least one site or participant type")
    if mode != SharingMode.LIST.value and names:
        raise InvalidInput(f"Sharing mode {mode} takes no sites or types")


def allow_list(
    owner_site_id: int,
    sites: Iterable[int] = (),
    types: Iterable[ParticipantType] = (),
) -> SharingPolicy:
    """A validated ``LIST`` choice: at least one site or type, no reserved site ids (0-2), not
    the owner itself (it always has access; listing it would suggest otherwise), duplicates
    folded."""
    site_set = frozenset(sites)
    type_set = frozenset(types)
    check_mode_names(SharingMode.LIST.value, bool(site_set or type_set))
    for site_id in site_set:
        if isinstance(site_id, bool) or not isinstance(site_id, int):
            raise InvalidInput("Site ids are integers")
        if site_id <= MAX_RESERVED_SITE_ID:
            raise InvalidInput(f"Site id {site_id} is reserved and cannot be given access")
    if owner_site_id in site_set:
        raise InvalidInput(f"Site {owner_site_id} owns the keyset; do not list it")
    if len(site_set) > MAX_LISTED_SITES:
        raise InvalidInput(f"A sharing list names at most {MAX_LISTED_SITES} sites")
    return SharingPolicy(SharingMode.LIST, site_set, type_set)


def parse_sharing(
    owner_site_id: int,
    mode: str,
    sites: Iterable[int] = (),
    types: Iterable[str] = (),
) -> SharingPolicy:
    """A sharing choice from names (API, CLI). The mode is required: nothing defaults to bidders."""
    try:
        chosen = SharingMode(mode)
    except ValueError:
        modes = ", ".join(m.value for m in SharingMode)
        raise InvalidInput(f"Unknown sharing mode; use one of {modes}") from None
    site_list = list(sites)
    type_names = list(types)
    if chosen is not SharingMode.LIST:
        check_mode_names(chosen.value, bool(site_list or type_names))
        return OWNER_ONLY if chosen is SharingMode.OWNER_ONLY else ALL_BIDDERS
    parsed_types: list[ParticipantType] = []
    for index, name in enumerate(type_names):
        try:
            parsed_types.append(ParticipantType(name.strip().lower()))
        except ValueError:
            known = ", ".join(t.value for t in ParticipantType)
            raise InvalidInput(
                f"Unknown participant type at types[{index}]; use one of {known}"
            ) from None
    return allow_list(owner_site_id, site_list, parsed_types)


def keyset_sharing(keyset: Keyset, types: Iterable[ParticipantType] = ()) -> SharingPolicy:
    """The policy of a stored keyset (its mode and sites, plus listed types kept beside it)."""
    if keyset.sharing is SharingMode.LIST:
        return SharingPolicy(SharingMode.LIST, keyset.allowed_sites, frozenset(types))
    return OWNER_ONLY if keyset.sharing is SharingMode.OWNER_ONLY else ALL_BIDDERS


# ------------------------------------------------------------------------------ access


@dataclass(frozen=True, slots=True)
class KeyReader:
    """Who asks for keys: the API key's site, its effective roles, its participant's type."""

    site_id: int
    roles: frozenset[ClientRole]
    participant_type: ParticipantType | None


def may_read_keyset(
    reader: KeyReader,
    *,
    keyset_id: int,
    owner_site_id: int,
    enabled: bool,
    sharing: SharingPolicy,
) -> bool:
    """Whether ``reader`` may download (and so decrypt with) the keys of this keyset.

    Master keyset: always. Refresh keyset: never (it is never published). Otherwise the keyset
    must be enabled, and then: the owner always; ``BIDDERS`` admits ``ID_READER`` callers;
    ``LIST`` admits listed sites and participants of listed types, whatever their roles (as the
    reference does for ``allowed_sites``); ``OWNER_ONLY`` nobody else.
    """
    if keyset_id == MASTER_KEYSET_ID:
        return True
    if keyset_id == REFRESH_KEYSET_ID or not enabled:
        return False
    if reader.site_id == owner_site_id:
        return True
    if sharing.mode is SharingMode.BIDDERS:
        return ClientRole.ID_READER in reader.roles
    if sharing.mode is SharingMode.LIST:
        return reader.site_id in sharing.sites or reader.participant_type in sharing.types
    return False


def may_read(reader: KeyReader, keyset: Keyset, sharing: SharingPolicy | None = None) -> bool:
    """``may_read_keyset`` for a stored keyset (``sharing`` defaults to the keyset's own)."""
    return may_read_keyset(
        reader,
        keyset_id=keyset.keyset_id,
        owner_site_id=keyset.site_id,
        enabled=keyset.enabled,
        sharing=keyset_sharing(keyset) if sharing is None else sharing,
    )


def revocation_requires_rotation(
    old: SharingPolicy,
    new: SharingPolicy,
    type_of: Callable[[int], ParticipantType | None] | None = None,
) -> bool:
    """Whether the change may have removed a reader, so the keyset's keys should be rotated.

    Keys already downloaded keep decrypting new tokens until they expire; only a rotation stops
    that. The answer errs towards ``True`` (a needless rotation costs little, a missed one leaks):
    leaving ``BIDDERS`` for anything else, or ``LIST`` for ``BIDDERS`` (listed sites need not hold
    ``ID_READER``), counts as removing someone. Between two lists, a dropped site counts unless
    ``type_of`` shows it still qualifies through a listed type; a dropped type always counts.
    """
    if old.mode is SharingMode.OWNER_ONLY or old == new:
        return False
    if old.mode is SharingMode.BIDDERS or new.mode is not SharingMode.LIST:
        return True
    if old.types - new.types:
        return True
    for site_id in old.sites - new.sites:
        kind = None if type_of is None else type_of(site_id)
        if kind is None or kind not in new.types:
            return True
    return False
