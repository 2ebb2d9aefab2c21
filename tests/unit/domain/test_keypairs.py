"""Client-side keypairs: subscription ids, keys from injected randomness, sealing, views."""

from __future__ import annotations

import json
import string
from dataclasses import replace

import pytest
from domain_randomness import T0, Drbg

from uid2_operator.domain.environments import Environment
from uid2_operator.domain.keypairs import (
    PRIVATE_KEY_LABEL,
    SUBSCRIPTION_ID_ALPHABET,
    SUBSCRIPTION_ID_RULE,
    ClientKeypair,
    format_public_key,
    generate_keypair,
    is_subscription_id,
    keypair_view,
    new_subscription_id,
    open_private_key,
    parse_public_key,
    random_subscription_id,
    set_keypair_disabled,
    update_keypair,
)
from uid2_operator.domain.material_sealing import SealedMaterial, seal_material
from uid2_operator.domain.sealing import Keyring
from uid2_operator.errors import InvalidInput, InvalidTransition, SealedSecretUnreadable
from uid2_operator.wire.cstg import (
    load_public_key_der,
    private_key_der,
    private_key_from_random,
    public_key_der,
    shared_secret,
)
from uid2_operator.wire.encoding import b64encode

VECTOR_PUBLIC = (
    "UID2-X-L-MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEsziOqRXZ7II0uJusaMxxCxlxgj8el/MUYLFMtWfB71Q3G1ju"
    "yrAnzyqruNiPPnIuTETfFOridglP9UQNlwzNQg=="
)


def make(keyring: Keyring, random: Drbg, **kw: object) -> tuple[ClientKeypair, str]:
    args: dict[str, object] = {
        "site_id": 1001,
        "environment": Environment.LOCAL,
        "keyring": keyring,
        "random": random,
        "now_ms": T0,
    }
    args.update(kw)
    new = generate_keypair(**args)  # type: ignore[arg-type]
    return new.keypair, new.public_key_text


def test_subscription_ids_are_uniform_shape_and_reproducible() -> None:
    ids = {random_subscription_id(Drbg(bytes([i]))) for i in range(200)}
    assert len(ids) == 200
    assert all(is_subscription_id(i) for i in ids)
    assert set("".join(ids)) <= set(SUBSCRIPTION_ID_ALPHABET)
    assert random_subscription_id(Drbg(b"x")) == random_subscription_id(Drbg(b"x"))
    assert len(SUBSCRIPTION_ID_ALPHABET) == 58
    # Bytes at or above 232 would bias the draw: they are skipped.
    assert random_subscription_id(lambda n: bytes([255, 0] * n)[:n]) == "1" * 10


def test_subscription_id_shape() -> None:
    assert is_subscription_id("4WvryDGbR5")
    for bad in ("4WvryDGbR", "4WvryDGbR50", "0WvryDGbR5", "lWvryDGbR5", "4Wvry-GbR5", ""):
        assert not is_subscription_id(bad)


def test_the_rule_in_words_names_exactly_the_alphabet() -> None:
    excluded = {"I", "O", "l"}
    assert SUBSCRIPTION_ID_RULE.endswith(
        "the digits 1-9 and the ASCII letters other than I, O and l"
    )
    described = set("123456789") | (set(string.ascii_letters) - excluded)
    assert described == set(SUBSCRIPTION_ID_ALPHABET)
    assert SUBSCRIPTION_ID_ALPHABET not in SUBSCRIPTION_ID_RULE


def test_new_subscription_id_skips_taken_and_gives_up() -> None:
    first = random_subscription_id(Drbg(b"t"))
    second = new_subscription_id(Drbg(b"t"), {first})
    assert second != first
    assert is_subscription_id(second)
    with pytest.raises(InvalidInput, match="unused subscription id"):
        new_subscription_id(bytes, {"1" * 10})


def test_generate_seals_and_reopens_the_private_key(keyring: Keyring, random: Drbg) -> None:
    pair, text = make(keyring, random, name=" Web ", contact="ops@example.com")
    assert is_subscription_id(pair.subscription_id)
    assert (pair.site_id, pair.name, pair.contact, pair.disabled) == (
        1001,
        "Web",
        "ops@example.com",
        False,
    )
    assert pair.created_at_ms == T0
    assert text.startswith("UID2-X-L-")
    assert parse_public_key(text, Environment.LOCAL) == pair.public_key
    private = open_private_key(keyring, pair)
    assert public_key_der(private.public_key()) == pair.public_key
    # Same randomness, same pair: nothing comes from the library's own generator.
    again, _ = make(keyring, Drbg())
    assert again.public_key == pair.public_key
    # The sealed blob is not the key in the clear.
    assert private_key_der(private) not in pair.sealed_private_key.ciphertext


