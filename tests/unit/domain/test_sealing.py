from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uid2_operator.domain.environments import Environment
from uid2_operator.domain.sealing import (
    UNASSIGNED_SECRET_ID,
    ClientSecret,
    Keyring,
    add_kek_version,
    drop_kek_version,
    generate_keyring,
    needs_reseal,
    new_client_secret,
    open_secret,
    require_keyring,
    reseal_secret,
    seal_secret,
)
from uid2_operator.errors import (
    KekVersionMissing,
    KeyringError,
    KeyringMissing,
    PlaceholderKeyring,
    SealedSecretUnreadable,
)

KEY_ID = "UID2-C-L-1001-fCXrMM"
T0 = 1_700_000_000_000


def _stream(seed: bytes) -> Callable[[int], bytes]:
    counter = iter(range(1 << 30))
    return lambda n: hashlib.shake_256(seed + next(counter).to_bytes(4, "big")).digest(n)


def test_client_secret_is_32_bytes_shown_as_standard_base64(
    random: Callable[[int], bytes],
) -> None:
    secret = new_client_secret(random)
    assert len(secret.raw) == 32
    assert len(secret.text) == 44
    assert base64.b64decode(secret.text, validate=True) == secret.raw
    assert secret == ClientSecret(secret.raw)
    assert hash(secret) == hash(ClientSecret(secret.raw))
    assert secret != new_client_secret(random)
    assert secret.__eq__("x") is NotImplemented


def test_client_secret_must_be_32_bytes() -> None:
    with pytest.raises(SealedSecretUnreadable):
        ClientSecret(bytes(31))


def test_seal_open_round_trip(keyring: Keyring, random: Callable[[int], bytes]) -> None:
    secret = new_client_secret(random)
    sealed = seal_secret(keyring, KEY_ID, secret, random, T0)
    assert sealed.secret_id == UNASSIGNED_SECRET_ID
    assert (sealed.key_id, sealed.kek_version, sealed.created_at_ms) == (KEY_ID, 1, T0)
    assert sealed.retires_at_ms is None
    assert secret.raw not in sealed.ciphertext
    assert len(sealed.ciphertext) == 12 + 32 + 16
    assert open_secret(keyring, sealed) == secret


def test_a_sealed_secret_moved_to_another_key_does_not_open(
    keyring: Keyring, random: Callable[[int], bytes]
) -> None:
    sealed = seal_secret(keyring, KEY_ID, new_client_secret(random), random, T0)
    moved = replace(sealed, key_id="UID2-C-L-1001-otherK")
    with pytest.raises(SealedSecretUnreadable, match="does not open"):
        open_secret(keyring, moved)


def test_a_tampered_ciphertext_does_not_open(
    keyring: Keyring, random: Callable[[int], bytes]
) -> None:
    sealed = seal_secret(keyring, KEY_ID, new_client_secret(random), random, T0)
    flipped = bytes([sealed.ciphertext[20] ^ 1])
    tampered = replace(sealed, ciphertext=sealed.ciphertext[:20] + flipped + sealed.ciphertext[21:])
    with pytest.raises(SealedSecretUnreadable):
        open_secret(keyring, tampered)
    with pytest.raises(SealedSecretUnreadable):
        open_secret(keyring, replace(sealed, ciphertext=b"short"))


def test_an_unknown_kek_version_does_not_open(
    keyring: Keyring, random: Callable[[int], bytes]
) -> None:
    sealed = seal_secret(keyring, KEY_ID, new_client_secret(random), random, T0)
    with pytest.raises(SealedSecretUnreadable, match="version 9") as refused:
        open_secret(keyring, replace(sealed, kek_version=9))
    # The missing version travels as the cause, typed, for whoever must name it.
    cause = refused.value.__cause__
    assert isinstance(cause, KekVersionMissing)
    assert cause.version == 9


def test_kek_rotation_keeps_old_seals_open_and_reseals(
    keyring: Keyring, random: Callable[[int], bytes]
) -> None:
    secret = new_client_secret(random)
    old = replace(seal_secret(keyring, KEY_ID, secret, random, T0), secret_id=5)
    rotated = add_kek_version(keyring, random)
    assert rotated.active_version == 2
    assert rotated.versions == (1, 2)
    assert rotated.pepper == keyring.pepper
    assert open_secret(rotated, old) == secret  # sealed under v1, v2 now active
    assert needs_reseal(rotated, old)

    resealed = reseal_secret(rotated, old, random)
    assert resealed.kek_version == 2
    assert (resealed.secret_id, resealed.key_id, resealed.created_at_ms) == (5, KEY_ID, T0)
    assert resealed.ciphertext != old.ciphertext
    assert not needs_reseal(rotated, resealed)

    dropped = drop_kek_version(rotated, 1)
    assert dropped.versions == (2,)
    assert open_secret(dropped, resealed) == secret
    with pytest.raises(SealedSecretUnreadable):
        open_secret(dropped, old)
    # New seals use the active version.
    assert seal_secret(rotated, KEY_ID, secret, random, T0).kek_version == 2


