"""KEK rotation's pure pieces: numbering a new version, re-sealing material under the active one."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from uid2_operator.domain.material_sealing import (
    ENCRYPTION_KEY_LABEL,
    SALT_CHUNK_LABEL,
    open_material,
    reseal_material,
    seal_material,
)
from uid2_operator.domain.sealing import Keyring, add_kek_version
from uid2_operator.errors import KeyringError, SealedSecretUnreadable

PLAINTEXT = bytes(range(100, 132))


def test_a_numbered_version_is_added_and_made_active(
    keyring: Keyring, random: Callable[[int], bytes]
) -> None:
    rotated = add_kek_version(keyring, random, version=5)
    assert rotated.versions == (1, 5)
    assert rotated.active_version == 5
    assert rotated.kek(1) == keyring.kek(1)
    assert rotated.kek(5) != keyring.kek(1)
    assert rotated.pepper == keyring.pepper
    assert rotated.development == keyring.development


def test_a_numbered_version_keeps_the_development_flag(random: Callable[[int], bytes]) -> None:
    development = Keyring({1: bytes(range(32))}, 1, bytes(range(1, 33)), development=True)
    assert add_kek_version(development, random, version=2).development


@pytest.mark.parametrize("version", [1, 0, -3, True])
def test_a_numbered_version_must_be_above_every_held_version(
    keyring: Keyring, random: Callable[[int], bytes], version: int
) -> None:
    with pytest.raises(KeyringError, match="above 1"):
        add_kek_version(keyring, random, version=version)


def test_a_number_below_a_held_version_is_refused_too(
    keyring: Keyring, random: Callable[[int], bytes]
) -> None:
    three = add_kek_version(keyring, random, version=3)
    with pytest.raises(KeyringError, match="above 3"):
        add_kek_version(three, random, version=2)


def test_reseal_material_moves_a_blob_to_the_active_version_with_the_same_plaintext(
    keyring: Keyring, random: Callable[[int], bytes]
) -> None:
    old = seal_material(keyring, ENCRYPTION_KEY_LABEL, 7, PLAINTEXT, random)
    rotated = add_kek_version(keyring, random)
    moved = reseal_material(rotated, ENCRYPTION_KEY_LABEL, 7, old, random)
    assert moved.kek_version == 2
    assert moved.ciphertext != old.ciphertext
    assert open_material(rotated, ENCRYPTION_KEY_LABEL, 7, moved) == PLAINTEXT
    only_new = Keyring({2: rotated.kek(2)}, 2, rotated.pepper)
    assert open_material(only_new, ENCRYPTION_KEY_LABEL, 7, moved) == PLAINTEXT


def test_a_sealed_blob_keeps_its_bytes_out_of_its_repr(
    keyring: Keyring, random: Callable[[int], bytes]
) -> None:
    sealed = seal_material(keyring, ENCRYPTION_KEY_LABEL, 7, PLAINTEXT, random)
    for shown in (sealed.ciphertext.hex(), repr(sealed.ciphertext)[2:-1]):
        assert shown not in repr(sealed)
    assert "kek_version=1" in repr(sealed)


def test_a_resealed_blob_stays_bound_to_its_label_and_id(
    keyring: Keyring, random: Callable[[int], bytes]
) -> None:
    rotated = add_kek_version(keyring, random)
    moved = reseal_material(
        rotated,
        SALT_CHUNK_LABEL,
        3,
        seal_material(keyring, SALT_CHUNK_LABEL, 3, PLAINTEXT, random),
        random,
    )
    with pytest.raises(SealedSecretUnreadable):
        open_material(rotated, SALT_CHUNK_LABEL, 4, moved)
    with pytest.raises(SealedSecretUnreadable):
        open_material(rotated, ENCRYPTION_KEY_LABEL, 3, moved)


def test_reseal_material_refuses_a_blob_that_does_not_open(
    keyring: Keyring, random: Callable[[int], bytes]
) -> None:
    old = seal_material(keyring, ENCRYPTION_KEY_LABEL, 7, PLAINTEXT, random)
    rotated = add_kek_version(keyring, random)
    with pytest.raises(SealedSecretUnreadable):
        reseal_material(rotated, ENCRYPTION_KEY_LABEL, 8, old, random)
    lacking = Keyring({2: rotated.kek(2)}, 2, rotated.pepper)
    with pytest.raises(SealedSecretUnreadable, match="version 1"):
        reseal_material(lacking, ENCRYPTION_KEY_LABEL, 7, old, random)
