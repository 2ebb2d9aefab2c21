"""Staged KEK rotation over a migrated SQLite store: a version added inactive to a keyring file,
copied to the other keyring files, then made active (``add_version(activate=False)`` and
``activate_version``).

Each keyring file is held in memory and is also the keyring its "instance" follows: the use cases
of one instance read it the way a running ``serve`` reads its file, so a change to it reaches them
at their next unit of work. Two instances share the store, each with its own file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import pytest
from service_fixtures import ACTOR

from uid2_operator.clock import FixedClock
from uid2_operator.domain.environments import Environment
from uid2_operator.domain.sealing import Keyring, activate_kek_version, add_kek_version
from uid2_operator.errors import InvalidInput, KekVersionMissing, KeyringError
from uid2_operator.services.credentials import CredentialService
from uid2_operator.services.keyring_rotation import (
    KeyringRotationService,
    SealedCounts,
    StagedKeyring,
    VersionUse,
)
from uid2_operator.services.material import MaterialConfig, MaterialService
from uid2_operator.services.snapshot import Lifetimes
from uid2_operator.services.snapshot_loader import load_snapshot, operator_identity
from uid2_operator.storage import SqlStore
from uid2_operator.storage.interface import Store

PEPPER = bytes(range(1, 33))
KEK_1 = bytes(range(64, 96))
KEK_2 = bytes(range(96, 128))
KEK_3 = bytes(range(128, 160))
V1 = Keyring({1: KEK_1}, 1, PEPPER)
CONFIG = MaterialConfig(bucket_count=64, chunk_size=64)
SOURCE = "/srv/uid2/a/keyring.json"


@dataclass
class KeyringFile:
    """One keyring file: what the rotation use cases read and write (``KeyringHolder``), and
    what its instance's use cases follow (``KeyringSource``). ``writable=False`` stands for a
    keyring from UID2_KEYRING."""

    keyring: Keyring
    writable: bool = True
    source: str = SOURCE
    saves: int = 0

    def load(self) -> Keyring:
        return self.keyring

    def stage(self, keyring: Keyring) -> StagedKeyring:
        """Staged, put in place by ``publish`` (once the change committed)."""
        return StagedKeyring(lambda: self.save(keyring), lambda: None)

    def locked(self) -> AbstractContextManager[None]:
        return nullcontext()

    def save(self, keyring: Keyring) -> None:
        assert self.writable
        self.keyring = keyring
        self.saves += 1

    def current(self) -> Keyring:
        return self.keyring

    def latest(self, recorded: Mapping[int, int]) -> Keyring:
        return self.keyring

    def copy_to(self, other: KeyringFile) -> None:
        """Copy this file over ``other`` (as an administrator distributes it)."""
        other.keyring = self.keyring


class RefusingFile(KeyringFile):
    """A keyring file that cannot be written (a full disk, a read-only mount)."""

    def stage(self, keyring: Keyring) -> StagedKeyring:
        raise KeyringError("The keyring file /srv/keyring.json cannot be written: disk full")


@dataclass
class Instance:
    """One data directory's processes over the shared store, following its own keyring file."""

    store: Store
    file: KeyringFile
    credentials: CredentialService
    material: MaterialService
    rotation: KeyringRotationService


def instance(store: Store, clock: FixedClock, file: KeyringFile) -> Instance:
    return Instance(
        store,
        file,
        CredentialService(store, file, Environment.LOCAL, clock, os.urandom),
        MaterialService(store, file, CONFIG, clock, os.urandom),
        KeyringRotationService(store, file, clock, os.urandom),
    )


def reload(clock: FixedClock, one: Instance) -> list[str]:
    """A snapshot load of ``one``'s worker (raises when its keyring cannot open the store): the
    key ids of the API keys it loaded."""
    loaded = load_snapshot(
        one.store,
        one.file,
        one.material,
        identity=operator_identity(Environment.LOCAL),
        lifetimes=Lifetimes(),
        generation=1,
        now_ms=clock.now_ms(),
    )
    return sorted(loaded.snapshot.clients)


@pytest.fixture
def site(store: SqlStore, clock: FixedClock) -> int:
    """A store holding a participant with one key and the material, all under version 1."""
    first = instance(store, clock, KeyringFile(V1))
    site_id = first.credentials.create_participant(
        ACTOR, name="Pub", type="publisher", roles=["GENERATOR"]
    ).site_id
    first.material.initialise(ACTOR)
    first.credentials.create_key(ACTOR, site_id=site_id, name="web", roles=["GENERATOR"])
    return site_id


@pytest.fixture
def a(store: SqlStore, clock: FixedClock, site: int) -> Instance:
    return instance(store, clock, KeyringFile(V1))


def _events(store: Store, action: str) -> list[dict[str, Any]]:
    with store.read() as rx:
        return [
            {"target": e.target_id, "before": e.before, "after": e.after}
            for e in rx.audit.list_events(action=action)
        ]


