"""Cross-checks of the advertising-token codec against the official Python SDK (uid2-client 2.9.0).

The SDK decrypts with its own AES (pycryptodome) and its own parser, and its test-token generator
builds tokens independently of ours, so agreement in both directions is agreement between two
implementations.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import uid2_client
from uid2_client import (
    AdvertisingTokenVersion,
    BidstreamClient,
    DecryptionStatus,
    EncryptionKeysCollection,
    SharingClient,
    UID2TokenGenerator,
)
from uid2_client import EncryptionKey as SdkKey
from uid2_client import IdentityScope as SdkScope
from uid2_client import IdentityType as SdkType

from uid2_operator import errors
from uid2_operator.wire.encoding import b64decode, b64encode
from uid2_operator.wire.keys import MASTER_KEYSET_ID_IN_KEY_JSON, EncryptionKey
from uid2_operator.wire.refresh import issue_identity
from uid2_operator.wire.scope import IdentityScope, IdentityType
from uid2_operator.wire.tokens import (
    AdvertisingToken,
    TokenVersion,
    decode_advertising_token,
    encode_advertising_token,
)

NOW = datetime(2024, 3, 5, 6, 7, 8, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000) + 123
NOW_S = int(NOW.timestamp())

# The SDK tests' keys and ids (tests/test_utils.py): master 164, site 165, site id 9000.
MASTER = EncryptionKey(
    id=164,
    keyset_id=-1,
    created=NOW_S - 86400,
    activates=NOW_S - 3600,
    expires=NOW_S + 86400,
    secret=base64.b64decode("iyXxrRJcJOilqBcSJsN7XKCIuShbraXdqBCppCaLCJs="),
)
SITE = EncryptionKey(
    id=165,
    keyset_id=99999,
    created=NOW_S - 86400,
    activates=NOW_S - 3600,
    expires=NOW_S + 86400,
    secret=base64.b64decode("IPsHwoSa+lbKdGgdg8CL1zCkC0HibqcObDP+fUEYF4U="),
)
REFRESH = EncryptionKey(
    id=166,
    keyset_id=-2,
    created=NOW_S - 86400,
    activates=NOW_S - 3600,
    expires=NOW_S + 86400,
    secret=b"r" * 32,
)
SITE_ID = 9000
KEYS = {MASTER.id: MASTER, SITE.id: SITE}
EMAIL_UID_V2 = "ywsvDNINiZOVSsfkHpLpSJzXzhr6Jx9Z/4Q0+lsEUvM="
PHONE_UID_V3 = "BEOGxroPLdcY7LrSiwjY52+X05V0ryELpJmoWAyXiwbZ"
EUID_EMAIL_UID_V3 = "EKCoNGWPLdcY7LrSiwjY52+X05V0ryELpJmoWAyXiwbZ"
EUID_PHONE_UID_V3 = "FKCoNGWPLdcY7LrSiwjY52+X05V0ryELpJmoWAyXiwbZ"
EUID_PHONE_UID_V4 = "tEOGxroPLdcY7LrSiwjY52+X05V0ryELpJmoWAyXiwbZ"
VECTORS = json.loads(
    (Path(__file__).resolve().parents[2] / "vectors" / "advertising_tokens.json").read_text()
)


def random(n: int) -> bytes:
    return bytes([0x5A]) * n


def key_json(key: EncryptionKey, *, keyset_id: int | None = None) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": key.id,
        "created": key.created,
        "activates": key.activates,
        "expires": key.expires,
        "secret": b64encode(key.secret),
    }
    if keyset_id is not None:
        record["keyset_id"] = keyset_id
    return record


def bidstream_client(
    keys: list[EncryptionKey], scope: str = "UID2", max_lifetime_s: int = 3 * 86400 + 10
) -> BidstreamClient:
    """An SDK bidstream client loaded with a key body shaped like ``/v2/key/bidstream``."""
    body = {
        "max_bidstream_lifetime_seconds": max_lifetime_s,
        "identity_scope": scope,
        "allow_clock_skew_seconds": 1800,
        "keys": [key_json(k) for k in keys],
        "site_data": [],
    }
    client = BidstreamClient("http://127.0.0.1:1", "key", b64encode(bytes(32)))
    assert client._refresh_json(json.dumps({"body": body})).success
    return client


def sharing_client(scope: str = "UID2") -> SharingClient:
    """An SDK sharing client loaded with a key body shaped like ``/v2/key/sharing``."""
    body = {
        "caller_site_id": SITE_ID,
        "master_keyset_id": MASTER_KEYSET_ID_IN_KEY_JSON,
        "default_keyset_id": SITE.keyset_id,
        "token_expiry_seconds": "2592000",
        "max_sharing_lifetime_seconds": 2592000 + 10,
        "identity_scope": scope,
        "allow_clock_skew_seconds": 1800,
        "keys": [
            key_json(MASTER, keyset_id=MASTER_KEYSET_ID_IN_KEY_JSON),
            key_json(SITE, keyset_id=SITE.keyset_id),
        ],
    }
    client = SharingClient("http://127.0.0.1:1", "key", b64encode(bytes(32)))
    assert client._refresh_json(json.dumps({"body": body})).success
    return client


def sdk_key(key: EncryptionKey) -> SdkKey:
    def at(seconds: int) -> datetime:
        return datetime.fromtimestamp(seconds, tz=UTC)

    return SdkKey(
        key.id, -1, at(key.created), at(key.activates), at(key.expires), key.secret, key.keyset_id
    )


def ours(text: str) -> AdvertisingToken:
    return decode_advertising_token(text, master_key=KEYS.get, site_key=KEYS.get)


def at_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


# ------------------------------------------------------------------ our encoder, the SDK's decoder

CASES = [
    pytest.param(IdentityScope.UID2, IdentityType.EMAIL, EMAIL_UID_V2, id="uid2-email-32"),
    pytest.param(IdentityScope.UID2, IdentityType.PHONE, EMAIL_UID_V2, id="uid2-phone-32"),
    pytest.param(IdentityScope.UID2, IdentityType.PHONE, PHONE_UID_V3, id="uid2-phone-33"),
    pytest.param(IdentityScope.EUID, IdentityType.EMAIL, EUID_EMAIL_UID_V3, id="euid-email-33"),
    pytest.param(IdentityScope.EUID, IdentityType.PHONE, EUID_PHONE_UID_V4, id="euid-phone-v4uid"),
]


def our_token(scope: IdentityScope, kind: IdentityType, uid: str, **extra: Any) -> AdvertisingToken:
    fields: dict[str, Any] = {
        "scope": scope,
        "identity_type": kind,
        "master_key_id": MASTER.id,
        "site_key_id": SITE.id,
        "expires_ms": NOW_MS + 3 * 86400 * 1000,
        "created_ms": NOW_MS,
        "site_id": SITE_ID,
        "privacy_bits": 1,
        "established_ms": NOW_MS - 7 * 86400 * 1000,
        "refreshed_ms": NOW_MS,
        "raw_uid": b64decode(uid),
    }
    fields.update(extra)
    return AdvertisingToken(**fields)


@pytest.mark.parametrize(("scope", "kind", "uid"), CASES)
def test_bidstream_client_decrypts_our_v4_tokens(
    scope: IdentityScope, kind: IdentityType, uid: str
) -> None:
    token = our_token(scope, kind, uid)
    text = encode_advertising_token(token, master_key=MASTER, site_key=SITE, random=random)
    result = bidstream_client([MASTER, SITE], scope.name)._decrypt_token_into_raw_uid(
        text, None, NOW
    )
    assert result.status == DecryptionStatus.SUCCESS
    assert result.uid == uid
    assert result.site_id == SITE_ID
    assert result.identity_type == SdkType(kind)
    assert result.identity_scope == SdkScope(scope)
    assert result.established == at_ms(token.established_ms)
    assert result.expiry == at_ms(token.expires_ms)
    assert result.advertising_token_version == AdvertisingTokenVersion.ADVERTISING_TOKEN_V4
    assert result.is_client_side_generated is False


@pytest.mark.parametrize("bits", [1, 3])
def test_sdk_reads_our_privacy_bits_as_server_generated(bits: int) -> None:
    # The SDK's client-side flag looks at integer bit 30; the operator's CSTG bit is bit 1.
    token = our_token(IdentityScope.UID2, IdentityType.EMAIL, EMAIL_UID_V2, privacy_bits=bits)
    text = encode_advertising_token(token, master_key=MASTER, site_key=SITE, random=random)
    result = bidstream_client([MASTER, SITE])._decrypt_token_into_raw_uid(text, None, NOW)
    assert result.status == DecryptionStatus.SUCCESS
    assert result.is_client_side_generated is False


def test_v3_tokens_decrypt_with_the_legacy_entry_point() -> None:
    token = our_token(IdentityScope.UID2, IdentityType.PHONE, PHONE_UID_V3, version=TokenVersion.V3)
    text = encode_advertising_token(token, master_key=MASTER, site_key=SITE, random=random)
    collection = EncryptionKeysCollection([sdk_key(MASTER), sdk_key(SITE)])
    result = uid2_client.decrypt(text, collection, now=NOW)
    assert result.uid == PHONE_UID_V3
    assert result.advertising_token_version == AdvertisingTokenVersion.ADVERTISING_TOKEN_V3
    assert result.identity_type == SdkType.Phone


def test_sdk_sees_expiry_of_our_tokens() -> None:
    expired = NOW_S * 1000 - 1  # one millisecond before the SDK's "now"
    token = our_token(IdentityScope.UID2, IdentityType.EMAIL, EMAIL_UID_V2, expires_ms=expired)
    text = encode_advertising_token(token, master_key=MASTER, site_key=SITE, random=random)
    result = bidstream_client([MASTER, SITE])._decrypt_token_into_raw_uid(text, None, NOW)
    assert result.status == DecryptionStatus.EXPIRED_TOKEN
    assert result.expiry == at_ms(expired)


def test_sdk_decrypts_an_issued_identity() -> None:
    body = issue_identity(
        now_ms=NOW_MS,
        identity_lifetime_s=259200,
        refresh_lifetime_s=2592000,
        refresh_after_s=3600,
        master_key=MASTER,
        site_key=SITE,
        refresh_key=REFRESH,
        site_id=SITE_ID,
        privacy_bits=1,
        established_ms=NOW_MS,
        raw_uid=b64decode(EMAIL_UID_V2),
        first_level_hash=bytes(32),
        scope=IdentityScope.UID2,
        identity_type=IdentityType.EMAIL,
        random=random,
    )
    client = bidstream_client([MASTER, SITE], max_lifetime_s=259200 + 10)
    result = client._decrypt_token_into_raw_uid(body["advertising_token"], None, NOW)
    assert result.status == DecryptionStatus.SUCCESS
    assert (result.uid, result.site_id) == (EMAIL_UID_V2, SITE_ID)
    assert result.expiry == at_ms(body["identity_expires"])
    # With a cap shorter than the identity lifetime the SDK refuses the token.
    strict = bidstream_client([MASTER, SITE], max_lifetime_s=259200 - 1)
    refused = strict._decrypt_token_into_raw_uid(body["advertising_token"], None, NOW)
    assert refused.status == DecryptionStatus.INVALID_TOKEN_LIFETIME


@pytest.mark.parametrize("vector", VECTORS["v3_v4"] + VECTORS["v2"], ids=lambda v: v["name"])
def test_sdk_decrypts_every_golden_vector_to_its_fields(vector: dict[str, Any]) -> None:
    keys = [
        SdkKey(
            k["id"],
            -1,
            datetime.fromtimestamp(k["created"], tz=UTC),
            datetime.fromtimestamp(k["activates"], tz=UTC),
            datetime.fromtimestamp(k["expires"], tz=UTC),
            base64.b64decode(k["secret"]),
        )
        for k in VECTORS["keys"]
    ]
    fields = vector["fields"]
    now = at_ms(fields["created_ms"]) + timedelta(seconds=1)
    result = uid2_client.decrypt(vector["token"], EncryptionKeysCollection(keys), now=now)
    assert result.uid == fields["raw_uid"]
    assert result.site_id == fields["site_id"]
    assert result.established == at_ms(fields["established_ms"])
    assert result.expiry == at_ms(fields["expires_ms"])
    assert result.advertising_token_version == fields["version"]


# ----------------------------------------------------------------- the SDK's encoder, our decoder


GENERATED = [
    pytest.param(version, uid, scope, id=f"{version.name}-{name}")
    for version in AdvertisingTokenVersion
    for name, uid, scope in [
        ("uid2-email-32", EMAIL_UID_V2, SdkScope.UID2),
        ("uid2-phone-33", PHONE_UID_V3, SdkScope.UID2),
        ("euid-email-33", EUID_EMAIL_UID_V3, SdkScope.EUID),
        ("euid-phone-33", EUID_PHONE_UID_V3, SdkScope.EUID),
    ]
]
# The generator infers the type from the UID's first character ("B"/"F" mean phone), so it cannot
# make tokens for v4 raw UIDs, whose first character also carries version and environment bits.


@pytest.mark.parametrize(("version", "uid", "scope"), GENERATED)
def test_we_decode_sdk_generated_tokens(
    version: AdvertisingTokenVersion, uid: str, scope: SdkScope
) -> None:
    established = NOW - timedelta(days=2)
    expiry = NOW + timedelta(hours=1)
    text = UID2TokenGenerator.generate_uid_token(
        uid,
        sdk_key(MASTER),
        SITE_ID,
        sdk_key(SITE),
        int(scope),
        version,
        identity_established=established,
        token_generated=NOW,
        token_expiry=expiry,
    )
    token = ours(text)
    assert token.version == int(version)
    assert b64encode(token.raw_uid) == uid
    assert token.site_id == SITE_ID
    assert (token.master_key_id, token.site_key_id) == (MASTER.id, SITE.id)
    assert token.established_ms == int(established.timestamp()) * 1000
    assert token.expires_ms == int(expiry.timestamp()) * 1000
    if len(token.raw_uid) == 33:
        assert token.scope == int(scope)
        expected_kind = IdentityType.PHONE if uid[0] in "BF" else IdentityType.EMAIL
        assert token.identity_type is expected_kind
    else:
        assert (token.scope, token.identity_type) == (IdentityScope.UID2, IdentityType.EMAIL)
    if version != AdvertisingTokenVersion.ADVERTISING_TOKEN_V2:
        assert token.created_ms == token.refreshed_ms == int(NOW.timestamp()) * 1000
        assert (token.operator_type, token.privacy_bits) == (1, 0)
        sdk = bidstream_client([MASTER, SITE], SdkScope(scope).name)
        result = sdk._decrypt_token_into_raw_uid(text, None, NOW)
        assert result.identity_type == SdkType(token.identity_type)


def test_sdk_token_whose_header_contradicts_its_uid_is_rejected() -> None:
    # The SDK's generator writes the caller's scope into the header even when the 33-byte UID
    # says otherwise; the operator's decoder insists they agree.
    text = UID2TokenGenerator.generate_uid_token(
        PHONE_UID_V3,
        sdk_key(MASTER),
        SITE_ID,
        sdk_key(SITE),
        int(SdkScope.EUID),
        AdvertisingTokenVersion.ADVERTISING_TOKEN_V4,
        identity_established=NOW,
        token_generated=NOW,
        token_expiry=NOW + timedelta(hours=1),
    )
    with pytest.raises(errors.IdentityMismatch):
        ours(text)


@pytest.mark.parametrize(
    ("uid", "scope"),
    [(EMAIL_UID_V2, "UID2"), (PHONE_UID_V3, "UID2"), (EUID_EMAIL_UID_V3, "EUID")],
)
def test_we_decode_sdk_sharing_tokens(uid: str, scope: str) -> None:
    client = sharing_client(scope)
    response = client._encrypt_raw_uid_into_token(uid, now=NOW)
    assert response.success
    token = ours(response.encrypted_data)
    assert token.version is TokenVersion.V4
    assert b64encode(token.raw_uid) == uid
    assert (token.master_key_id, token.site_key_id, token.site_id) == (MASTER.id, SITE.id, SITE_ID)
    assert token.created_ms == int(NOW.timestamp()) * 1000
    assert token.expires_ms == token.created_ms + 2592000 * 1000
    # ...and the SDK's own sharing decryption agrees with what we read.
    back = client._decrypt_token_into_raw_uid(response.encrypted_data, now=NOW)
    assert back.status == DecryptionStatus.SUCCESS
    assert (back.uid, back.site_id) == (uid, token.site_id)
