"""What is sealed at rest keeps its format: a database written today must open tomorrow.

Each blob here is built with ``cryptography`` alone, from the documented layout (AES-256-GCM,
``IV || ciphertext || tag``) and the documented associated data, then opened through the
domain's functions; sealing the same plaintext with the same IV must give the same bytes. A
renamed label or a changed associated-data format fails these tests instead of leaving every
stored blob unreadable.
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from uid2_operator.domain.credentials import SealedSecret
from uid2_operator.domain.keypairs import PRIVATE_KEY_LABEL
from uid2_operator.domain.material_sealing import (
    ENCRYPTION_KEY_LABEL,
    FIRST_LEVEL_SALT_LABEL,
    ID_SECRET_LABEL,
    SALT_CHUNK_LABEL,
    SealedMaterial,
    open_material,
    seal_material,
)
from uid2_operator.domain.sealing import ClientSecret, Keyring, open_secret, seal_secret

KEK = bytes(range(32))
IV = bytes(range(100, 112))
KEYRING = Keyring({3: bytes(32), 7: KEK}, 7, bytes(range(32, 64)))
PLAIN = b"what was sealed"


def _written(aad: bytes, plaintext: bytes = PLAIN) -> bytes:
    return IV + AESGCM(KEK).encrypt(IV, plaintext, aad)


def _iv(size: int) -> bytes:
    assert size == len(IV)
    return IV


@pytest.mark.parametrize(
    ("label", "ident", "aad"),
    [
        (ENCRYPTION_KEY_LABEL, 5, b"encryption_key:5"),
        (SALT_CHUNK_LABEL, 12, b"salt_chunk:12"),
        (FIRST_LEVEL_SALT_LABEL, 0, b"first_level_salt:0"),
        (ID_SECRET_LABEL, 0, b"bucket_id_secret:0"),
        (PRIVATE_KEY_LABEL, "1111111111", b"cstg_private_key:1111111111"),
    ],
)
def test_sealed_material_keeps_its_associated_data(
    label: str, ident: int | str, aad: bytes
) -> None:
    stored = SealedMaterial(7, _written(aad))
    assert open_material(KEYRING, label, ident, stored) == PLAIN
    assert seal_material(KEYRING, label, ident, PLAIN, _iv) == stored


def test_a_sealed_client_secret_keeps_its_key_id_as_associated_data() -> None:
    key_id = "UID2-C-L-1001-ab12cd"
    raw = bytes(range(32))
    stored = SealedSecret(
        secret_id=4, key_id=key_id, kek_version=7, ciphertext=_written(key_id.encode(), raw),
        created_at_ms=1_700_000_000_000,
    )  # fmt: skip
    assert open_secret(KEYRING, stored).raw == raw
    sealed = seal_secret(KEYRING, key_id, ClientSecret(raw), _iv, 1_700_000_000_000)
    assert (sealed.kek_version, sealed.ciphertext) == (7, stored.ciphertext)
