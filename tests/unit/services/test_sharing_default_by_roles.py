"""The sharing a participant's default keyset is created with follows its type and roles.

A publisher, and any participant holding GENERATOR, puts its tokens in the bid stream, so its
keyset starts shared with bidders (a publisher that generates tokens only on the client side
holds no role at all); any other (an advertiser or a data provider that shares raw UIDs, a DSP)
starts with a keyset only it reads. Every use case that creates a default keyset follows the
same rule, and the choice ``show_sharing`` answers before the keyset exists is the one it is then
created with.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from service_fixtures import ACTOR, KEYRING, load_local_snapshot

from uid2_operator.clock import FixedClock
from uid2_operator.domain.environments import Environment
from uid2_operator.domain.keysets import Keyset, SharingMode, site_default_keyset
from uid2_operator.domain.sharing import ALL_BIDDERS, OWNER_ONLY, SharingPolicy
from uid2_operator.services.credentials import CredentialService
from uid2_operator.services.data_plane import key_sharing
from uid2_operator.services.material import MaterialConfig, MaterialService
from uid2_operator.services.sharing import SharingService
from uid2_operator.storage import SqlStore

PUBLISHER, ADVERTISER, DATA_PROVIDER, DSP, CLIENT_SIDE = 1001, 1002, 1003, 1004, 1005
EXPECTED = {
    PUBLISHER: ALL_BIDDERS,
    CLIENT_SIDE: ALL_BIDDERS,
    ADVERTISER: OWNER_ONLY,
    DATA_PROVIDER: OWNER_ONLY,
    DSP: OWNER_ONLY,
}
CREATORS: dict[str, Callable[[MaterialService], object]] = {
    "initialise": lambda material: material.initialise(ACTOR),
    "rotate_keys": lambda material: material.rotate_keys(actor=ACTOR),
    "ensure_site_keyset": lambda material: [
        material.ensure_site_keyset(site, ACTOR) for site in EXPECTED
    ],
}


@pytest.fixture
def material(store: SqlStore, clock: FixedClock) -> MaterialService:
    service = MaterialService(
        store, KEYRING, MaterialConfig(bucket_count=64, chunk_size=64), clock, os.urandom
    )
    service.initialise(ACTOR)  # the participants below are added after it: no keyset yet
    return service


@pytest.fixture
def sharing(store: SqlStore, clock: FixedClock, material: MaterialService) -> SharingService:
    return SharingService(store, KEYRING, Environment.LOCAL, clock, os.urandom, material=material)


@pytest.fixture
def key_ids(svc: CredentialService) -> dict[int, str]:
    """The participants, each with one key holding all its roles; their key ids by site."""
    kinds = {
        PUBLISHER: ("publisher", ["GENERATOR", "SHARER"]),
        ADVERTISER: ("advertiser", ["SHARER"]),
        DATA_PROVIDER: ("data_provider", ["SHARER", "MAPPER"]),
        DSP: ("dsp", ["ID_READER"]),
    }
    ids: dict[int, str] = {}
    for site, (kind, roles) in kinds.items():
        svc.create_participant(ACTOR, name=f"Site {site}", type=kind, site_id=site, roles=roles)
        ids[site] = svc.create_key(ACTOR, site_id=site, name=f"k{site}", roles=roles).key_id
    # A publisher generating tokens only on the client side: a keypair later, no role, no key.
    svc.create_participant(ACTOR, name="Client side", type="publisher", site_id=CLIENT_SIDE)
    return ids


def _keyset(store: SqlStore, site_id: int) -> tuple[Keyset, SharingPolicy | None]:
    with store.read() as rx:
        keyset = site_default_keyset(rx.keysets.list_all(), site_id)
        assert keyset is not None
        return keyset, rx.keyset_sharing.get(keyset.keyset_id)


@pytest.mark.parametrize("create", sorted(CREATORS))
def test_a_default_keyset_is_shared_with_bidders_for_a_publisher_or_a_generator(
    create: str, store: SqlStore, material: MaterialService, key_ids: dict[int, str]
) -> None:
    del key_ids  # the participants
    CREATORS[create](material)
    for site, policy in EXPECTED.items():
        keyset, stored = _keyset(store, site)
        assert (site, keyset.sharing, stored) == (site, policy.mode, policy)


def test_the_choice_shown_before_the_keyset_exists_is_the_one_it_is_created_with(
    store: SqlStore,
    material: MaterialService,
    sharing: SharingService,
    key_ids: dict[int, str],
) -> None:
    del key_ids  # the participants
    before = {site: sharing.show_sharing(ACTOR, site) for site in EXPECTED}
    assert {site: (v.keyset_id, v.policy) for site, v in before.items()} == {
        site: (None, policy) for site, policy in EXPECTED.items()
    }
    material.initialise(ACTOR)
    for site, shown in before.items():
        after = sharing.show_sharing(ACTOR, site)
        keyset, stored = _keyset(store, site)
        assert (after.keyset_id, after.policy) == (keyset.keyset_id, shown.policy)
        assert stored == shown.policy


def test_a_dsp_downloads_a_publisher_s_keys_but_not_an_advertiser_s(
    store: SqlStore, clock: FixedClock, material: MaterialService, key_ids: dict[int, str]
) -> None:
    material.initialise(ACTOR)
    snapshot = load_local_snapshot(store, material, clock).snapshot

    def downloaded(site: int) -> set[int]:
        record = snapshot.client(key_ids[site])
        assert record is not None
        reply = key_sharing(snapshot, record.caller)
        assert reply.status == "success"
        assert reply.body is not None
        return {key["id"] for key in reply.body["keys"]}

    def keys_of(site: int) -> set[int]:
        keyset, _ = _keyset(store, site)
        with store.read() as rx:
            return {key.id for key in rx.encryption_keys.list_for_keyset(keyset.keyset_id)}

    advertiser, data_provider, publisher, client_side = (
        keys_of(s) for s in (ADVERTISER, DATA_PROVIDER, PUBLISHER, CLIENT_SIDE)
    )
    assert all((advertiser, data_provider, publisher, client_side))
    dsp = downloaded(DSP)
    assert publisher <= dsp
    assert client_side <= dsp
    assert not dsp & (advertiser | data_provider)
    assert advertiser <= downloaded(ADVERTISER)
    assert not downloaded(DATA_PROVIDER) & advertiser
    assert not downloaded(ADVERTISER) & data_provider


def test_a_participant_that_gains_generator_keeps_its_keyset_s_choice(
    store: SqlStore,
    svc: CredentialService,
    material: MaterialService,
    sharing: SharingService,
    key_ids: dict[int, str],
) -> None:
    del key_ids  # the participants
    material.initialise(ACTOR)
    svc.set_participant_roles(ACTOR, ADVERTISER, ["SHARER", "GENERATOR"])
    material.initialise(ACTOR)
    keyset, stored = _keyset(store, ADVERTISER)
    assert (keyset.sharing, stored) == (SharingMode.OWNER_ONLY, OWNER_ONLY)
    assert sharing.show_sharing(ACTOR, ADVERTISER).policy == OWNER_ONLY
    assert sharing.set_sharing(ACTOR, ADVERTISER, mode="bidders").changed
    assert _keyset(store, ADVERTISER)[1] == ALL_BIDDERS
