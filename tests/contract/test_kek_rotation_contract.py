"""The store contract for KEK rotation (every backend): counting sealed items by key-encryption
key version, finding those under another version, re-sealing them; then the whole rotation."""

from __future__ import annotations

import base64
import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace

import pytest
from store_records import T0, api_key, participant

from uid2_operator.clock import FixedClock
from uid2_operator.domain.environments import Environment
from uid2_operator.domain.keypairs import ClientKeypair
from uid2_operator.domain.keysets import Keyset, SealedKey, SharingMode
from uid2_operator.domain.material_sealing import SealedMaterial
from uid2_operator.domain.salts import SaltHeader, SealedSaltChunk
from uid2_operator.domain.sealing import Keyring
from uid2_operator.errors import NotFound, StoreError
from uid2_operator.services.context import SYSTEM
from uid2_operator.services.credentials import CredentialService
from uid2_operator.services.keyring_rotation import (
    KeyringRotationService,
    SealedCounts,
    StagedKeyring,
    VersionUse,
)
from uid2_operator.services.material import MaterialConfig, MaterialService
from uid2_operator.services.sharing import SharingService, read_client_side_state
from uid2_operator.storage import SqlStore
from uid2_operator.wire.cstg import private_key_der

S0 = T0 // 1000


def _keyset(keyset_id: int = 4) -> Keyset:
    return Keyset(keyset_id, 1001, "Site 1001", True, True, T0, SharingMode.BIDDERS)


def _key(key_id: int, kek_version: int) -> SealedKey:
    return SealedKey(
        id=key_id,
        keyset_id=4,
        created=S0,
        activates=S0 + key_id,
        expires=S0 + 86_400,
        secret=SealedMaterial(kek_version, bytes([key_id]) * 60),
    )


def _chunk(number: int, kek_version: int) -> SealedSaltChunk:
    return SealedSaltChunk(
        number=number,
        first_bucket=number * 8,
        bucket_count=8,
        salts=SealedMaterial(kek_version, bytes([number]) * (8 * 32 + 28)),
        has_previous=b"\x01",
        last_updated=bytes([number, 1]) * 32,
        refresh_from=bytes([number, 2]) * 32,
    )


def _keypair(subscription_id: str, kek_version: int, created_at_ms: int = T0) -> ClientKeypair:
    return ClientKeypair(
        subscription_id=subscription_id,
        site_id=1001,
        public_key=b"\x30der-" + subscription_id.encode(),
        sealed_private_key=SealedMaterial(kek_version, b"sealed-" + subscription_id.encode()),
        name="web",
        contact="ops@example.com",
        disabled=False,
        created_at_ms=created_at_ms,
    )


def _seed(store: SqlStore) -> None:
    """Items under versions 1, 2 and 3 of every kind the store seals."""
    with store.transaction() as tx:
        tx.participants.add(participant(1001))
        tx.api_keys.add(api_key("UID2-C-L-1001-abcDE1"))
        tx.api_keys.add(api_key("UID2-C-L-1001-abcDE2"))
        for key_id, version, retires in (
            ("UID2-C-L-1001-abcDE1", 1, None),
            ("UID2-C-L-1001-abcDE1", 2, T0 - 1),  # retired, not purged: still stored
            ("UID2-C-L-1001-abcDE2", 1, None),
            ("UID2-C-L-1001-abcDE2", 3, None),
        ):
            tx.secrets.add(
                key_id,
                kek_version=version,
                ciphertext=bytes([version]) * 60,
                created_at_ms=T0,
                retires_at_ms=retires,
            )
        tx.keysets.add(_keyset())
        for key_id, version in ((1, 2), (2, 1), (3, 2), (4, 2)):
            tx.encryption_keys.add(_key(key_id, version))
        tx.salts.put_chunks([_chunk(0, 1), _chunk(1, 2), _chunk(2, 1), _chunk(3, 3)])
        for subscription_id, version, at in (("Zz11", 2, T0 + 5), ("Aa22", 1, T0), ("Bb33", 2, T0)):
            tx.keypairs.add(_keypair(subscription_id, version, at))


