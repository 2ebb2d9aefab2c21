"""Participants (UID2 "sites"): who holds credentials, and which roles they may grant."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from uid2_operator.domain.roles import ClientRole


class ParticipantType(StrEnum):
    PUBLISHER = "publisher"
    ADVERTISER = "advertiser"
    DSP = "dsp"
    DATA_PROVIDER = "data_provider"


@dataclass(frozen=True, slots=True)
class Participant:
    site_id: int
    name: str
    type: ParticipantType
    allowed_roles: frozenset[ClientRole]
    enabled: bool
    contacts: tuple[str, ...]
    created_at_ms: int
    updated_at_ms: int
