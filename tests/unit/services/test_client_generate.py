"""``/v2/token/client-generate`` and the key endpoints' sharing rules, over a hand-built snapshot.

Every refusal leaves as a ``CstgError`` whose entry in the operator's error table gives the
reference's status; a property test throws arbitrary bodies at the endpoint and finds nothing else.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import replace
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uid2_operator.clock import FixedClock
from uid2_operator.domain.keysets import SharingMode, new_site_keyset, reserved_keysets
from uid2_operator.domain.participants import ParticipantType
from uid2_operator.domain.roles import ClientRole
from uid2_operator.domain.salts import generate_salt_table
from uid2_operator.domain.sharing import allow_list
from uid2_operator.errors import CstgError
from uid2_operator.serve_settings import ServeSettings
from uid2_operator.services import data_plane
from uid2_operator.services.data_plane import Caller
from uid2_operator.services.public_suffix import registrable_domain_lookup
from uid2_operator.services.snapshot import (
    CstgKeypair,
    Lifetimes,
    OperatorIdentity,
    SiteData,
    Snapshot,
    build_snapshot,
)
from uid2_operator.settings import SettingsError
from uid2_operator.web.operator_api.app import create_operator_app
from uid2_operator.web.operator_api.errors import render
from uid2_operator.wire.cstg import (
    build_request,
    open_response,
    private_key_from_random,
    public_key_der,
)
from uid2_operator.wire.keys import EncryptionKey

NOW = 1_700_000_000_000
PUB, READER, DSP, OTHER, OFF = 1001, 1002, 1003, 1004, 1005
KEYPAIR = private_key_from_random(lambda n: hashlib.sha256(b"server").digest()[:n].ljust(n, b"k"))
SUB, DISABLED, OFF_SUB = "AbCdEfGh12", "ZyXwVuTs98", "MnPqRsTu45"
ORIGIN = "https://www.pub-example.co.uk"
LOOKUP = registrable_domain_lookup()
EMAIL_HASH = base64.b64encode(hashlib.sha256(b"someone@example.com").digest()).decode()


def _key(key_id: int, keyset_id: int) -> EncryptionKey:
    s = NOW // 1000
    secret = hashlib.sha256(f"k{key_id}".encode()).digest()
    return EncryptionKey(key_id, keyset_id, s - 100, s - 100, s + 86_400, secret)


def _snapshot(*, cstg: bool = True, phone: bool = True, reader_keyset: bool = False) -> Snapshot:
    draws = iter(range(100))
    salts = generate_salt_table(
        16, NOW - 1, lambda n: hashlib.shake_256(b"salts %d" % next(draws)).digest(n)
    )
    # Keyset 11 is PUB's, shared with READER and every DSP; the store keeps the mode and sites
    # on the keyset and the whole choice, types included, as its sharing policy.
    shared = allow_list(PUB, [READER], [ParticipantType.DSP])
    keyset = replace(
        new_site_keyset(11, PUB, NOW), sharing=SharingMode.LIST, allowed_sites=shared.sites
    )
    # READER's own keyset, when asked for: a site without domain names owning a published key.
    own = [new_site_keyset(12, READER, NOW)] if reader_keyset else []
    return build_snapshot(
        generation=1,
        built_at_ms=NOW,
        identity=OperatorIdentity(phone_support=phone, client_side_generate=cstg),
        lifetimes=Lifetimes(),
        pepper=bytes(32),
        clients=[],
        keysets=[*reserved_keysets(NOW), keyset, *own],
        sharing={keyset.keyset_id: shared},
        keys=[_key(1, -1), _key(2, -2), _key(3, 11), *(_key(4, 12) for _ in own)],
        salts=salts,
        sites=[
            SiteData(
                PUB, ParticipantType.PUBLISHER, True, ("pub-example.co.uk",), ("com.pub.App",)
            ),
            SiteData(READER, ParticipantType.PUBLISHER),
            SiteData(DSP, ParticipantType.DSP),
            SiteData(OTHER, ParticipantType.ADVERTISER),
            SiteData(OFF, ParticipantType.PUBLISHER, False, ("off.example",)),
        ],
        keypairs=[
            CstgKeypair(SUB, PUB, False, KEYPAIR),
            CstgKeypair(DISABLED, PUB, True, KEYPAIR),
            CstgKeypair(OFF_SUB, OFF, False, KEYPAIR),
        ],
    )


SNAPSHOT = _snapshot()


def _request(*, subscription_id: str = SUB, timestamp: int = NOW, **kwargs: Any) -> Any:
    return build_request(
        public_key_der(KEYPAIR.public_key()),
        kwargs.pop("identity", {"email_hash": EMAIL_HASH}),
        timestamp=timestamp,
        subscription_id=subscription_id,
        random=os.urandom,
        **kwargs,
    )


def _call(
    body: bytes | dict[str, Any], origin: str | None = ORIGIN, snapshot: Snapshot = SNAPSHOT
) -> str:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return data_plane.client_generate(
        snapshot, raw, origin=origin, now_ms=NOW, random=os.urandom, registrable_domain=LOOKUP
    )


def _status(
    body: bytes | dict[str, Any], origin: str | None = ORIGIN, **kw: Any
) -> tuple[int, Any]:
    with pytest.raises(CstgError) as caught:
        _call(body, origin, **kw)
    status, payload, _ = render(caught.value)
    return status, json.loads(payload)


def _outcome(body: bytes, origin: str | None) -> int:
    """200 for an answer, else the status of the ``CstgError`` (any other exception escapes)."""
    try:
        _call(body, origin)
    except CstgError as error:
        return render(error)[0]
    return 200


def test_a_request_from_the_publisher_domain_or_app_gets_sealed_tokens() -> None:
    built = _request()
    reply = open_response(built.secret, _call(built.body))
    assert reply["status"] == "success"
    assert set(reply["body"]) >= {"advertising_token", "refresh_token", "refresh_response_key"}
    by_app = _request(app_name="COM.PUB.app")
    assert open_response(by_app.secret, _call(by_app.body, None))["status"] == "success"
    optout_hash = base64.b64encode(hashlib.sha256(b"optout@example.com").digest()).decode()
    opted_out = _request(identity={"email_hash": optout_hash})  # a built-in opted-out identity
    assert open_response(opted_out.secret, _call(opted_out.body)) == {"status": "optout"}


@pytest.mark.parametrize(
    ("make", "origin", "expected"),
    [
        (lambda: _request().body, "https://evil.example", (403, "invalid_http_origin")),
        (lambda: _request().body, None, (403, "invalid_http_origin")),
        (lambda: _request().body, f"{ORIGIN}:{'4' * 5000}", (403, "invalid_http_origin")),
        (lambda: _request(app_name="com.other").body, ORIGIN, (403, "invalid_app_name")),
        (lambda: _request(subscription_id=DISABLED).body, ORIGIN, (401, "unauthorized")),
        (
            lambda: _request(subscription_id=OFF_SUB).body,
            "https://off.example",
            (401, "unauthorized"),
        ),
        (lambda: _request(subscription_id="Qq1Qq1Qq1Q").body, ORIGIN, (400, "client_error")),
        (
            lambda: {k: v for k, v in _request().body.items() if k != "subscription_id"},
            ORIGIN,
            (400, "client_error"),
        ),
        (lambda: _request(timestamp=NOW - 31 * 60 * 1000).body, ORIGIN, (400, "client_error")),
        (lambda: _request(timestamp=NOW + 31 * 60 * 1000).body, ORIGIN, (400, "client_error")),
        (lambda: {**_request().body, "iv": "AAAA"}, ORIGIN, (400, "client_error")),
        (lambda: {**_request().body, "public_key": "bm90IGEga2V5"}, ORIGIN, (400, "client_error")),
        (
            lambda: {**_request().body, "payload": base64.b64encode(bytes(40)).decode()},
            ORIGIN,
            (400, "client_error"),
        ),
        (
            lambda: _request(identity={"phone_hash": EMAIL_HASH, "email_hash": EMAIL_HASH}).body,
            ORIGIN,
            (400, "client_error"),
        ),
        (lambda: b"", ORIGIN, (400, "client_error")),
        (lambda: b"[]", ORIGIN, (400, "client_error")),
    ],
)
def test_refusals_have_the_reference_status(
    make: Any, origin: str | None, expected: tuple[int, str]
) -> None:
    status, payload = _status(make(), origin)
    assert (status, payload["status"]) == expected
    assert payload["message"]


# Origins: absent, the site's own, arbitrary text, and the site's with a port of any length, up to
# well past the 4,300 digits int() converts.
ORIGINS = st.one_of(
    st.none(),
    st.just(ORIGIN),
    st.text(max_size=30),
    st.one_of(
        st.text("0123456789", max_size=8),
        st.integers(4301, 20_000).map(lambda n: "9" * n),
    ).map(lambda port: f"{ORIGIN}:{port}"),
)
VALID_BODY = json.dumps(_request().body).encode()


@settings(deadline=None, max_examples=60)
@given(
    st.one_of(
        st.binary(max_size=200),
        st.dictionaries(
            st.sampled_from(
                ["payload", "iv", "public_key", "timestamp", "subscription_id", "app_name"]
            ),
            st.one_of(st.none(), st.integers(), st.text(max_size=40), st.just(SUB)),
        ).map(lambda d: json.dumps(d).encode()),
    ),
    ORIGINS,
)
def test_any_body_is_answered_or_refused_with_a_cstg_error(body: bytes, origin: str | None) -> None:
    assert _outcome(body, origin) in (200, 400, 401, 403)


@settings(deadline=None, max_examples=60)
@given(ORIGINS)
def test_any_origin_on_a_valid_body_is_answered_or_refused_with_a_cstg_error(
    origin: str | None,
) -> None:
    # The origin is looked at only once the body has passed, so this body is a valid one.
    assert _outcome(VALID_BODY, origin) in (200, 403)


def test_key_endpoints_apply_sites_and_types_and_carry_site_data() -> None:
    def visible(site: int, roles: set[ClientRole]) -> set[int]:
        caller = Caller("k", site, frozenset(roles))
        body = data_plane.key_sharing(SNAPSHOT, caller).body
        return {k["id"] for k in body["keys"]}

    assert visible(READER, {ClientRole.SHARER}) == {1, 3}  # listed
    assert visible(DSP, {ClientRole.SHARER}) == {1, 3}  # a listed type, whatever its roles
    assert visible(OTHER, {ClientRole.SHARER, ClientRole.ID_READER}) == {1}  # not listed
    body = data_plane.key_bidstream(
        SNAPSHOT, Caller("k", DSP, frozenset({ClientRole.ID_READER}))
    ).body
    assert body["site_data"] == [{"id": PUB, "domain_names": ["pub-example.co.uk"]}]
    off = _snapshot(cstg=False)
    assert "site_data" not in data_plane.key_bidstream(off, Caller("k", DSP, frozenset())).body
    assert "site_data" not in data_plane.key_sharing(off, Caller("k", DSP, frozenset())).body


def test_site_data_leaves_out_the_sites_without_domain_names() -> None:
    # READER reads its own key (keyset 12) and PUB's: both sites own a published key, but only
    # PUB has domain names to check a client-side token's claim against.
    snapshot = _snapshot(reader_keyset=True)
    body = data_plane.key_sharing(
        snapshot, Caller("k", READER, frozenset({ClientRole.SHARER}))
    ).body
    assert {k["id"] for k in body["keys"]} == {1, 3, 4}
    assert body["site_data"] == [{"id": PUB, "domain_names": ["pub-example.co.uk"]}]


def _post(snapshot: Snapshot, body: bytes, headers: dict[str, str]) -> httpx.Response:
    app = create_operator_app(snapshot_provider=lambda: snapshot, clock=FixedClock(NOW))

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://op.test") as client:
            return await client.post("/v2/token/client-generate", content=body, headers=headers)

    return anyio.run(send)


def test_the_route_answers_base64_without_content_type_or_404_when_switched_off() -> None:
    built = _request()
    body = json.dumps(built.body).encode()
    response = _post(SNAPSHOT, body, {"origin": ORIGIN})
    assert response.status_code == 200
    assert "content-type" not in response.headers
    assert open_response(built.secret, response.text)["status"] == "success"
    refused = _post(SNAPSHOT, body, {"origin": "https://evil.example"})
    assert refused.status_code == 403
    assert refused.json() == {"status": "invalid_http_origin", "message": "unexpected http origin"}
    assert _post(_snapshot(cstg=False), body, {"origin": ORIGIN}).status_code == 404


@pytest.mark.parametrize("spaces", [("", "  "), ("", "\t"), (" \t", " ")])
def test_the_origin_is_read_without_the_whitespace_around_it(spaces: tuple[str, str]) -> None:
    # RFC 9110 §5.5: a field's value does not include the whitespace around it (the reference's
    # server trims it); the HTTP parser here drops only what comes before it.
    built = _request()
    origin = spaces[0] + ORIGIN + spaces[1]
    response = _post(SNAPSHOT, json.dumps(built.body).encode(), {"origin": origin})
    assert response.status_code == 200, response.text
    assert open_response(built.secret, response.text)["status"] == "success"
    assert response.headers["access-control-allow-origin"] == ORIGIN


def test_client_side_generation_is_a_serve_setting_on_by_default() -> None:
    assert ServeSettings.from_env({}).client_side_generate is True
    assert (
        ServeSettings.from_env({"UID2_CLIENT_SIDE_GENERATE": "False"}).client_side_generate is False
    )
    with pytest.raises(SettingsError, match="UID2_CLIENT_SIDE_GENERATE"):
        ServeSettings.from_env({"UID2_CLIENT_SIDE_GENERATE": "maybe"})
