"""The snapshot's salts and keyset visibility, the replay cache and the error table."""

from __future__ import annotations

import hashlib
import sys

import pytest

from uid2_operator.domain.keysets import Keyset, SharingMode
from uid2_operator.domain.participants import ParticipantType
from uid2_operator.domain.roles import ClientRole
from uid2_operator.domain.salts import SaltTable, generate_salt_table, rotate, rotation_effective_at
from uid2_operator.domain.sharing import SharingPolicy, allow_list
from uid2_operator.errors import (
    BodyTooLarge,
    CredentialRejected,
    ExpiredTokenPresented,
    InvalidClientSite,
    InvalidIdentifier,
    NoActiveKey,
    RefreshFailed,
    StaleTimestamp,
    StoreUnavailable,
)
from uid2_operator.services.replay import SLICE_MS, ReplayCache
from uid2_operator.services.snapshot import (
    Lifetimes,
    OperatorIdentity,
    SiteData,
    Snapshot,
    build_snapshot,
)
from uid2_operator.web.operator_api.errors import render
from uid2_operator.wire.aead import RandomBytes
from uid2_operator.wire.keys import EncryptionKey

T0 = 1_700_000_000_000


def _random(label: bytes) -> RandomBytes:
    draws = iter(range(1_000_000))
    return lambda n: hashlib.shake_256(label + b" %d" % next(draws)).digest(n)


def _table(count: int) -> SaltTable:
    random = _random(b"salts")
    return rotate(generate_salt_table(count, T0, random), 1.0, T0, random).table


def test_the_snapshot_salts_cost_about_80_bytes_a_bucket() -> None:
    """Every bucket holding a previous salt too: two raw salts, two int64s, a bit of flag."""
    table = _table(4096)
    columns = sum(
        sys.getsizeof(getattr(table, name))
        for name in ("_salts", "_previous", "_present", "_last_updated", "_refresh_from")
    )
    effective = rotation_effective_at(T0)  # when the rotation takes effect
    assert all(table.previous_salt(i, effective) is not None for i in range(table.bucket_count))
    assert columns < 4096 * 96


BIDDER = frozenset({ClientRole.ID_READER})
SHARER = frozenset({ClientRole.SHARER})
OWNER, LISTED, OTHER = 5, 6, 7


def _keyset(
    keyset_id: int = 10,
    site_id: int = OWNER,
    *,
    enabled: bool = True,
    sharing: SharingMode = SharingMode.BIDDERS,
    sites: frozenset[int] = frozenset(),
) -> Keyset:
    return Keyset(keyset_id, site_id, "k", enabled, True, T0, sharing, sites)


def _snapshot(keyset: Keyset, sharing: dict[int, SharingPolicy] | None = None) -> Snapshot:
    s = T0 // 1000
    return build_snapshot(
        generation=1,
        built_at_ms=T0,
        identity=OperatorIdentity(),
        lifetimes=Lifetimes(),
        pepper=bytes(32),
        clients=[],
        keysets=[keyset],
        sharing=sharing,
        keys=[EncryptionKey(1, keyset.keyset_id, s, s, s + 100, bytes(32))],
        salts=_table(8),
        sites=[SiteData(OTHER, ParticipantType.DSP)],
    )


@pytest.mark.parametrize(
    ("keyset", "site", "roles", "visible"),
    [
        (_keyset(-1, -1), OWNER, SHARER, True),
        (_keyset(-2, -2), -2, BIDDER | SHARER, False),
        (_keyset(), OWNER, SHARER, True),
        (_keyset(enabled=False), OWNER, SHARER, False),
        (_keyset(), LISTED, BIDDER, True),
        (_keyset(), LISTED, SHARER, False),
        (_keyset(sharing=SharingMode.OWNER_ONLY), LISTED, BIDDER, False),
        (_keyset(sharing=SharingMode.LIST, sites=frozenset({LISTED})), LISTED, SHARER, True),
        (_keyset(sharing=SharingMode.LIST, sites=frozenset({LISTED})), OTHER, BIDDER, False),
    ],
)
def test_keyset_visibility(
    keyset: Keyset, site: int, roles: frozenset[ClientRole], visible: bool
) -> None:
    """Without a stored policy, a keyset is shared as its own record says."""
    assert bool(_snapshot(keyset).visible_keys(site, roles)) is visible


