"""Reading credentials from a change sequence, on every backend: ``Store.snapshot(now, since=N)``
gives exactly the participants, keys and secrets written by commits after N, each as it is now,
secrets retired early included; a usage flush writes none; and the upgrade that added the
column gives the rows stored before it the store's sequence, so that a reader from nothing reads
them and a reader past it does not."""

from __future__ import annotations

from dataclasses import replace

from migration_steps import downgrade_to
from store_records import api_key, participant

from uid2_operator.domain.credentials import KeyState
from uid2_operator.storage import SqlStore, head_revision, open_store, upgrade
from uid2_operator.storage.interface import SiteOrigins

T0 = 1_700_000_000_000
KEY_A = "UID2-C-L-1001-abcDE1"
KEY_B = "UID2-C-L-2002-fghIJ2"


def _seed(store: SqlStore) -> tuple[int, int]:
    """Two sites with a key and a secret each; the sequence after it and the first secret's id."""
    with store.transaction() as tx:
        tx.participants.add(participant(1001))
        tx.participants.add(participant(2002))
        tx.api_keys.add(api_key(KEY_A, 1001))
        tx.api_keys.add(api_key(KEY_B, 2002))
        secret = tx.secrets.add(KEY_A, kek_version=1, ciphertext=b"a", created_at_ms=T0)
        tx.secrets.add(KEY_B, kek_version=1, ciphertext=b"b", created_at_ms=T0)
    return store.change_seq(), secret.secret_id


def _changed(store: SqlStore, since: int) -> tuple[list[int], list[str], list[int]]:
    snap = store.snapshot(T0, since=since)
    assert snap.change_seq == store.change_seq()
    return (
        [p.site_id for p in snap.participants],
        [k.key_id for k in snap.keys],
        [s.secret_id for s in snap.secrets],
    )


def test_nothing_is_read_when_nothing_was_written(store: SqlStore) -> None:
    seq, _ = _seed(store)
    assert _changed(store, seq) == ([], [], [])
    assert _changed(store, seq + 5) == ([], [], [])


def test_each_write_is_read_once_from_the_sequence_before_it(store: SqlStore) -> None:
    seq, first_secret = _seed(store)
    with store.transaction() as tx:
        key_b = tx.api_keys.get(KEY_B)
        assert key_b is not None
        tx.api_keys.update(replace(key_b, state=KeyState.REVOKED, revoked_at_ms=T0 + 1))
    # A key written since comes with every live secret it has, written since or not.
    assert _changed(store, seq) == ([], [KEY_B], [first_secret + 1])
    seq = store.change_seq()

    with store.transaction() as tx:
        tx.participants.update(participant(1001, enabled=False))
    assert _changed(store, seq) == ([1001], [], [])
    seq = store.change_seq()

    with store.transaction() as tx:
        tx.site_origins.put(SiteOrigins(2002, domain_names=("example.com",)))
    assert _changed(store, seq) == ([2002], [], [])
    seq = store.change_seq()

    with store.transaction() as tx:
        added = tx.secrets.add(KEY_A, kek_version=1, ciphertext=b"a2", created_at_ms=T0)
        old = tx.secrets.get(first_secret)
        assert old is not None
        tx.secrets.update(replace(old, retires_at_ms=T0 - 1))  # retired early: still read
    assert _changed(store, seq) == ([], [], [first_secret, added.secret_id])
    retired = store.snapshot(T0, since=seq).secrets[0]
    assert retired.retires_at_ms == T0 - 1
    seq = store.change_seq()

    with store.transaction() as tx:
        tx.participants.add(participant(3003))
        tx.api_keys.add(api_key("UID2-C-L-3003-klmNO3", 3003))
    assert _changed(store, seq) == ([3003], ["UID2-C-L-3003-klmNO3"], [])


def test_a_purge_hands_over_what_the_key_has_left(store: SqlStore) -> None:
    """A secret deleted in the commit that retires it leaves no row to read: the purge writes
    its key, which comes with the secrets it still has, so a reader replaces what it held."""
    seq, first_secret = _seed(store)
    with store.transaction() as tx:
        added = tx.secrets.add(KEY_A, kek_version=1, ciphertext=b"a2", created_at_ms=T0)
        old = tx.secrets.get(first_secret)
        assert old is not None
        tx.secrets.update(replace(old, retires_at_ms=T0))
        assert tx.secrets.purge_retired(T0) == 1
    assert _changed(store, seq) == ([], [KEY_A], [added.secret_id])
    seq = store.change_seq()
    with store.transaction() as tx:  # a revoked key's secrets go, its row with them
        key_b = tx.api_keys.get(KEY_B)
        assert key_b is not None
        tx.api_keys.update(replace(key_b, state=KeyState.REVOKED, revoked_at_ms=T0))
    seq = store.change_seq()
    with store.transaction() as tx:
        assert tx.secrets.purge_retired(T0) == 1
    assert _changed(store, seq) == ([], [KEY_B], [])
    with store.read() as rx:
        assert rx.secrets.list_for_key(KEY_B) == []
        assert [s.secret_id for s in rx.secrets.list_for_key(KEY_A)] == [added.secret_id]
    seq = store.change_seq()
    with store.transaction() as tx:  # nothing left to delete: nothing written
        assert tx.secrets.purge_retired(T0 + 1) == 0
    assert (store.change_seq(), _changed(store, seq)) == (seq, ([], [], []))


def test_a_usage_flush_makes_no_key_read_again(store: SqlStore) -> None:
    seq, _ = _seed(store)
    with store.transaction() as tx:
        tx.participants.update(participant(2002, name="Renamed"))
    store.record_usage([(KEY_A, "/v2/token/generate", 3, T0 + 5)])
    assert store.change_seq() == seq + 1
    assert _changed(store, seq) == ([2002], [], [])
    with store.read() as rx:
        used = rx.api_keys.get(KEY_A)
    assert used is not None
    assert used.last_used_at_ms == T0 + 5  # written, without a change to read


def test_a_full_read_is_unchanged(store: SqlStore) -> None:
    seq, _ = _seed(store)
    snap = store.snapshot(T0)
    assert snap.change_seq == seq
    assert [k.key_id for k in snap.keys] == [KEY_A, KEY_B]
    assert _changed(store, 0) == _changed(store, 0)  # since 0 is the full read, not "after 0"
    assert store.snapshot(T0, since=0) == snap


def test_the_upgrade_stamps_the_rows_stored_before_it(store_url: str) -> None:
    store = open_store(store_url)
    try:
        seq, _ = _seed(store)
    finally:
        store.close()
    downgrade_to(store_url, "0006")  # the rows stay, without the column
    assert upgrade(store_url) == head_revision()
    store = open_store(store_url)
    try:
        assert _changed(store, seq - 1) == ([1001, 2002], [KEY_A, KEY_B], _changed(store, 0)[2])
        assert _changed(store, seq) == ([], [], [])
        assert [k.key_id for k in store.snapshot(T0).keys] == [KEY_A, KEY_B]
    finally:
        store.close()
