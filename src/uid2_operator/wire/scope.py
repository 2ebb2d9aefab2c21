"""Identity scope (UID2 or EUID) and identity type (email or phone), and their bytes."""

from __future__ import annotations

from enum import IntEnum


class IdentityScope(IntEnum):
    UID2 = 0
    EUID = 1

    @property
    def docs_host(self) -> str:
        """Where the protocol's error hints point clients."""
        return "https://euid.eu" if self is IdentityScope.EUID else "https://unifiedid.com"


class IdentityType(IntEnum):
    EMAIL = 0
    PHONE = 1


def identity_type_byte(scope: IdentityScope, kind: IdentityType) -> int:
    """First byte of v3/v4 advertising tokens and v3 refresh tokens: ``scope<<4 | type<<2 | 3``.

    The ``| 3`` makes the second base64 character line up with the token version digit.
    """
    return (scope << 4) | (kind << 2) | 0x03


def parse_identity_type_byte(value: int) -> tuple[IdentityScope, IdentityType]:
    """Inverse of ``identity_type_byte``; unknown type bits raise ``ValueError``."""
    scope = IdentityScope((value & 0x10) >> 4)
    return scope, IdentityType((value & 0x0F) >> 2)
