"""The official ``uid2_client`` SDK against a real ``uid2-operator serve`` process (sdk-compat §3).

One server per module, over a world built with the real CLI and admin API (see ``sdk_world``).
The expired-refresh-token scenario needs one-second token lifetimes, a serve setting, so it runs
on a second server over its own world.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sdk_world import (
    BUCKET_COUNT,
    RECORDED_OPTOUT_EMAIL,
    WRONG_SECRET,
    SdkWorld,
    sdk_world,
    served_again,
)
from uid2_client import (
    AdvertisingTokenVersion,
    BidstreamClient,
    DecryptionStatus,
    EncryptionKeysAutoRefresher,
    EncryptionStatus,
    IdentityMapClient,
    IdentityMapInput,
    IdentityMapV3Client,
    IdentityMapV3Input,
    IdentityScope,
    IdentityTokens,
    IdentityType,
    SharingClient,
    TokenGenerateInput,
    Uid2ClientFactory,
    Uid2PublisherClient,
    UnmappedIdentityReason,
)

from uid2_operator.wire.encoding import b64encode
from uid2_operator.wire.identity import hash_identity, validate_phone
from uid2_operator.wire.raw_uid import current_raw_uid
from uid2_operator.wire.scope import IdentityType as WireIdentityType

pytestmark = pytest.mark.functional

World = SdkWorld


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SdkWorld]:
    with sdk_world(tmp_path_factory.mktemp("sdk")) as built:
        yield built


OK_EMAIL = "hopefully-not-opted-out@example.com"


def _sha(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


def publisher(world: World, name: str = "A", secret: str | None = None) -> Uid2PublisherClient:
    cred = world[name]
    return Uid2PublisherClient(world.base_url, cred.key, secret or cred.secret)


def generate(world: World, tgi: TokenGenerateInput, name: str = "A") -> Any:
    return publisher(world, name).generate_token(tgi)


# ------------------------------------------------------------------------ 1-4 tokens


def test_generate_returns_a_complete_refreshable_identity(world: World) -> None:
    response = publisher(world).generate_token(TokenGenerateInput.from_email(OK_EMAIL))
    assert response.is_success()
    identity = response.get_identity()
    assert identity is not None
    assert not identity.is_due_for_refresh()
    assert identity.is_refreshable()
    token = identity.get_advertising_token()
    assert token.startswith("A4")
    assert not set(token) & set("+/=")
    assert len(base64.b64decode(identity.get_refresh_response_key())) == 32
    parsed = json.loads(identity.get_json_string())
    assert set(parsed) >= {
        "advertising_token",
        "refresh_token",
        "identity_expires",
        "refresh_expires",
        "refresh_from",
        "refresh_response_key",
    }
    now_ms = time.time() * 1000
    assert now_ms < parsed["identity_expires"] < now_ms + 4 * 86_400_000
    assert len(parsed["refresh_token"]) == 388


def test_refresh_twice_gives_new_tokens_each_time(world: World) -> None:
    client = publisher(world)
    first = client.generate_token(TokenGenerateInput.from_email(OK_EMAIL)).get_identity()
    second_response = client.refresh_token(first)
    assert second_response.is_success()
    second = second_response.get_identity()
    assert not second.is_due_for_refresh()
    assert second.is_refreshable()
    assert second.get_advertising_token() != first.get_advertising_token()
    assert second.get_refresh_token() != first.get_refresh_token()
    third_response = client.refresh_token(second)
    assert third_response.is_success()
    assert third_response.get_identity().get_refresh_token() != second.get_refresh_token()


@pytest.mark.parametrize("dsp", ["D", "A"])
def test_bidstream_client_decrypts_a_generated_token(world: World, dsp: str) -> None:
    identity = generate(world, TokenGenerateInput.from_email(OK_EMAIL)).get_identity()
    bidstream = BidstreamClient(world.base_url, world[dsp].key, world[dsp].secret)
    assert bidstream.refresh().success
    decrypted = bidstream.decrypt_token_into_raw_uid(
        identity.get_advertising_token(), "example.com"
    )
    assert decrypted.status == DecryptionStatus.SUCCESS
    assert len(decrypted.uid) == 44
    assert decrypted.site_id == world.sites["A"]
    assert decrypted.established is not None
    assert decrypted.identity_type == IdentityType.Email
    assert decrypted.advertising_token_version == AdvertisingTokenVersion.ADVERTISING_TOKEN_V4
    assert decrypted.is_client_side_generated is False
    assert decrypted.identity_scope == IdentityScope.UID2
    assert decrypted.uid == world.raw_uid_for_email(OK_EMAIL)


def test_a_base_url_ending_in_a_slash_works_as_it_does_with_the_reference(world: World) -> None:
    # The SDK appends "/v2/..." to its base URL: with a final "/" every path starts "//", which
    # the reference's router reads as "/".
    base_url = world.base_url + "/"
    cred = world["A"]
    client = Uid2PublisherClient(base_url, cred.key, cred.secret)
    identity = client.generate_token(TokenGenerateInput.from_email(OK_EMAIL)).get_identity()
    assert identity is not None
    assert client.refresh_token(identity).is_success()
    v3 = IdentityMapV3Client(base_url, cred.key, cred.secret).generate_identity_map(
        IdentityMapV3Input.from_emails([OK_EMAIL])
    )
    assert v3.mapped_identities[OK_EMAIL].current_raw_uid == world.raw_uid_for_email(OK_EMAIL)
    bidstream = BidstreamClient(base_url, world["D"].key, world["D"].secret)
    assert bidstream.refresh().success
    decrypted = bidstream.decrypt_token_into_raw_uid(
        identity.get_advertising_token(), "example.com"
    )
    assert decrypted.status == DecryptionStatus.SUCCESS
    assert decrypted.uid == world.raw_uid_for_email(OK_EMAIL)


def test_phone_tokens_generate_refresh_and_decrypt(world: World) -> None:
    client = publisher(world)
    identity = client.generate_token(TokenGenerateInput.from_phone("+12345678901")).get_identity()
    assert identity.get_advertising_token().startswith("B4")
    refreshed = client.refresh_token(identity)
    assert refreshed.is_success()
    token = refreshed.get_identity().get_advertising_token()
    assert token.startswith("B4")
    bidstream = BidstreamClient(world.base_url, world["D"].key, world["D"].secret)
    assert bidstream.refresh().success
    decrypted = bidstream.decrypt_token_into_raw_uid(token, "example.com")
    assert decrypted.status == DecryptionStatus.SUCCESS
    assert decrypted.identity_type == IdentityType.Phone


# ------------------------------------------------------------------------ 5 consistency


def _decrypted_uid(world: World, token: str) -> str:
    bidstream = BidstreamClient(world.base_url, world["D"].key, world["D"].secret)
    assert bidstream.refresh().success
    result = bidstream.decrypt_token_into_raw_uid(token, "example.com")
    assert result.status == DecryptionStatus.SUCCESS
    return str(result.uid)


@pytest.mark.parametrize(
    "variants",
    [
        ["jane.saoirse@gmail.com", "JANE.SAOIRSE@gmail.com", "JaneSaoirse+UID2@gmail.com"],
        ["validate@example.com", "Validate@Example.com"],
    ],
)
def test_raw_uid_is_the_same_across_token_v2_map_v3_map_and_input_forms(
    world: World, variants: list[str]
) -> None:
    cred = world["A"]
    uids: set[str] = set()
    for email in variants:
        hashed = generate(world, TokenGenerateInput.from_email(email)).get_identity()
        raw = generate(world, TokenGenerateInput.from_email(email).do_not_hash()).get_identity()
        uids.add(_decrypted_uid(world, hashed.get_advertising_token()))
        uids.add(_decrypted_uid(world, raw.get_advertising_token()))
        v3 = IdentityMapV3Client(world.base_url, cred.key, cred.secret).generate_identity_map(
            IdentityMapV3Input.from_emails([email])
        )
        uids.add(v3.mapped_identities[email].current_raw_uid)
        v2 = IdentityMapClient(world.base_url, cred.key, cred.secret).generate_identity_map(
            IdentityMapInput.from_emails([email])
        )
        uids.add(v2.mapped_identities[email].get_raw_uid())
    assert len(uids) == 1
    assert uids == {world.raw_uid_for_email(variants[0])}


def _raw_uid_for_phone(world: World, phone: str) -> str:
    """The current raw UID of a phone, derived here from the stored salt table."""
    salts = world.salts
    assert salts is not None
    flh = salts.first_level_hash(hash_identity(validate_phone(phone)))
    return b64encode(
        current_raw_uid(
            salts.bucket(salts.index_of(flh), time.time_ns() // 1_000_000),
            flh,
            scope=world.identity.scope,
            kind=WireIdentityType.PHONE,
            environment=world.identity.identity_environment,
            identity_v3=world.identity.identity_v3,
        )
    )


@pytest.mark.parametrize("phone", ["+12345678901", "+447700900123"])
def test_phone_raw_uid_is_the_same_across_token_v2_map_and_v3_map(world: World, phone: str) -> None:
    cred = world["A"]
    hashed = _sha(phone)
    tokens = {
        "token (hashed by the SDK)": TokenGenerateInput.from_phone(phone),
        "token (raw phone)": TokenGenerateInput.from_phone(phone).do_not_hash(),
        "token (pre-hashed)": TokenGenerateInput.from_hashed_phone(hashed),
    }
    uids: dict[str, str] = {}
    for label, tgi in tokens.items():
        identity = generate(world, tgi).get_identity()
        token = identity.get_advertising_token()
        assert token.startswith("B4")
        uids[label] = _decrypted_uid(world, token)
    v3 = IdentityMapV3Client(world.base_url, cred.key, cred.secret)
    v3_raw = v3.generate_identity_map(IdentityMapV3Input.from_phones([phone]))
    uids["v3 map (raw phone)"] = v3_raw.mapped_identities[phone].current_raw_uid
    v3_hashed = v3.generate_identity_map(IdentityMapV3Input.from_hashed_phones([hashed]))
    uids["v3 map (pre-hashed)"] = v3_hashed.mapped_identities[hashed].current_raw_uid
    v2 = IdentityMapClient(world.base_url, cred.key, cred.secret)
    v2_raw = v2.generate_identity_map(IdentityMapInput.from_phones([phone]))
    uids["v2 map (raw phone)"] = v2_raw.mapped_identities[phone].get_raw_uid()
    v2_hashed = v2.generate_identity_map(IdentityMapInput.from_hashed_phones([hashed]))
    uids["v2 map (pre-hashed)"] = v2_hashed.mapped_identities[hashed].get_raw_uid()
    expected = _raw_uid_for_phone(world, phone)
    assert uids == dict.fromkeys(uids, expected)


# ------------------------------------------------------------------------ 6-7 opt-out


@pytest.mark.parametrize(
    "tgi",
    [
        TokenGenerateInput.from_email("optout@example.com"),
        TokenGenerateInput.from_phone("+00000000000"),
        TokenGenerateInput.from_email(RECORDED_OPTOUT_EMAIL),
    ],
    ids=["email", "phone", "recorded"],
)
def test_opted_out_identities_get_optout_at_generate(world: World, tgi: TokenGenerateInput) -> None:
    response = publisher(world).generate_token(tgi)
    assert response.is_optout()
    assert response.get_identity() is None
    assert response.get_identity_json_string() is None


@pytest.mark.parametrize(
    "tgi",
    [
        TokenGenerateInput.from_email("refresh-optout@example.com"),
        TokenGenerateInput.from_phone("+00000000002"),
    ],
    ids=["email", "phone"],
)
def test_refresh_optout_identities_opt_out_at_refresh(
    world: World, tgi: TokenGenerateInput
) -> None:
    client = publisher(world)
    generated = client.generate_token(tgi)
    assert generated.is_success()
    refreshed = client.refresh_token(generated.get_identity())
    assert refreshed.is_optout()
    assert refreshed.get_identity() is None


# ------------------------------------------------------------------------ 8-9 v3 map


def test_v3_map_mixed_input(world: World) -> None:
    cred = world["A"]
    client = IdentityMapV3Client(world.base_url, cred.key, cred.secret)
    bad_hash, short_hash = "this is not a hashed email", "abc"
    request = (
        IdentityMapV3Input.from_emails(["ok1@example.com", "optout@example.com"])
        .with_hashed_emails([_sha("ok2@example.com"), _sha("optout@example.com"), bad_hash])
        .with_phones(["+12345678901", "+00000000000"])
        .with_hashed_phones([_sha("+12345678902"), short_hash])
    )
    response = client.generate_identity_map(request)
    assert response.is_success()
    mapped, unmapped = response.mapped_identities, response.unmapped_identities
    floor = datetime.now(UTC) - timedelta(seconds=60)
    for dii in ["ok1@example.com", "+12345678901"]:
        assert len(mapped[dii].current_raw_uid) == 44
        previous = mapped[dii].previous_raw_uid
        assert previous is None or len(previous) == 44
        assert mapped[dii].refresh_from > floor
    assert len(mapped[_sha("ok2@example.com")].current_raw_uid) == 44
    assert len(mapped[_sha("+12345678902")].current_raw_uid) == 44
    for dii in ["optout@example.com", _sha("optout@example.com"), "+00000000000"]:
        assert unmapped[dii].reason == UnmappedIdentityReason.OPTOUT
    for dii in [bad_hash, short_hash]:
        assert unmapped[dii].reason == UnmappedIdentityReason.INVALID_IDENTIFIER


def test_v3_map_reports_previous_uids_for_recently_rotated_buckets(world: World) -> None:
    cred = world["A"]
    emails = [f"person{i}@example.com" for i in range(60)]
    response = IdentityMapV3Client(world.base_url, cred.key, cred.secret).generate_identity_map(
        IdentityMapV3Input.from_emails(emails)
    )
    previous = [response.mapped_identities[e].previous_raw_uid for e in emails]
    assert any(p is None for p in previous)
    rotated = [p for p in previous if p is not None]
    assert rotated
    assert all(len(p) == 44 for p in rotated)


def test_v3_map_edge_cases(world: World) -> None:
    cred = world["A"]
    client = IdentityMapV3Client(world.base_url, cred.key, cred.secret)
    empty = client.generate_identity_map(IdentityMapV3Input.from_emails([]))
    assert empty.is_success()
    assert len(empty.mapped_identities) == len(empty.unmapped_identities) == 0
    duplicates = client.generate_identity_map(
        IdentityMapV3Input.from_emails(["dup@example.com", "dup@example.com"])
    )
    assert duplicates.is_success()
    assert len(duplicates.mapped_identities["dup@example.com"].current_raw_uid) == 44


def test_v3_map_ten_thousand_inputs_in_one_call(world: World) -> None:
    cred = world["A"]
    rng = random.Random(7)  # noqa: S311 (reproducible test data, not secrets)
    emails = [f"user{rng.getrandbits(64)}@example.com" for _ in range(4000)]
    phones = [f"+1{rng.randrange(10**13, 10**14)}" for _ in range(3000)]
    hashes = [base64.b64encode(rng.randbytes(32)).decode() for _ in range(3000)]
    request = IdentityMapV3Input.from_emails(emails).with_phones(phones).with_hashed_emails(hashes)
    client = IdentityMapV3Client(world.base_url, cred.key, cred.secret)
    started = time.monotonic()
    response = client.generate_identity_map(request)
    took = time.monotonic() - started
    # The reference's end-to-end budget for such a call (sdk-compat.md, scenario 9); it takes
    # well under a second here, so only a path gone wrong (a derivation per input repeated, a
    # quadratic step) comes near it.
    assert took < 5, f"10,000 inputs took {took:.1f} s"
    assert response.is_success()
    assert not response.unmapped_identities
    assert len(response.mapped_identities) == len(set(emails) | set(phones) | set(hashes))
    assert all(len(m.current_raw_uid) == 44 for m in response.mapped_identities.values())


def test_a_map_over_the_body_limit_is_refused_413_to_the_sdk(world: World) -> None:
    # The SDK sends its whole request before it reads the answer: the 413 given as soon as the
    # declared length is read must still reach it, not a reset (a broken pipe to the SDK). The
    # request (about 40 MB) is more than the kernel's buffers take in without the server reading.
    cred = world["A"]
    rng = random.Random(11)  # noqa: S311 (reproducible test data, not secrets)
    hashes = [base64.b64encode(rng.randbytes(32)).decode() for _ in range(800_000)]
    v3 = IdentityMapV3Client(world.base_url, cred.key, cred.secret)
    v2 = IdentityMapClient(world.base_url, cred.key, cred.secret)
    status, body = _http_error(
        lambda: v3.generate_identity_map(IdentityMapV3Input.from_hashed_emails(hashes))
    )
    assert (status, body) == (413, b"Request Entity Too Large")
    status, body = _http_error(
        lambda: v2.generate_identity_map(IdentityMapInput.from_hashed_emails(hashes))
    )
    assert (status, body) == (413, b"Request Entity Too Large")


# ------------------------------------------------------------------------ 10-11 v2 map, buckets


def test_v2_map(world: World) -> None:
    cred = world["A"]
    client = IdentityMapClient(world.base_url, cred.key, cred.secret)
    emails = client.generate_identity_map(
        IdentityMapInput.from_emails(["a@example.com", "a@example.com", "optout@example.com"])
    )
    assert emails.is_success()
    mapped = emails.mapped_identities["a@example.com"]
    assert len(mapped.get_raw_uid()) == 44
    assert mapped.get_bucket_id()
    assert emails.unmapped_identities["optout@example.com"].get_reason() == "optout"
    phones = client.generate_identity_map(IdentityMapInput.from_phones(["+12345678901"]))
    assert len(phones.mapped_identities["+12345678901"].get_raw_uid()) == 44
    bad = client.generate_identity_map(
        IdentityMapInput.from_hashed_emails(["this is not a hashed email"])
    )
    assert (
        bad.unmapped_identities["this is not a hashed email"].get_reason() == "invalid identifier"
    )
    hashed = client.generate_identity_map(
        IdentityMapInput.from_hashed_phones([_sha("+12345678901")])
    )
    assert hashed.mapped_identities[_sha("+12345678901")].get_raw_uid() == (
        phones.mapped_identities["+12345678901"].get_raw_uid()
    )
    empty = client.generate_identity_map(IdentityMapInput.from_emails([]))
    assert empty.is_success()
    assert not empty.mapped_identities
    assert not empty.unmapped_identities


def test_identity_buckets(world: World) -> None:
    cred = world["A"]
    client = IdentityMapClient(world.base_url, cred.key, cred.secret)
    recent = client.get_identity_buckets(datetime.now(UTC) - timedelta(days=90))
    assert recent.is_success()
    assert recent.buckets
    assert all(isinstance(b.get_bucket_id(), str) for b in recent.buckets)
    assert all(isinstance(b.get_last_updated(), str) for b in recent.buckets)
    everything = client.get_identity_buckets(datetime.fromisoformat("2024-08-18T14:30:15+00:00"))
    assert len(everything.buckets) == BUCKET_COUNT
    assert len(recent.buckets) == BUCKET_COUNT  # init wrote every bucket moments ago
    rotated = client.get_identity_buckets(world.rotated_since)
    assert 0 < len(rotated.buckets) < BUCKET_COUNT
    assert {b.get_bucket_id() for b in rotated.buckets} < {
        b.get_bucket_id() for b in everything.buckets
    }
    future = client.get_identity_buckets(datetime.now(UTC) + timedelta(days=1))
    assert future.is_success()
    assert future.buckets == []
    fractional = client.get_identity_buckets(datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=UTC))
    assert fractional.is_success()


# ------------------------------------------------------------------------ 17 key payloads


def test_key_payload_contract(world: World) -> None:
    sharing = SharingClient(world.base_url, world["A"].key, world["A"].secret)
    assert sharing.refresh().success
    keys = sharing._keys
    assert keys.get_caller_site_id() == world.sites["A"]
    assert keys.get_identity_scope() == IdentityScope.UID2
    now = datetime.now(UTC)
    master = keys.get_master_key(now)
    default = keys.get_default_keyset_key(now)
    assert master is not None
    assert default is not None
    assert master.is_active(now)
    assert default.is_active(now)
    assert isinstance(keys.get_max_sharing_lifetime_seconds(), int)
    bidstream = BidstreamClient(world.base_url, world["D"].key, world["D"].secret)
    assert bidstream.refresh().success
    dsp_keys = bidstream._keys
    assert isinstance(dsp_keys.get_max_bidstream_lifetime_seconds(), int)
    ids = {k.key_id for k in dsp_keys.values()}
    assert master.key_id in ids
    assert default.key_id in ids


def test_sharing_round_trip_between_allowed_sites(world: World) -> None:
    sender = SharingClient(world.base_url, world["A"].key, world["A"].secret)
    allowed = SharingClient(world.base_url, world["B"].key, world["B"].secret)
    refused = SharingClient(world.base_url, world["C"].key, world["C"].secret)
    for client in (sender, allowed, refused):
        assert client.refresh().success
    raw_uid = base64.b64encode(bytes([0]) + bytes(range(32))).decode()
    encrypted = sender.encrypt_raw_uid_into_token(raw_uid)
    assert encrypted.status == EncryptionStatus.SUCCESS
    assert encrypted.encrypted_data.startswith("A4")
    assert allowed.decrypt_token_into_raw_uid(encrypted.encrypted_data).uid == raw_uid
    denied = refused.decrypt_token_into_raw_uid(encrypted.encrypted_data)
    assert denied.status == DecryptionStatus.NOT_AUTHORIZED_FOR_KEY
    # B's keyset is owner-only: A cannot read what B encrypts.
    from_b = allowed.encrypt_raw_uid_into_token(raw_uid)
    assert from_b.status == EncryptionStatus.SUCCESS
    back = sender.decrypt_token_into_raw_uid(from_b.encrypted_data)
    assert back.status == DecryptionStatus.NOT_AUTHORIZED_FOR_KEY


# ------------------------------------------------------------------------ 18-21 refusals


def _http_error(call: object) -> tuple[int, bytes]:
    """Status and body of the HTTPError the SDK raises (closed, so no socket is left open)."""
    with pytest.raises(urllib.error.HTTPError) as caught:
        call()  # type: ignore[operator]
    with caught.value as error:
        return error.code, error.read()


def _http_status(call: object) -> int:
    return _http_error(call)[0]


UNAUTHORIZED = {"status": "unauthorized"}
WRONG_SECRET_REFUSAL = {
    "status": "client_error",
    "message": "Invalid body: Check encryption key (ClientSecret). See "
    "https://unifiedid.com/docs/getting-started/gs-encryption-decryption for details on the "
    "request envelope format.",
}


@contextmanager
def _refusals() -> Iterator[list[urllib.error.HTTPError]]:
    """The HTTP errors ``urlopen`` raises meanwhile, recorded on their way through to the SDK.

    The SDK reduces every failure to something that names no status: a key refresh answers
    ``success`` False for a 401, a 500 or a refused connection alike, and the legacy client raises
    a bare Exception of the caught error's args, which for urllib's HTTPError are "()". Watching
    ``urlopen`` shows what the server answered.
    """
    refused: list[urllib.error.HTTPError] = []
    urlopen = urllib.request.urlopen

    def watched(*args: Any, **kwargs: Any) -> Any:
        try:
            return urlopen(*args, **kwargs)
        except urllib.error.HTTPError as error:
            refused.append(error)
            raise

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(urllib.request, "urlopen", watched)
        yield refused


def _the_refusal(world: World, refused: list[urllib.error.HTTPError]) -> tuple[str, int, Any]:
    """Path, status and JSON body of the one HTTP error recorded (every one is closed)."""
    answers = []
    for error in refused:
        with error:
            answers.append((error.url.removeprefix(world.base_url), error.code, error.read()))
    assert len(answers) == 1, answers
    path, status, body = answers[0]
    return path, status, json.loads(body)


def _refused_key_refresh(
    world: World, client: BidstreamClient | SharingClient
) -> tuple[str, int, Any]:
    """What the server answered to a key refresh the SDK reports as failed."""
    with _refusals() as refused:
        assert not client.refresh().success
    return _the_refusal(world, refused)


def _refused_bidstream_refresh(world: World, key: str, secret: str) -> tuple[str, int, Any]:
    return _refused_key_refresh(world, BidstreamClient(world.base_url, key, secret))


def _map_calls(world: World, key: str, secret: str) -> list[object]:
    v2 = IdentityMapClient(world.base_url, key, secret)
    v3 = IdentityMapV3Client(world.base_url, key, secret)
    pub = Uid2PublisherClient(world.base_url, key, secret)
    return [
        lambda: pub.generate_token(TokenGenerateInput.from_email(OK_EMAIL)),
        lambda: v2.generate_identity_map(IdentityMapInput.from_emails([OK_EMAIL])),
        lambda: v3.generate_identity_map(IdentityMapV3Input.from_emails([OK_EMAIL])),
        lambda: v2.get_identity_buckets(datetime.now(UTC)),
    ]


def test_unknown_api_key_is_401_everywhere(world: World) -> None:
    for call in _map_calls(world, "bad-api-key", world["A"].secret):
        assert _http_status(call) == 401
    forged = world["A"].key[:-1] + ("x" if world["A"].key[-1] != "x" else "y")
    for call in _map_calls(world, forged, world["A"].secret):
        assert _http_status(call) == 401
    for key in ("bad-api-key", forged):
        assert _refused_bidstream_refresh(world, key, world["A"].secret) == (
            "/v2/key/bidstream",
            401,
            UNAUTHORIZED,
        )
        sharing = SharingClient(world.base_url, key, world["A"].secret)
        assert _refused_key_refresh(world, sharing) == ("/v2/key/sharing", 401, UNAUTHORIZED)


def test_roles_are_enforced(world: World) -> None:
    g, m, s, d, x = (world[n] for n in ("G", "M", "S", "D", "X"))
    refused = ("/v2/key/bidstream", 401, UNAUTHORIZED)
    assert _refused_bidstream_refresh(world, g.key, g.secret) == refused
    assert (
        _http_status(
            lambda: IdentityMapV3Client(world.base_url, g.key, g.secret).generate_identity_map(
                IdentityMapV3Input.from_emails([OK_EMAIL])
            )
        )
        == 401
    )
    for cred in (m, d):
        assert (
            _http_status(
                lambda cred=cred: Uid2PublisherClient(
                    world.base_url, cred.key, cred.secret
                ).generate_token(TokenGenerateInput.from_email(OK_EMAIL))
            )
            == 401
        )
    assert _refused_bidstream_refresh(world, s.key, s.secret) == refused
    assert SharingClient(world.base_url, s.key, s.secret).refresh().success
    for call in _map_calls(world, x.key, x.secret):
        assert _http_status(call) == 401
    # X holds ID_READER and SHARER but is disabled: refused like an unknown key.
    assert _refused_bidstream_refresh(world, x.key, x.secret) == refused
    sharing_x = SharingClient(world.base_url, x.key, x.secret)
    assert _refused_key_refresh(world, sharing_x) == ("/v2/key/sharing", 401, UNAUTHORIZED)
    off = world["OFF"]
    assert _http_status(_map_calls(world, off.key, off.secret)[0]) == 401


@pytest.mark.parametrize("who", ["M", "D", "X", None])
def test_refresh_needs_no_role(world: World, who: str | None) -> None:
    identity = generate(world, TokenGenerateInput.from_email(OK_EMAIL)).get_identity()
    key = world[who].key if who else "no-key"
    client = Uid2PublisherClient(world.base_url, key, world["A"].secret)
    assert client.refresh_token(identity).is_success()


@pytest.mark.parametrize("secret", [WRONG_SECRET, "badSecretKeypB64Y3fV2dAed8t/mupw3sjN5jNRFzg="])
def test_wrong_secret_is_400(world: World, secret: str) -> None:
    for call in _map_calls(world, world["A"].key, secret):
        status, body = _http_error(call)
        assert (status, json.loads(body)) == (400, WRONG_SECRET_REFUSAL)
    assert _refused_bidstream_refresh(world, world["A"].key, secret) == (
        "/v2/key/bidstream",
        400,
        WRONG_SECRET_REFUSAL,
    )
    sharing = SharingClient(world.base_url, world["A"].key, secret)
    assert _refused_key_refresh(world, sharing) == ("/v2/key/sharing", 400, WRONG_SECRET_REFUSAL)


def test_rotated_secret_is_accepted_during_the_overlap(world: World) -> None:
    for name in ("R", "R-old"):
        response = publisher(world, name).generate_token(TokenGenerateInput.from_email(OK_EMAIL))
        assert response.is_success()


EXPIRED_IDENTITY = {
    "advertising_token": "AgAAAAN6QZRgTnIVfiaAnYxAXGTJmO4f9KEJXVl+1y5gjQ6qP4RzxN+Uzs5iHcR7G/"
    "CwUWkfx5F9ZNeqqGmnlNclqQGAPiYlo/lRxFP9T4/2MhqoUn4JTw5EMzqQ7BMW/sUFmsK1Z00VrNlSxUyYDq1Yh/"
    "rDxNDqmxbfkPmDNaLgzqpnnBm2V/QMvKDI4BdvEH1oRXamEebT8BxI2ts=",
    "refresh_token": "AAAABAIBOZFsoPx/iGdrxo9/Q8ojBGMR7mLQKLebAzCZzl+Uw98oTjZU0A8rljk5RU/"
    "UH6H4wHc38uWCrk3OfaALKAJdk1b2Wj58q7qfPr2ttC60Ue/DZNC8cJrPiAM2WK0ckaaG9y3DBiGzDjpjAOaWuEyi/"
    "Ny93gp0Ok0VTWXbODjrFO2d7dp/TYp6o8A3NoF8Y8gNIOTe+S3zJgLyqNcGlFhUsOihqsZqtcEQBfDXLAJOOzkcBqE6"
    "hmIhDO1G/vX3y6ijcIJLj4Y5NamnCPBKZpDSq9Ti8JwHk88pW4XiXOR4hFXZtG+7tFsmkZd/UO7dj7gK7fWOcRvmrEW"
    "Mb8gO7YI1j68o3CGgLF8cS2hC76zWxvBwLoW5g7qXCzBcvJdSR5IiaapKV1y07jTyBkiVyuYVl51w1E5o5aUbJ9j/"
    "0f80L/HwOrDStWjBZS0RmJrg2aykN1ZnX2ZgYzqBb1OvxN8kECfoJtcI9E1C0gQo0RjgdpvHdJ/dwrxHvSGtcjjSrC"
    "zapPS2Xo4DvJeS+VIjQ7I2PU3tpx1W0gNeN+2lWD3rQ==",
    "identity_expires": 1646697000000,
    "refresh_expires": 1646697000000,
    "refresh_from": 1646697000000,
    "refresh_response_key": "xXqgmdEGiYQ8UY6kLHwNzbQ1SmkJpYPv2NqJ4+SG06A=",
}


def test_garbage_refresh_tokens_are_400(world: World) -> None:
    client = publisher(world)
    good = client.generate_token(TokenGenerateInput.from_email(OK_EMAIL)).get_identity()
    good_json = json.loads(good.get_json_string())
    truncated = {**good_json, "refresh_token": good_json["refresh_token"][:-4]}
    flipped_token = good_json["refresh_token"]
    flip_at = 100
    flipped_char = "A" if flipped_token[flip_at] != "A" else "B"
    flipped = {
        **good_json,
        "refresh_token": flipped_token[:flip_at] + flipped_char + flipped_token[flip_at + 1 :],
    }
    candidates = [EXPIRED_IDENTITY, truncated, flipped, {**good_json, "refresh_token": "abc"}]
    for candidate in candidates:
        identity = IdentityTokens.from_json_string(json.dumps(candidate))
        assert identity is not None
        assert _http_status(lambda identity=identity: client.refresh_token(identity)) == 400


@pytest.fixture(scope="module")
def short_lived(world: SdkWorld) -> Iterator[SdkWorld]:
    """A second server over the same data directory whose tokens live one second."""
    lifetimes = {
        "UID2_IDENTITY_TOKEN_EXPIRES_AFTER_S": "1",
        "UID2_REFRESH_TOKEN_EXPIRES_AFTER_S": "1",
        "UID2_REFRESH_IDENTITY_AFTER_S": "1",
    }
    with served_again(world, lifetimes) as again:
        yield again


def test_expired_refresh_token_is_400(short_lived: SdkWorld) -> None:
    client = publisher(short_lived)
    identity = client.generate_token(TokenGenerateInput.from_email(OK_EMAIL)).get_identity()
    parsed = json.loads(identity.get_json_string())
    assert parsed["refresh_expires"] - parsed["identity_expires"] <= 1000
    time.sleep(1.1)
    status, body = _http_error(lambda: client.refresh_token(identity))
    assert status == 400
    assert json.loads(body) == {
        "status": "expired_token",
        "message": "Expired Token presented",
    }


# ------------------------------------------------------------------------ 23 legacy client


def test_legacy_uid2_client(world: World) -> None:
    cred = world["A"]
    identity = generate(world, TokenGenerateInput.from_email(OK_EMAIL)).get_identity()
    client = Uid2ClientFactory.create(world.base_url, cred.key, cred.secret)
    client.refresh_keys()
    decrypted = client.decrypt(identity.get_advertising_token())
    assert decrypted.uid == world.raw_uid_for_email(OK_EMAIL)
    raw = world.raw_uid_for_email("someone@example.com")
    token = client.encrypt(raw)
    assert client.decrypt(token).uid == raw
    refresher = EncryptionKeysAutoRefresher(client, timedelta(seconds=4), timedelta(seconds=7))
    with refresher:
        deadline = time.monotonic() + 5
        while not refresher.current_result().ready and time.monotonic() < deadline:
            time.sleep(0.05)
        assert refresher.current_result().ready
    bad = Uid2ClientFactory.create(world.base_url, "bad-api-key", cred.secret)
    with _refusals() as refused, pytest.raises(Exception, match=r"^\(\)$"):
        bad.refresh_keys()
    assert _the_refusal(world, refused) == ("/v2/key/sharing", 401, UNAUTHORIZED)