def _stored(store: Store) -> tuple[object, ...]:
    with store.read() as rx:
        return (
            [k.key_id for k in rx.api_keys.list_all()],
            rx.secrets.count_by_kek_version(),
            rx.encryption_keys.count_by_kek_version(),
            [e.action for e in rx.audit.list_events()],
            rx.change_seq(),
        )


def _new_key_version(one: Instance, site_id: int, name: str) -> int:
    """Create a key through ``one`` and return the KEK version its secret is sealed under."""
    issued = one.credentials.create_key(ACTOR, site_id=site_id, name=name, roles=["GENERATOR"])
    with one.store.read() as rx:
        (sealed,) = rx.secrets.list_for_key(issued.key_id)
    return sealed.kek_version


# ------------------------------------------------------------------------------- domain


def test_a_version_added_inactive_is_held_but_the_active_version_stays() -> None:
    added = add_kek_version(V1, lambda n: KEK_2[:n], activate=False)
    assert (added.versions, added.active_version) == ((1, 2), 1)
    assert (added.kek(1), added.kek(2), added.pepper) == (KEK_1, KEK_2, PEPPER)


def test_activating_switches_the_active_version_and_refuses_one_the_keyring_lacks() -> None:
    both = Keyring({1: KEK_1, 2: KEK_2}, 1, PEPPER)
    activated = activate_kek_version(both, 2)
    assert (activated.versions, activated.active_version) == ((1, 2), 2)
    assert (activated.kek(1), activated.kek(2)) == (KEK_1, KEK_2)
    assert activate_kek_version(activated, 2) is activated
    with pytest.raises(KekVersionMissing) as missing:
        activate_kek_version(both, 3)
    assert missing.value.version == 3


# ------------------------------------------------------------------------------- add inactive


def test_add_version_inactive_holds_the_version_but_seals_under_the_old_one(
    a: Instance, store: SqlStore, clock: FixedClock, site: int
) -> None:
    seq = store.change_seq()
    change = a.rotation.add_version(ACTOR, activate=False)
    assert (change.version, change.active_version, change.keyring_versions) == (2, 1, (1, 2))
    assert change.active is False
    assert change.to_json() == {
        "at_ms": clock.now_ms(),
        "version": 2,
        "active_version": 1,
        "keyring_versions": [1, 2],
        "source": SOURCE,
        "active": False,
    }
    assert a.file.saves == 1
    assert (a.file.keyring.versions, a.file.keyring.active_version) == ((1, 2), 1)
    assert a.file.keyring.kek(1) == KEK_1
    assert _events(store, "keyring.version.add") == [
        {"target": "2", "before": None, "after": {"kek_version": 2, "active": False}}
    ]
    assert store.change_seq() == seq + 1

    assert _new_key_version(a, site, "after the add") == 1
    status = a.rotation.status()
    assert status.use_of(2) == VersionUse(2, True, False, SealedCounts())
    assert status.to_reseal == 0


def test_an_inactive_version_is_refused_while_the_store_names_versions_the_file_lacks(
    a: Instance, site: int
) -> None:
    a.file.keyring = Keyring({1: KEK_1, 2: KEK_2}, 2, PEPPER)
    a.rotation.reseal(ACTOR)
    a.file.keyring = V1  # version 2 lost from the file by a hand edit
    with pytest.raises(KeyringError, match=r"versions the keyring lacks \(version 2: "):
        a.rotation.add_version(ACTOR, activate=False)
    assert a.file.keyring.versions == (1,)


# ------------------------------------------------------------------------------- activate


def test_activate_version_switches_sealing_to_it_and_records_the_change(
    a: Instance, store: SqlStore, clock: FixedClock, site: int
) -> None:
    a.rotation.add_version(ACTOR, activate=False)
    seq, saves = store.change_seq(), a.file.saves
    activation = a.rotation.activate_version(2, ACTOR)
    assert (activation.version, activation.previous_version, activation.changed) == (2, 1, True)
    assert activation.to_json() == {
        "at_ms": clock.now_ms(),
        "version": 2,
        "active_version": 2,
        "keyring_versions": [1, 2],
        "source": SOURCE,
        "active": True,
        "previous_active_version": 1,
        "changed": True,
    }
    assert a.file.saves == saves + 1
    assert (a.file.keyring.versions, a.file.keyring.active_version) == ((1, 2), 2)
    assert a.file.keyring.kek(1) == KEK_1
    assert _events(store, "keyring.version.activate") == [
        {
            "target": "2",
            "before": {"active_kek_version": 1},
            "after": {"active_kek_version": 2},
        }
    ]
    assert store.change_seq() == seq + 1

    assert _new_key_version(a, site, "after activation") == 2
    status = a.rotation.status()
    assert status.use_of(2) == VersionUse(2, True, True, SealedCounts(client_secrets=1))
    old = status.use_of(1)
    assert old is not None
    assert old.sealed.total > 0
    assert status.to_reseal == old.sealed.total


def test_activating_the_active_version_changes_nothing(a: Instance, store: SqlStore) -> None:
    a.rotation.add_version(ACTOR, activate=False)
    before, keyring, saves = _stored(store), a.file.keyring, a.file.saves
    activation = a.rotation.activate_version(1, ACTOR)
    assert (activation.version, activation.previous_version, activation.changed) == (1, 1, False)
    assert activation.to_json()["changed"] is False
    assert (_stored(store), a.file.keyring, a.file.saves) == (before, keyring, saves)