def test_an_empty_store_counts_nothing(store: SqlStore) -> None:
    with store.read() as rx:
        assert rx.secrets.count_by_kek_version() == {}
        assert rx.encryption_keys.count_by_kek_version() == {}
        assert rx.salts.count_chunks_by_kek_version() == {}
        assert rx.keypairs.count_by_kek_version() == {}
        assert rx.secrets.list_not_sealed_under(1) == []
        assert rx.encryption_keys.list_not_sealed_under(1) == []
        assert rx.salts.chunk_numbers_not_sealed_under(1) == []
        assert rx.keypairs.list_not_sealed_under(1) == []


def test_sealed_items_are_counted_by_kek_version_in_ascending_order(store: SqlStore) -> None:
    _seed(store)
    with store.read() as rx:
        secrets = rx.secrets.count_by_kek_version()
        keys = rx.encryption_keys.count_by_kek_version()
        chunks = rx.salts.count_chunks_by_kek_version()
        keypairs = rx.keypairs.count_by_kek_version()
    assert (secrets, list(secrets)) == ({1: 2, 2: 1, 3: 1}, [1, 2, 3])
    assert (keys, list(keys)) == ({1: 1, 2: 3}, [1, 2])
    assert (chunks, list(chunks)) == ({1: 2, 2: 1, 3: 1}, [1, 2, 3])
    assert (keypairs, list(keypairs)) == ({1: 1, 2: 2}, [1, 2])


def test_items_under_other_versions_are_listed_in_a_stable_order(store: SqlStore) -> None:
    _seed(store)
    with store.read() as rx:
        secrets = rx.secrets.list_not_sealed_under(1)
        assert [(s.secret_id, s.kek_version, s.retires_at_ms) for s in secrets] == [
            (2, 2, T0 - 1),
            (4, 3, None),
        ]
        assert [s.ciphertext for s in secrets] == [bytes([2]) * 60, bytes([3]) * 60]
        assert rx.encryption_keys.list_not_sealed_under(2) == [_key(2, 1)]
        assert [k.id for k in rx.encryption_keys.list_not_sealed_under(9)] == [1, 2, 3, 4]
        assert rx.salts.chunk_numbers_not_sealed_under(1) == [1, 3]
        assert rx.salts.chunk_numbers_not_sealed_under(3) == [0, 1, 2]
        assert rx.keypairs.list_not_sealed_under(1) == [
            _keypair("Bb33", 2),
            _keypair("Zz11", 2, T0 + 5),
        ]


def test_reseal_writes_only_the_sealed_blob_and_its_version(store: SqlStore) -> None:
    _seed(store)
    before = store.change_seq()
    with store.transaction() as tx:
        tx.encryption_keys.reseal(2, SealedMaterial(5, b"new key blob"))
        tx.keypairs.reseal("Aa22", SealedMaterial(5, b"new private blob"))
    assert store.change_seq() == before + 1
    with store.read() as rx:
        assert rx.encryption_keys.get(2) == replace(
            _key(2, 1), secret=SealedMaterial(5, b"new key blob")
        )
        assert rx.encryption_keys.get(1) == _key(1, 2)
        assert rx.keypairs.get("Aa22") == replace(
            _keypair("Aa22", 1), sealed_private_key=SealedMaterial(5, b"new private blob")
        )
        assert rx.keypairs.get("Bb33") == _keypair("Bb33", 2)
        assert rx.encryption_keys.count_by_kek_version() == {2: 3, 5: 1}
        assert rx.keypairs.count_by_kek_version() == {2: 2, 5: 1}


