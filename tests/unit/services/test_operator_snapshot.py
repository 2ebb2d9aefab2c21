"""The snapshot's compact salts, keyset visibility, opt-outs, the replay cache and error table."""

from __future__ import annotations

import sys

import pytest

from uid2_operator.domain.roles import ClientRole
from uid2_operator.errors import (
    BodyTooLarge,
    CredentialRejected,
    ExpiredTokenPresented,
    InvalidIdentifier,
    NoActiveKey,
    RefreshFailed,
    SaltError,
    StaleTimestamp,
    StoreUnavailable,
)
from uid2_operator.services.replay import SLICE_MS, ReplayCache
from uid2_operator.services.snapshot import Keyset, SaltRecord, SaltTable, SharingMode
from uid2_operator.web.operator_api.errors import render

T0 = 1_700_000_000_000


def _table(count: int, width: int = 44) -> SaltTable:
    return SaltTable.build(
        [
            SaltRecord(
                index=i,
                last_updated_ms=T0 + i,
                refresh_from_ms=T0 + 2 * i,
                current_salt=f"{i:0{width}d}",
                previous_salt=None if i % 2 else f"p{i:0{width - 1}d}",
            )
            for i in reversed(range(count))
        ],
        first_level_salt="fls",
    )


def test_salt_table_round_trips_buckets() -> None:
    table = _table(8)
    bucket = table.bucket(4)
    assert (bucket.index, bucket.last_updated_ms, bucket.refresh_from_ms) == (4, T0 + 4, T0 + 8)
    assert bucket.current_salt == f"{4:044d}"
    assert bucket.previous_salt == f"p{4:043d}"
    assert table.bucket(5).previous_salt is None
    assert table.updated_since(T0 + 6) == [(6, T0 + 6), (7, T0 + 7)]


def test_salt_table_is_compact() -> None:
    table = _table(4096)
    columns = sum(
        sys.getsizeof(getattr(table, name))
        for name in ("_current", "_previous", "_has_previous", "_last_updated", "_refresh_from")
    )
    assert columns < 4096 * (44 * 2 + 1 + 16 + 64)


@pytest.mark.parametrize(
    "records",
    [
        [],
        [SaltRecord(1, 0, 0, "a")],
        [SaltRecord(0, 0, 0, "a"), SaltRecord(1, 0, 0, "bb")],
        [SaltRecord(0, 0, 0, "é")],
    ],
)
def test_salt_table_refuses_bad_files(records: list[SaltRecord]) -> None:
    with pytest.raises(SaltError):
        SaltTable.build(records, first_level_salt="fls")


BIDDER = frozenset({ClientRole.ID_READER})
SHARER = frozenset({ClientRole.SHARER})


@pytest.mark.parametrize(
    ("keyset", "site", "roles", "visible"),
    [
        (Keyset(-1, -1), 5, SHARER, True),
        (Keyset(10, 5), 5, SHARER, True),
        (Keyset(10, 5, enabled=False), 5, SHARER, False),
        (Keyset(10, 5), 6, BIDDER, True),
        (Keyset(10, 5), 6, SHARER, False),
        (Keyset(10, 5, sharing=SharingMode.OWNER_ONLY), 6, BIDDER, False),
        (Keyset(10, 5, sharing=SharingMode.LIST, allowed_sites=frozenset({6})), 6, SHARER, True),
        (Keyset(10, 5, sharing=SharingMode.LIST, allowed_sites=frozenset({6})), 7, BIDDER, False),
    ],
)
def test_keyset_visibility(
    keyset: Keyset, site: int, roles: frozenset[ClientRole], visible: bool
) -> None:
    assert keyset.visible_to(site, roles) is visible


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
    ],
)
def test_error_table(error: Exception, status: int, body: bytes) -> None:
    assert render(error)[:2] == (status, body)
