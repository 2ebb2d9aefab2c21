from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from uid2_operator.cli.output import safe_message
from uid2_operator.domain.authorization import ALLOWED, Denied, DenyReason
from uid2_operator.domain.credentials import (
    ApiKey,
    KeyState,
    SealedSecret,
    accepted_secrets,
    authenticate,
    authorize_request,
    current_secret,
    effective_roles,
    issue_api_key,
    purgeable_secrets,
    validate_key_roles,
    verify_api_key,
)
from uid2_operator.domain.environments import Environment
from uid2_operator.domain.key_format import mint_admin_token, mint_api_key
from uid2_operator.domain.participants import MAX_SITE_ID, Participant
from uid2_operator.domain.roles import ClientRole
from uid2_operator.errors import (
    CredentialRejected,
    InvalidInput,
    InvalidTransition,
    MalformedCredential,
    WrongEnvironment,
)

MakeParticipant = Callable[..., Participant]
MakeKey = Callable[..., tuple[str, ApiKey]]
PEPPER = bytes(range(1, 33))
T0 = 1_700_000_000_000
G, M, B, S = ClientRole.GENERATOR, ClientRole.MAPPER, ClientRole.ID_READER, ClientRole.SHARER


def test_key_roles_must_be_a_non_empty_subset_of_the_participants(
    make_participant: MakeParticipant,
) -> None:
    participant = make_participant(roles=frozenset({G, M}))
    assert validate_key_roles([G], participant) == {G}
    assert validate_key_roles([G, M], participant) == {G, M}
    with pytest.raises(InvalidInput, match="at least one role"):
        validate_key_roles([], participant)
    with pytest.raises(InvalidInput, match="not allowed for participant 1001: ID_READER, SHARER "):
        validate_key_roles([G, S, B], participant)


def test_a_role_refusal_names_what_the_participant_may_grant_and_how_to_widen_it(
    make_participant: MakeParticipant,
) -> None:
    with pytest.raises(InvalidInput) as refused:
        validate_key_roles([G, S, B], make_participant(roles=frozenset({G, M})))
    assert str(refused.value) == (
        "Role(s) not allowed for participant 1001: ID_READER, SHARER (it may grant GENERATOR, "
        "MAPPER). To change its roles: uid2-operator participant set-roles 1001 "
        "--roles GENERATOR,ID_READER,MAPPER,SHARER "
        "(admin API: PUT /admin/api/participants/1001/roles)"
    )


def test_a_role_refusal_says_when_the_participant_may_grant_no_roles(
    make_participant: MakeParticipant,
) -> None:
    with pytest.raises(InvalidInput) as refused:
        validate_key_roles([B], make_participant(site_id=6, roles=frozenset()))
    assert str(refused.value) == (
        "Role(s) not allowed for participant 6: ID_READER (it may grant no roles). "
        "To change its roles: uid2-operator participant set-roles 6 --roles ID_READER "
        "(admin API: PUT /admin/api/participants/6/roles)"
    )


def test_the_longest_role_refusal_fits_a_command_line_error(
    make_participant: MakeParticipant,
) -> None:
    participant = make_participant(site_id=MAX_SITE_ID, roles=frozenset())
    with pytest.raises(InvalidInput) as refused:
        validate_key_roles(ClientRole, participant)
    assert safe_message(str(refused.value)) == str(refused.value)


def test_effective_roles_follow_the_participant(
    make_participant: MakeParticipant, make_key: MakeKey
) -> None:
    participant = make_participant(roles=frozenset({G, M}))
    _, key = make_key(participant=participant, roles=frozenset({G, M}))
    narrowed = replace(participant, allowed_roles=frozenset({M}))
    assert effective_roles(key, participant) == {G, M}
    assert effective_roles(key, narrowed) == {M}
    assert authorize_request(key, participant, "/v2/token/generate", T0) is ALLOWED
    assert authorize_request(key, narrowed, "/v2/token/generate", T0) == Denied(
        DenyReason.MISSING_ROLE
    )


def test_issue_api_key(make_participant: MakeParticipant, random: Callable[[int], bytes]) -> None:
    participant = make_participant()
    minted = mint_api_key(Environment.LOCAL, 1001, PEPPER, random)
    key = issue_api_key(
        minted, participant, name="  web  ", roles=[G], now_ms=T0, created_by="admin:x",
        expires_at_ms=T0 + 1,
    )  # fmt: skip
    assert key == ApiKey(
        key_id=minted.key_id, site_id=1001, name="web", roles=frozenset({G}),
        state=KeyState.ACTIVE, key_hash=minted.key_hash, created_at_ms=T0, created_by="admin:x",
        updated_at_ms=T0, expires_at_ms=T0 + 1,
    )  # fmt: skip
    for shown in (minted.text, minted.key_hash.hex(), repr(minted.key_hash)[2:-1]):
        assert shown not in repr(key)


