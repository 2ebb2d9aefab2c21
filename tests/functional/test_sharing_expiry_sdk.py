"""sdk-compat §3 scenario 15 (sharing token expiry) with the official SDK against a real server.

Run over the operator harness, whose keys live 120 days: a 30-day sharing token can only be seen
to expire while some key is still valid, since past the last key's expiry the SDK answers
``KEYS_NOT_SYNCED`` before it looks at a token (the store-backed server makes 30-day keys).
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest
from operator_harness import (
    SITE_A,
    World,
    world_fixture,  # noqa: F401 (fixture)
)
from uid2_client import DecryptionStatus, EncryptionStatus, SharingClient

pytestmark = pytest.mark.functional

RAW_UID = base64.b64encode(bytes([0]) + bytes(range(32))).decode()


def _client(world: World, name: str) -> SharingClient:
    client = SharingClient(world.base_url, world[name].key, world[name].secret)
    assert client.refresh().success
    return client


def test_a_sharing_token_expires_after_token_expiry_seconds(world: World) -> None:
    sender, reader = _client(world, "A"), _client(world, "B")
    now = datetime.now(UTC).replace(microsecond=0)
    encrypted = sender._encrypt_raw_uid_into_token(RAW_UID, now=now)
    assert encrypted.status == EncryptionStatus.SUCCESS
    lifetime = timedelta(seconds=int(sender._keys.get_token_expiry_seconds()))
    second = timedelta(seconds=1)
    before = reader._decrypt_token_into_raw_uid(
        encrypted.encrypted_data, now=now + lifetime - second
    )
    assert before.status == DecryptionStatus.SUCCESS
    assert before.site_id == SITE_A
    assert before.expiry == now + lifetime
    after = reader._decrypt_token_into_raw_uid(
        encrypted.encrypted_data, now=now + lifetime + second
    )
    assert after.status == DecryptionStatus.EXPIRED_TOKEN
    # At the real now the lifetime check passes (max sharing lifetime >= token expiry).
    current = reader.decrypt_token_into_raw_uid(encrypted.encrypted_data)
    assert current.status == DecryptionStatus.SUCCESS