def test_private_key_never_in_views_or_repr(keyring: Keyring, random: Drbg) -> None:
    pair, text = make(keyring, random)
    private = open_private_key(keyring, pair)
    der_b64 = b64encode(private_key_der(private))
    scalar = f"{private.private_numbers().private_value}"
    view = keypair_view(pair, Environment.LOCAL)
    assert view == {
        "subscription_id": pair.subscription_id,
        "site_id": 1001,
        "public_key": text,
        "name": "",
        "contact": "",
        "disabled": False,
        "created_at_ms": T0,
    }
    shown = json.dumps(view) + repr(pair) + str(pair)
    assert der_b64 not in shown
    assert der_b64[9:40] not in shown
    assert scalar not in shown
    assert b64encode(pair.sealed_private_key.ciphertext) not in shown
    assert "sealed_private_key" not in repr(pair)


def test_sealed_key_bound_to_its_subscription(keyring: Keyring, random: Drbg) -> None:
    pair, _ = make(keyring, random)
    other, _ = make(keyring, Drbg(b"other"))
    moved = replace(other, sealed_private_key=pair.sealed_private_key)
    with pytest.raises(SealedSecretUnreadable):
        open_private_key(keyring, moved)
    # A blob that opens but holds another pair's key is refused too.
    swapped = replace(pair, public_key=other.public_key)
    with pytest.raises(SealedSecretUnreadable, match="is not its key"):
        open_private_key(keyring, swapped)


def test_sealed_blob_that_is_not_a_key(keyring: Keyring, random: Drbg) -> None:
    pair, _ = make(keyring, random)
    junk = seal_material(keyring, PRIVATE_KEY_LABEL, pair.subscription_id, b"junk", random)
    assert isinstance(junk, SealedMaterial)
    with pytest.raises(SealedSecretUnreadable):
        open_private_key(keyring, replace(pair, sealed_private_key=junk))


def test_generation_validates_inputs(keyring: Keyring, random: Drbg) -> None:
    with pytest.raises(InvalidInput):
        make(keyring, random, site_id=2)
    with pytest.raises(InvalidInput, match="at most 200"):
        make(keyring, random, name="x" * 201)
    with pytest.raises(InvalidInput, match="control"):
        make(keyring, random, contact="a\nb")


def test_public_key_text_round_trip_and_refusals() -> None:
    der = parse_public_key(VECTOR_PUBLIC)
    assert format_public_key(Environment.LOCAL, der) == VECTOR_PUBLIC
    assert format_public_key(Environment.PROD, der).startswith("UID2-X-P-")
    euid = format_public_key(Environment.LOCAL, der, "EUID")  # an EUID deployment's
    assert euid == "EUID-X-L-" + VECTOR_PUBLIC[9:]
    assert parse_public_key(euid, Environment.LOCAL) == der
    with pytest.raises(InvalidInput, match="local environment"):
        parse_public_key(VECTOR_PUBLIC, Environment.PROD)
    for bad in (
        "",
        "UID2-Y-L-" + VECTOR_PUBLIC[9:],
        "EUIX-X-L-" + VECTOR_PUBLIC[9:],
        "UID2-X-LL" + VECTOR_PUBLIC[9:],
        VECTOR_PUBLIC[9:],
    ):
        with pytest.raises(InvalidInput, match="starts with"):
            parse_public_key(bad)
    with pytest.raises(InvalidInput, match="unknown environment"):
        parse_public_key("UID2-X-Q-" + VECTOR_PUBLIC[9:])
    for bad_body in ("%%%", "AAAA", VECTOR_PUBLIC[9:-8]):
        with pytest.raises(InvalidInput, match="P-256"):
            parse_public_key("UID2-X-L-" + bad_body)


def test_update_and_disable(keyring: Keyring, random: Drbg) -> None:
    pair, _ = make(keyring, random)
    renamed = update_keypair(pair, name=" New ")
    assert (renamed.name, renamed.contact, renamed.disabled) == ("New", "", False)
    assert renamed.public_key == pair.public_key
    both = update_keypair(pair, contact="c@example.com", disabled=True)
    assert (both.name, both.contact, both.disabled) == ("", "c@example.com", True)
    with pytest.raises(InvalidInput, match="at least one"):
        update_keypair(pair)
    off = set_keypair_disabled(pair, True)
    assert off.disabled
    assert not set_keypair_disabled(off, False).disabled
    with pytest.raises(InvalidTransition, match="already disabled"):
        set_keypair_disabled(off, True)
    with pytest.raises(InvalidTransition, match="already enabled"):
        set_keypair_disabled(pair, False)


def test_keys_agree_with_a_client(keyring: Keyring, random: Drbg) -> None:
    pair, _ = make(keyring, random)
    client = private_key_from_random(Drbg(b"client"))
    server = open_private_key(keyring, pair)
    assert shared_secret(server, client.public_key()) == shared_secret(
        client, load_public_key_der(pair.public_key)
    )