def test_the_active_or_an_unknown_kek_cannot_be_dropped(
    keyring: Keyring, random: Callable[[int], bytes]
) -> None:
    rotated = add_kek_version(keyring, random)
    with pytest.raises(KeyringError, match="active"):
        drop_kek_version(rotated, 2)
    with pytest.raises(KeyringError, match="version 7"):
        drop_kek_version(rotated, 7)


@settings(deadline=None, max_examples=100)
@given(
    raw=st.binary(min_size=32, max_size=32),
    key_id=st.text(max_size=40),
    seed=st.binary(max_size=8),
)
def test_seal_open_round_trip_property(raw: bytes, key_id: str, seed: bytes) -> None:
    random = _stream(seed)
    keyring = generate_keyring(random)
    sealed = seal_secret(keyring, key_id, ClientSecret(raw), random, T0)
    assert open_secret(keyring, sealed).raw == raw
    assert open_secret(add_kek_version(keyring, random), sealed).raw == raw


# ------------------------------------------------------------------ keyring


def test_keyring_json_round_trip(random: Callable[[int], bytes]) -> None:
    keyring = add_kek_version(generate_keyring(random), random)
    text = keyring.to_json()
    assert Keyring.from_json(text) == keyring
    assert Keyring.from_json(text.encode()) == keyring
    doc = json.loads(text)
    assert doc["active_kek_version"] == 2
    assert sorted(doc["keks"]) == ["1", "2"]
    assert doc["development"] is False


def test_keyring_equality_and_hash(keyring: Keyring, random: Callable[[int], bytes]) -> None:
    same = Keyring({1: keyring.kek(1)}, 1, keyring.pepper)
    assert same == keyring
    assert hash(same) == hash(keyring)
    assert keyring != Keyring({1: keyring.kek(1)}, 1, keyring.pepper, development=True)
    assert keyring.__eq__(object()) is NotImplemented


def test_no_key_material_in_repr_or_str(keyring: Keyring, random: Callable[[int], bytes]) -> None:
    secret = new_client_secret(random)
    sealed = seal_secret(keyring, KEY_ID, secret, random, T0)
    material = [keyring.kek(1), keyring.pepper, secret.raw, sealed.ciphertext]
    forms = [
        *(f(b) for b in material for f in (bytes.hex, repr)),
        *(base64.b64encode(b).decode() for b in material),
        secret.text,
    ]
    for obj in (keyring, secret, sealed):
        for shown in (repr(obj), str(obj)):
            for form in forms:
                assert form not in shown
    assert repr(keyring) == "Keyring(active_version=1, versions=[1], development=False)"
    assert str(secret) == "ClientSecret(<redacted>)"
    assert KEY_ID in repr(sealed)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ("not json", "not valid JSON"),
        ("[" * 100_000, "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        ("[]", "JSON object"),
        ('{"active_kek_version": 1}', '"keks"'),
        ('{"keks": {}, "active_kek_version": true}', "active_kek_version"),
        ('{"keks": {}, "active_kek_version": "1"}', "active_kek_version"),
        ('{"keks": {}, "active_kek_version": 1, "development": "no"}', "development"),
        ('{"keks": {}, "active_kek_version": 1, "pepper": "AA=="}', "no key-encryption key"),
        ('{"keks": {"01": "AA=="}, "active_kek_version": 1}', "positive integers"),
        ('{"keks": {"x": "AA=="}, "active_kek_version": 1}', "positive integers"),
        ('{"keks": {"1": 5}, "active_kek_version": 1}', '"keks.1"'),
        ('{"keks": {"1": "***"}, "active_kek_version": 1}', "not valid base64"),
        ('{"keks": {"1": "AA=="}, "active_kek_version": 1, "pepper": "AA=="}', "not 32 bytes"),
    ],
)
def test_keyring_json_defects_raise_keyring_error(doc: str | bytes, message: str) -> None:
    with pytest.raises(KeyringError, match=message):
        Keyring.from_json(doc)


