"""sdk-compat §3 scenario 15 (sharing token expiry) with the official SDK against a real
``uid2-operator serve`` process.

The store-backed server makes encryption keys that live 30 days, and past the last key's expiry
the SDK answers ``KEYS_NOT_SYNCED`` before it looks at a token; so a sharing token can only be
seen to expire if it lives shorter than the keys. The server here issues one-day sharing tokens
(``UID2_SHARING_TOKEN_EXPIRY_S``, its setting for that), over the world of ``sdk_world``.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sdk_world import SdkWorld, sdk_world
from uid2_client import DecryptionStatus, EncryptionStatus, SharingClient

pytestmark = pytest.mark.functional

RAW_UID = base64.b64encode(bytes([0]) + bytes(range(32))).decode()
SHARING_TOKEN_EXPIRY_S = 86_400


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SdkWorld]:
    env = {"UID2_SHARING_TOKEN_EXPIRY_S": str(SHARING_TOKEN_EXPIRY_S)}
    with sdk_world(tmp_path_factory.mktemp("sharing-expiry"), env=env) as built:
        yield built


def _client(world: SdkWorld, name: str) -> SharingClient:
    client = SharingClient(world.base_url, world[name].key, world[name].secret)
    assert client.refresh().success
    return client


def test_a_sharing_token_expires_after_token_expiry_seconds(world: SdkWorld) -> None:
    sender, reader = _client(world, "A"), _client(world, "B")
    assert int(sender._keys.get_token_expiry_seconds()) == SHARING_TOKEN_EXPIRY_S
    now = datetime.now(UTC).replace(microsecond=0)
    encrypted = sender._encrypt_raw_uid_into_token(RAW_UID, now=now)
    assert encrypted.status == EncryptionStatus.SUCCESS
    lifetime = timedelta(seconds=SHARING_TOKEN_EXPIRY_S)
    second = timedelta(seconds=1)
    before = reader._decrypt_token_into_raw_uid(
        encrypted.encrypted_data, now=now + lifetime - second
    )
    assert before.status == DecryptionStatus.SUCCESS
    assert before.site_id == world.sites["A"]
    assert before.expiry == now + lifetime
    after = reader._decrypt_token_into_raw_uid(
        encrypted.encrypted_data, now=now + lifetime + second
    )
    assert after.status == DecryptionStatus.EXPIRED_TOKEN
    # At the real now the lifetime check passes (max sharing lifetime >= token expiry).
    current = reader.decrypt_token_into_raw_uid(encrypted.encrypted_data)
    assert current.status == DecryptionStatus.SUCCESS
