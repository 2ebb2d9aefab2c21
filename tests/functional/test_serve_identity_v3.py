"""Raw UIDs of 33 bytes (v3) through a real ``serve`` with ``UID2_IDENTITY_V3=true``, read with the
official SDK (operator-api §4.4: EUID production derives v3 raw UIDs, which carry the scope and
identity type in their first byte). The setting reaches the workers' generate and v3 map alike,
and the CLI's opt-out: the raw UID a DSP decrypts from a token is the one the v3 map answers, and
an opt-out added by e-mail is known by that raw UID."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest
from cli_harness import database_for
from serve_harness import Prepared, Served, cli, poll, prepare, served
from uid2_client import (
    BidstreamClient,
    DecryptionStatus,
    IdentityMapV3Client,
    IdentityMapV3Input,
    TokenGenerateInput,
    Uid2PublisherClient,
)

pytestmark = pytest.mark.functional

V3_EUID = {"UID2_IDENTITY_SCOPE": "euid", "UID2_IDENTITY_V3": "true"}
EMAIL = "v3.raw.uid@example.com"
OPTED_OUT = "v3.opted.out@example.com"


@pytest.fixture(scope="module")
def v3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Prepared, Served]]:
    with database_for("sqlite", tmp_path_factory.mktemp("v3")) as database:
        prepared = prepare(database, env=V3_EUID)
        with served(database, env=V3_EUID) as server:
            yield prepared, server


def test_tokens_and_the_v3_map_carry_the_same_v3_raw_uid(v3: tuple[Prepared, Served]) -> None:
    prepared, server = v3
    key = prepared.key
    publisher = Uid2PublisherClient(server.base_url, key.key, key.secret)
    token = (
        publisher.generate_token(TokenGenerateInput.from_email(EMAIL))
        .get_identity()
        .get_advertising_token()
    )
    bidstream = BidstreamClient(server.base_url, key.key, key.secret)
    assert bidstream.refresh().success
    decrypted = bidstream.decrypt_token_into_raw_uid(token, "example.com")
    assert decrypted.status == DecryptionStatus.SUCCESS
    raw = base64.b64decode(decrypted.uid)
    assert (len(raw), raw[0]) == (33, 0x10)  # EUID scope, e-mail: operator-api §4.4
    mapped = IdentityMapV3Client(server.base_url, key.key, key.secret).generate_identity_map(
        IdentityMapV3Input.from_emails([EMAIL])
    )
    assert mapped.mapped_identities[EMAIL].current_raw_uid == decrypted.uid


def test_an_opt_out_added_by_email_is_known_by_its_v3_raw_uid(v3: tuple[Prepared, Served]) -> None:
    prepared, server = v3
    key = prepared.key
    mapped = IdentityMapV3Client(server.base_url, key.key, key.secret).generate_identity_map(
        IdentityMapV3Input.from_emails([OPTED_OUT])
    )
    raw_uid = mapped.mapped_identities[OPTED_OUT].current_raw_uid
    cli(prepared.database, "optout", "add", "--email", OPTED_OUT, env=V3_EUID)

    def opted_out() -> bool:
        response, body = server.call("/v2/optout/status", {"advertising_ids": [raw_uid]}, key)
        assert response.status_code == 200, response.text
        assert body is not None
        return bool(body["body"]["opted_out"])

    assert poll(opted_out), "the opt-out never reached the operator under its v3 raw UID"
