"""EUID user consent against a real ``uid2-operator serve`` in the EUID scope, with the SDK.

The serve runs with ``UID2_IDENTITY_SCOPE=euid`` over a data directory prepared with the real
CLI (one publisher, one key holding every client role). As in the upstream operator, consent is
checked only when the request carries ``tcf_consent_string``. Through the SDK: a sufficient TC
string yields a token that the SDK's bidstream and legacy EUID clients decrypt as EUID, and so
does a request without one, while the built-in opted-out test identity without one is
``optout``; an insufficient string is the HTTP 200 ``insufficient_user_consent`` that the SDK
turns into ``ValueError``; an unparsable one is a 400. The same requests sealed by hand show the
exact answers, ``null`` and ``""`` being 400s too. A second serve with ``UID2_TCF_VENDOR_ID=22``
shows the setting reaching its workers.
Last, the SDK's own EUID integration class (skipped by the UID2 suite for want of ``EUID_*``
variables) runs unchanged against the EUID serve.
"""

from __future__ import annotations

import re
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_harness import database_for
from sdk_sdist import run_sdk_tests
from serve_harness import Prepared, Served, clean_env, cli, create_key, poll, prepare, served
from uid2_client import (
    BidstreamClient,
    DecryptionStatus,
    EuidClientFactory,
    IdentityScope,
    TokenGenerateInput,
    Uid2PublisherClient,
)

pytestmark = pytest.mark.functional

GENERATE = "/v2/token/generate"
SUFFICIENT = "CPehNtWPehNtWABAMBFRACBoALAAAEJAAIYgAKwAQAKgArABAAqAAA"
LACKS_PURPOSE_1 = "CPehXK9PehXK9ABAMBFRACBoADAAAEJAAIYgAKwAQAKgArABAAqAAA"
LACKS_PRECISE_GEOLOCATION = "CPehNtWPehNtWABAMBFRACBgALAAAEJAAIYgAKwAQAKgArABAAqAAA"
"""``SUFFICIENT`` without the opt-in to special feature 1 (precise geolocation)."""
INVALID = "invalid_consent_string"
EUID_SCOPE = {"UID2_IDENTITY_SCOPE": "euid"}
EMAIL = "consenting.user@example.com"
OPTED_OUT = "optout@example.com"
NO_CONSENT = {"status": "insufficient_user_consent"}
INVALID_ANSWER = b'{"status":"client_error","message":"User consent is invalid"}'
TOKEN_FIELDS = sorted(
    [
        "advertising_token",
        "refresh_token",
        "identity_expires",
        "refresh_expires",
        "refresh_from",
        "refresh_response_key",
    ]
)
EUID_CLASS = "PublisherEuidIntegrationTests"
EUID_TESTS = 3


@pytest.fixture(scope="module")
def euid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Prepared, Served]]:
    with database_for("sqlite", tmp_path_factory.mktemp("euid")) as database:
        prepared = prepare(database, env=EUID_SCOPE)
        with served(database, env=EUID_SCOPE) as server:
            yield prepared, server


def test_an_euid_deployment_issues_euid_credentials(euid: tuple[Prepared, Served]) -> None:
    """Its API keys and client-side public keys carry the scope's brand, as the reference's EUID
    deployments issue them; a key issued by the same store in the UID2 scope keeps working."""
    prepared, server = euid
    assert prepared.key.key_id.startswith("EUID-C-L-")
    assert prepared.key.key.startswith("EUID-C-L-")
    keypair = cli(prepared.database, "keypair", "create", "--site-id", str(prepared.site_id),
                  env=EUID_SCOPE)  # fmt: skip
    assert keypair["public_key"].startswith("EUID-X-L-")
    uid2_branded = create_key(prepared.database, prepared.site_id, "made in the uid2 scope")
    assert uid2_branded.key_id.startswith("UID2-C-L-")
    for cred in (prepared.key, uid2_branded):
        client = Uid2PublisherClient(server.base_url, cred.key, cred.secret)

        def issued(client: Uid2PublisherClient = client) -> bool | None:
            try:  # the new key reaches the worker at its next snapshot reload
                return client.generate_token(TokenGenerateInput.from_email(EMAIL)).is_success()
            except urllib.error.HTTPError as refused:
                if refused.code != 401:
                    raise
                return None

        assert poll(issued)


def _publisher(prepared: Prepared, server: Served) -> Uid2PublisherClient:
    return Uid2PublisherClient(server.base_url, prepared.key.key, prepared.key.secret)


def _with_consent(consent: str, email: str = EMAIL) -> TokenGenerateInput:
    return TokenGenerateInput.from_email(email).with_transparency_and_consent_string(consent)