def test_issue_api_key_refusals(
    make_participant: MakeParticipant, random: Callable[[int], bytes]
) -> None:
    participant = make_participant()
    minted = mint_api_key(Environment.LOCAL, 1001, PEPPER, random)

    def issue(**overrides: object) -> ApiKey:
        args: dict[str, object] = {
            "minted": minted, "participant": participant, "name": "web", "roles": [G],
            "now_ms": T0, "created_by": "a",
        }  # fmt: skip
        args.update(overrides)
        return issue_api_key(**args)  # type: ignore[arg-type]

    with pytest.raises(InvalidInput, match="does not belong"):
        issue(minted=mint_api_key(Environment.LOCAL, 1002, PEPPER, random))
    with pytest.raises(InvalidInput, match="does not belong"):
        issue(minted=mint_admin_token(Environment.LOCAL, PEPPER, random))
    with pytest.raises(InvalidTransition, match="disabled"):
        issue(participant=make_participant(enabled=False))
    with pytest.raises(InvalidInput, match="future"):
        issue(expires_at_ms=T0)
    with pytest.raises(InvalidInput, match="not allowed"):
        issue(participant=make_participant(roles=frozenset({M})))


def test_authenticate_allows_an_active_key(
    make_participant: MakeParticipant, make_key: MakeKey
) -> None:
    participant = make_participant()
    _, key = make_key(participant=participant, expires_at_ms=T0 + 10)
    assert authenticate(key, participant, T0 + 9) is ALLOWED


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"state": KeyState.REVOKED}, DenyReason.KEY_REVOKED),
        ({"state": KeyState.DISABLED}, DenyReason.KEY_DISABLED),
        ({"expires_at_ms": T0 + 5}, DenyReason.KEY_EXPIRED),
        ({"expires_at_ms": T0 + 4}, DenyReason.KEY_EXPIRED),
        ({"retires_at_ms": T0 + 5}, DenyReason.KEY_RETIRED),
        ({"site_id": 1002}, DenyReason.PARTICIPANT_MISMATCH),
    ],
)
def test_authenticate_denials(
    make_participant: MakeParticipant, make_key: MakeKey, change: dict[str, object],
    reason: DenyReason,
) -> None:  # fmt: skip
    participant = make_participant()
    _, key = make_key(participant=participant)
    assert authenticate(replace(key, **change), participant, T0 + 5) == Denied(reason)  # type: ignore[arg-type]


def test_a_disabled_participant_denies_every_key(
    make_participant: MakeParticipant, make_key: MakeKey
) -> None:
    participant = make_participant()
    _, key = make_key(participant=participant)
    disabled = replace(participant, enabled=False)
    assert authenticate(key, disabled, T0) == Denied(DenyReason.PARTICIPANT_DISABLED)
    assert authorize_request(key, disabled, "/v2/token/generate", T0) == Denied(
        DenyReason.PARTICIPANT_DISABLED
    )


def test_expiry_boundary(make_participant: MakeParticipant, make_key: MakeKey) -> None:
    participant = make_participant()
    _, key = make_key(participant=participant, expires_at_ms=T0 + 1000)
    assert authenticate(key, participant, T0 + 999) is ALLOWED
    assert authenticate(key, participant, T0 + 1000) == Denied(DenyReason.KEY_EXPIRED)


def test_verify_api_key(make_participant: MakeParticipant, make_key: MakeKey) -> None:
    text, key = make_key()
    found = {key.key_id: key}
    assert (
        verify_api_key(text, environment=Environment.LOCAL, pepper=PEPPER, lookup=found.get) is key
    )
    with pytest.raises(WrongEnvironment):
        verify_api_key(text, environment=Environment.PROD, pepper=PEPPER, lookup=found.get)
    with pytest.raises(MalformedCredential):
        verify_api_key(text[:-1], environment=Environment.LOCAL, pepper=PEPPER, lookup=found.get)
    with pytest.raises(CredentialRejected):
        verify_api_key(text, environment=Environment.LOCAL, pepper=bytes(32), lookup=found.get)
    with pytest.raises(CredentialRejected):
        verify_api_key(text, environment=Environment.LOCAL, pepper=PEPPER, lookup={}.get)


def _secret(secret_id: int, retires_at_ms: int | None = None) -> SealedSecret:
    return SealedSecret(secret_id, "UID2-C-L-1001-fCXrMM", 1, b"ct", T0, retires_at_ms)


def test_secret_overlap() -> None:
    old = _secret(1, retires_at_ms=T0 + 100)
    new = _secret(2)
    expired = _secret(0, retires_at_ms=T0 + 50)
    secrets = [old, expired, new]
    assert current_secret(secrets) == new
    assert current_secret([old]) is None
    assert accepted_secrets(secrets, T0 + 49) == [new, old, expired]
    assert accepted_secrets(secrets, T0 + 99) == [new, old]
    assert accepted_secrets(secrets, T0 + 100) == [new]
    assert purgeable_secrets(secrets, T0 + 100) == [old, expired]
    assert purgeable_secrets(secrets, T0 + 49) == []
