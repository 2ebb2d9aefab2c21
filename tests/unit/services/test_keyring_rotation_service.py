"""KEK rotation use cases over a migrated SQLite store, with the keyring held in memory.

The store holds a bit of everything that is sealed: client secrets (one key with a rotated
secret), encryption keys, the salt table and its chunks, a client-side keypair. A failure half-way
through a re-seal is injected through a store wrapper whose repository method raises.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import pytest
from service_fixtures import ACTOR

from uid2_operator.clock import FixedClock
from uid2_operator.domain.audit import verify_chain
from uid2_operator.domain.environments import Environment
from uid2_operator.domain.keysets import site_default_keyset
from uid2_operator.domain.sealing import Keyring, drop_kek_version
from uid2_operator.errors import InvalidInput, KeyringError, StoreError
from uid2_operator.services.credentials import CredentialService
from uid2_operator.services.keyring_rotation import (
    SEALED_KINDS,
    KeyringRotationService,
    SealedCounts,
    StagedKeyring,
    VersionUse,
)
from uid2_operator.services.material import Material, MaterialConfig, MaterialService
from uid2_operator.services.sharing import SharingService, read_client_side_state
from uid2_operator.storage import SqlStore
from uid2_operator.storage.interface import Store, Tx
from uid2_operator.wire.cstg import private_key_der
from uid2_operator.wire.keys import MASTER_KEYSET_ID, EncryptionKey, active_key
from uid2_operator.wire.raw_uid import raw_uid_v2
from uid2_operator.wire.scope import IdentityScope, IdentityType
from uid2_operator.wire.tokens import (
    AdvertisingToken,
    decode_advertising_token,
    encode_advertising_token,
)

PEPPER = bytes(range(1, 33))
KEK_1 = bytes(range(64, 96))
KEK_2 = bytes(range(96, 128))
V1 = Keyring({1: KEK_1}, 1, PEPPER)
BUCKETS = 256
CONFIG = MaterialConfig(bucket_count=BUCKETS, chunk_size=64)  # four chunks
SOURCE = "/srv/uid2/keyring.json"


@dataclass
class MemoryKeyring:
    """A ``KeyringHolder`` in memory; ``writable=False`` stands for a keyring from UID2_KEYRING."""

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


@dataclass(frozen=True)
class World:
    sites: tuple[int, int]
    keys: tuple[tuple[str, tuple[bytes, ...]], ...]  # key text, the raw secrets it opens with
    counts: SealedCounts


def services(
    store: Store, clock: FixedClock, keyring: Keyring
) -> tuple[CredentialService, MaterialService, SharingService]:
    material = MaterialService(store, keyring, CONFIG, clock, os.urandom)
    return (
        CredentialService(store, keyring, Environment.LOCAL, clock, os.urandom),
        material,
        SharingService(store, keyring, Environment.LOCAL, clock, os.urandom, material=material),
    )


@pytest.fixture
def holder() -> MemoryKeyring:
    return MemoryKeyring(V1)


@pytest.fixture
def rotation(store: SqlStore, clock: FixedClock, holder: MemoryKeyring) -> KeyringRotationService:
    return KeyringRotationService(store, holder, clock, os.urandom)


@pytest.fixture
def world(store: SqlStore, clock: FixedClock) -> World:
    credentials, material, sharing = services(store, clock, V1)
    sites = tuple(
        credentials.create_participant(
            ACTOR, name=f"Site {n}", type="publisher", roles=["GENERATOR", "MAPPER"]
        ).site_id
        for n in (1, 2)
    )
    material.initialise(ACTOR)
    first = credentials.create_key(ACTOR, site_id=sites[0], name="web", roles=["GENERATOR"])
    second = credentials.create_key(ACTOR, site_id=sites[1], name="batch", roles=["MAPPER"])
    rotated = credentials.rotate_secret(ACTOR, second.key_id, grace_days=3)
    sharing.create_keypair(ACTOR, site_id=sites[0], name="pages")
    with store.read() as rx:
        key_count = len(rx.encryption_keys.list_all())
    assert key_count >= 4  # master, refresh, fallback publisher, and a keyset per site
    return World(
        sites=(sites[0], sites[1]),
        keys=(
            (first.key, (_raw(first.secret),)),
            (second.key, (_raw(second.secret), _raw(rotated.secret))),
        ),
        counts=SealedCounts(
            client_secrets=3, encryption_keys=key_count, salt_table=2, salt_chunks=4, keypairs=1
        ),
    )


def _raw(text: str) -> bytes:
    return base64.b64decode(text)


def _events(store: Store, action: str) -> list[dict[str, Any]]:
    with store.read() as rx:
        return [
            {"target": e.target_id, "before": e.before, "after": e.after}
            for e in rx.audit.list_events(action=action)
        ]


def _stored(store: Store) -> dict[str, object]:
    """Every sealed column of the store, to compare before and after a refused change."""
    with store.read() as rx:
        return {
            "secrets": [
                (s.secret_id, s.kek_version, s.ciphertext)
                for k in rx.api_keys.list_all()
                for s in rx.secrets.list_for_key(k.key_id)
            ],
            "keys": rx.encryption_keys.list_all(),
            "header": rx.salts.header(),
            "chunks": list(rx.salts.iter_chunks()),
            "keypairs": rx.keypairs.list_all(),
            "audit": [e.action for e in rx.audit.list_events()],
            "change_seq": rx.change_seq(),
        }


# ------------------------------------------------------------------------------- status


def test_status_counts_every_sealed_item_by_kind_and_version(
    rotation: KeyringRotationService, world: World
) -> None:
    status = rotation.status()
    assert status.source == SOURCE
    assert status.development is False
    assert status.active_version == 1
    assert status.keyring_versions == (1,)
    assert status.versions == (VersionUse(1, True, True, world.counts),)
    assert status.unknown_versions == ()
    assert status.to_reseal == 0
    assert world.counts.total == 3 + world.counts.encryption_keys + 2 + 4 + 1


def test_status_json_field_names_are_stable(
    rotation: KeyringRotationService, world: World, holder: MemoryKeyring
) -> None:
    holder.keyring = Keyring({1: KEK_1, 2: KEK_2}, 2, PEPPER, development=True)
    document = rotation.status().to_json()
    assert list(document) == [
        "source",
        "development",
        "active_version",
        "keyring_versions",
        "versions",
        "unknown_versions",
        "to_reseal",
        "active_version_dropped",
    ]
    assert document["active_version_dropped"] is False
    assert document["development"] is True
    assert document["keyring_versions"] == [1, 2]
    assert document["to_reseal"] == world.counts.total
    first, second = document["versions"]
    assert list(first) == ["version", "in_keyring", "active", "sealed", "total"]
    assert list(first["sealed"]) == list(SEALED_KINDS)
    assert list(SEALED_KINDS) == [
        "client_secrets",
        "encryption_keys",
        "salt_table",
        "salt_chunks",
        "keypairs",
    ]
    assert first == {
        "version": 1,
        "in_keyring": True,
        "active": False,
        "sealed": world.counts.to_json(),
        "total": world.counts.total,
    }
    assert second["sealed"] == dict.fromkeys(SEALED_KINDS, 0)
    assert second["active"] is True


def test_status_of_an_empty_store(rotation: KeyringRotationService) -> None:
    status = rotation.status()
    assert status.versions == (VersionUse(1, True, True, SealedCounts()),)
    assert status.to_reseal == 0


# ------------------------------------------------------------------------------- add-version


def test_add_version_makes_a_new_active_version_and_new_items_go_under_it(
    rotation: KeyringRotationService,
    world: World,
    holder: MemoryKeyring,
    store: SqlStore,
    clock: FixedClock,
) -> None:
    seq = store.change_seq()
    change = rotation.add_version(ACTOR)
    assert (change.version, change.active_version, change.keyring_versions) == (2, 2, (1, 2))
    assert change.to_json() == {
        "at_ms": clock.now_ms(),
        "version": 2,
        "active_version": 2,
        "keyring_versions": [1, 2],
        "source": SOURCE,
        "active": True,
    }
    assert holder.saves == 1
    assert holder.keyring.versions == (1, 2)
    assert holder.keyring.active_version == 2
    assert holder.keyring.kek(1) == KEK_1
    assert holder.keyring.pepper == PEPPER
    assert _events(store, "keyring.version.add") == [
        {"target": "2", "before": None, "after": {"kek_version": 2}}
    ]
    assert store.change_seq() == seq + 1

    credentials, _, sharing = services(store, clock, holder.keyring)
    credentials.create_key(ACTOR, site_id=world.sites[0], name="new", roles=["GENERATOR"])
    sharing.create_keypair(ACTOR, site_id=world.sites[1])
    status = rotation.status()
    assert status.use_of(1) == VersionUse(1, True, False, world.counts)
    assert status.use_of(2) == VersionUse(2, True, True, SealedCounts(client_secrets=1, keypairs=1))
    assert status.to_reseal == world.counts.total


def test_add_version_is_refused_while_the_store_names_versions_the_keyring_lacks(
    rotation: KeyringRotationService, world: World, holder: MemoryKeyring, store: SqlStore
) -> None:
    holder.keyring = Keyring({1: KEK_1, 2: KEK_2}, 2, PEPPER)
    rotation.reseal(ACTOR)
    holder.keyring = V1  # version 2 lost from the keyring by a hand edit
    status = rotation.status()
    assert status.unknown_versions == (2,)
    assert status.use_of(2) == VersionUse(2, False, False, world.counts)
    seq = store.change_seq()
    with pytest.raises(KeyringError, match=r"versions the keyring lacks \(version 2: "):
        rotation.add_version(ACTOR)  # adding to a file that is behind only deepens the drift
    assert holder.keyring.versions == (1,)
    assert store.change_seq() == seq
    assert rotation.status().unknown_versions == (2,)


# ------------------------------------------------------------------------------- reseal


def _material_plaintexts(material: Material) -> tuple[object, ...]:
    salts = material.salts
    return (
        sorted((k.id, k.keyset_id, k.activates, k.expires, k.secret) for k in material.keys),
        salts.first_level_salt,
        salts.id_secret,
        salts.version,
        [salts.chunk(n) for n in range(salts.chunk_count())],  # every salt column as stored
    )


def _issue_token(material: Material, site_id: int, now_ms: int) -> tuple[str, bytes]:
    keys = material.keys
    site_keyset = site_default_keyset(material.keysets, site_id)
    assert site_keyset is not None
    raw_uid = raw_uid_v2(bytes(range(32)), material.salts.salt(7, now_ms))
    token = AdvertisingToken(
        scope=IdentityScope.UID2,
        identity_type=IdentityType.EMAIL,
        master_key_id=active_key(keys, now_ms, keyset_id=MASTER_KEYSET_ID).id,
        site_key_id=active_key(keys, now_ms, keyset_id=site_keyset.keyset_id).id,
        expires_ms=now_ms + 3_600_000,
        created_ms=now_ms,
        site_id=site_id,
        privacy_bits=1,
        established_ms=now_ms,
        refreshed_ms=now_ms,
        raw_uid=raw_uid,
    )
    master = active_key(keys, now_ms, keyset_id=MASTER_KEYSET_ID)
    site = active_key(keys, now_ms, keyset_id=site_keyset.keyset_id)
    return encode_advertising_token(token, master_key=master, site_key=site, random=os.urandom), (
        raw_uid
    )


def _lookup(keys: tuple[EncryptionKey, ...]) -> Any:
    by_id = {k.id: k for k in keys}
    return by_id.get


def test_reseal_moves_every_item_under_the_active_version_and_changes_no_plaintext(
    rotation: KeyringRotationService,
    world: World,
    holder: MemoryKeyring,
    store: SqlStore,
    clock: FixedClock,
) -> None:
    _, material_v1, _ = services(store, clock, V1)
    before = material_v1.load_material()
    token, raw_uid = _issue_token(before, world.sites[0], clock.now_ms())
    private_keys = [
        private_key_der(k.private_key) for k in read_client_side_state(store, V1).keypairs
    ]

    rotation.add_version(ACTOR)
    seq = store.change_seq()
    result = rotation.reseal(ACTOR)
    assert result.active_version == 2
    assert result.from_versions == (1,)
    assert result.resealed == world.counts
    assert result.to_json() == {
        "at_ms": clock.now_ms(),
        "active_version": 2,
        "from_versions": [1],
        "resealed": world.counts.to_json(),
        "total": world.counts.total,
    }
    assert store.change_seq() == seq + 1  # one unit of work, one change
    status = rotation.status()
    assert status.use_of(1) == VersionUse(1, True, False, SealedCounts())
    assert status.use_of(2) == VersionUse(2, True, True, world.counts)
    assert status.to_reseal == 0
    [event] = _events(store, "keyring.reseal")
    assert event == {
        "target": "2",
        "before": None,
        "after": {
            "kek_version": 2,
            "from_versions": [1],
            "resealed": world.counts.to_json(),
            "total": world.counts.total,
        },
    }
    with store.read() as rx:
        assert verify_chain(rx.audit.list_events(), recorded_head=rx.audit.head()).ok

    # Nothing needs version 1 any more: a keyring without it opens everything, to the same bytes.
    only_v2 = drop_kek_version(holder.keyring, 1)
    credentials, material_v2, _ = services(store, clock, only_v2)
    for key_text, secrets in world.keys:
        assert sorted(credentials.resolve_client(key_text).secrets) == sorted(secrets)
    after = material_v2.load_material()
    assert _material_plaintexts(after) == _material_plaintexts(before)
    decoded = decode_advertising_token(
        token, master_key=_lookup(after.keys), site_key=_lookup(after.keys)
    )
    assert decoded.raw_uid == raw_uid
    assert raw_uid_v2(bytes(range(32)), after.salts.salt(7, clock.now_ms())) == raw_uid
    reopened = read_client_side_state(store, only_v2).keypairs
    assert [private_key_der(k.private_key) for k in reopened] == private_keys


def test_a_second_reseal_moves_nothing_and_changes_nothing(
    rotation: KeyringRotationService, world: World, store: SqlStore
) -> None:
    rotation.add_version(ACTOR)
    assert rotation.reseal(ACTOR).resealed.total == world.counts.total
    stored = _stored(store)
    again = rotation.reseal(ACTOR)
    assert again.resealed == SealedCounts()
    assert again.from_versions == ()
    assert again.to_json()["total"] == 0
    assert _stored(store) == stored
    assert len(_events(store, "keyring.reseal")) == 1


def test_reseal_with_nothing_under_an_old_version_does_nothing(
    rotation: KeyringRotationService, world: World, store: SqlStore
) -> None:
    stored = _stored(store)
    assert rotation.reseal(ACTOR).resealed.total == 0
    assert _stored(store) == stored
    assert world.counts.total > 0


def test_reseal_refuses_items_under_a_version_the_keyring_lacks(
    rotation: KeyringRotationService, world: World, holder: MemoryKeyring, store: SqlStore
) -> None:
    holder.keyring = Keyring({2: KEK_2}, 2, PEPPER)
    stored = _stored(store)
    with pytest.raises(KeyringError, match=r"lacks \(version 1: \d+ items \(client_secrets 3,"):
        rotation.reseal(ACTOR)
    assert _stored(store) == stored
    assert rotation.status().unknown_versions == (1,)
    assert world.counts.total > 0


class _Failing:
    """A repository whose ``method`` raises on its ``fail_on``-th call; the rest delegates."""

    def __init__(self, inner: object, method: str, fail_on: int) -> None:
        self._inner = inner
        self._method = method
        self._fail_on = fail_on
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if name != self._method:
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.calls == self._fail_on:
                raise RuntimeError("injected failure")
            return attribute(*args, **kwargs)

        return call


class _Emptied:
    """A repository whose ``method`` returns nothing (rows the counts include go missing)."""

    def __init__(self, inner: object, method: str) -> None:
        self._inner = inner
        self._method = method

    def __getattr__(self, name: str) -> Any:
        if name == self._method:
            return lambda *args, **kwargs: []
        return getattr(self._inner, name)


class _Tx:
    def __init__(self, inner: Tx, repository: str, replacement: Any) -> None:
        self._inner = inner
        self._repository = repository
        self._replacement = replacement

    def __getattr__(self, name: str) -> Any:
        if name == self._repository:
            return self._replacement(getattr(self._inner, name))
        return getattr(self._inner, name)


class WrappedStore:
    """A store whose write units hand out one altered repository; everything else delegates."""

    def __init__(self, inner: SqlStore, repository: str, replacement: Any) -> None:
        self._inner = inner
        self._repository = repository
        self._replacement = replacement

    @property
    def backend(self) -> str:
        return self._inner.backend

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        with self._inner.transaction() as tx:
            yield _Tx(tx, self._repository, self._replacement)

    def transaction(self) -> AbstractContextManager[Any]:
        return self._transaction()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@pytest.mark.parametrize(
    ("repository", "method", "fail_on"),
    [
        ("secrets", "update", 2),
        ("encryption_keys", "reseal", 3),
        ("salts", "put_chunks", 2),
        ("keypairs", "reseal", 1),  # the last kind: every other item was already re-sealed
    ],
)
def test_a_failure_half_way_through_reseal_leaves_nothing_changed(  # noqa: PLR0917 (fixtures)
    store: SqlStore,
    clock: FixedClock,
    holder: MemoryKeyring,
    world: World,
    repository: str,
    method: str,
    fail_on: int,
) -> None:
    real = KeyringRotationService(store, holder, clock, os.urandom)
    real.add_version(ACTOR)
    stored = _stored(store)
    failing: list[_Failing] = []

    def replace(inner: object) -> _Failing:
        if not failing:
            failing.append(_Failing(inner, method, fail_on))
        return failing[0]

    wrapped = KeyringRotationService(
        WrappedStore(store, repository, replace), holder, clock, os.urandom
    )
    with pytest.raises(RuntimeError, match="injected failure"):
        wrapped.reseal(ACTOR)
    assert failing[0].calls == fail_on  # it did fail half-way, after real writes
    assert _stored(store) == stored
    assert real.status().use_of(1) == VersionUse(1, True, False, world.counts)
    assert _events(store, "keyring.reseal") == []
    # And the real one afterwards moves everything.
    assert real.reseal(ACTOR).resealed == world.counts


def test_reseal_refuses_when_the_rows_found_disagree_with_the_counts(
    store: SqlStore, clock: FixedClock, holder: MemoryKeyring, world: World
) -> None:
    KeyringRotationService(store, holder, clock, os.urandom).add_version(ACTOR)
    stored = _stored(store)
    wrapped = KeyringRotationService(
        WrappedStore(store, "keypairs", lambda inner: _Emptied(inner, "list_not_sealed_under")),
        holder,
        clock,
        os.urandom,
    )
    with pytest.raises(StoreError, match=r"not the .* counted; nothing was changed"):
        wrapped.reseal(ACTOR)
    assert _stored(store) == stored
    assert world.counts.keypairs == 1


# ------------------------------------------------------------------------------- drop-version


def test_drop_version_is_refused_while_anything_is_sealed_under_it_then_accepted(
    rotation: KeyringRotationService, world: World, holder: MemoryKeyring, store: SqlStore
) -> None:
    rotation.add_version(ACTOR)
    stored, saves = _stored(store), holder.saves
    with pytest.raises(InvalidInput) as refused:
        rotation.drop_version(1, ACTOR)
    message = str(refused.value)
    assert message.startswith(f"Version 1 still seals {world.counts.total} items (client_secrets 3")
    assert "salt_table 2, salt_chunks 4, keypairs 1)" in message
    assert "Run uid2-operator keyring reseal first" in message
    assert (_stored(store), holder.saves, holder.keyring.versions) == (stored, saves, (1, 2))

    rotation.reseal(ACTOR)
    seq = store.change_seq()
    change = rotation.drop_version(1, ACTOR)
    assert change.to_json()["version"] == 1
    assert (change.active_version, change.keyring_versions) == (2, (2,))
    assert holder.keyring.versions == (2,)
    assert holder.keyring.kek(2) != KEK_1
    assert _events(store, "keyring.version.drop") == [
        {"target": "1", "before": {"kek_version": 1}, "after": None}
    ]
    assert store.change_seq() == seq + 1


@pytest.mark.parametrize(
    ("version", "message"),
    [
        (2, "Version 2 is the active key-encryption key version and cannot be dropped"),
        (7, r"The keyring has no key-encryption key version 7 \(it holds 1, 2\)"),
        (True, "The version must be an integer"),
        ("1", "The version must be an integer"),
    ],
)
def test_drop_version_refuses_the_active_an_unknown_or_a_malformed_version(
    rotation: KeyringRotationService,
    holder: MemoryKeyring,
    store: SqlStore,
    version: Any,
    message: str,
) -> None:
    holder.keyring = Keyring({1: KEK_1, 2: KEK_2}, 2, PEPPER)
    stored = _stored(store)
    with pytest.raises(InvalidInput, match=message):
        rotation.drop_version(version, ACTOR)
    assert (_stored(store), holder.saves) == (stored, 0)


class RefusingKeyring(MemoryKeyring):
    """A keyring file that cannot be written (a full disk, a read-only mount)."""

    def stage(self, keyring: Keyring) -> StagedKeyring:
        raise KeyringError("The keyring file /srv/keyring.json cannot be written: disk full")


def test_a_refused_keyring_write_leaves_the_store_and_the_keyring_as_they_were(
    store: SqlStore, clock: FixedClock, world: World
) -> None:
    holder = RefusingKeyring(V1)
    rotation = KeyringRotationService(store, holder, clock, os.urandom)
    stored = _stored(store)
    with pytest.raises(KeyringError, match="disk full"):
        rotation.add_version(ACTOR)
    assert (_stored(store), holder.keyring) == (stored, V1)

    holder.keyring = both = Keyring({1: KEK_1, 2: KEK_2}, 2, PEPPER)
    rotation.reseal(ACTOR)
    stored = _stored(store)
    with pytest.raises(KeyringError, match="disk full"):
        rotation.drop_version(1, ACTOR)
    assert (_stored(store), holder.keyring) == (stored, both)


# ------------------------------------------------------------------------------- environment


def test_a_keyring_from_the_environment_is_never_written(
    rotation: KeyringRotationService, world: World, holder: MemoryKeyring, store: SqlStore
) -> None:
    holder.writable = False
    holder.source = "environment"
    stored = _stored(store)
    with pytest.raises(InvalidInput) as refused:
        rotation.add_version(ACTOR)
    assert str(refused.value) == (
        "The keyring comes from UID2_KEYRING and cannot be written here: provision keyring JSON "
        "there with version 2 added (32 random bytes, base64) as active_kek_version, restart, "
        "then run uid2-operator keyring reseal"
    )
    assert _stored(store) == stored
    # The number it names is reserved: no other keyring file's add-version gives it out again
    # with another key before the one provisioned by hand is first used.
    with store.read() as rx:
        assert rx.deployment.highest_kek_version() == 2
    with pytest.raises(InvalidInput, match="with version 3 added"):
        rotation.add_version(ACTOR)

    # Provisioned by hand: re-sealing writes only the store, so it works; dropping does not.
    holder.keyring = Keyring({1: KEK_1, 2: KEK_2}, 2, PEPPER)
    assert rotation.reseal(ACTOR).resealed == world.counts
    stored = _stored(store)
    with pytest.raises(InvalidInput, match="without version 1, then restart"):
        rotation.drop_version(1, ACTOR)
    assert _stored(store) == stored
    assert holder.saves == 0
    assert rotation.status().source == "environment"
