"""One definition each: the operator's snapshot is made of the very values the store loads.

A keyset, a salt table and an opt-out each have one type, in ``domain/``; the snapshot holds the
loaded objects themselves (no copy into a look-alike type that could drift), the stored sharing
choices sit beside the keysets, and an opt-out made by the request path is stored as it was made.
The first test keeps ``services/`` from defining again a class that ``domain/`` or ``wire/``
already defines.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
from service_fixtures import ACTOR, KEYRING, load_local_snapshot

from uid2_operator.clock import FixedClock
from uid2_operator.domain.environments import Environment
from uid2_operator.domain.keysets import SharingMode
from uid2_operator.domain.optout import OptOutRecord
from uid2_operator.domain.participants import ParticipantType, new_participant
from uid2_operator.domain.roles import ClientRole
from uid2_operator.services.material import MaterialConfig, MaterialService
from uid2_operator.services.sharing import SharingService
from uid2_operator.services.snapshot import CstgKeypair
from uid2_operator.services.write_behind import write_optouts
from uid2_operator.storage import SqlStore
from uid2_operator.wire.identity import hash_identity
from uid2_operator.wire.scope import IdentityType

PACKAGE = Path(__file__).resolve().parents[3] / "src" / "uid2_operator"
PUBLISHER, OTHER, DSP = 1001, 1002, 1003
SHARER = frozenset({ClientRole.SHARER})

# ------------------------------------------------------------------------ one class, one place


def _classes(source: str) -> set[str]:
    return {node.name for node in ast.parse(source).body if isinstance(node, ast.ClassDef)}


def _redefined(services: dict[str, str], pure: dict[str, str]) -> list[str]:
    """``module: Class`` for every class of a services module that a pure module defines too."""
    defined = {name for source in pure.values() for name in _classes(source)}
    return sorted(
        f"{module}: {name}"
        for module, source in services.items()
        for name in _classes(source) & defined
    )


def _sources(*layers: str) -> dict[str, str]:
    return {
        str(path.relative_to(PACKAGE)): path.read_text(encoding="utf-8")
        for layer in layers
        for path in sorted((PACKAGE / layer).rglob("*.py"))
    }


def test_services_define_no_class_that_domain_or_wire_defines() -> None:
    assert _redefined(_sources("services"), _sources("domain", "wire")) == []


def test_the_check_finds_a_second_definition() -> None:
    pure = {"domain/keysets.py": "class Keyset:\n    pass\n\nclass SharingMode:\n    pass\n"}
    services = {"services/snapshot.py": "class Keyset:\n    pass\n\nclass Snapshot:\n    pass\n"}
    assert _redefined(services, pure) == ["services/snapshot.py: Keyset"]
    assert _sources("services")  # the scan reads the real tree, not an empty folder


# ------------------------------------------------------------------------ loading


@pytest.fixture
def material(store: SqlStore, clock: FixedClock) -> MaterialService:
    config = MaterialConfig(bucket_count=64, chunk_size=64)
    return MaterialService(store, KEYRING, config, clock, os.urandom)


@pytest.fixture
def sharing(store: SqlStore, clock: FixedClock, material: MaterialService) -> SharingService:
    kinds = ((PUBLISHER, ParticipantType.PUBLISHER), (OTHER, ParticipantType.PUBLISHER))
    with store.transaction() as tx:
        for site, kind in (*kinds, (DSP, ParticipantType.DSP)):
            tx.participants.add(
                new_participant(
                    site_id=site,
                    name=f"Site {site}",
                    type=kind,
                    allowed_roles=SHARER,
                    contacts=[],
                    now_ms=clock.now_ms(),
                )
            )
    material.initialise(ACTOR)
    return SharingService(store, KEYRING, Environment.LOCAL, clock, os.urandom, material=material)


def test_the_snapshot_holds_the_loaded_keysets_salts_and_keypairs_themselves(
    store: SqlStore, material: MaterialService, sharing: SharingService, clock: FixedClock
) -> None:
    keypair = sharing.create_keypair(ACTOR, site_id=PUBLISHER)
    loaded = load_local_snapshot(store, material, clock)
    snapshot = loaded.snapshot
    assert snapshot.salts is loaded.material.salts
    assert loaded.material.keysets
    for keyset in loaded.material.keysets:
        assert snapshot.keysets[keyset.keyset_id] is keyset
    assert set(snapshot.sharing) == set(snapshot.keysets)
    opened = snapshot.keypairs[keypair.subscription_id]
    assert isinstance(opened, CstgKeypair)
    assert (opened.site_id, opened.disabled) == (PUBLISHER, False)
    # A reload over an unchanged salt table keeps the very same table object.
    assert load_local_snapshot(store, material, clock, loaded).snapshot.salts is snapshot.salts


def test_the_stored_sharing_choice_with_its_types_decides_who_sees_the_keys(
    store: SqlStore, material: MaterialService, sharing: SharingService, clock: FixedClock
) -> None:
    view = sharing.set_sharing(ACTOR, PUBLISHER, mode="list", types=["dsp"], rotate=False)
    snapshot = load_local_snapshot(store, material, clock).snapshot
    keyset = snapshot.keysets[view.keyset_id]
    assert keyset.sharing is SharingMode.LIST
    assert snapshot.sharing[view.keyset_id] == view.policy

    def sees(site: int) -> bool:
        return any(ks.keyset_id == view.keyset_id for _, ks in snapshot.visible_keys(site, SHARER))

    assert sees(PUBLISHER)
    assert sees(DSP)  # listed by participant type, which the keyset record does not carry
    assert not sees(OTHER)


def test_opt_outs_are_the_stored_records_both_ways(
    store: SqlStore, material: MaterialService, sharing: SharingService, clock: FixedClock
) -> None:
    del sharing  # the world only needs to exist
    material.add_optout("email", "someone@example.com")
    loaded = load_local_snapshot(store, material, clock)
    [stored] = loaded.material.optouts
    optouts = loaded.snapshot.optouts
    assert optouts.by_flh == {stored.first_level_hash: stored.timestamp_ms}
    assert optouts.opted_out(IdentityType.EMAIL, stored.first_level_hash)

    # What /v2/token/logout records reaches the store as it was made.
    digest = hash_identity("another@example.com")
    flh = loaded.snapshot.salts.first_level_hash(digest)
    made = OptOutRecord(flh, clock.now_ms(), "A" * 44)
    write_optouts(store, [made], clock.now_ms)
    with store.read() as rx:
        assert rx.optouts.get(flh) == made
