"""The store contract: one suite, run against every backend (see conftest.py)."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError
from store_records import T0, Draft, admin_token, api_key, participant, simple_hash

from uid2_operator.domain.audit import AuditDraft, Outcome, event_hash, verify_chain
from uid2_operator.domain.credentials import KeyState
from uid2_operator.domain.participants import ParticipantType
from uid2_operator.domain.roles import AdminRole, ClientRole
from uid2_operator.errors import AlreadyExists, NotFound, StoreError
from uid2_operator.storage import SqlStore
from uid2_operator.storage.interface import GENESIS_PREV_HASH, KeyUsage

KEY_A = "UID2-C-L-1001-aaaaa1"
KEY_B = "UID2-C-L-1001-bbbbb2"
KEY_C = "UID2-C-L-2002-ccccc3"


def _seed(store: SqlStore) -> None:
    with store.transaction() as tx:
        tx.participants.add(participant(1001))
        tx.participants.add(participant(2002, type=ParticipantType.DSP))
        tx.api_keys.add(api_key(KEY_A, 1001))
        tx.api_keys.add(api_key(KEY_B, 1001, created_at_ms=T0 + 5))
        tx.api_keys.add(api_key(KEY_C, 2002))


# ------------------------------------------------------------------------------- participants


def test_participant_round_trips_every_field(store: SqlStore) -> None:
    record = participant(
        4242,
        name="Ünïcode publisher ✓",
        type=ParticipantType.DATA_PROVIDER,
        allowed_roles=frozenset(ClientRole),
        enabled=False,
        contacts=("a@example.com",),
        updated_at_ms=T0 + 1,
    )
    with store.transaction() as tx:
        tx.participants.add(record)
    with store.read() as rx:
        assert rx.participants.get(4242) == record
        assert rx.participants.get(4243) is None


def test_participant_with_no_roles_or_contacts_round_trips(store: SqlStore) -> None:
    record = participant(7, allowed_roles=frozenset(), contacts=())
    with store.transaction() as tx:
        tx.participants.add(record)
        assert tx.participants.get(7) == record


def test_participant_add_refuses_a_taken_site_id(store: SqlStore) -> None:
    with store.transaction() as tx:
        tx.participants.add(participant(1001))
    with pytest.raises(AlreadyExists, match="1001"), store.transaction() as tx:
        tx.participants.add(participant(1001, name="other"))
    with store.read() as rx:
        stored = rx.participants.get(1001)
    assert stored is not None
    assert stored.name == "Site 1001"


def test_participant_update_and_list(store: SqlStore) -> None:
    with store.transaction() as tx:
        for site_id in (30, 10, 20):
            tx.participants.add(participant(site_id))
    changed = participant(
        20,
        name="renamed",
        enabled=False,
        allowed_roles=frozenset({ClientRole.SHARER}),
        contacts=("x@example.com",),
        updated_at_ms=T0 + 9,
    )
    with store.transaction() as tx:
        tx.participants.update(replace(changed, created_at_ms=0))
    with store.read() as rx:
        assert rx.participants.get(20) == changed  # created_at_ms is never rewritten
        assert [p.site_id for p in rx.participants.list_all()] == [10, 20, 30]


def test_participant_update_of_unknown_site_is_not_found(store: SqlStore) -> None:
    with pytest.raises(NotFound), store.transaction() as tx:
        tx.participants.update(participant(999))


# ----------------------------------------------------------------------------------- API keys


def test_api_key_round_trips_every_field(store: SqlStore) -> None:
    _seed(store)
    successor = api_key(
        "UID2-C-L-1001-zzzzz9",
        1001,
        name="rotated",
        roles=frozenset({ClientRole.GENERATOR, ClientRole.MAPPER, ClientRole.ID_READER}),
        state=KeyState.REVOKED,
        key_hash=bytes(range(256))[:32] + b"\x00\xff",
        expires_at_ms=T0 + 1,
        retires_at_ms=T0 + 2,
        rotated_from=KEY_A,
        revoked_at_ms=T0 + 3,
        revoked_by="admin:someone",
        revoked_reason="leaked in a public repository",
    )
    with store.transaction() as tx:
        tx.api_keys.add(successor)
        predecessor = tx.api_keys.get(KEY_A)
        assert predecessor is not None
        tx.api_keys.update(replace(predecessor, rotated_to=successor.key_id))
    with store.read() as rx:
        assert rx.api_keys.get(successor.key_id) == successor
        old = rx.api_keys.get(KEY_A)
        assert old is not None
        assert old.rotated_to == successor.key_id
        assert rx.api_keys.get("UID2-C-L-1001-nonexi") is None


def test_api_key_add_refuses_duplicates_and_unknown_sites(store: SqlStore) -> None:
    _seed(store)
    with pytest.raises(AlreadyExists, match=KEY_A), store.transaction() as tx:
        tx.api_keys.add(api_key(KEY_A, 1001))
    with pytest.raises(NotFound, match="participant 5555"), store.transaction() as tx:
        tx.api_keys.add(api_key("UID2-C-L-5555-qqqqq1", 5555))


def test_api_key_update_writes_mutable_fields_only(store: SqlStore) -> None:
    _seed(store)
    store.record_usage([(KEY_A, "/v2/token/generate", 1, T0 + 100)])
    with store.transaction() as tx:
        before = tx.api_keys.get(KEY_A)
        assert before is not None
        tx.api_keys.update(
            replace(
                before,
                site_id=2002,
                key_hash=b"forged",
                created_at_ms=0,
                created_by="nobody",
                last_used_at_ms=None,
                name="renamed",
                state=KeyState.DISABLED,
                roles=frozenset({ClientRole.MAPPER}),
                updated_at_ms=T0 + 50,
            )
        )
    with store.read() as rx:
        after = rx.api_keys.get(KEY_A)
    assert after == replace(
        before,
        name="renamed",
        state=KeyState.DISABLED,
        roles=frozenset({ClientRole.MAPPER}),
        updated_at_ms=T0 + 50,
    )
    assert after.last_used_at_ms == T0 + 100


def test_api_key_update_of_unknown_key_is_not_found(store: SqlStore) -> None:
    with pytest.raises(NotFound, match="nope"), store.transaction() as tx:
        tx.api_keys.update(api_key("nope"))


def test_api_keys_list_per_site_and_all(store: SqlStore) -> None:
    _seed(store)
    with store.read() as rx:
        assert [k.key_id for k in rx.api_keys.list_for_site(1001)] == [KEY_A, KEY_B]
        assert [k.key_id for k in rx.api_keys.list_for_site(2002)] == [KEY_C]
        assert rx.api_keys.list_for_site(3) == []
        assert [k.key_id for k in rx.api_keys.list_all()] == [KEY_A, KEY_B, KEY_C]


def test_key_and_token_lookups_are_primary_key_lookups(store: SqlStore) -> None:
    inspector = inspect(store.engine)
    assert inspector.get_pk_constraint("api_keys")["constrained_columns"] == ["key_id"]
    assert inspector.get_pk_constraint("admin_tokens")["constrained_columns"] == ["token_id"]
    assert inspector.get_pk_constraint("audit_events")["constrained_columns"] == ["seq"]


def test_the_database_itself_enforces_foreign_keys(store: SqlStore) -> None:
    with store.engine.connect() as conn, pytest.raises(IntegrityError):
        conn.execute(
            text(
                "INSERT INTO api_keys (key_id, site_id, name, roles, state, key_hash,"
                " created_at_ms, created_by, updated_at_ms)"
                " VALUES ('k', 999, 'n', '', 'active', :h, 0, 'x', 0)"
            ),
            {"h": b"h"},
        )


# ------------------------------------------------------------------------------------ secrets


def test_secrets_get_increasing_ids_and_list_per_key(store: SqlStore) -> None:
    _seed(store)
    with store.transaction() as tx:
        first = tx.secrets.add(KEY_A, kek_version=1, ciphertext=b"\x00ct1", created_at_ms=T0)
        other = tx.secrets.add(KEY_B, kek_version=1, ciphertext=b"ct2", created_at_ms=T0)
        second = tx.secrets.add(
            KEY_A, kek_version=2, ciphertext=b"ct3", created_at_ms=T0 + 1, retires_at_ms=T0 + 9
        )
    assert first.secret_id < other.secret_id < second.secret_id
    with store.read() as rx:
        assert rx.secrets.list_for_key(KEY_A) == [first, second]
        assert rx.secrets.get(other.secret_id) == other
        assert rx.secrets.get(second.secret_id + 100) is None
        assert rx.secrets.list_for_key(KEY_C) == []


def test_secret_add_for_unknown_key_is_not_found(store: SqlStore) -> None:
    with pytest.raises(NotFound, match="missing"), store.transaction() as tx:
        tx.secrets.add("missing", kek_version=1, ciphertext=b"c", created_at_ms=T0)


def test_secret_update_reseals_and_retires(store: SqlStore) -> None:
    _seed(store)
    with store.transaction() as tx:
        secret = tx.secrets.add(KEY_A, kek_version=1, ciphertext=b"old", created_at_ms=T0)
    rewrapped = replace(secret, kek_version=2, ciphertext=b"new", retires_at_ms=T0 + 7)
    with store.transaction() as tx:
        tx.secrets.update(replace(rewrapped, created_at_ms=0, key_id=KEY_B))
    with store.read() as rx:
        assert rx.secrets.get(secret.secret_id) == rewrapped
    with pytest.raises(NotFound), store.transaction() as tx:
        tx.secrets.update(replace(secret, secret_id=secret.secret_id + 50))


def test_live_secrets_exclude_those_retired_at_or_before_now(store: SqlStore) -> None:
    _seed(store)
    now = T0 + 1000
    with store.transaction() as tx:
        current = tx.secrets.add(KEY_A, kek_version=1, ciphertext=b"1", created_at_ms=T0)
        overlap = tx.secrets.add(
            KEY_A, kek_version=1, ciphertext=b"2", created_at_ms=T0, retires_at_ms=now + 1
        )
        tx.secrets.add(KEY_A, kek_version=1, ciphertext=b"3", created_at_ms=T0, retires_at_ms=now)
        tx.secrets.add(KEY_B, kek_version=1, ciphertext=b"4", created_at_ms=T0, retires_at_ms=1)
    with store.read() as rx:
        assert rx.secrets.list_live(now) == [current, overlap]


def test_purge_removes_retired_secrets_and_ids_are_never_reused(store: SqlStore) -> None:
    _seed(store)
    with store.transaction() as tx:
        keep = tx.secrets.add(KEY_A, kek_version=1, ciphertext=b"k", created_at_ms=T0)
        gone = tx.secrets.add(
            KEY_A, kek_version=1, ciphertext=b"g", created_at_ms=T0, retires_at_ms=T0 + 5
        )
    seq = store.change_seq()
    with store.transaction() as tx:
        assert tx.secrets.purge_retired(T0 + 4) == 0
    assert store.change_seq() == seq  # nothing deleted, nothing changed
    with store.transaction() as tx:
        assert tx.secrets.purge_retired(T0 + 5) == 1
    assert store.change_seq() == seq + 1
    with store.transaction() as tx:
        newer = tx.secrets.add(KEY_A, kek_version=1, ciphertext=b"n", created_at_ms=T0 + 6)
    assert newer.secret_id > gone.secret_id
    with store.read() as rx:
        assert [s.secret_id for s in rx.secrets.list_for_key(KEY_A)] == [
            keep.secret_id,
            newer.secret_id,
        ]


def test_purge_removes_every_secret_of_a_key_retired_expired_or_revoked(store: SqlStore) -> None:
    with store.transaction() as tx:
        tx.participants.add(participant(1001))
        tx.api_keys.add(api_key(KEY_A, 1001, retires_at_ms=T0 + 10))  # rotated, in its grace
        tx.api_keys.add(api_key(KEY_B, 1001, expires_at_ms=T0 + 20))
        tx.api_keys.add(api_key(KEY_C, 1001))
        for key_id in (KEY_A, KEY_B, KEY_C):
            tx.secrets.add(key_id, kek_version=1, ciphertext=b"s", created_at_ms=T0)
    with store.transaction() as tx:
        assert tx.secrets.purge_retired(T0 + 9) == 0
    with store.transaction() as tx:
        assert tx.secrets.purge_retired(T0 + 10) == 1
    with store.transaction() as tx:
        assert tx.secrets.purge_retired(T0 + 20) == 1
    with store.transaction() as tx:
        key_c = tx.api_keys.get(KEY_C)
        assert key_c is not None
        tx.api_keys.update(replace(key_c, state=KeyState.REVOKED, revoked_at_ms=T0 + 21))
        assert tx.secrets.purge_retired(T0 + 21) == 1
    with store.read() as rx:
        assert [rx.secrets.list_for_key(k) for k in (KEY_A, KEY_B, KEY_C)] == [[], [], []]


# ------------------------------------------------------------------------------- admin tokens


def test_admin_tokens_add_get_list_update(store: SqlStore) -> None:
    first = admin_token("UID2-A-L-0-first1", roles=frozenset(AdminRole))
    second = admin_token("UID2-A-L-0-secnd2", created_at_ms=T0 + 1)
    with store.transaction() as tx:
        tx.admin_tokens.add(second)
        tx.admin_tokens.add(first)
    revoked = replace(
        first,
        name="retired",
        roles=frozenset({AdminRole.MAINTAINER}),
        revoked_at_ms=T0 + 2,
        revoked_by="admin:root",
    )
    with store.transaction() as tx:
        tx.admin_tokens.update(replace(revoked, token_hash=b"x", created_by="y"))
    with store.read() as rx:
        assert rx.admin_tokens.get(first.token_id) == revoked
        assert rx.admin_tokens.get("UID2-A-L-0-absent") is None
        assert rx.admin_tokens.list_all() == [revoked, second]


def test_admin_token_duplicates_and_unknown_updates_are_refused(store: SqlStore) -> None:
    with store.transaction() as tx:
        tx.admin_tokens.add(admin_token())
    with pytest.raises(AlreadyExists), store.transaction() as tx:
        tx.admin_tokens.add(admin_token())
    with pytest.raises(NotFound), store.transaction() as tx:
        tx.admin_tokens.update(admin_token("UID2-A-L-0-absent"))


# -------------------------------------------------------------------------------------- audit


def test_audit_append_assigns_seq_and_chains_prev_hash(store: SqlStore) -> None:
    with store.transaction() as tx:
        assert tx.audit.last() is None
        first = tx.audit.append(Draft(target_id="1"), simple_hash)
        second = tx.audit.append(Draft(target_id="2"), simple_hash)
    with store.transaction() as tx:
        third = tx.audit.append(Draft(target_id="3"), simple_hash)
    assert [first.seq, second.seq, third.seq] == [1, 2, 3]
    assert first.prev_hash == GENESIS_PREV_HASH
    assert second.prev_hash == first.hash
    assert third.prev_hash == second.hash
    assert third.hash == simple_hash(second.hash, 3, replace(third, hash=b""))
    with store.read() as rx:
        assert rx.audit.list_events() == [first, second, third]
        assert rx.audit.last() == third


def test_audit_event_round_trips_and_verifies_with_the_domain_chain(store: SqlStore) -> None:
    draft = AuditDraft(
        at_ms=T0,
        actor="admin:UID2-A-L-0-first1",
        action="key.create",
        target_type="api_key",
        target_id=KEY_A,
        site_id=1001,
        before={"roles": ["MAPPER"], "nested": {"b": 1, "a": [1, None, True]}},
        after={"roles": ("GENERATOR", "MAPPER"), "name": "Zoë ✓"},  # a tuple reads back a list
        request_id="req-1",
        source="203.0.113.7",
        outcome=Outcome.DENIED,
    )
    with store.transaction() as tx:
        placed = tx.audit.append(draft, event_hash)
        tx.audit.append(replace(draft, before=None, after=None, site_id=None), event_hash)
    with store.read() as rx:
        events = rx.audit.list_events()
    assert events[0] == placed
    assert events[0].after == {"roles": ["GENERATOR", "MAPPER"], "name": "Zoë ✓"}
    assert events[1].before is None
    assert events[1].site_id is None
    assert verify_chain(events).ok


def test_audit_list_filters(store: SqlStore) -> None:
    with store.transaction() as tx:
        for i in range(1, 7):
            tx.audit.append(
                Draft(
                    action="key.create" if i % 2 else "key.revoke",
                    target_type="api_key",
                    target_id=KEY_A if i <= 3 else KEY_B,
                    site_id=1001 if i != 6 else 2002,
                ),
                simple_hash,
            )

    def seqs(**filters: object) -> list[int]:
        with store.read() as rx:
            return [e.seq for e in rx.audit.list_events(**filters)]  # type: ignore[arg-type]

    assert seqs() == [1, 2, 3, 4, 5, 6]
    assert seqs(since_seq=4) == [5, 6]
    assert seqs(target_type="api_key", target_id=KEY_B) == [4, 5, 6]
    assert seqs(target_type="participant") == []
    assert seqs(action="key.revoke") == [2, 4, 6]
    assert seqs(site_id=2002) == [6]
    assert seqs(limit=2) == [1, 2]
    assert seqs(since_seq=1, action="key.create", target_id=KEY_A, limit=5) == [3]


def test_a_rolled_back_append_leaves_no_gap(store: SqlStore) -> None:
    with store.transaction() as tx:
        tx.audit.append(Draft(target_id="kept"), simple_hash)

    def failing_use_case() -> None:
        with store.transaction() as tx:
            tx.audit.append(Draft(target_id="lost"), simple_hash)
            raise RuntimeError("the use case failed after writing its audit row")

    with pytest.raises(RuntimeError):
        failing_use_case()
    with store.transaction() as tx:
        again = tx.audit.append(Draft(target_id="next"), simple_hash)
    assert again.seq == 2
    with store.read() as rx:
        assert [e.target_id for e in rx.audit.list_events()] == ["kept", "next"]


# -------------------------------------------------------------------------------------- usage


def test_usage_adds_counts_and_raises_last_used(store: SqlStore) -> None:
    _seed(store)
    store.record_usage(
        [
            (KEY_A, "/v2/token/generate", 3, T0 + 30),
            (KEY_A, "/v2/token/generate", 2, T0 + 10),  # same pair in one batch: summed, the
            # later time kept whichever entry comes last
            (KEY_A, "/v2/identity/map", 1, T0 + 20),
            (KEY_C, "/v2/token/generate", 7, T0 + 5),
        ]
    )
    store.record_usage(
        [
            (KEY_A, "/v2/token/generate", 4, T0 + 15),  # older: count added, time kept
            (KEY_A, "/v2/identity/map", 1, T0 + 40),
        ]
    )
    with store.read() as rx:
        assert rx.usage.list_for_key(KEY_A) == [
            KeyUsage(KEY_A, "/v2/identity/map", 2, T0 + 40),
            KeyUsage(KEY_A, "/v2/token/generate", 9, T0 + 30),
        ]
        assert rx.usage.list_for_key(KEY_B) == []
        assert [(u.key_id, u.count) for u in rx.usage.list_all()] == [
            (KEY_A, 2),
            (KEY_A, 9),
            (KEY_C, 7),
        ]
        key_a, key_b, key_c = (rx.api_keys.get(k) for k in (KEY_A, KEY_B, KEY_C))
    assert key_a is not None
    assert key_a.last_used_at_ms == T0 + 40
    assert key_b is not None
    assert key_b.last_used_at_ms is None
    assert key_c is not None
    assert key_c.last_used_at_ms == T0 + 5


def test_usage_for_an_unknown_key_is_left_out_and_the_rest_recorded(store: SqlStore) -> None:
    # One key missing (a store restored from an earlier backup) must not cost the others theirs.
    _seed(store)
    left_out = store.record_usage(
        [
            ("UID2-C-L-1001-gone01", "/x", 1, T0),
            (KEY_A, "/v2/token/generate", 2, T0 + 7),
            ("UID2-C-L-1001-gone00", "/x", 1, T0),
        ]
    )
    assert left_out == ["UID2-C-L-1001-gone00", "UID2-C-L-1001-gone01"]
    with store.read() as rx:
        assert [(u.key_id, u.endpoint, u.count) for u in rx.usage.list_all()] == [
            (KEY_A, "/v2/token/generate", 2)
        ]
        key_a = rx.api_keys.get(KEY_A)
    assert key_a is not None
    assert key_a.last_used_at_ms == T0 + 7
    assert store.record_usage([("UID2-C-L-1001-gone00", "/x", 1, T0)]) == ["UID2-C-L-1001-gone00"]


def test_usage_naming_more_keys_than_a_statement_takes_parameters_is_checked_in_batches(
    store: SqlStore,
) -> None:
    # PostgreSQL takes at most 65,535 parameters a statement: one IN list of every key id of a
    # large batch (a backlog after an outage) failed there as "store unavailable", forever.
    _seed(store)
    gone = [f"UID2-C-L-1001-g{n:05d}" for n in range(70_000)]
    batch = [(KEY_A, "/v2/token/generate", 1, T0)] + [(k, "/x", 1, T0) for k in gone]
    assert store.record_usage(batch) == gone
    with store.read() as rx:
        assert [(u.key_id, u.count) for u in rx.usage.list_all()] == [(KEY_A, 1)]


def test_usage_is_telemetry_and_does_not_move_change_seq(store: SqlStore) -> None:
    _seed(store)
    seq = store.change_seq()
    store.record_usage([(KEY_A, "/v2/token/generate", 1, T0)])
    store.record_usage([])
    assert store.change_seq() == seq
    with store.read() as rx:
        assert len(rx.usage.list_all()) == 1


# ------------------------------------------------------------------------------- transactions


def test_an_exception_rolls_back_every_write(store: SqlStore) -> None:
    seq = store.change_seq()

    def failing_use_case() -> None:
        with store.transaction() as tx:
            tx.participants.add(participant(1001))
            tx.participants.add(participant(2002))
            assert tx.participants.get(1001) is not None  # visible inside the unit
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        failing_use_case()
    with store.read() as rx:
        assert rx.participants.list_all() == []
    assert store.change_seq() == seq


def test_each_committed_write_transaction_bumps_change_seq_once(store: SqlStore) -> None:
    start = store.change_seq()
    with store.transaction() as tx:
        tx.participants.add(participant(1001))
        tx.participants.add(participant(2002))
        tx.audit.append(Draft(), simple_hash)
    assert store.change_seq() == start + 1
    with store.transaction() as tx:
        tx.participants.update(participant(1001, name="again"))
    assert store.change_seq() == start + 2


def test_reading_never_bumps_change_seq(store: SqlStore) -> None:
    _seed(store)
    seq = store.change_seq()
    with store.transaction() as tx:
        assert tx.participants.get(1001) is not None
        tx.api_keys.list_all()
    with store.read() as rx:
        rx.audit.list_events()
    store.snapshot(T0)
    assert store.change_seq() == seq


def test_a_read_unit_refuses_writes(store: SqlStore) -> None:
    with pytest.raises(StoreError, match="read-only"), store.read() as rx:
        rx.participants.add(participant(1001))  # the static type (ReadTx) has no add at all
    with store.read() as rx:
        assert rx.participants.list_all() == []


def test_a_read_unit_sees_one_snapshot(store: SqlStore) -> None:
    _seed(store)
    with store.read() as rx:
        seen_before = rx.participants.get(1001)
        with store.transaction() as tx:  # another connection commits meanwhile
            tx.participants.update(participant(1001, name="changed"))
        assert rx.participants.get(1001) == seen_before
    with store.read() as rx:
        changed = rx.participants.get(1001)
    assert changed is not None
    assert changed.name == "changed"


def test_concurrent_writers_keep_the_audit_chain_gap_free(store: SqlStore) -> None:
    per_thread = 15
    start = store.change_seq()
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def writer(name: str) -> None:
        try:
            barrier.wait()
            for i in range(per_thread):
                with store.transaction() as tx:
                    tx.audit.append(Draft(actor=name, target_id=f"{name}-{i}"), simple_hash)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in ("left", "right")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with store.read() as rx:
        events = rx.audit.list_events()
    assert [e.seq for e in events] == list(range(1, 2 * per_thread + 1))
    previous = GENESIS_PREV_HASH
    for event in events:
        assert event.prev_hash == previous
        assert event.hash == simple_hash(previous, event.seq, replace(event, hash=b""))
        previous = event.hash
    assert {e.actor for e in events} == {"left", "right"}
    assert store.change_seq() == start + 2 * per_thread


# ----------------------------------------------------------------------------------- snapshot


def test_snapshot_holds_everything_the_operator_serves(store: SqlStore) -> None:
    _seed(store)
    with store.transaction() as tx:
        key_b = tx.api_keys.get(KEY_B)
        assert key_b is not None
        tx.api_keys.update(replace(key_b, state=KeyState.REVOKED, revoked_at_ms=T0 + 1))
        live = tx.secrets.add(KEY_A, kek_version=1, ciphertext=b"a", created_at_ms=T0)
        tx.secrets.add(KEY_C, kek_version=1, ciphertext=b"c", created_at_ms=T0, retires_at_ms=T0)
    snap = store.snapshot(T0 + 1)
    assert snap.change_seq == store.change_seq()
    assert [p.site_id for p in snap.participants] == [1001, 2002]
    assert [k.key_id for k in snap.keys] == [KEY_A, KEY_B, KEY_C]
    assert snap.keys[1].state is KeyState.REVOKED
    assert snap.secrets == (live,)


def test_an_empty_store_has_change_seq_zero_and_an_empty_snapshot(store: SqlStore) -> None:
    snap = store.snapshot(T0)
    assert (snap.change_seq, snap.participants, snap.keys, snap.secrets) == (0, (), (), ())
    assert store.backend in ("sqlite", "postgresql")
