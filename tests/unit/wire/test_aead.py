"""AES-256-GCM framing: IV || ciphertext || tag."""

from __future__ import annotations

import pytest

from uid2_operator.wire import aead

KEY = bytes(range(32))
IV = bytes(range(12))


def test_seal_draws_the_iv_from_the_random_source() -> None:
    drawn: list[int] = []

    def random(n: int) -> bytes:
        drawn.append(n)
        return IV

    blob = aead.seal(KEY, b"hello", random)
    assert drawn == [aead.IV_SIZE]
    assert blob[: aead.IV_SIZE] == IV
    assert len(blob) == aead.IV_SIZE + 5 + aead.TAG_SIZE
    assert aead.open_(KEY, blob) == b"hello"


def test_associated_data_is_bound() -> None:
    blob = aead.seal_with_iv(KEY, IV, b"x", b"aad")
    assert aead.open_(KEY, blob, b"aad") == b"x"
    with pytest.raises(aead.AeadFailure):
        aead.open_(KEY, blob, b"other")


def test_an_empty_plaintext_seals_and_opens() -> None:
    blob = aead.seal_with_iv(KEY, IV, b"")
    assert len(blob) == aead.OVERHEAD
    assert aead.open_(KEY, blob) == b""


@pytest.mark.parametrize("iv", [b"", bytes(11), bytes(13)])
def test_a_wrong_iv_size_is_a_programming_error(iv: bytes) -> None:
    with pytest.raises(ValueError, match="IV must be 12 bytes"):
        aead.seal_with_iv(KEY, iv, b"x")


@pytest.mark.parametrize(
    ("key", "blob"),
    [
        (bytes(31), bytes(40)),  # wrong key size
        (KEY, bytes(aead.OVERHEAD - 1)),  # too short to hold IV and tag
        (KEY, bytes(40)),  # authentication fails
    ],
)
def test_open_fails_cleanly(key: bytes, blob: bytes) -> None:
    with pytest.raises(aead.AeadFailure):
        aead.open_(key, blob)
