"""The store contract for sharing choices, participants' domain/app names and client-side
keypairs (every backend)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from store_records import T0, participant

from uid2_operator.domain.keypairs import ClientKeypair
from uid2_operator.domain.keysets import Keyset, SharingMode
from uid2_operator.domain.material_sealing import SealedMaterial
from uid2_operator.domain.participants import ParticipantType
from uid2_operator.domain.sharing import ALL_BIDDERS, OWNER_ONLY, SharingPolicy
from uid2_operator.errors import AlreadyExists, NotFound, StoreError
from uid2_operator.storage import SqlStore
from uid2_operator.storage.interface import SiteOrigins

LIST = SharingPolicy(SharingMode.LIST, frozenset({1002, 1003}), frozenset({ParticipantType.DSP}))


def keyset(keyset_id: int = 4, site_id: int = 1001) -> Keyset:
    return Keyset(keyset_id, site_id, f"Site {site_id}", True, True, T0, SharingMode.BIDDERS)


def keypair(
    subscription_id: str = "AbCdEfGh12", site_id: int = 1001, **changes: object
) -> ClientKeypair:
    values: dict[str, object] = {
        "subscription_id": subscription_id,
        "site_id": site_id,
        "public_key": b"\x30public-der" + subscription_id.encode(),
        "sealed_private_key": SealedMaterial(1, b"sealed-private-" + subscription_id.encode()),
        "name": "web",
        "contact": "ops@example.com",
        "disabled": False,
        "created_at_ms": T0,
    }
    values.update(changes)
    return ClientKeypair(**values)  # type: ignore[arg-type]


def _seed(store: SqlStore) -> None:
    with store.transaction() as tx:
        for site in (1001, 1002, 1003):
            tx.participants.add(participant(site))
        tx.keysets.add(keyset())


def test_sharing_defaults_to_the_stored_mode_and_round_trips_every_choice(store: SqlStore) -> None:
    _seed(store)
    with store.read() as rx:
        assert rx.keyset_sharing.get(4) == ALL_BIDDERS
        assert rx.keyset_sharing.get(99) is None
    for policy in (
        LIST,
        OWNER_ONLY,
        SharingPolicy(SharingMode.LIST, types=frozenset({ParticipantType.DSP})),
        ALL_BIDDERS,
    ):
        seq = store.change_seq()
        with store.transaction() as tx:
            tx.keyset_sharing.put(4, policy)
        assert store.change_seq() == seq + 1
        with store.read() as rx:
            assert rx.keyset_sharing.get(4) == policy
            assert rx.keyset_sharing.list_all() == {4: policy}
            stored = rx.keysets.get(4)
            assert stored is not None
            assert stored.sharing is policy.mode
            assert stored.allowed_sites == policy.sites


def test_a_keyset_update_keeps_the_listed_types(store: SqlStore) -> None:
    _seed(store)
    with store.transaction() as tx:
        tx.keyset_sharing.put(4, LIST)
    with store.transaction() as tx:
        current = tx.keysets.get(4)
        assert current is not None
        tx.keysets.update(replace(current, name="renamed"))
    with store.read() as rx:
        assert rx.keyset_sharing.get(4) == LIST


def test_sharing_of_an_unknown_keyset_is_not_found_and_reads_cannot_write(store: SqlStore) -> None:
    _seed(store)
    seq = store.change_seq()
    with pytest.raises(NotFound), store.transaction() as tx:
        tx.keyset_sharing.put(99, OWNER_ONLY)
    with pytest.raises(StoreError), store.read() as rx:
        rx.keyset_sharing.put(4, OWNER_ONLY)
    assert store.change_seq() == seq


def test_site_origins_start_empty_round_trip_and_survive_participant_updates(
    store: SqlStore,
) -> None:
    _seed(store)
    with store.read() as rx:
        assert rx.site_origins.get(1001) == SiteOrigins(1001)
        assert rx.site_origins.get(4242) is None
        assert [o.site_id for o in rx.site_origins.list_all()] == [1001, 1002, 1003]
    seq = store.change_seq()
    names = SiteOrigins(1001, ("b.example", "a.example"), ("com.example.App",))
    with store.transaction() as tx:
        tx.site_origins.put(names)
    assert store.change_seq() == seq + 1
    with store.transaction() as tx:
        tx.participants.update(participant(1001, name="Renamed"))
    with store.read() as rx:
        assert rx.site_origins.get(1001) == SiteOrigins(
            1001, ("a.example", "b.example"), ("com.example.App",)
        )
    with pytest.raises(NotFound), store.transaction() as tx:
        tx.site_origins.put(SiteOrigins(4242, ("x.example",)))


def test_keypairs_add_get_list_update_delete(store: SqlStore) -> None:
    _seed(store)
    first = keypair("AbCdEfGh12", 1001)
    second = keypair("ZyXwVuTs98", 1001, created_at_ms=T0 + 5)
    other = keypair("MnPqRsTu45", 1002)
    seq = store.change_seq()
    with store.transaction() as tx:
        for item in (second, other, first):
            tx.keypairs.add(item)
    assert store.change_seq() == seq + 1
    with store.read() as rx:
        assert rx.keypairs.get("AbCdEfGh12") == first
        assert rx.keypairs.get("nothere123") is None
        assert rx.keypairs.list_for_site(1001) == [first, second]
        assert rx.keypairs.list_all() == [first, second, other]
    changed = replace(first, name="app", contact="dev@example.com", disabled=True)
    with store.transaction() as tx:
        # Key material is never rewritten, whatever the record says.
        tx.keypairs.update(replace(changed, public_key=b"other", created_at_ms=1))
    with store.read() as rx:
        assert rx.keypairs.get("AbCdEfGh12") == changed
    with store.transaction() as tx:
        tx.keypairs.delete("AbCdEfGh12")
    with store.read() as rx:
        assert rx.keypairs.get("AbCdEfGh12") is None
        assert rx.keypairs.list_for_site(1001) == [second]


def test_keypair_refusals_leave_nothing_behind(store: SqlStore) -> None:
    _seed(store)
    with store.transaction() as tx:
        tx.keypairs.add(keypair())
    seq = store.change_seq()
    with pytest.raises(AlreadyExists), store.transaction() as tx:
        tx.keypairs.add(keypair(site_id=1002))
    with pytest.raises(NotFound), store.transaction() as tx:
        tx.keypairs.add(keypair("QwErTyUi12", site_id=4242))
    with pytest.raises(NotFound), store.transaction() as tx:
        tx.keypairs.update(keypair("QwErTyUi12"))
    with pytest.raises(NotFound), store.transaction() as tx:
        tx.keypairs.delete("QwErTyUi12")
    assert store.change_seq() == seq
    with store.read() as rx:
        assert [k.subscription_id for k in rx.keypairs.list_all()] == ["AbCdEfGh12"]
