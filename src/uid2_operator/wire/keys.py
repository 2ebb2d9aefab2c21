"""Encryption keys, the reserved keysets, active-key selection and the privacy bits.

Time units: key records carry ``created``, ``activates`` and ``expires`` in epoch **seconds** (as
Core distributes them and as the key endpoints publish them). Everything that asks "which key is
active now" takes ``now_ms`` in epoch **milliseconds**, like every other clock input of the wire
layer, and compares it against the key's seconds multiplied by 1000. Because key times are whole
seconds this is exactly the same decision as comparing against the truncated second.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import IntFlag
from typing import Final

from uid2_operator.errors import NoActiveKey
from uid2_operator.wire.aead import KEY_SIZE

MASTER_KEYSET_ID: Final = -1
"""Keyset of the master keys that seal the outer layer of advertising tokens."""
REFRESH_KEYSET_ID: Final = -2
"""Keyset of the keys that seal refresh tokens and the refresh envelope; never published."""
FALLBACK_PUBLISHER_KEYSET_ID: Final = 2
"""Site-key keyset used when a publisher has no default keyset of its own."""

MASTER_SITE_ID: Final = -1
REFRESH_SITE_ID: Final = -2
FALLBACK_PUBLISHER_SITE_ID: Final = 2
MAX_RESERVED_SITE_ID: Final = 2
"""Site ids at or below this value belong to the service itself, never to a participant."""

MASTER_KEYSET_ID_IN_KEY_JSON: Final = 9999999
"""What the key endpoints report as ``master_keyset_id`` and as the master keys' ``keyset_id``.

SDKs only need the value to be consistent between the two places; a positive stand-in avoids
exposing the internal negative id.
"""


@dataclass(frozen=True, slots=True)
class EncryptionKey:
    """One key of a keyset; times in epoch seconds, ``secret`` is the 32-byte AES-256 key.

    The secret is excluded from ``repr`` so a key that ends up in a log line or a traceback does
    not leak the material.
    """

    id: int
    keyset_id: int
    created: int
    activates: int
    expires: int
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) != KEY_SIZE:
            raise ValueError(f"key secret must be {KEY_SIZE} bytes")

    def is_active(self, now_ms: int) -> bool:
        """``activates <= now < expires``, with ``now_ms`` in epoch milliseconds."""
        return self.activates * 1000 <= now_ms < self.expires * 1000

    def is_expired(self, now_ms: int) -> bool:
        """``expires <= now``, with ``now_ms`` in epoch milliseconds."""
        return self.expires * 1000 <= now_ms


def active_key(
    keys: Iterable[EncryptionKey], now_ms: int, *, keyset_id: int | None = None
) -> EncryptionKey:
    """The active key of one keyset at ``now_ms`` (epoch milliseconds).

    The rule the reference operator applies: order the keys by ``activates`` (a stable sort, so
    keys that activate at the same second keep the caller's order), consider only those with
    ``activates <= now``, and take the last of them that has not expired, walking backwards past
    expired ones. A key that activates later is never chosen even if it is the newest, and an
    older key that is still valid wins over a newer one that already expired.

    ``keys`` should be the keys of a single keyset; pass ``keyset_id`` to filter a mixed list.
    Raises ``NoActiveKey`` when no key qualifies.
    """
    # One pass, no sort: among the started, unexpired keys the one that activates last wins,
    # and among equals the last in the caller's order (what the stable sort and the backward walk
    # pick). Every request selects three keys this way.
    chosen: EncryptionKey | None = None
    for key in keys:
        if (
            (keyset_id is None or key.keyset_id == keyset_id)
            and key.activates * 1000 <= now_ms < key.expires * 1000
            and (chosen is None or key.activates >= chosen.activates)
        ):
            chosen = key
    if chosen is None:
        raise NoActiveKey
    return chosen


class PrivacyBit(IntFlag):
    """Bits of the int32 privacy field carried by advertising and refresh tokens."""

    LEGACY = 1 << 0
    """Always set by token generation (server-side and client-side)."""
    CLIENT_SIDE_GENERATED = 1 << 1
    """The identity came through client-side token generation."""
    CSTG_OPTOUT = 1 << 2
    """Historic client-side opt-out marker; no longer written."""
    DEPRECATED_BIT_3 = 1 << 3
    """Retired; must not be given a new meaning because old tokens may still carry it."""


SERVER_GENERATED_PRIVACY_BITS: Final = int(PrivacyBit.LEGACY)
"""What ``/v2/token/generate`` writes: 1."""
CLIENT_GENERATED_PRIVACY_BITS: Final = int(PrivacyBit.LEGACY | PrivacyBit.CLIENT_SIDE_GENERATED)
"""What ``/v2/token/client-generate`` writes: 3."""
