"""Sharing permissions: the explicit three-way choice, its validation, the access rule, rotation."""

from __future__ import annotations

import pytest
from domain_randomness import T0

from uid2_operator.domain.keysets import Keyset, SharingMode, reserved_keysets
from uid2_operator.domain.participants import ParticipantType
from uid2_operator.domain.roles import ClientRole
from uid2_operator.domain.sharing import (
    ALL_BIDDERS,
    OWNER_ONLY,
    KeyReader,
    SharingPolicy,
    allow_list,
    keyset_sharing,
    may_read,
    may_read_keyset,
    parse_sharing,
    revocation_requires_rotation,
)
from uid2_operator.errors import InvalidInput

OWNER = 1001
DSP = KeyReader(2001, frozenset({ClientRole.ID_READER}), ParticipantType.DSP)
ADVERTISER = KeyReader(3001, frozenset({ClientRole.SHARER}), ParticipantType.ADVERTISER)
OWNER_READER = KeyReader(OWNER, frozenset({ClientRole.SHARER}), ParticipantType.PUBLISHER)
NO_TYPE = KeyReader(4001, frozenset({ClientRole.ID_READER}), None)


def keyset(
    sharing: SharingMode = SharingMode.OWNER_ONLY,
    sites: frozenset[int] = frozenset(),
    *,
    enabled: bool = True,
) -> Keyset:
    return Keyset(10, OWNER, "k", enabled, True, T0, sharing, sites)


# ------------------------------------------------------------------------------ the choice


def test_allow_list_validation() -> None:
    policy = allow_list(OWNER, [2001, 2001, 3001], [ParticipantType.DSP, ParticipantType.DSP])
    assert policy.sites == frozenset({2001, 3001})
    assert policy.to_json() == {"mode": "list", "sites": [2001, 3001], "types": ["dsp"]}
    assert allow_list(OWNER, types=[ParticipantType.DSP]).sorted_sites == []
    with pytest.raises(InvalidInput, match="at least one"):
        allow_list(OWNER)
    with pytest.raises(InvalidInput, match="owns the keyset"):
        allow_list(OWNER, [OWNER])
    for reserved in (-1, 0, 2):
        with pytest.raises(InvalidInput, match="reserved"):
            allow_list(OWNER, [reserved])
    with pytest.raises(InvalidInput, match="integers"):
        allow_list(OWNER, [True])
    with pytest.raises(InvalidInput, match="integers"):
        allow_list(OWNER, ["2001"])  # type: ignore[list-item]
    with pytest.raises(InvalidInput, match="at most"):
        allow_list(OWNER, range(2000, 12_001))


def test_only_lists_name_sites() -> None:
    with pytest.raises(InvalidInput, match="Only a list"):
        SharingPolicy(SharingMode.BIDDERS, frozenset({5}))
    with pytest.raises(InvalidInput, match="Only a list"):
        SharingPolicy(SharingMode.OWNER_ONLY, types=frozenset({ParticipantType.DSP}))
    assert OWNER_ONLY.to_json() == {"mode": "owner_only", "sites": [], "types": []}
    assert ALL_BIDDERS.to_json() == {"mode": "bidders", "sites": [], "types": []}


def test_parse_sharing() -> None:
    assert parse_sharing(OWNER, "owner_only") is OWNER_ONLY
    assert parse_sharing(OWNER, "bidders") is ALL_BIDDERS
    listed = parse_sharing(OWNER, "list", [2001], [" DSP ", "data_provider"])
    assert listed.types == frozenset({ParticipantType.DSP, ParticipantType.DATA_PROVIDER})
    with pytest.raises(InvalidInput, match="Unknown sharing mode"):
        parse_sharing(OWNER, "")
    with pytest.raises(InvalidInput, match="takes no sites"):
        parse_sharing(OWNER, "bidders", [2001])
    with pytest.raises(InvalidInput, match="takes no sites"):
        parse_sharing(OWNER, "owner_only", types=["dsp"])
    with pytest.raises(InvalidInput, match="Unknown participant type"):
        parse_sharing(OWNER, "list", types=["bank"])
    with pytest.raises(InvalidInput, match="at least one"):
        parse_sharing(OWNER, "list")


def test_a_refused_mode_or_type_is_named_by_its_place_never_repeated() -> None:
    """What was pasted where a mode or type goes may be a credential: the refusal names the
    field and what would be accepted, never the value."""
    pasted = "UID2-C-L-3-abcDEF." + "x" * 24
    with pytest.raises(InvalidInput) as mode:
        parse_sharing(OWNER, pasted)
    assert str(mode.value) == "Unknown sharing mode; use one of owner_only, bidders, list"
    with pytest.raises(InvalidInput) as kind:
        parse_sharing(OWNER, "list", [2001], ["dsp", pasted])
    assert str(kind.value).startswith("Unknown participant type at types[1]; use one of ")
    for refused in (mode.value, kind.value):
        assert pasted not in str(refused)
        assert "abcDEF" not in str(refused)


