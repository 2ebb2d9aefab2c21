"""The operator's precomputed authorization must allow exactly what the domain rules allow.

``ClientRecord`` folds ``authenticate`` and the endpoint table into ``usable_before_ms`` and
``allowed_paths`` so an allowed request can skip the full checks. If that shortcut ever admitted
a request the domain refuses (a revoked, disabled, expired or retired key, a disabled participant,
a missing role), this property fails.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from uid2_operator.domain.authorization import KEYLESS_ENDPOINTS, OPERATOR_ENDPOINTS, Allowed
from uid2_operator.domain.credentials import ApiKey, KeyState, authorize_request
from uid2_operator.domain.participants import Participant, ParticipantType
from uid2_operator.domain.roles import ClientRole
from uid2_operator.services.snapshot import ClientRecord

PATHS = sorted({*OPERATOR_ENDPOINTS, *KEYLESS_ENDPOINTS, "/v2/unknown"})
roles = st.frozensets(st.sampled_from(list(ClientRole)))
instant = st.integers(min_value=0, max_value=10_000)
maybe_instant = st.none() | instant


@st.composite
def records(draw: st.DrawFn) -> ClientRecord:
    site = draw(st.integers(min_value=3, max_value=5))
    key = ApiKey(
        key_id=f"UID2-C-L-{site}-abcdef",
        site_id=draw(st.sampled_from([site, site + 1])),
        name="k",
        roles=draw(roles),
        state=draw(st.sampled_from(list(KeyState))),
        key_hash=b"\x00" * 32,
        created_at_ms=0,
        created_by="test",
        updated_at_ms=0,
        expires_at_ms=draw(maybe_instant),
        retires_at_ms=draw(maybe_instant),
    )
    participant = Participant(
        site_id=site,
        name="p",
        type=ParticipantType.PUBLISHER,
        allowed_roles=draw(roles),
        enabled=draw(st.booleans()),
        contacts=(),
        created_at_ms=0,
        updated_at_ms=0,
    )
    return ClientRecord(key=key, participant=participant, secrets=())


@settings(max_examples=3000, deadline=None)
@given(records(), st.sampled_from(PATHS), instant)
def test_the_shortcut_allows_exactly_what_the_rules_allow(
    record: ClientRecord, path: str, now_ms: int
) -> None:
    shortcut = now_ms < record.usable_before_ms and path in record.allowed_paths
    full = isinstance(authorize_request(record.key, record.participant, path, now_ms), Allowed)
    assert shortcut == full
