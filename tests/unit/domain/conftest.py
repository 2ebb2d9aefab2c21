"""Deterministic randomness and small record factories for the domain rules."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from domain_randomness import PEPPER, T0, Drbg

from uid2_operator.domain.credentials import ApiKey, issue_api_key
from uid2_operator.domain.environments import Environment
from uid2_operator.domain.key_format import mint_api_key
from uid2_operator.domain.participants import Participant, ParticipantType, new_participant
from uid2_operator.domain.roles import ClientRole
from uid2_operator.domain.sealing import Keyring


@pytest.fixture
def random() -> Drbg:
    return Drbg()


@pytest.fixture
def keyring() -> Keyring:
    return Keyring({1: bytes(range(32, 64))}, 1, PEPPER)


MakeParticipant = Callable[..., Participant]
MakeKey = Callable[..., tuple[str, ApiKey]]


def _participant(
    site_id: int = 1001,
    roles: frozenset[ClientRole] = frozenset(ClientRole),
    enabled: bool = True,
) -> Participant:
    return new_participant(
        site_id=site_id,
        name="Example Publisher",
        type=ParticipantType.PUBLISHER,
        allowed_roles=roles,
        contacts=["ops@example.com"],
        now_ms=T0,
        enabled=enabled,
    )


def _key(
    random: Callable[[int], bytes],
    participant: Participant | None = None,
    roles: frozenset[ClientRole] = frozenset({ClientRole.GENERATOR}),
    expires_at_ms: int | None = None,
    env: Environment = Environment.LOCAL,
) -> tuple[str, ApiKey]:
    participant = participant or _participant()
    minted = mint_api_key(env, participant.site_id, PEPPER, random)
    key = issue_api_key(
        minted,
        participant,
        name="web",
        roles=roles,
        now_ms=T0,
        created_by="admin:test",
        expires_at_ms=expires_at_ms,
    )
    return minted.text, key


@pytest.fixture
def make_participant() -> MakeParticipant:
    return _participant


@pytest.fixture
def make_key(random: Drbg) -> MakeKey:
    """``make_key(participant=None, roles=..., expires_at_ms=None, env=LOCAL) -> (text, ApiKey)``;
    minted with PEPPER at T0 (1_700_000_000_000)."""

    def make(**kwargs: object) -> tuple[str, ApiKey]:
        return _key(random, **kwargs)  # type: ignore[arg-type]

    return make
