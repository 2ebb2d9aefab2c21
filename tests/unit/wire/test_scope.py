"""The identity byte: scope in bit 4, type in bits 2-3, every other bit ignored (§5.1)."""

from __future__ import annotations

import pytest

from uid2_operator.wire.scope import (
    IdentityScope,
    IdentityType,
    identity_type_byte,
    parse_identity_type_byte,
)


@pytest.mark.parametrize("scope", list(IdentityScope))
@pytest.mark.parametrize("kind", list(IdentityType))
def test_the_byte_round_trips(scope: IdentityScope, kind: IdentityType) -> None:
    assert parse_identity_type_byte(identity_type_byte(scope, kind)) == (scope, kind)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # The version-alignment bits and the v4 raw UID's environment and version bits
        # (0xA0 = production | v4 marker, 0x20 = the marker alone) do not change the reading.
        (0x23, (IdentityScope.UID2, IdentityType.EMAIL)),
        (0xA0, (IdentityScope.UID2, IdentityType.EMAIL)),
        (0xB0, (IdentityScope.EUID, IdentityType.EMAIL)),
        (0x67, (IdentityScope.UID2, IdentityType.PHONE)),
        (0xF7, (IdentityScope.EUID, IdentityType.PHONE)),
    ],
)
def test_bits_outside_scope_and_type_are_ignored(
    value: int, expected: tuple[IdentityScope, IdentityType]
) -> None:
    assert parse_identity_type_byte(value) == expected


@pytest.mark.parametrize("value", [0x08, 0x0C, 0x1B, 0xAF])
def test_unknown_type_bits_are_refused(value: int) -> None:
    with pytest.raises(ValueError, match="is not a valid IdentityType"):
        parse_identity_type_byte(value)
