"""What the request path remembers between requests, and what it must still decide every time.

The snapshot caches its active-key selections per interval between key activation and expiry
instants, and the API keys it has verified; the answers of generate and refresh are rendered
without the JSON encoder; every answer but a 204 carries ``Content-Length``. Each is checked
against the uncached or general computation it replaces.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import hashlib
import json
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uid2_operator.domain.credentials import ApiKey, KeyState, effective_roles, issue_api_key
from uid2_operator.domain.environments import Environment
from uid2_operator.domain.key_format import mint_api_key
from uid2_operator.domain.keysets import new_site_keyset, reserved_keysets
from uid2_operator.domain.participants import ParticipantType, new_participant
from uid2_operator.domain.roles import ClientRole
from uid2_operator.domain.salts import SaltTable, generate_salt_table, rotate
from uid2_operator.domain.sealing import ClientSecret
from uid2_operator.errors import CredentialRejected, MalformedCredential, NoActiveKey, SaltError
from uid2_operator.services import data_plane
from uid2_operator.services.data_plane import Caller, Reply
from uid2_operator.services.snapshot import (
    MAX_VERIFIED_KEYS,
    ClientRecord,
    Lifetimes,
    LiveSecret,
    OperatorIdentity,
    Snapshot,
    VerifiedKeys,
    build_snapshot,
)
from uid2_operator.web.operator_api import app as operator_app
from uid2_operator.web.operator_api.app import create_operator_app
from uid2_operator.wire.encoding import dumps
from uid2_operator.wire.envelope import open_response, seal_request, unframe_response
from uid2_operator.wire.keys import FALLBACK_PUBLISHER_SITE_ID, EncryptionKey, active_key
from uid2_operator.wire.raw_uid import DAY_MS, IdentityEnvironment, current_raw_uid
from uid2_operator.wire.scope import IdentityScope, IdentityType

NOW = 1_700_000_000_000
NOW_S = NOW // 1000
SITE = 1001
OTHER_SITE = 1002
SITE_KEYSET = 11
PEPPER = bytes(range(32))


def _secret(key_id: int) -> bytes:
    return hashlib.sha256(b"key %d" % key_id).digest()


def _key(key_id: int, keyset_id: int, activates: int, expires: int) -> EncryptionKey:
    return EncryptionKey(key_id, keyset_id, activates - 10, activates, expires, _secret(key_id))


def _salts(count: int = 16) -> SaltTable:
    """A table as the material service makes one, every bucket rotated once (so it holds a
    previous salt), from a fixed random source."""
    counter = iter(range(1_000_000))

    def random(n: int) -> bytes:
        return hashlib.shake_256(b"salts %d" % next(counter)).digest(n)

    # Rotated a day before NOW, so the new salts are in effect at NOW (from the next midnight).
    created = NOW - DAY_MS
    return rotate(generate_salt_table(count, created, random), 1.0, created, random).table


def _snapshot(
    keys: list[EncryptionKey], *, clients: list[ClientRecord] | None = None, v3: bool = False
) -> Snapshot:
    return build_snapshot(
        generation=1,
        built_at_ms=NOW,
        identity=OperatorIdentity(identity_v3=v3),
        lifetimes=Lifetimes(),
        pepper=PEPPER,
        clients=clients or [],
        keysets=[*reserved_keysets(NOW), new_site_keyset(SITE_KEYSET, SITE, NOW)],
        keys=keys,
        salts=_salts(),
    )


def _uncached(snapshot: Snapshot, keyset_id: int, now_ms: int) -> EncryptionKey | None:
    try:
        return active_key(snapshot.keys_by_keyset.get(keyset_id, ()), now_ms)
    except NoActiveKey:
        return None


def _uncached_site(snapshot: Snapshot, site_id: int, now_ms: int) -> EncryptionKey | None:
    for site in (site_id, FALLBACK_PUBLISHER_SITE_ID):
        keyset_id = snapshot.default_keysets.get(site)
        if keyset_id is not None:
            key = _uncached(snapshot, keyset_id, now_ms)
            if key is not None:
                return key
    return None


def _cached(select: Any, *args: int) -> EncryptionKey | None:
    try:
        key: EncryptionKey = select(*args)
    except NoActiveKey:
        return None
    return key


def _check_at(snapshot: Snapshot, now_ms: int) -> None:
    assert _cached(snapshot.master_key, now_ms) == _uncached(snapshot, -1, now_ms)
    assert _cached(snapshot.refresh_key, now_ms) == _uncached(snapshot, -2, now_ms)
    for site in (SITE, OTHER_SITE):
        assert _cached(snapshot.site_key, site, now_ms) == _uncached_site(snapshot, site, now_ms)


# ------------------------------------------------------------------------- active keys


def test_selection_follows_activation_and_expiry_to_the_millisecond() -> None:
    # master: key 1 until T+100 s, key 2 from T+50 s; refresh: a gap between T+60 s and T+80 s;
    # site: its own key expires at T+70 s, after which the fallback publisher's key is used.
    keys = [
        _key(1, -1, NOW_S - 100, NOW_S + 100),
        _key(2, -1, NOW_S + 50, NOW_S + 200),
        _key(3, -2, NOW_S - 100, NOW_S + 60),
        _key(4, -2, NOW_S + 80, NOW_S + 300),
        _key(5, SITE_KEYSET, NOW_S - 100, NOW_S + 70),
        _key(6, 2, NOW_S - 100, NOW_S + 400),
    ]
    snapshot = _snapshot(keys)
    instants = sorted({t * 1000 for k in keys for t in (k.activates, k.expires)})
    probes = [NOW] + [t + d for t in instants for d in (-1, 0, 1)]
    for now_ms in probes:  # forwards through every boundary
        _check_at(snapshot, now_ms)
    for now_ms in reversed(probes):  # and back (a clock stepped back)
        _check_at(snapshot, now_ms)
    assert snapshot.master_key(NOW_S * 1000 + 50_000 - 1).id == 1
    assert snapshot.master_key(NOW_S * 1000 + 50_000).id == 2
    assert snapshot.site_key(SITE, NOW_S * 1000 + 70_000 - 1).id == 5
    assert snapshot.site_key(SITE, NOW_S * 1000 + 70_000).id == 6
    with pytest.raises(NoActiveKey):
        snapshot.refresh_key(NOW_S * 1000 + 60_000)
    assert snapshot.refresh_key(NOW_S * 1000 + 80_000).id == 4


def test_no_key_at_all_is_refused_every_time() -> None:
    snapshot = _snapshot([_key(1, -1, NOW_S - 10, NOW_S + 10)])
    for _ in range(2):
        with pytest.raises(NoActiveKey):
            snapshot.refresh_key(NOW)
        with pytest.raises(NoActiveKey):
            snapshot.site_key(SITE, NOW)
    assert snapshot.master_key(NOW).id == 1
    with pytest.raises(NoActiveKey):
        snapshot.master_key(NOW + 10_000)


def test_a_new_snapshot_starts_with_its_own_cache() -> None:
    snapshot = _snapshot([_key(1, -1, NOW_S - 10, NOW_S + 10)])
    assert snapshot.master_key(NOW).id == 1
    later = snapshot.with_optouts([])
    assert later.active_keys is not snapshot.active_keys
    assert later.master_key(NOW).id == 1


_key_specs = st.lists(
    st.tuples(
        st.sampled_from([-1, -2, 2, SITE_KEYSET]),
        st.integers(-50, 50),
        st.integers(1, 60),
    ),
    max_size=10,
)


@settings(deadline=None, max_examples=80)
@given(specs=_key_specs, offsets=st.lists(st.integers(-70_000, 120_000), min_size=1, max_size=30))
def test_cached_selection_equals_uncached_at_any_sequence_of_times(
    specs: list[tuple[int, int, int]], offsets: list[int]
) -> None:
    keys = [
        _key(n + 1, keyset, NOW_S + start, NOW_S + start + length)
        for n, (keyset, start, length) in enumerate(specs)
    ]
    snapshot = _snapshot(keys)
    for offset in offsets:
        _check_at(snapshot, NOW + offset)


# ------------------------------------------------------------------------ salts and replies


def test_the_current_salt_alone_gives_the_bucket_raw_uid() -> None:
    for v3 in (False, True):
        snapshot = _snapshot([], v3=v3)
        flh = hashlib.sha256(b"someone").digest()
        bucket = snapshot.salts.bucket(snapshot.salts.index_of(flh), NOW)
        assert bucket.previous_salt is not None
        assert snapshot.salts.salt(bucket.index, NOW) == bucket.current_salt
        expected = current_raw_uid(
            bucket,
            flh,
            scope=IdentityScope.UID2,
            kind=IdentityType.EMAIL,
            environment=IdentityEnvironment.TEST,
            identity_v3=v3,
        )
        assert data_plane._current_uid_of(snapshot, flh, IdentityType.EMAIL, NOW) == expected
    for outside in (-1, snapshot.salts.bucket_count):
        with pytest.raises(SaltError):
            snapshot.salts.salt(outside, NOW)


def test_generate_and_refresh_answers_are_the_general_json_byte_for_byte() -> None:
    keys = [
        _key(1, -1, NOW_S - 10, NOW_S + 1000),
        _key(2, -2, NOW_S - 10, NOW_S + 1000),
        _key(3, SITE_KEYSET, NOW_S - 10, NOW_S + 1000),
    ]
    snapshot = _snapshot(keys)
    caller = Caller("key", SITE, frozenset({ClientRole.GENERATOR}))
    counter = iter(range(1_000_000))

    def random(n: int) -> bytes:
        return hashlib.shake_256(b"%d" % next(counter)).digest(n)

    reply = data_plane.generate(snapshot, caller, {"email": "user@example.com"}, NOW, random)
    assert reply.rendered is not None
    assert reply.to_json() == dumps(reply.to_mapping())
    assert reply == Reply("success", reply.body)  # the rendering is not part of the value
    opted = data_plane.generate(snapshot, caller, {"email": "optout@example.com"}, NOW, random)
    assert opted.to_json() == dumps(opted.to_mapping()) == b'{"status":"optout"}'
    refreshed = data_plane.refresh(
        snapshot,
        reply.body["refresh_token"].encode(),
        authenticated=True,
        now_ms=NOW + 1000,
        random=random,
    )
    assert refreshed.response_key is not None
    assert refreshed.reply.to_json() == dumps(refreshed.reply.to_mapping())


def test_accepted_secrets_with_one_or_several_secrets() -> None:
    record = _client(secrets=(LiveSecret(1, ClientSecret(_secret(1)), retires_at_ms=NOW + 5),))
    assert record.accepted_secrets(NOW) == [_secret(1)]
    assert record.accepted_secrets(NOW)[0] is record.secrets[0].secret.raw
    assert record.accepted_secrets(NOW + 5) == []
    several = _client(
        secrets=(
            LiveSecret(1, ClientSecret(_secret(1)), retires_at_ms=NOW + 5),
            LiveSecret(2, ClientSecret(_secret(2))),
        )
    )
    assert several.accepted_secrets(NOW) == [_secret(2), _secret(1)]
    assert several.accepted_secrets(NOW + 5) == [_secret(2)]


# ------------------------------------------------------------------------- verified keys

_PARTICIPANT = new_participant(
    site_id=SITE,
    name="publisher",
    type=ParticipantType.PUBLISHER,
    allowed_roles={ClientRole.GENERATOR, ClientRole.MAPPER},
    contacts=["ops@example.com"],
    now_ms=NOW - 1000,
)
_MINTED = mint_api_key(
    Environment.LOCAL, SITE, PEPPER, lambda n: hashlib.shake_256(b"minted").digest(n)
)


def _api_key(**changes: Any) -> ApiKey:
    key = issue_api_key(
        _MINTED,
        _PARTICIPANT,
        name="key",
        roles={ClientRole.GENERATOR},
        now_ms=NOW - 1000,
        created_by="test",
    )
    return replace(key, **changes)


def _client(
    *, key: ApiKey | None = None, secrets: tuple[LiveSecret, ...] | None = None
) -> ClientRecord:
    return ClientRecord(
        key or _api_key(),
        _PARTICIPANT,
        secrets if secrets is not None else (LiveSecret(1, ClientSecret(_secret(99))),),
    )


def test_a_record_knows_its_effective_roles() -> None:
    record = _client()
    assert record.roles == effective_roles(record.key, record.participant)


def test_a_verified_key_is_remembered_but_still_judged_on_every_request() -> None:
    expiring = _api_key(expires_at_ms=NOW + 10)
    snapshot = _snapshot([], clients=[_client(key=expiring)])
    fields = {b"authorization": f"Bearer {_MINTED.text}".encode()}
    path = "/v2/token/generate"
    record = operator_app._authorize(snapshot, fields, path, NOW)
    assert snapshot.verified_keys.entries() == {_digest(_MINTED.text): record}
    assert snapshot.verified_keys.get(_MINTED.text) is record
    assert operator_app._authorize(snapshot, fields, path, NOW) is record
    with pytest.raises(CredentialRejected):  # expired: refused although remembered
        operator_app._authorize(snapshot, fields, path, NOW + 10)
    with pytest.raises(CredentialRejected):  # a role the key lacks
        operator_app._authorize(snapshot, fields, "/v3/identity/map", NOW)


def test_only_keys_that_pass_are_remembered() -> None:
    snapshot = _snapshot([], clients=[_client()])
    wrong_tail = _MINTED.text[:-10] + "A" * 5 + _MINTED.text[-5:]
    for text in (wrong_tail, "not a key", _MINTED.text + "x"):
        with pytest.raises((CredentialRejected, MalformedCredential)):
            operator_app._verify_key(snapshot, text)
    assert len(snapshot.verified_keys) == 0


def test_a_new_snapshot_verifies_again() -> None:
    snapshot = _snapshot([], clients=[_client()])
    operator_app._verify_key(snapshot, _MINTED.text)
    revoked = _snapshot([], clients=[_client(key=_api_key(state=KeyState.REVOKED))])
    assert len(revoked.verified_keys) == 0
    with pytest.raises(CredentialRejected):
        operator_app._authorize(
            revoked,
            {b"authorization": f"Bearer {_MINTED.text}".encode()},
            "/v2/token/generate",
            NOW,
        )


def test_the_verified_key_map_is_bounded() -> None:
    snapshot = _snapshot([], clients=[_client()])
    record = _client()
    for n in range(MAX_VERIFIED_KEYS):
        snapshot.remember_verified(f"text {n}", record)
    assert len(snapshot.verified_keys) == MAX_VERIFIED_KEYS
    snapshot.remember_verified("one more", record)
    assert snapshot.verified_keys.entries() == {_digest("one more"): record}
    assert snapshot.verified_keys.get("text 0") is None


def test_no_plaintext_key_text_is_held_by_the_verified_key_map() -> None:
    snapshot = _snapshot([], clients=[_client()])
    record = operator_app._verify_key(snapshot, _MINTED.text)
    held = snapshot.verified_keys.entries()
    assert held == {_digest(_MINTED.text): record}
    text = _MINTED.text
    for key in held:
        assert isinstance(key, bytes)
        assert len(key) == 16
        assert key != text.encode()
    # Nothing the map refers to (its slots, its keys, its records) shows the key text.
    slots = [getattr(snapshot.verified_keys, name) for name in VerifiedKeys.__slots__]
    assert all(text not in repr(item) for item in [*slots, *held, *held.values()])
    assert text not in repr(gc.get_referents(*slots))


def test_a_remembered_key_skips_the_keyed_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    snapshot = _snapshot([], clients=[_client()])
    record = operator_app._verify_key(snapshot, _MINTED.text)

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("verified again")

    monkeypatch.setattr(operator_app, "verify_api_key", refuse)
    assert operator_app._verify_key(snapshot, _MINTED.text) is record
    with pytest.raises(AssertionError, match="verified again"):
        operator_app._verify_key(snapshot, _MINTED.text[:-1] + "x")


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


# ---------------------------------------------------------------------- Content-Length


def _call(
    app: Any, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes = b""
) -> tuple[int, dict[bytes, bytes], bytes]:
    sent: list[dict[str, Any]] = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return messages.pop() if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": headers}
    asyncio.run(app(scope, receive, send))
    start, end = sent
    return start["status"], dict(start["headers"]), end["body"]


def _generate_world() -> tuple[Snapshot, bytes]:
    keys = [
        _key(1, -1, NOW_S - 10, NOW_S + 1000),
        _key(2, -2, NOW_S - 10, NOW_S + 1000),
        _key(3, SITE_KEYSET, NOW_S - 10, NOW_S + 1000),
    ]
    return _snapshot(keys, clients=[_client()]), _secret(99)


class _Clock:
    def now_ms(self) -> int:
        return NOW


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/ops/healthcheck", 200),
        ("HEAD", "/ops/healthcheck", 200),
        ("POST", "/ops/healthcheck", 405),
        ("GET", "/nowhere", 404),
        ("GET", "/v2/token/generate", 405),
        ("POST", "/v2/token/generate", 401),
        ("POST", "/v2/token/refresh", 400),
    ],
)
def test_every_answer_announces_its_length(method: str, path: str, status: int) -> None:
    snapshot, _ = _generate_world()
    app = create_operator_app(snapshot_provider=lambda: snapshot, clock=_Clock())
    origin = [(b"origin", b"https://site.example")]
    got, headers, body = _call(app, method, path, origin, b"x" if method == "POST" else b"")
    assert got == status
    assert headers[b"content-length"] == str(len(body)).encode()
    assert headers[b"access-control-allow-origin"] == b"https://site.example"


def test_a_preflight_204_announces_no_length() -> None:
    app = create_operator_app()
    preflight = [(b"origin", b"https://site.example"), (b"access-control-request-method", b"POST")]
    status, headers, body = _call(app, "OPTIONS", "/v2/token/generate", preflight)
    assert (status, body) == (204, b"")
    assert b"content-length" not in headers
    assert b"access-control-allow-methods" in headers


@pytest.mark.parametrize("binary", [False, True])
def test_a_sealed_answer_announces_its_length_and_opens(binary: bool) -> None:
    snapshot, secret = _generate_world()
    app = create_operator_app(snapshot_provider=lambda: snapshot, clock=_Clock())
    nonce = b"12345678"
    sealed = seal_request(
        json.dumps({"email": "user@example.com"}).encode(),
        secret=secret,
        now_ms=NOW,
        nonce=nonce,
        random=bytes,
    )
    body = sealed if binary else base64.b64encode(sealed)
    content_type = b"application/octet-stream" if binary else b"text/plain"
    headers = [
        (b"authorization", f"Bearer {_MINTED.text}".encode()),
        (b"content-type", content_type),
        (b"authorization", b"Bearer a later duplicate is ignored"),
        (b"x-amzn-trace-id", b"Root=1-abc"),
    ]
    status, answer_headers, answer = _call(app, "POST", "/v2/token/generate", headers, body)
    assert status == 200
    assert answer_headers[b"content-length"] == str(len(answer)).encode()
    assert answer_headers[b"content-type"] == content_type
    assert answer_headers[b"x-amzn-trace-id"] == b"Root=1-abc"
    opened = open_response(unframe_response(answer, binary), secret=secret, nonce=nonce)
    assert opened["status"] == "success"
    assert set(opened["body"]) >= {"advertising_token", "refresh_token"}


@pytest.mark.parametrize("declared", ["\u00b2", "\u0661\u0662", " 12\u00b3 "])
def test_a_content_length_of_non_ascii_digits_is_not_a_server_error(declared: str) -> None:
    snapshot, _ = _generate_world()
    app = create_operator_app(snapshot_provider=lambda: snapshot, clock=_Clock())
    headers = [(b"content-length", declared.encode("latin-1", "replace"))]
    status, _, _ = _call(app, "POST", "/v2/token/generate", headers, b"x")
    assert status < 500