def test_keyset_sharing_reads_the_stored_record() -> None:
    assert keyset_sharing(keyset()) is OWNER_ONLY
    assert keyset_sharing(keyset(SharingMode.BIDDERS)) is ALL_BIDDERS
    listed = keyset_sharing(keyset(SharingMode.LIST, frozenset({2001})), [ParticipantType.DSP])
    assert listed == SharingPolicy(
        SharingMode.LIST, frozenset({2001}), frozenset({ParticipantType.DSP})
    )


# ------------------------------------------------------------------------------ access rule


@pytest.mark.parametrize(
    ("policy", "dsp", "advertiser", "untyped_bidder"),
    [
        (OWNER_ONLY, False, False, False),
        (ALL_BIDDERS, True, False, True),
        (allow_list(OWNER, [3001]), False, True, False),
        (allow_list(OWNER, types=[ParticipantType.DSP]), True, False, False),
        (allow_list(OWNER, [4001], [ParticipantType.ADVERTISER]), False, True, True),
    ],
)
def test_who_may_read(
    policy: SharingPolicy, dsp: bool, advertiser: bool, untyped_bidder: bool
) -> None:
    def check(reader: KeyReader) -> bool:
        return may_read_keyset(
            reader, keyset_id=10, owner_site_id=OWNER, enabled=True, sharing=policy
        )

    assert (check(DSP), check(ADVERTISER), check(NO_TYPE)) == (dsp, advertiser, untyped_bidder)
    assert check(OWNER_READER)


def test_reserved_and_disabled_keysets() -> None:
    master, refresh, fallback = reserved_keysets(T0)
    for reader in (DSP, ADVERTISER, OWNER_READER):
        assert may_read(reader, master)
        assert not may_read(reader, refresh)
    assert may_read(DSP, fallback)
    assert not may_read(ADVERTISER, fallback)
    # Disabled: nobody, the owner included (the master keyset is the only exception).
    assert not may_read(OWNER_READER, keyset(SharingMode.BIDDERS, enabled=False))
    assert not may_read(DSP, keyset(SharingMode.BIDDERS, enabled=False))


def test_may_read_takes_an_explicit_policy_over_the_record() -> None:
    record = keyset(SharingMode.LIST, frozenset({3001}))
    assert may_read(ADVERTISER, record)
    assert not may_read(DSP, record)
    assert may_read(DSP, record, allow_list(OWNER, types=[ParticipantType.DSP]))


def test_owner_only_is_not_bidders() -> None:
    # The reference's null-versus-empty ambiguity: here the two can never be confused.
    assert OWNER_ONLY != ALL_BIDDERS
    assert not may_read(DSP, keyset(SharingMode.OWNER_ONLY))
    assert may_read(DSP, keyset(SharingMode.BIDDERS))


# ----------------------------------------------------------------------------------- rotation


def test_revocation_requires_rotation() -> None:
    listed = allow_list(OWNER, [2001, 3001], [ParticipantType.DSP])
    fewer_sites = allow_list(OWNER, [2001], [ParticipantType.DSP])
    more = allow_list(OWNER, [2001, 3001, 4001], [ParticipantType.DSP, ParticipantType.ADVERTISER])
    fewer_types = allow_list(OWNER, [2001, 3001])
    cases = [
        (OWNER_ONLY, ALL_BIDDERS, False),
        (OWNER_ONLY, listed, False),
        (ALL_BIDDERS, ALL_BIDDERS, False),
        (ALL_BIDDERS, OWNER_ONLY, True),
        (ALL_BIDDERS, listed, True),
        (listed, OWNER_ONLY, True),
        (listed, ALL_BIDDERS, True),
        (listed, listed, False),
        (listed, more, False),
        (listed, fewer_sites, True),
        (listed, fewer_types, True),
    ]
    for old, new, expected in cases:
        assert revocation_requires_rotation(old, new) is expected, (old, new)


def test_dropped_site_still_covered_by_a_type() -> None:
    old = allow_list(OWNER, [2001, 3001], [ParticipantType.DSP])
    new = allow_list(OWNER, [3001], [ParticipantType.DSP])
    types = {2001: ParticipantType.DSP, 3001: ParticipantType.ADVERTISER}
    assert not revocation_requires_rotation(old, new, types.get)
    assert revocation_requires_rotation(old, new, lambda _site: None)
    no_dsp = allow_list(OWNER, [2001], [ParticipantType.DSP])
    assert revocation_requires_rotation(old, no_dsp, types.get)