def test_the_stored_policy_decides_with_the_participant_types_it_lists() -> None:
    keyset = _keyset(sharing=SharingMode.LIST, sites=frozenset({LISTED}))
    policy = allow_list(OWNER, [LISTED], [ParticipantType.DSP])
    snapshot = _snapshot(keyset, {keyset.keyset_id: policy})
    assert snapshot.sharing == {keyset.keyset_id: policy}
    assert snapshot.visible_keys(OTHER, SHARER)  # a DSP, through the listed type
    assert not _snapshot(keyset).visible_keys(OTHER, SHARER)  # the record alone lists no type
    assert snapshot.visible_keys(LISTED, SHARER)
    narrowed = _snapshot(keyset, {keyset.keyset_id: SharingPolicy(SharingMode.OWNER_ONLY)})
    assert not narrowed.visible_keys(LISTED, SHARER)  # the policy, not the record, decides


def test_replay_cache_refuses_repeats_until_the_window_passes() -> None:
    cache = ReplayCache(max_past_ms=1000)
    assert cache.first_use("k", b"n" * 8, T0, T0)
    assert not cache.first_use("k", b"n" * 8, T0, T0 + 1000)
    assert cache.first_use("other", b"n" * 8, T0, T0 + 1000)
    assert cache.first_use("k", b"n" * 8, T0, T0 + 1001)
    assert cache.first_use("z", b"z" * 8, T0 + 5000, T0 + 5000)
    assert len(cache) == 1  # the others fell out of the window and were evicted


def test_replay_cache_is_bounded() -> None:
    cache = ReplayCache(max_past_ms=100_000, max_entries=3)
    now = T0 + 10 * SLICE_MS
    for i in range(10):  # one entry per timestamp slice
        assert cache.first_use("k", bytes([i]) * 8, T0 + i * SLICE_MS, now)
    assert len(cache) == 3
    assert not cache.first_use("k", bytes([9]) * 8, T0 + 9 * SLICE_MS, now)
    # The oldest timestamps (closest to expiry) were forgotten first.
    assert cache.first_use("k", bytes([0]) * 8, T0, now)
    assert not cache.first_use("k", bytes([8]) * 8, T0 + 8 * SLICE_MS, now)


@pytest.mark.parametrize(
    ("error", "status", "body"),
    [
        (
            StaleTimestamp(),
            400,
            b'{"status":"client_error","message":"' + StaleTimestamp.message.encode() + b'"}',
        ),
        (InvalidIdentifier(), 400, b'{"status":"client_error","message":"Invalid Identifier"}'),
        (CredentialRejected("why"), 401, b'{"status":"unauthorized"}'),
        (
            ExpiredTokenPresented(),
            400,
            b'{"status":"expired_token","message":"Expired Token presented"}',
        ),
        (RefreshFailed(), 400, b'{"status":"error","message":"Error refreshing token"}'),
        (
            NoActiveKey(),
            500,
            b'{"status":"unknown","message":"No active encryption key available"}',
        ),
        (
            StoreUnavailable("db at 10.0.0.1"),
            500,
            b'{"status":"unknown","message":"Unknown error"}',
        ),
        (ValueError("secret detail"), 500, b'{"status":"unknown","message":"Unknown error"}'),
        (BodyTooLarge(), 413, b"Request Entity Too Large"),
        (
            InvalidClientSite("Unexpected client site id 2"),
            401,
            b'{"status":"invalid_client","message":"Unexpected client site id 2"}',
        ),
    ],
)
def test_error_table(error: Exception, status: int, body: bytes) -> None:
    assert render(error)[:2] == (status, body)
