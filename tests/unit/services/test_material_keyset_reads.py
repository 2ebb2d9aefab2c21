"""The material use cases read the keyset table once per transaction, whatever the number of
participants, and still create exactly the default keysets (with the ids) the rules ask for.

``initialise`` runs whenever the store's change sequence moves, under the store-wide write lock:
reading every keyset again for each participant made it quadratic. A real migrated SQLite store
is wrapped so that its transactions count ``keysets.list_all`` calls.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, cast

import pytest
from service_fixtures import KEYRING

from store_wrapper import StoreWrapper
from uid2_operator.clock import FixedClock
from uid2_operator.domain.keysets import DAY_S, Keyset, site_default_keyset
from uid2_operator.domain.participants import ParticipantType, new_participant
from uid2_operator.domain.roles import ClientRole
from uid2_operator.services.material import MaterialConfig, MaterialService
from uid2_operator.storage import SqlStore, open_store, upgrade
from uid2_operator.storage.interface import (
    KeysetRepository,
    Tx,
)

CONFIG = MaterialConfig(bucket_count=256, chunk_size=64, expired_key_retention_s=DAY_S)
FIRST_SITE = 1001


class CountingKeysets:
    """A transaction's keyset repository that counts ``list_all`` calls."""

    def __init__(self, inner: KeysetRepository, owner: CountingStore) -> None:
        self._inner = inner
        self._owner = owner

    def get(self, keyset_id: int) -> Keyset | None:
        return self._inner.get(keyset_id)

    def list_all(self) -> list[Keyset]:
        self._owner.keyset_list_calls += 1
        return self._inner.list_all()

    def add(self, keyset: Keyset) -> None:
        self._inner.add(keyset)

    def update(self, keyset: Keyset) -> None:
        self._inner.update(keyset)


class CountingTx:
    """A real transaction whose ``keysets`` count their full reads."""

    def __init__(self, inner: Tx, owner: CountingStore) -> None:
        self._inner = inner
        self.keysets = CountingKeysets(inner.keysets, owner)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class CountingStore(StoreWrapper):
    """A real store whose write transactions count ``keysets.list_all`` calls."""

    def __init__(self, inner: SqlStore) -> None:
        super().__init__(inner)
        self.keyset_list_calls = 0
        self.transactions = 0

    @contextmanager
    def _counted(self) -> Iterator[Tx]:
        with self._inner.transaction() as tx:
            self.transactions += 1
            yield cast(Tx, CountingTx(tx, self))

    def transaction(self) -> AbstractContextManager[Tx]:
        return self._counted()

    def close(self) -> None:
        self._inner.close()


def add_participants(store: SqlStore, sites: range) -> None:
    with store.transaction() as tx:
        for site_id in sites:
            tx.participants.add(
                new_participant(
                    site_id=site_id,
                    name=f"Site {site_id}",
                    type=ParticipantType.PUBLISHER,
                    allowed_roles=frozenset({ClientRole.GENERATOR}),
                    contacts=[],
                    now_ms=1,
                )
            )


def seed_some_keysets(material: MaterialService, store: SqlStore, sites: range) -> int:
    """Give some of ``sites`` a keyset beforehand: every third its default (through the service),
    one a disabled default (kept, not replaced), one only a non-default keyset with an id far
    above the others (new ids must go above it). Returns the site with the non-default one."""
    for site_id in sites[::3]:
        material.ensure_site_keyset(site_id)
    disabled, extra = sites[1], sites[2]
    with store.read() as rx:
        top = max(k.keyset_id for k in rx.keysets.list_all())
    with store.transaction() as tx:
        tx.keysets.add(Keyset(top + 1, disabled, "Paused", False, True, 1))
        tx.keysets.add(Keyset(top + 500, extra, "Extra", True, False, 1))
    return extra


def expected_new_keysets(store: SqlStore) -> list[tuple[int, int]]:
    """(keyset id, site id) of the default keysets the rules ask for, stated independently: every
    participant (by site id) without a default keyset gets the next id above the highest in
    use."""
    with store.read() as rx:
        keysets = rx.keysets.list_all()
        participants = rx.participants.list_all()
    top = max(k.keyset_id for k in keysets)
    missing = [p.site_id for p in participants if site_default_keyset(keysets, p.site_id) is None]
    return [(top + 1 + i, site_id) for i, site_id in enumerate(missing)]


def site_keysets(store: SqlStore) -> dict[int, int]:
    with store.read() as rx:
        return {k.keyset_id: k.site_id for k in rx.keysets.list_all()}


def keyset_ids_without_live_key(store: SqlStore, now_ms: int) -> set[int]:
    with store.read() as rx:
        live = {k.keyset_id for k in rx.encryption_keys.list_all() if k.expires * 1000 > now_ms}
        return {k.keyset_id for k in rx.keysets.list_all() if k.enabled} - live