def test_a_name_given_twice_in_keyring_json_is_refused(random: Callable[[int], bytes]) -> None:
    # json keeps a repeated name's last value without a word: a second key pasted under version
    # 1 would silently replace the first, or be dropped in its favour.
    first, second, pepper = (base64.b64encode(random(32)).decode() for _ in range(3))
    valid = f'"keks": {{"1": "{first}"}}, "active_kek_version": 1, "pepper": "{pepper}"'
    assert Keyring.from_json("{" + valid + "}").kek(1) == base64.b64decode(first)
    for doc, named in [
        (f'{{"keks": {{"1": "{first}", "1": "{second}"}}, "active_kek_version": 1, '
         f'"pepper": "{pepper}"}}', '"1"'),
        ("{" + valid + f', "pepper": "{second}"}}', '"pepper"'),
        ("{" + valid + ', "active_kek_version": 2}', '"active_kek_version"'),
        ("{" + valid + f', "{first}": 1, "{first}": 2}}', "a name"),
    ]:  # fmt: skip
        with pytest.raises(KeyringError, match=f"gives {named} twice") as refused:
            Keyring.from_json(doc)
        for key in (first, second, pepper):
            assert key not in refused.value.detail


@pytest.mark.parametrize(
    ("keks", "active", "pepper", "message"),
    [
        ({}, 1, bytes(range(32)), "no key-encryption key"),
        ({0: bytes(range(32))}, 0, bytes(range(32)), "positive integers"),
        ({True: bytes(range(32))}, 1, bytes(range(32)), "positive integers"),
        ({1: bytes(range(32))}, 2, bytes(range(32)), "version 2 is absent"),
        ({1: bytes(range(32))}, "1", bytes(range(32)), "not an integer"),
        ({1: bytes(range(32))}, 1, bytes(16), "pepper"),
        ({1: bytes(range(16))}, 1, bytes(range(32)), "version 1 is not 32 bytes"),
    ],
)
def test_keyring_constructor_validates(
    keks: dict[int, bytes], active: int, pepper: bytes, message: str
) -> None:
    with pytest.raises(KeyringError, match=message):
        Keyring(keks, active, pepper)


def test_an_absent_active_version_is_refused_by_its_number() -> None:
    with pytest.raises(KekVersionMissing) as refused:
        Keyring({1: bytes(range(32))}, 2, bytes(range(32)))
    assert refused.value.version == 2


def test_a_missing_keyring_is_refused() -> None:
    for env in Environment:
        with pytest.raises(KeyringMissing, match="UID2_KEYRING"):
            require_keyring(None, env)


def test_prod_refuses_development_and_placeholder_keyrings(
    random: Callable[[int], bytes],
) -> None:
    real = generate_keyring(random)
    placeholders = [
        generate_keyring(random, development=True),
        Keyring({1: bytes(32)}, 1, random(32)),
        Keyring({1: random(32)}, 1, bytes(32)),
        Keyring({1: bytes(32), 2: random(32)}, 2, random(32)),
    ]
    for keyring in placeholders:
        assert keyring.is_placeholder
        with pytest.raises(PlaceholderKeyring):
            require_keyring(keyring, Environment.PROD)
        assert require_keyring(keyring, Environment.LOCAL) is keyring
        assert require_keyring(keyring, Environment.INTEG) is keyring
    assert not real.is_placeholder
    assert require_keyring(real, Environment.PROD) is real


def test_development_flag_survives_json(random: Callable[[int], bytes]) -> None:
    dev = generate_keyring(random, development=True)
    loaded = Keyring.from_json(dev.to_json())
    assert loaded.development
    with pytest.raises(PlaceholderKeyring):
        require_keyring(loaded, Environment.PROD)


@settings(deadline=None, max_examples=200)
@given(
    text=st.one_of(
        st.text(max_size=200),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=50),
            lambda children: (
                st.lists(children, max_size=3)
                | st.dictionaries(
                    st.sampled_from(["keks", "active_kek_version", "pepper", "development", "1"]),
                    children,
                    max_size=4,
                )
            ),
            max_leaves=12,
        ).map(json.dumps),
    )
)
def test_any_keyring_text_parses_or_raises_keyring_error(text: str) -> None:
    try:
        keyring = Keyring.from_json(text)
    except KeyringError:
        return
    assert keyring.active_version in keyring.versions
