"""``/v2/token/generate`` and user consent (operator-api §6.1), over hand-built snapshots.

In the EUID scope, as in the upstream operator, consent is checked only when the request carries
the key ``tcf_consent_string``. Without it the request is served as in UID2: a token, or
``optout`` for an opted-out identity. With it, a token is issued only for a TC string that grants
the configured vendor the EUID purposes; otherwise the sealed answer is
``insufficient_user_consent`` and nothing is drawn or issued (the random source of those calls
fails the test if touched). A value that is not a readable TC string (``null``, ``""``, a
non-string, malformed text) is a 400 with the protocol's fixed text. The UID2 scope never reads
the field. The vendor id travels from ``OperatorApiConfig`` to the endpoint, checked through the
ASGI app.
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

from uid2_operator.clock import FixedClock
from uid2_operator.domain.credentials import issue_api_key
from uid2_operator.domain.environments import Environment
from uid2_operator.domain.key_format import mint_api_key
from uid2_operator.domain.keysets import new_site_keyset, reserved_keysets
from uid2_operator.domain.optout import OptOutRecord
from uid2_operator.domain.participants import ParticipantType, new_participant
from uid2_operator.domain.roles import ClientRole
from uid2_operator.domain.salts import generate_salt_table
from uid2_operator.domain.sealing import ClientSecret
from uid2_operator.errors import IdentityInputError, InvalidConsentString
from uid2_operator.serve_settings import ServeSettings
from uid2_operator.services import data_plane
from uid2_operator.services.data_plane import Caller, Reply
from uid2_operator.services.snapshot import (
    ClientRecord,
    Lifetimes,
    LiveSecret,
    OperatorIdentity,
    Snapshot,
    build_snapshot,
)
from uid2_operator.settings import SettingsError
from uid2_operator.web.operator_api.app import OperatorApiConfig, create_operator_app
from uid2_operator.web.operator_api.errors import render
from uid2_operator.wire.encoding import b64encode
from uid2_operator.wire.envelope import open_response, seal_request, unframe_response
from uid2_operator.wire.identity import hash_identity, normalize_email
from uid2_operator.wire.keys import EncryptionKey
from uid2_operator.wire.scope import IdentityScope
from uid2_operator.wire.tcf import parse_tc_string

NOW = 1_700_000_000_000
SITE = 1001
PEPPER = bytes(range(32))
SUFFICIENT = "CPehNtWPehNtWABAMBFRACBoALAAAEJAAIYgAKwAQAKgArABAAqAAA"
LACKS_PURPOSE_1 = "CPehXK9PehXK9ABAMBFRACBoADAAAEJAAIYgAKwAQAKgArABAAqAAA"
INVALID = "invalid_consent_string"
TCF_V1 = "BOEFEAyOEFEAyAHABDENAI4AAAB9vABAASA"  # a TCF v1.1 string, refused on purpose
SPECIAL_FEATURES_AT = 140
"""Bit offset of the twelve special-feature opt-ins in a core segment (after the header)."""


def _without_precise_geolocation(tc: str) -> str:
    """``tc`` with special feature 1 (precise geolocation) cleared and nothing else changed."""
    core, *rest = tc.split(".")
    data = bytearray(base64.urlsafe_b64decode(core + "=" * (-len(core) % 4)))
    data[SPECIAL_FEATURES_AT // 8] &= ~(0x80 >> (SPECIAL_FEATURES_AT % 8)) & 0xFF
    return ".".join([base64.urlsafe_b64encode(bytes(data)).decode().rstrip("="), *rest])


LACKS_PRECISE_GEOLOCATION = _without_precise_geolocation(SUFFICIENT)
INVALID_BODY = {"status": "client_error", "message": "User consent is invalid"}
EMAIL = "someone@example.com"
OPTED_OUT = "gone@example.com"
CALLER = Caller("key", SITE, frozenset({ClientRole.GENERATOR}))
MINTED = mint_api_key(Environment.LOCAL, SITE, PEPPER, lambda n: bytes(range(1, n + 1)))
SECRET = ClientSecret(hashlib.sha256(b"client secret").digest())


def _key(key_id: int, keyset_id: int) -> EncryptionKey:
    s = NOW // 1000
    secret = hashlib.sha256(f"k{key_id}".encode()).digest()
    return EncryptionKey(key_id, keyset_id, s - 100, s - 100, s + 86_400, secret)


def _client() -> ClientRecord:
    participant = new_participant(
        site_id=SITE,
        name="publisher",
        type=ParticipantType.PUBLISHER,
        allowed_roles=frozenset(ClientRole),
        contacts=["ops@example.com"],
        now_ms=NOW - 1000,
    )
    key = issue_api_key(
        MINTED,
        participant,
        name="key",
        roles={ClientRole.GENERATOR},
        now_ms=NOW - 1000,
        created_by="test",
    )
    return ClientRecord(key, participant, (LiveSecret(1, SECRET),))


def _snapshot(scope: IdentityScope) -> Snapshot:
    draws = iter(range(100))
    salts = generate_salt_table(
        16, NOW - 1, lambda n: hashlib.shake_256(b"salts %d" % next(draws)).digest(n)
    )
    flh = salts.first_level_hash(hash_identity(normalize_email(OPTED_OUT)))
    return build_snapshot(
        generation=1,
        built_at_ms=NOW,
        identity=OperatorIdentity(scope=scope),
        lifetimes=Lifetimes(),
        pepper=PEPPER,
        clients=[_client()],
        keysets=[*reserved_keysets(NOW), new_site_keyset(11, SITE, NOW)],
        keys=[_key(1, -1), _key(2, -2), _key(3, 11)],
        salts=salts,
        optouts=[OptOutRecord(flh, NOW - 5000, b64encode(bytes(33)))],
    )


EUID = _snapshot(IdentityScope.EUID)
UID2 = _snapshot(IdentityScope.UID2)


def _no_draws(size: int) -> bytes:
    raise AssertionError(f"nothing may be issued, yet {size} random bytes were drawn")


def _generate(snapshot: Snapshot, payload: dict[str, Any], **kw: Any) -> Reply:
    random = kw.pop("random", os.urandom)
    return data_plane.generate(snapshot, CALLER, payload, NOW, random, **kw)


def _refused(snapshot: Snapshot, payload: dict[str, Any]) -> tuple[int, Any, str]:
    with pytest.raises(InvalidConsentString) as caught:
        _generate(snapshot, payload, random=_no_draws)
    status, body, _ = render(caught.value)
    return status, json.loads(body), caught.value.detail


# ----------------------------------------------------------------------------------- EUID


def test_the_string_without_precise_geolocation_differs_from_the_sufficient_one_in_that_alone() -> (
    None
):
    sufficient = parse_tc_string(SUFFICIENT)
    lacking = parse_tc_string(LACKS_PRECISE_GEOLOCATION)
    assert sufficient.special_feature_opt_ins == {1}
    assert lacking.special_feature_opt_ins == frozenset()
    assert (
        replace(lacking, special_feature_opt_ins=sufficient.special_feature_opt_ins) == sufficient
    )


@pytest.mark.parametrize("consent", [SUFFICIENT, LACKS_PRECISE_GEOLOCATION])
def test_sufficient_consent_issues_an_euid_token(consent: str) -> None:
    """Every required purpose is enough: no special feature is required (a user who declined
    precise geolocation, special feature 1, gets a token)."""
    reply = _generate(EUID, {"email": EMAIL, "tcf_consent_string": consent})
    assert reply.status == "success"
    assert reply.body["advertising_token"].startswith("E4")
    assert json.loads(reply.to_json())["status"] == "success"


def test_without_the_key_there_is_no_consent_check() -> None:
    reply = _generate(EUID, {"email": EMAIL})
    assert reply.status == "success"
    assert reply.body["advertising_token"].startswith("E4")
    reply = _generate(EUID, {"email": OPTED_OUT}, random=_no_draws)
    assert reply.status == "optout"
    assert json.loads(reply.to_json()) == {"status": "optout"}


@pytest.mark.parametrize(
    "payload",
    [
        {"email": EMAIL, "tcf_consent_string": LACKS_PURPOSE_1},
        # consent is checked before the opt-out
        {"email": OPTED_OUT, "tcf_consent_string": LACKS_PURPOSE_1},
    ],
)
def test_insufficient_consent_issues_nothing(payload: dict[str, Any]) -> None:
    reply = _generate(EUID, payload, random=_no_draws)
    assert reply.status == "insufficient_user_consent"
    assert reply.body is None
    assert json.loads(reply.to_json()) == {"status": "insufficient_user_consent"}


def test_an_opted_out_identity_with_consent_is_still_opted_out() -> None:
    reply = _generate(EUID, {"email": OPTED_OUT, "tcf_consent_string": SUFFICIENT})
    assert reply.status == "optout"


@pytest.mark.parametrize(
    ("consent", "detail"),
    [
        (INVALID, "version 34 (only TCF version 2 is read)"),
        (TCF_V1, "version 1 (only TCF version 2 is read)"),
        (None, "tcf_consent_string is null"),
        ("", "empty TC string"),
        ("CPehNtWP", "truncated: "),
        (21, "tcf_consent_string is a int"),
        (["CPehNtWP"], "tcf_consent_string is a list"),
        ({"tc": SUFFICIENT}, "tcf_consent_string is a dict"),
    ],
)
def test_an_unreadable_consent_string_is_a_400_with_the_fixed_text(
    consent: object, detail: str
) -> None:
    status, body, reason = _refused(EUID, {"email": EMAIL, "tcf_consent_string": consent})
    assert (status, body) == (400, INVALID_BODY)
    assert reason.startswith(detail)
    assert SUFFICIENT not in reason


@pytest.mark.parametrize("consent", [None, ""])
def test_a_null_or_empty_value_is_refused_before_the_opt_out(consent: str | None) -> None:
    status, body, _ = _refused(EUID, {"email": OPTED_OUT, "tcf_consent_string": consent})
    assert (status, body) == (400, INVALID_BODY)


def test_identity_input_is_checked_before_consent() -> None:
    with pytest.raises(IdentityInputError):
        _generate(EUID, {"tcf_consent_string": INVALID}, random=_no_draws)
    with pytest.raises(IdentityInputError):
        _generate(EUID, {"email": "not an email", "tcf_consent_string": INVALID})


def test_the_vendor_id_decides_whose_consent_counts() -> None:
    payload = {"email": EMAIL, "tcf_consent_string": SUFFICIENT}
    assert _generate(EUID, payload, tcf_vendor_id=21).status == "success"
    assert _generate(EUID, payload, tcf_vendor_id=22, random=_no_draws).status == (
        "insufficient_user_consent"
    )
    endpoints = data_plane.enveloped_endpoints(lambda record: None, tcf_vendor_id=22)
    handler = endpoints["/v2/token/generate"]
    assert handler(EUID, CALLER, payload, NOW, _no_draws).status == "insufficient_user_consent"
    default = data_plane.enveloped_endpoints(lambda record: None)["/v2/token/generate"]
    assert default(EUID, CALLER, payload, NOW, os.urandom).status == "success"
    # The default vendor is served by ``generate`` itself: no wrapper call on the hot path.
    assert default is data_plane.generate


# ----------------------------------------------------------------------------------- UID2


@pytest.mark.parametrize("consent", [None, SUFFICIENT, LACKS_PURPOSE_1, INVALID, "", 21, [1]])
def test_uid2_ignores_the_field_whatever_it_holds(consent: object) -> None:
    payload: dict[str, Any] = {"email": EMAIL}
    if consent is not None:
        payload["tcf_consent_string"] = consent
    reply = _generate(UID2, payload)
    assert reply.status == "success"
    assert reply.body["advertising_token"].startswith("A4")


# ----------------------------------------------------------------------------------- the edge


def _post(snapshot: Snapshot, payload: dict[str, Any], config: OperatorApiConfig | None) -> Any:
    """One sealed generate request through the ASGI app: ``(status, opened answer or JSON)``."""
    app = create_operator_app(
        snapshot_provider=lambda: snapshot, clock=FixedClock(NOW), config=config
    )
    nonce = os.urandom(8)
    sealed = seal_request(
        json.dumps(payload).encode(),
        secret=SECRET.raw,
        now_ms=NOW,
        nonce=nonce,
        random=os.urandom,
    )

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://op.test") as client:
            return await client.post(
                "/v2/token/generate",
                content=base64.b64encode(sealed),
                headers={"authorization": f"Bearer {MINTED.text}", "content-type": "text/plain"},
            )

    response = anyio.run(send)
    if response.status_code != 200:
        return response.status_code, response.json()
    opened = open_response(
        unframe_response(response.content, False), secret=SECRET.raw, nonce=nonce
    )
    return 200, opened


def test_the_app_answers_each_outcome_and_takes_the_vendor_id_from_its_config() -> None:
    good = {"email": EMAIL, "tcf_consent_string": SUFFICIENT}
    status, opened = _post(EUID, good, None)
    assert status == 200
    assert opened["status"] == "success"
    assert opened["body"]["advertising_token"].startswith("E4")
    status, opened = _post(EUID, {"email": EMAIL}, None)
    assert (status, opened["status"]) == (200, "success")
    assert opened["body"]["advertising_token"].startswith("E4")
    for invalid in (INVALID, None, ""):
        payload = {"email": EMAIL, "tcf_consent_string": invalid}
        assert _post(EUID, payload, None) == (400, INVALID_BODY)
    lacking = {"email": EMAIL, "tcf_consent_string": LACKS_PURPOSE_1}
    assert _post(EUID, lacking, None) == (200, {"status": "insufficient_user_consent"})
    other_vendor = OperatorApiConfig(tcf_vendor_id=22)
    assert _post(EUID, good, other_vendor) == (200, {"status": "insufficient_user_consent"})
    status, opened = _post(UID2, {"email": EMAIL, "tcf_consent_string": INVALID}, other_vendor)
    assert (status, opened["status"]) == (200, "success")


# ----------------------------------------------------------------------------------- settings


def test_the_vendor_id_setting_defaults_to_21_and_is_read_from_the_environment() -> None:
    assert ServeSettings().tcf_vendor_id == 21
    assert ServeSettings.from_env({}).tcf_vendor_id == 21
    assert ServeSettings.from_env({"UID2_TCF_VENDOR_ID": "755"}).tcf_vendor_id == 755
    assert ServeSettings.from_env({"UID2_TCF_VENDOR_ID": " 65535 "}).tcf_vendor_id == 65_535
    assert OperatorApiConfig().tcf_vendor_id == 21


@pytest.mark.parametrize("text", ["0", "65536", "-1", "21.5", "abc", "0x15"])
def test_the_vendor_id_setting_refuses_what_no_tc_string_can_name(text: str) -> None:
    with pytest.raises(SettingsError, match="UID2_TCF_VENDOR_ID"):
        ServeSettings.from_env({"UID2_TCF_VENDOR_ID": text})
