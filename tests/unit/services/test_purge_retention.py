"""Every key purge keeps keys at least the longest token lifetime a serve recorded, plus a day.

A serve records the longest lifetime it gives tokens (``record_token_lifetime``); a purge run
by a process configured with shorter lifetimes (``keys rotate`` from a shell without serve's
variables) must still keep the keys those tokens need. Real SQLite file, fixed clock.
"""

from __future__ import annotations

import os

import pytest
from service_fixtures import ACTOR, KEYRING

from uid2_operator.clock import FixedClock
from uid2_operator.domain.keysets import DAY_S
from uid2_operator.errors import InvalidInput
from uid2_operator.services.material import MaterialConfig, MaterialService
from uid2_operator.storage import SqlStore

DAY_MS = DAY_S * 1000
DEFAULT_RETENTION_S = 31 * DAY_S  # the default lifetimes' minimum


def _service(store: SqlStore, clock: FixedClock, retention_s: int | None) -> MaterialService:
    config = MaterialConfig(bucket_count=64, chunk_size=64, expired_key_retention_s=retention_s)
    return MaterialService(store, KEYRING, config, clock, os.urandom)


def _world(store: SqlStore, clock: FixedClock) -> tuple[set[int], set[int]]:
    """Keys that, 122 days on, expired 92 days ago, and their successors, expired 40 days ago
    (30-day keys; made by a process that purges nothing). The clock ends at day 122."""
    maker = _service(store, clock, None)
    first = {k.key_id for k in maker.initialise(ACTOR).keys_created}
    clock.advance(52 * DAY_MS)
    second = {k.key_id for k in maker.rotate_keys(actor=ACTOR).created}
    clock.advance(70 * DAY_MS)
    now_s = clock.now_ms() // 1000
    with store.read() as rx:
        expiries = {k.id: k.expires for k in rx.encryption_keys.list_all()}
    assert {now_s - expiries[i] for i in first} == {92 * DAY_S}
    assert {now_s - expiries[i] for i in second} == {40 * DAY_S}
    return first, second


def _stored_ids(store: SqlStore) -> set[int]:
    with store.read() as rx:
        return {k.id for k in rx.encryption_keys.list_all()}


def test_a_purge_honours_the_longer_lifetime_a_serve_recorded(
    store: SqlStore, clock: FixedClock
) -> None:
    old, recent = _world(store, clock)
    service = _service(store, clock, DEFAULT_RETENTION_S)
    assert service.record_token_lifetime(90 * DAY_S) == 90 * DAY_S
    result = service.rotate_keys(actor=ACTOR)
    assert {k.key_id for k in result.purged} == old
    assert result.retention_s == 91 * DAY_S
    assert result.to_json()["retention_s"] == 91 * DAY_S
    stored = _stored_ids(store)
    assert recent <= stored
    assert not old & stored


def test_without_a_recorded_lifetime_the_configured_retention_is_used(
    store: SqlStore, clock: FixedClock
) -> None:
    old, recent = _world(store, clock)
    result = _service(store, clock, DEFAULT_RETENTION_S).rotate_keys(actor=ACTOR)
    assert {k.key_id for k in result.purged} == old | recent
    assert result.retention_s == DEFAULT_RETENTION_S


def test_a_longer_configured_retention_wins_over_a_shorter_recorded_lifetime(
    store: SqlStore, clock: FixedClock
) -> None:
    old, recent = _world(store, clock)
    service = _service(store, clock, 93 * DAY_S)
    service.record_token_lifetime(30 * DAY_S)
    result = service.rotate_keys(actor=ACTOR)
    assert result.purged == ()
    assert result.retention_s == 93 * DAY_S
    assert old | recent <= _stored_ids(store)


def test_a_process_that_purges_nothing_reports_no_retention(
    store: SqlStore, clock: FixedClock
) -> None:
    old, recent = _world(store, clock)
    service = _service(store, clock, None)
    service.record_token_lifetime(DAY_S)
    result = service.rotate_keys(actor=ACTOR)
    assert result.purged == ()
    assert result.retention_s is None
    assert result.to_json()["retention_s"] is None
    assert old | recent <= _stored_ids(store)


def test_the_recorded_lifetime_only_rises(store: SqlStore, clock: FixedClock) -> None:
    service = _service(store, clock, DEFAULT_RETENTION_S)
    assert service.record_token_lifetime(90 * DAY_S) == 90 * DAY_S
    assert service.record_token_lifetime(30 * DAY_S) == 90 * DAY_S
    with store.read() as rx:
        assert rx.encryption_keys.longest_token_lifetime_s() == 90 * DAY_S
    assert service.record_token_lifetime(100 * DAY_S) == 100 * DAY_S
    with store.read() as rx:
        assert rx.encryption_keys.longest_token_lifetime_s() == 100 * DAY_S


def test_recording_writes_no_audit_event_and_moves_no_sequence(
    store: SqlStore, clock: FixedClock
) -> None:
    service = _service(store, clock, DEFAULT_RETENTION_S)
    seq = store.change_seq()
    service.record_token_lifetime(90 * DAY_S)
    assert store.change_seq() == seq
    with store.read() as rx:
        assert rx.audit.list_events() == []


@pytest.mark.parametrize("seconds", [0, -5, True, 2.5, "90"])
def test_a_lifetime_that_is_not_a_positive_whole_number_is_refused(
    store: SqlStore, clock: FixedClock, seconds: object
) -> None:
    service = _service(store, clock, DEFAULT_RETENTION_S)
    with pytest.raises(InvalidInput, match="positive whole number"):
        service.record_token_lifetime(seconds)  # type: ignore[arg-type]
    with store.read() as rx:
        assert rx.encryption_keys.longest_token_lifetime_s() is None