@pytest.mark.parametrize(
    "tgi",
    [
        pytest.param(_with_consent(SUFFICIENT), id="sufficient"),
        pytest.param(_with_consent(LACKS_PRECISE_GEOLOCATION), id="no-precise-geolocation"),
        pytest.param(TokenGenerateInput.from_email(EMAIL), id="no-string"),
    ],
)
def test_a_token_the_sdk_decrypts_as_euid(
    euid: tuple[Prepared, Served], tgi: TokenGenerateInput
) -> None:
    prepared, server = euid
    cred = prepared.key
    response = _publisher(prepared, server).generate_token(tgi)
    assert response.is_success()
    token = response.get_identity().get_advertising_token()
    assert token.startswith("E4")

    bidstream = BidstreamClient(server.base_url, cred.key, cred.secret)
    assert bidstream.refresh().success
    decrypted = bidstream.decrypt_token_into_raw_uid(token, "example.com")
    assert decrypted.status == DecryptionStatus.SUCCESS
    assert decrypted.identity_scope == IdentityScope.EUID
    assert decrypted.site_id == prepared.site_id

    legacy = EuidClientFactory.create(server.base_url, cred.key, cred.secret)
    legacy.refresh_keys()
    assert legacy.decrypt(token).uid == decrypted.uid


@pytest.mark.parametrize(
    "tgi",
    [
        pytest.param(_with_consent(LACKS_PURPOSE_1), id="insufficient"),
        pytest.param(_with_consent(LACKS_PURPOSE_1, OPTED_OUT), id="insufficient-opted-out"),
    ],
)
def test_without_consent_the_sdk_raises_value_error(
    euid: tuple[Prepared, Served], tgi: TokenGenerateInput
) -> None:
    prepared, server = euid
    with pytest.raises(ValueError, match="insufficient_user_consent"):
        _publisher(prepared, server).generate_token(tgi)


def test_an_opted_out_identity_without_a_string_is_optout(
    euid: tuple[Prepared, Served],
) -> None:
    prepared, server = euid
    response = _publisher(prepared, server).generate_token(TokenGenerateInput.from_email(OPTED_OUT))
    assert response.is_optout()
    assert response.get_identity() is None


def test_an_unparsable_string_is_an_http_400_for_the_sdk(euid: tuple[Prepared, Served]) -> None:
    prepared, server = euid
    with pytest.raises(urllib.error.HTTPError) as caught:
        _publisher(prepared, server).generate_token(_with_consent(INVALID))
    with caught.value as error:  # closed, so no socket is left open
        assert (error.code, error.read()) == (400, INVALID_ANSWER)


def test_the_exact_answers_on_the_wire(euid: tuple[Prepared, Served]) -> None:
    prepared, server = euid
    cred = prepared.key
    reply, opened = server.call(GENERATE, {"email": EMAIL}, cred)
    assert reply.status_code == 200
    assert opened is not None
    assert (opened["status"], sorted(opened["body"])) == ("success", TOKEN_FIELDS)
    assert opened["body"]["advertising_token"].startswith("E4")
    reply, opened = server.call(GENERATE, {"email": OPTED_OUT}, cred)
    assert (reply.status_code, opened) == (200, {"status": "optout"})
    payload = {"email": EMAIL, "tcf_consent_string": LACKS_PURPOSE_1}
    reply, opened = server.call(GENERATE, payload, cred)
    assert (reply.status_code, opened) == (200, NO_CONSENT)
    for email, invalid in [
        (EMAIL, INVALID),
        (EMAIL, None),
        (EMAIL, ""),
        (EMAIL, 7),
        (OPTED_OUT, None),  # consent is checked before the opt-out
    ]:
        payload = {"email": email, "tcf_consent_string": invalid}
        reply, opened = server.call(GENERATE, payload, cred)
        assert opened is None
        assert (reply.status_code, reply.content) == (400, INVALID_ANSWER)
    payload = {"email": EMAIL, "tcf_consent_string": SUFFICIENT, "policy": 1}
    reply, opened = server.call(GENERATE, payload, cred)
    assert reply.status_code == 200
    assert opened is not None
    assert opened["status"] == "success"
    assert opened["body"]["advertising_token"].startswith("E4")


def test_the_vendor_id_setting_reaches_the_workers(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    env = {"UID2_IDENTITY_SCOPE": "euid", "UID2_TCF_VENDOR_ID": "22"}
    with database_for("sqlite", tmp_path_factory.mktemp("euid-vendor")) as database:
        prepared = prepare(database)
        with served(database, env=env) as server:
            payload = {"email": EMAIL, "tcf_consent_string": SUFFICIENT}
            reply, opened = server.call(GENERATE, payload, prepared.key)
            assert (reply.status_code, opened) == (200, NO_CONSENT)


def test_the_sdks_own_euid_integration_tests_pass(
    sdk_source: Path, euid: tuple[Prepared, Served]
) -> None:
    prepared, server = euid
    env = clean_env(
        {
            "EUID_BASE_URL": server.base_url,
            "EUID_API_KEY": prepared.key.key,
            "EUID_SECRET_KEY": prepared.key.secret,
        }
    )
    status, output = run_sdk_tests(
        sdk_source, env, "-k", EUID_CLASS, "tests/test_publisher_client.py"
    )
    assert status == 0, output[-4000:]
    ran = re.search(r"^Ran (\d+) tests?", output, re.M)
    assert ran is not None, output[-3000:]
    assert int(ran.group(1)) == EUID_TESTS, output[-3000:]
    assert re.search(r"^OK$", output, re.M), output[-3000:]  # no skips, failures or errors
    assert len(set(re.findall(rf"\.{EUID_CLASS}\.(test_\w+)\)", output))) == EUID_TESTS