@pytest.mark.parametrize(
    ("version", "message"),
    [
        (3, r"The keyring has no key-encryption key version 3 \(it holds 1, 2\)"),
        (0, r"The keyring has no key-encryption key version 0 \(it holds 1, 2\)"),
        (True, "The version must be an integer"),
        ("2", "The version must be an integer"),
    ],
)
def test_activate_version_refuses_a_version_the_keyring_lacks_or_a_malformed_one(
    a: Instance, store: SqlStore, version: Any, message: str
) -> None:
    a.rotation.add_version(ACTOR, activate=False)
    before, keyring, saves = _stored(store), a.file.keyring, a.file.saves
    with pytest.raises(InvalidInput, match=message):
        a.rotation.activate_version(version, ACTOR)
    assert (_stored(store), a.file.keyring, a.file.saves) == (before, keyring, saves)


def test_activate_version_is_refused_while_another_keyring_file_is_ahead(
    a: Instance, store: SqlStore, clock: FixedClock, site: int
) -> None:
    # Another data directory's file gained version 3 and sealed under it; this one lags behind.
    ahead = instance(store, clock, KeyringFile(Keyring({1: KEK_1, 3: KEK_3}, 3, PEPPER)))
    assert _new_key_version(ahead, site, "sealed elsewhere") == 3
    a.file.keyring = Keyring({1: KEK_1, 2: KEK_2}, 1, PEPPER)
    before, keyring, saves = _stored(store), a.file.keyring, a.file.saves
    with pytest.raises(KeyringError) as refused:
        a.rotation.activate_version(2, ACTOR)
    assert str(refused.value).startswith(
        "Items are sealed under key-encryption key versions the keyring lacks (version 3: 1 item "
        "(client_secrets 1)), so another keyring file is ahead of this one"
    )
    assert (_stored(store), a.file.keyring, a.file.saves) == (before, keyring, saves)


def test_a_keyring_from_the_environment_gets_what_to_provision_instead(
    store: SqlStore, clock: FixedClock, site: int
) -> None:
    fixed = KeyringFile(Keyring({1: KEK_1, 2: KEK_2}, 1, PEPPER), writable=False)
    rotation = KeyringRotationService(store, fixed, clock, os.urandom)
    before = _stored(store)
    with pytest.raises(InvalidInput) as added:
        rotation.add_version(ACTOR, activate=False)
    assert str(added.value) == (
        "The keyring comes from UID2_KEYRING and cannot be written here: provision keyring JSON "
        "there with version 3 added (32 random bytes, base64) keeping active_kek_version 1, then "
        "restart"
    )
    with pytest.raises(InvalidInput) as activated:
        rotation.activate_version(2, ACTOR)
    assert str(activated.value) == (
        "The keyring comes from UID2_KEYRING and cannot be written here: provision keyring JSON "
        "there with active_kek_version 2, restart, then run uid2-operator keyring reseal"
    )
    assert rotation.activate_version(1, ACTOR).changed is False
    assert _stored(store) == before


def test_a_refused_keyring_write_rolls_the_activation_back(
    store: SqlStore, clock: FixedClock, site: int
) -> None:
    both = Keyring({1: KEK_1, 2: KEK_2}, 1, PEPPER)
    refusing = RefusingFile(both)
    rotation = KeyringRotationService(store, refusing, clock, os.urandom)
    before = _stored(store)
    with pytest.raises(KeyringError, match="disk full"):
        rotation.activate_version(2, ACTOR)
    with pytest.raises(KeyringError, match="disk full"):
        rotation.add_version(ACTOR, activate=False)
    assert (_stored(store), refusing.keyring) == (before, both)


# ------------------------------------------------------------------------------- two files


def test_staged_rotation_keeps_every_instance_loading_snapshots(
    a: Instance, store: SqlStore, clock: FixedClock, site: int
) -> None:
    b = instance(store, clock, KeyringFile(V1, source="/srv/uid2/b/keyring.json"))
    a.rotation.add_version(ACTOR, activate=False)
    assert _new_key_version(a, site, "before the copy") == 1
    assert reload(clock, b) == reload(clock, a)  # nothing is under version 2 yet

    a.file.copy_to(b.file)
    a.rotation.activate_version(2, ACTOR)
    assert _new_key_version(a, site, "sealed by a") == 2
    assert _new_key_version(b, site, "sealed by b") == 1  # b's file not activated yet
    assert reload(clock, b) == reload(clock, a)

    b.rotation.activate_version(2, ACTOR)
    assert _new_key_version(b, site, "sealed by b after") == 2
    a.rotation.reseal(ACTOR)
    a.rotation.drop_version(1, ACTOR)
    a.file.copy_to(b.file)
    assert b.file.keyring.versions == (2,)
    assert reload(clock, b) == reload(clock, a)
    assert len(reload(clock, b)) == 5  # the first key and the four created here