def initialise_counted(store: SqlStore, clock: FixedClock, participants: int) -> int:
    """Calls to ``keysets.list_all`` made by one ``initialise`` over ``participants``."""
    MaterialService(store, KEYRING, CONFIG, clock, os.urandom).initialise()
    add_participants(store, range(FIRST_SITE, FIRST_SITE + participants))
    counting = CountingStore(store)
    MaterialService(counting, KEYRING, CONFIG, clock, os.urandom).initialise()
    return counting.keyset_list_calls


def test_initialise_reads_the_keysets_a_constant_number_of_times(
    tmp_path_factory: pytest.TempPathFactory, store: SqlStore, clock: FixedClock
) -> None:
    few = initialise_counted(store, clock, 3)
    # a second, larger store: the count does not grow with the participants
    path = tmp_path_factory.mktemp("many") / "uid2.db"
    upgrade(f"sqlite:///{path}")
    many_store = open_store(f"sqlite:///{path}")
    try:
        many = initialise_counted(many_store, clock, 300)
    finally:
        many_store.close()
    assert few == many
    assert many <= 2


def test_initialise_creates_exactly_the_missing_default_keysets(
    store: SqlStore, clock: FixedClock
) -> None:
    material = MaterialService(store, KEYRING, CONFIG, clock, os.urandom)
    material.initialise()
    sites = range(FIRST_SITE, FIRST_SITE + 300)
    add_participants(store, sites)
    extra = seed_some_keysets(material, store, sites)
    expected = expected_new_keysets(store)
    needing_keys = keyset_ids_without_live_key(store, clock.now_ms())
    assert len(expected) == 300 - 100 - 1  # every third seeded, one disabled default kept

    counting = CountingStore(store)
    result = MaterialService(counting, KEYRING, CONFIG, clock, os.urandom).initialise()

    assert counting.keyset_list_calls == 1
    created = [(k.keyset_id, k.site_id) for k in result.keysets_created]
    assert created == expected
    assert all(k.is_default and k.enabled for k in result.keysets_created)
    assert extra in {site for _, site in created}  # a non-default keyset is not the default
    # one key in every new keyset and in the enabled keyset that had none, in keyset id order,
    # each naming its keyset's site
    owners = site_keysets(store)
    keys = [(k.keyset_id, k.site_id) for k in result.keys_created]
    assert keys == sorted((ks, owners[ks]) for ks in needing_keys | {ks for ks, _ in expected})
    key_ids = [k.key_id for k in result.keys_created]
    assert key_ids == sorted(key_ids)
    assert len(set(key_ids)) == len(key_ids)
    assert keyset_ids_without_live_key(store, clock.now_ms()) == set()


def test_rotate_keys_reads_the_keysets_once_and_creates_the_missing_ones(
    store: SqlStore, clock: FixedClock
) -> None:
    material = MaterialService(store, KEYRING, CONFIG, clock, os.urandom)
    material.initialise()
    first = range(FIRST_SITE, FIRST_SITE + 300)
    add_participants(store, first)
    material.initialise()
    later = range(FIRST_SITE + 300, FIRST_SITE + 600)
    add_participants(store, later)
    seed_some_keysets(material, store, later)
    expected = expected_new_keysets(store)
    assert len(expected) == 199

    counting = CountingStore(store)
    # long after every key expired: each enabled keyset gets a key, the old ones are purged
    at = clock.now_ms() + 90 * DAY_S * 1000
    result = MaterialService(counting, KEYRING, CONFIG, clock, os.urandom).rotate_keys(now_ms=at)

    assert counting.keyset_list_calls == 1
    assert [(k.keyset_id, k.site_id) for k in result.keysets_created] == expected
    owners = site_keysets(store)
    disabled = _disabled(store)
    assert [(k.keyset_id, k.site_id) for k in result.created] == [
        (ks, site) for ks, site in sorted(owners.items()) if ks not in disabled
    ]
    assert result.purged
    assert all(owners[k.keyset_id] == k.site_id for k in result.purged)
    with store.read() as rx:
        remaining = rx.encryption_keys.list_all()
    assert {k.id for k in remaining}.isdisjoint(k.key_id for k in result.purged)
    assert {k.id for k in remaining} >= {k.key_id for k in result.created}


def _disabled(store: SqlStore) -> set[int]:
    with store.read() as rx:
        return {k.keyset_id for k in rx.keysets.list_all() if not k.enabled}


def test_ensure_site_keyset_reads_the_keysets_once(store: SqlStore, clock: FixedClock) -> None:
    MaterialService(store, KEYRING, CONFIG, clock, os.urandom).initialise()
    add_participants(store, range(FIRST_SITE, FIRST_SITE + 2))
    counting = CountingStore(store)
    material = MaterialService(counting, KEYRING, CONFIG, clock, os.urandom)

    keyset = material.ensure_site_keyset(FIRST_SITE + 1)

    assert counting.keyset_list_calls == 1
    assert (keyset.keyset_id, keyset.site_id) == (4, FIRST_SITE + 1)
    assert keyset_ids_without_live_key(store, clock.now_ms()) == set()
