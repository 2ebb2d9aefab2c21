"""Credential text is recognised in every form a key, token or secret may be pasted in.

Keys and secrets are minted with the real minting functions over several random draws, including
draws chosen for their edge cases (a tail without digits, a secret without digits, a secret whose
letter-and-digit runs are all short). Ordinary names, e-mail addresses, domain names, app ids,
request ids and runs in one letter case (hex digests, fillers) are not taken for credentials.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable, Iterator

import pytest
from domain_randomness import PEPPER, Drbg

from uid2_operator.domain.credential_text import (
    KEY_TAIL_TEXT,
    STANDARD_SECRET_TEXT,
    URL_SAFE_SECRET_TEXT,
    holds_credential_text,
    mask_credential_text,
)
from uid2_operator.domain.environments import Environment
from uid2_operator.domain.key_format import (
    BASE62,
    RANDOM_LENGTH,
    TAIL_LENGTH,
    MintedCredential,
    mint_admin_token,
    mint_api_key,
)
from uid2_operator.domain.sealing import ClientSecret, new_client_secret
from uid2_operator.wire.aead import RandomBytes

DRAWS = 8
MASK = "<masked>"


def _restricted(random: RandomBytes, alphabet: str) -> RandomBytes:
    """``random`` keeping only the bytes ``random_base62`` turns into characters of ``alphabet``
    (same unbiased limit: 4 * 62), so minting draws its random part from ``alphabet`` only."""
    wanted = {b for b in range(248) if BASE62[b % 62] in alphabet}

    def draw(size: int) -> bytes:
        out = b""
        while len(out) < size:
            out += bytes(b for b in random(64) if b in wanted)
        return out[:size]

    return draw


def _minted_keys() -> Iterator[tuple[str, MintedCredential]]:
    for n in range(DRAWS):
        random = Drbg(b"key-%d" % n)
        yield f"api key {n}", mint_api_key(Environment.INTEG, 1001 + n, PEPPER, random)
        yield f"admin token {n}", mint_admin_token(Environment.PROD, PEPPER, random)
    letters = "".join(c for c in BASE62 if c.isalpha())
    yield "letters only", mint_api_key(Environment.LOCAL, 3, PEPPER, _restricted(Drbg(), letters))
    # A whole tail without a digit, checksum included.
    for n in range(1000):
        minted = mint_api_key(Environment.LOCAL, 3, PEPPER, _restricted(Drbg(b"%d" % n), letters))
        if not any(c.isdigit() for c in minted.text.split(".")[1]):
            yield "no digit in the whole tail", minted
            return
    raise AssertionError("no draw gave a tail without digits")


MINTED_KEYS = dict(_minted_keys())


def _secret_where(condition: str, test: Callable[[ClientSecret], bool]) -> ClientSecret:
    random = Drbg(condition.encode())
    for _ in range(20_000):
        secret = new_client_secret(random)
        if test(secret):
            return secret
    raise AssertionError(f"no draw gave a secret with {condition}")


def _url_safe(secret: ClientSecret) -> str:
    return base64.urlsafe_b64encode(secret.raw).decode("ascii")


def _minted_secrets() -> Iterator[tuple[str, ClientSecret]]:
    random = Drbg(b"secrets")
    for n in range(DRAWS):
        yield f"secret {n}", new_client_secret(random)
    yield "no digit", _secret_where("no digit", lambda s: not re.search("[0-9]", s.text))
    yield (
        "only short letter-and-digit runs",
        _secret_where(
            "only short runs",
            lambda s: (
                KEY_TAIL_TEXT.search(s.text) is None and "-" in _url_safe(s) and "_" in _url_safe(s)
            ),
        ),
    )


MINTED_SECRETS = dict(_minted_secrets())


def key_forms(minted: MintedCredential) -> dict[str, str]:
    """A credential and the forms of it that give its secret away."""
    key_id, tail = minted.text.split(".")
    assert len(tail) == TAIL_LENGTH
    return {
        "full": minted.text,
        "in a sentence": f"leaked: {minted.text}, rotate",
        "tail": tail,
        "random part of the tail": tail[:RANDOM_LENGTH],
        "tail in a sentence": f"the old one ended {tail}.",
        "id and tail split by a space": f"{key_id} {tail}",
        "id and tail split by a colon": f"{key_id}:{tail}",
    }


def secret_forms(secret: ClientSecret) -> dict[str, str]:
    """A client secret in every base64 form, padded or not, alone or in text."""
    standard, url_safe = secret.text, _url_safe(secret)
    assert len(standard) == 44
    assert standard.endswith("=")
    return {
        "standard": standard,
        "standard unpadded": standard.rstrip("="),
        "url-safe": url_safe,
        "url-safe unpadded": url_safe.rstrip("="),
        "standard in a sentence": f"secret: {standard.rstrip('=')} (old)",
        "url-safe in a sentence": f"secret={url_safe}; sorry",
        "in quotes": f"'{url_safe.rstrip('=')}'",
    }


def _key_cases() -> list[object]:
    """(draw, form, text), with ids naming the draw and form, never the text."""
    return [
        pytest.param(name, form, text, id=f"{name}: {form}")
        for name, minted in MINTED_KEYS.items()
        for form, text in key_forms(minted).items()
    ]


def _secret_cases() -> list[object]:
    return [
        pytest.param(name, form, text, id=f"{name}: {form}")
        for name, secret in MINTED_SECRETS.items()
        for form, text in secret_forms(secret).items()
    ]


def test_the_edge_case_draws_have_their_edge() -> None:
    tails = {name: minted.text.split(".")[1] for name, minted in MINTED_KEYS.items()}
    assert not re.search("[0-9]", tails["letters only"][:RANDOM_LENGTH])
    assert not re.search("[0-9]", tails["no digit in the whole tail"])
    assert not re.search("[0-9]", MINTED_SECRETS["no digit"].text)
    short_runs = MINTED_SECRETS["only short letter-and-digit runs"]
    assert KEY_TAIL_TEXT.search(short_runs.text) is None
    assert KEY_TAIL_TEXT.search(_url_safe(short_runs)) is None


@pytest.mark.parametrize(("draw", "form", "text"), _key_cases())
def test_every_form_of_a_key_is_credential_text(draw: str, form: str, text: str) -> None:
    assert holds_credential_text(text), (draw, form)
    masked = mask_credential_text(text, MASK)
    assert MASK in masked
    assert not holds_credential_text(masked)
    assert MINTED_KEYS[draw].text.split(".")[1][:RANDOM_LENGTH] not in masked


@pytest.mark.parametrize(("draw", "form", "text"), _secret_cases())
def test_every_form_of_a_client_secret_is_credential_text(draw: str, form: str, text: str) -> None:
    assert holds_credential_text(text), (draw, form)
    masked = mask_credential_text(text, MASK)
    assert not holds_credential_text(masked)
    secret = MINTED_SECRETS[draw]
    for shown in (secret.text, _url_safe(secret)):
        assert shown.rstrip("=") not in masked


def test_a_secret_is_recognised_by_its_own_shape_not_only_by_its_long_runs() -> None:
    """The draw whose letter-and-digit runs are all short is caught by the secret shapes."""
    forms = secret_forms(MINTED_SECRETS["only short letter-and-digit runs"])
    for form in ("standard", "standard unpadded"):
        assert STANDARD_SECRET_TEXT.search(forms[form]) is not None, form
    for form in ("url-safe", "url-safe unpadded"):
        assert URL_SAFE_SECRET_TEXT.search(forms[form]) is not None, form
    for text in forms.values():
        assert KEY_TAIL_TEXT.search(text) is None
        assert holds_credential_text(text)


def test_a_longer_base64_run_is_not_a_secret() -> None:
    """A secret is 43 characters of one alphabet not part of a longer run of it (a public key or
    a hash in base64 is longer); only the letter-and-digit runs inside count, as key tails."""
    for alphabet_breaks in ("+/", "-_"):
        value = "".join(f"Ab{n:02d}{alphabet_breaks[n % 2]}" for n in range(12)) + "Bw=="
        assert len(value) > 44
        assert not holds_credential_text(value), value
        assert not holds_credential_text(value.rstrip("="))
    run = "aB" * RANDOM_LENGTH
    assert not holds_credential_text(f"{run[: RANDOM_LENGTH - 1]}.{run[: RANDOM_LENGTH - 1]}")
    assert holds_credential_text(f"x.{run[:RANDOM_LENGTH]}.x")


@pytest.mark.parametrize(
    "text",
    [
        "n" * 200,  # a filler name at the length limit
        hashlib.sha256(b"x").hexdigest(),
        "revoked: leaked in commit 9fceb02d0ae598e95dc970b736cecfb7e9d8e2e5",
        "thelongestdomainnameintheworldandthensomeandthensomemoreandmore.com",
        "customersupportoperationsteam2024@example.com",
        "PARTNER-INTEGRATION-ACCOUNT-001-EMEA-REGION",  # 43 URL-safe characters, one case
        "prebid-server-integration-eu-west-prod-2024",  # 43 URL-safe characters, one case
        "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
    ],
)
def test_a_run_in_one_letter_case_is_not_a_tail_or_a_secret(text: str) -> None:
    """Random base62 and base64 mix upper and lower case (a 33-character run misses one case about
    once in 30 million), so a long run in one case is ordinary text."""
    assert not holds_credential_text(text)
    assert mask_credential_text(text, MASK) == text


@pytest.mark.parametrize(
    "secret",
    [
        "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCDEFG=",
        "abcdefghijklmnopqrstuvwxyz0123456789+/abcde=",
        "0123456789012345678901234567890123456789012=",
    ],
)
def test_a_client_secret_as_handed_out_is_caught_in_one_letter_case_too(secret: str) -> None:
    """A client secret's own form (43 base64 characters and ``=``) is recognised by its shape
    alone, unlike a mere run of base64 characters, which must mix cases."""
    assert len(base64.b64decode(secret)) == 32
    assert holds_credential_text(f"note: {secret} end")
    assert mask_credential_text(f"note: {secret} end", MASK) == f"note: {MASK} end"


@pytest.mark.parametrize(
    "text",
    [
        "Example Publisher 2024",
        "María-José O'Connor-Smith",
        "Jean-Baptiste de La Fontaine-Grenouille",
        "The Example Publishing Company International Ltd. (EMEA)",
        "web-prod.v2",
        "replaces UID2-C-L-1001-abcDEF",  # a key id is public
        "replaced; UID2-C-L-1001-abcDEF leaked 2024-05",
        "partnerships.and.integrations-team+uid2-alerts@europe.example-publisher.co.uk",
        "christopher.alexander.montgomery-wellington@mail.example-advertising-group.com",
        "ops.team-1@example.co.uk",
        "example.co.uk",
        "xn--strae-oqa.de",
        "com.example.app",
        "com.example.publisher.ios.production.release",
        "org.example.very_long_application_name.beta",
        "1234567890",
        "3f2a9c1e-7b4d-4e8a-9f0c-2d6b8a1e5c3f",  # a UUID request id
        "trace-42:a.b_c",
        Drbg(b"request id")(16).hex(),  # a request id as the admin API draws one
    ],
)
def test_ordinary_text_is_not_credential_text(text: str) -> None:
    assert not holds_credential_text(text)
    assert mask_credential_text(text, MASK) == text
