"""The exact reach of the credential-text patterns: which brands, site ids and lengths each
takes, where a run may end, and the order masks are applied in. The audit trail drops a value
by ``CREDENTIAL_TEXT`` alone, so a pattern that reaches less there keeps a key in a hashed row.
"""

from __future__ import annotations

import pytest

from uid2_operator.domain.audit import redact
from uid2_operator.domain.credential_text import holds_credential_text, mask_credential_text

TAIL = "Ab1Cd2Ef3Gh4Ij5Kl6Mn7Op8Qr9St0Uv1Wx2Yz"  # 38 characters, both cases


@pytest.mark.parametrize(
    "credential",
    [
        "UID2-C-L-1-abcdef." + TAIL[:20],  # the shortest tail the pattern takes
        "EUID-C-L-1-abcdef." + TAIL[:25],  # the EUID brand
        "UID2-C-L-12345-abcdef." + TAIL,  # a site id of five digits
        "UID2-C-P-2147483647-abcdef." + TAIL,  # the highest site id
    ],
)
def test_a_full_credential_is_dropped_from_audit_values_and_detected(credential: str) -> None:
    assert redact({"name": f"x {credential} y", "kept": "plain"}) == {"kept": "plain"}
    assert holds_credential_text(credential)


def test_a_credential_tail_one_short_of_the_pattern_is_not_a_full_credential() -> None:
    # Nineteen characters of tail: not a full credential (and too short to be a tail alone).
    assert redact({"name": "UID2-C-L-1-abcdef." + TAIL[:19]}) != {}


def test_a_long_random_run_is_masked_whole() -> None:
    assert mask_credential_text("a" * 30 + TAIL, "*") == "*"
    assert mask_credential_text(f"before {TAIL * 3} after", "*") == "before * after"


def test_a_url_safe_secret_is_masked_before_key_tails_could_cut_it() -> None:
    # 43 characters, URL-safe: a secret re-encoded. Masked as a key tail first, its first 35
    # characters would go and "_abcdefg" would stay.
    secret = TAIL[:35] + "_abcdefg"
    assert mask_credential_text(secret, "*") == "*"
    assert mask_credential_text(f"secret {secret}.", "*") == "secret *."


@pytest.mark.parametrize("text", ["a" * 43 + "=aaaa", "aaaa" + "a" * 43 + "="])
def test_a_secret_shaped_run_inside_a_longer_run_is_no_secret(text: str) -> None:
    assert not holds_credential_text(text)
    assert holds_credential_text("a" * 43 + "=")