def test_reseal_of_an_unknown_item_is_not_found(store: SqlStore) -> None:
    _seed(store)
    with pytest.raises(NotFound, match="encryption key 99"), store.transaction() as tx:
        tx.encryption_keys.reseal(99, SealedMaterial(2, b"x"))
    with pytest.raises(NotFound, match="keypair Nope"), store.transaction() as tx:
        tx.keypairs.reseal("Nope", SealedMaterial(2, b"x"))


def test_a_read_unit_refuses_reseal_writes(store: SqlStore) -> None:
    _seed(store)
    for write in (
        lambda rx: rx.encryption_keys.reseal(1, SealedMaterial(2, b"x")),
        lambda rx: rx.keypairs.reseal("Aa22", SealedMaterial(2, b"x")),
    ):
        with pytest.raises(StoreError, match="read-only"), store.read() as rx:
            write(rx)


def test_a_failed_unit_leaves_every_seal_as_it_was(store: SqlStore) -> None:
    _seed(store)
    before = store.change_seq()

    def reseal_then_fail() -> None:
        with store.transaction() as tx:
            secret = tx.secrets.list_not_sealed_under(1)[0]
            tx.secrets.update(replace(secret, kek_version=1, ciphertext=b"moved"))
            tx.encryption_keys.reseal(1, SealedMaterial(1, b"moved"))
            tx.salts.put_chunks([replace(_chunk(1, 2), salts=SealedMaterial(1, b"moved"))])
            tx.keypairs.reseal("Zz11", SealedMaterial(1, b"moved"))
            raise RuntimeError("roll back")

    with pytest.raises(RuntimeError, match="roll back"):
        reseal_then_fail()
    assert store.change_seq() == before
    with store.read() as rx:
        assert rx.secrets.count_by_kek_version() == {1: 2, 2: 1, 3: 1}
        assert rx.encryption_keys.count_by_kek_version() == {1: 1, 2: 3}
        assert rx.salts.count_chunks_by_kek_version() == {1: 2, 2: 1, 3: 1}
        assert rx.keypairs.count_by_kek_version() == {1: 1, 2: 2}


# ------------------------------------------------------------------------ the whole rotation

PEPPER = bytes(range(1, 33))
V1 = Keyring({1: bytes(range(64, 96))}, 1, PEPPER)
CONFIG = MaterialConfig(bucket_count=128, chunk_size=32)  # four chunks


@dataclass
class MemoryKeyring:
    keyring: Keyring
    writable: bool = True
    source: str = "memory"

    def load(self) -> Keyring:
        return self.keyring

    def stage(self, keyring: Keyring) -> StagedKeyring:
        """Staged, put in place by ``publish`` (once the change committed)."""
        return StagedKeyring(lambda: self.save(keyring), lambda: None)

    def locked(self) -> AbstractContextManager[None]:
        return nullcontext()

    def save(self, keyring: Keyring) -> None:
        self.keyring = keyring


def _material(store: SqlStore, keyring: Keyring) -> tuple[object, ...]:
    loaded = MaterialService(store, keyring, CONFIG, FixedClock(), os.urandom).load_material()
    salts = loaded.salts
    return (
        sorted((k.id, k.secret) for k in loaded.keys),
        salts.first_level_salt,
        salts.id_secret,
        [salts.chunk(n) for n in range(salts.chunk_count())],  # every salt column as stored
        [private_key_der(k.private_key) for k in read_client_side_state(store, keyring).keypairs],
    )


