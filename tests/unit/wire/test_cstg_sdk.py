"""A client-side generated identity, end to end through the wire layer, read by the official SDK.

The request is built as a browser SDK builds it (ephemeral P-256 key, ECDH with the published key,
AES-GCM with the timestamp as AAD), opened as the operator opens it, answered with tokens issued
with the client-side privacy bits, and the advertising token decrypted by uid2-client's
``BidstreamClient`` loaded with a ``/v2/key/bidstream``-shaped key body.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

from uid2_client import BidstreamClient, DecryptionStatus

from uid2_operator.wire.cstg import (
    build_request,
    open_request,
    open_response,
    parse_request,
    private_key_from_random,
    public_key_der,
    seal_response,
)
from uid2_operator.wire.encoding import b64decode, b64encode
from uid2_operator.wire.keys import CLIENT_GENERATED_PRIVACY_BITS, EncryptionKey
from uid2_operator.wire.refresh import issue_identity
from uid2_operator.wire.scope import IdentityScope
from uid2_operator.wire.tokens import decode_advertising_token

NOW = datetime(2024, 3, 5, 6, 7, 8, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000) + 123
NOW_S = int(NOW.timestamp())
SITE_ID = 9000
EMAIL_UID_V2 = "ywsvDNINiZOVSsfkHpLpSJzXzhr6Jx9Z/4Q0+lsEUvM="


def _key(key_id: int, keyset_id: int, secret: bytes) -> EncryptionKey:
    return EncryptionKey(key_id, keyset_id, NOW_S - 86400, NOW_S - 3600, NOW_S + 86400, secret)


MASTER = _key(164, -1, hashlib.sha256(b"master").digest())
SITE = _key(165, 99999, hashlib.sha256(b"site").digest())
REFRESH = _key(166, -2, hashlib.sha256(b"refresh").digest())


class Counter:
    def __init__(self, seed: bytes) -> None:
        self.seed, self.n = seed, 0

    def __call__(self, size: int) -> bytes:
        out = b""
        while len(out) < size:
            out += hashlib.sha256(self.seed + self.n.to_bytes(8, "big")).digest()
            self.n += 1
        return out[:size]


def bidstream_client(max_lifetime_s: int) -> BidstreamClient:
    """The SDK's bidstream client loaded, without HTTP, with a ``/v2/key/bidstream`` body."""
    keys = [
        {
            "id": k.id,
            "created": k.created,
            "activates": k.activates,
            "expires": k.expires,
            "secret": b64encode(k.secret),
        }
        for k in (MASTER, SITE)
    ]
    body = {
        "max_bidstream_lifetime_seconds": max_lifetime_s,
        "identity_scope": "UID2",
        "allow_clock_skew_seconds": 1800,
        "keys": keys,
        "site_data": [],
    }
    client = BidstreamClient("http://127.0.0.1:1", "key", b64encode(bytes(32)))
    assert client._refresh_json(json.dumps({"body": body})).success
    return client


def test_client_generated_token_decrypts_with_bidstream_client() -> None:
    server = private_key_from_random(Counter(b"server"))
    email_hash = b64encode(hashlib.sha256(b"user@example.com").digest())
    built = build_request(
        public_key_der(server.public_key()),
        {"email_hash": email_hash},
        timestamp=NOW_MS - 1500,
        subscription_id="4WvryDGbR5",
        random=Counter(b"browser"),
    )
    opened = open_request(
        parse_request(json.dumps(built.body)), server, now_ms=NOW_MS, phone_support=True
    )
    body = issue_identity(
        now_ms=NOW_MS,
        identity_lifetime_s=259200,
        refresh_lifetime_s=2592000,
        refresh_after_s=3600,
        master_key=MASTER,
        site_key=SITE,
        refresh_key=REFRESH,
        site_id=SITE_ID,
        privacy_bits=CLIENT_GENERATED_PRIVACY_BITS,
        established_ms=NOW_MS,
        raw_uid=b64decode(EMAIL_UID_V2),
        first_level_hash=bytes(32),
        scope=IdentityScope.UID2,
        identity_type=opened.identity.kind,
        random=Counter(b"operator"),
    )
    response = seal_response(opened.secret, {"body": body, "status": "success"}, Counter(b"r"))

    answer = open_response(built.secret, response)
    token = answer["body"]["advertising_token"]
    keys = {MASTER.id: MASTER, SITE.id: SITE}
    assert decode_advertising_token(token, master_key=keys.get, site_key=keys.get).privacy_bits == 3
    client = bidstream_client(max_lifetime_s=259200 + 10)
    result = client._decrypt_token_into_raw_uid(token, None, NOW)
    assert result.status == DecryptionStatus.SUCCESS
    assert (result.uid, result.site_id) == (EMAIL_UID_V2, SITE_ID)
    assert len(answer["body"]["refresh_token"]) == 388