def test_a_whole_rotation_keeps_every_secret(store: SqlStore) -> None:
    clock = FixedClock()
    material = MaterialService(store, V1, CONFIG, clock, os.urandom)
    credentials = CredentialService(store, V1, Environment.LOCAL, clock, os.urandom)
    sharing = SharingService(store, V1, Environment.LOCAL, clock, os.urandom, material=material)
    site = credentials.create_participant(
        SYSTEM, name="Pub", type="publisher", roles=["GENERATOR"]
    ).site_id
    material.initialise(SYSTEM)
    issued = credentials.create_key(SYSTEM, site_id=site, name="web", roles=["GENERATOR"])
    sharing.create_keypair(SYSTEM, site_id=site)
    before = _material(store, V1)
    with store.read() as rx:
        keys = len(rx.encryption_keys.list_all())
    counts = SealedCounts(
        client_secrets=1, encryption_keys=keys, salt_table=2, salt_chunks=4, keypairs=1
    )

    holder = MemoryKeyring(V1)
    rotation = KeyringRotationService(store, holder, clock, os.urandom)
    assert rotation.status().versions == (VersionUse(1, True, True, counts),)
    rotation.add_version(SYSTEM)
    assert rotation.reseal(SYSTEM).resealed == counts
    assert rotation.reseal(SYSTEM).resealed == SealedCounts()
    rotation.drop_version(1, SYSTEM)
    assert holder.keyring.versions == (2,)
    assert rotation.status().versions == (VersionUse(2, True, True, counts),)

    only_v2 = holder.keyring
    assert _material(store, only_v2) == before
    resolved = CredentialService(store, only_v2, Environment.LOCAL, clock, os.urandom)
    assert resolved.resolve_client(issued.key).secrets == (base64.b64decode(issued.secret),)
    with store.read() as rx:
        assert [e.action for e in rx.audit.list_events()][-3:] == [
            "keyring.version.add",
            "keyring.reseal",
            "keyring.version.drop",
        ]


def test_a_reseal_deletes_the_secrets_no_request_can_use_instead_of_moving_them(
    store: SqlStore,
) -> None:
    """After a suspected leak of the old key-encryption key, a secret past its overlap (or
    one of a key rotated away) must not come out readable under the new one."""
    clock = FixedClock()
    credentials = CredentialService(store, V1, Environment.LOCAL, clock, os.urandom)
    site = credentials.create_participant(
        SYSTEM, name="Pub", type="publisher", roles=["GENERATOR"]
    ).site_id
    kept = credentials.create_key(SYSTEM, site_id=site, name="kept", roles=["GENERATOR"])
    credentials.rotate_secret(SYSTEM, kept.key_id, grace_days=1)
    rotated = credentials.create_key(SYSTEM, site_id=site, name="old", roles=["GENERATOR"])
    successor = credentials.rotate_key(SYSTEM, rotated.key_id, grace_days=1)
    clock.advance(86_400_000)  # both overlaps over; no upkeep ran since

    holder = MemoryKeyring(V1)
    rotation = KeyringRotationService(store, holder, clock, os.urandom)
    rotation.add_version(SYSTEM)
    assert rotation.reseal(SYSTEM).resealed.client_secrets == 2  # kept's new one, successor's
    rotation.drop_version(1, SYSTEM)
    with store.read() as rx:
        remaining = {
            key_id: [s.kek_version for s in rx.secrets.list_for_key(key_id)]
            for key_id in (kept.key_id, rotated.key_id, successor.key_id)
        }
    assert remaining == {kept.key_id: [2], rotated.key_id: [], successor.key_id: [2]}


def test_salt_headers_are_counted_by_the_service_from_both_secrets(store: SqlStore) -> None:
    header = SaltHeader(
        bucket_count=8,
        chunk_size=8,
        id_prefix="L",
        version=1,
        created_at_ms=T0,
        updated_at_ms=T0,
        first_level_salt=SealedMaterial(1, b"f" * 60),
        id_secret=SealedMaterial(2, b"i" * 60),
    )
    with store.transaction() as tx:
        tx.salts.put_header(header)
    status = KeyringRotationService(
        store,
        MemoryKeyring(Keyring({1: V1.kek(1), 2: bytes(32)}, 2, PEPPER)),
        FixedClock(),
        os.urandom,
    ).status()
    assert [(use.version, use.sealed.salt_table) for use in status.versions] == [(1, 1), (2, 1)]
