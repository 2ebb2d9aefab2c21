"""``AdminService.record_refusal``: a refused attempt as one audit event in its own transaction."""

from __future__ import annotations

import pytest
from service_fixtures import ACTOR

from uid2_operator.domain.audit import EMPTY_HEAD, Outcome, verify_chain
from uid2_operator.errors import InvalidInput
from uid2_operator.services.admin import AdminService
from uid2_operator.storage import SqlStore


def _events(store: SqlStore) -> list[object]:
    with store.read() as tx:
        return list(tx.audit.list_events())


def test_denied_and_failed_events_join_the_chain(store: SqlStore, admin: AdminService) -> None:
    admin.create_admin_token(ACTOR, name="ops", roles=["READ_ONLY"])
    before = store.change_seq()
    denied = admin.record_refusal(
        ACTOR,
        outcome=Outcome.DENIED,
        action="key.create",
        target_type="api_key",
        target_id="",
    )
    failed = admin.record_refusal(
        ACTOR,
        outcome=Outcome.FAILED,
        action="key.revoke",
        target_type="api_key",
        target_id="UID2-C-L-3-abcDEF",
        error_code="invalid_transition",
    )
    assert (denied.outcome, denied.before, denied.after) == (Outcome.DENIED, None, None)
    assert (failed.outcome, failed.after) == (Outcome.FAILED, {"code": "invalid_transition"})
    assert (failed.request_id, failed.source, failed.actor) == ("req-1", "cli", ACTOR.id)
    assert store.change_seq() == before  # a refused attempt changes no configuration
    with store.read() as tx:
        verdict = verify_chain(tx.audit.list_events(), recorded_head=tx.audit.head() or EMPTY_HEAD)
    assert verdict.ok, verdict
    assert verdict.head_seq == failed.seq == denied.seq + 1


@pytest.mark.parametrize(
    ("outcome", "code"),
    [
        (Outcome.SUCCESS, None),
        (Outcome.FAILED, "Not a code"),
        (Outcome.FAILED, "UID2-C-L-3-abcDEF.tail"),
        (Outcome.FAILED, "x" * 65),
        (Outcome.DENIED, ""),
    ],
)
def test_only_refusals_with_a_plain_code_are_recorded(
    store: SqlStore, admin: AdminService, outcome: Outcome, code: str | None
) -> None:
    count = len(_events(store))
    with pytest.raises(InvalidInput):
        admin.record_refusal(
            ACTOR,
            outcome=outcome,
            action="key.revoke",
            target_type="api_key",
            target_id="UID2-C-L-3-abcDEF",
            error_code=code,
        )
    assert len(_events(store)) == count


def test_the_repeats_left_out_are_recorded_in_after(store: SqlStore, admin: AdminService) -> None:
    denied = admin.record_refusal(
        ACTOR,
        outcome=Outcome.DENIED,
        action="key.create",
        target_type="api_key",
        target_id="",
        repeated=99,
    )
    failed = admin.record_refusal(
        ACTOR,
        outcome=Outcome.FAILED,
        action="key.revoke",
        target_type="api_key",
        target_id="UID2-C-L-3-abcDEF",
        error_code="invalid_transition",
        repeated=2,
    )
    assert denied.after == {"repeated": 99}
    assert failed.after == {"code": "invalid_transition", "repeated": 2}


@pytest.mark.parametrize("repeated", [-1, True, 1.5])
def test_the_repeats_left_out_are_a_count(
    store: SqlStore, admin: AdminService, repeated: object
) -> None:
    count = len(_events(store))
    with pytest.raises(InvalidInput):
        admin.record_refusal(
            ACTOR,
            outcome=Outcome.DENIED,
            action="key.create",
            target_type="api_key",
            target_id="",
            repeated=repeated,  # type: ignore[arg-type]
        )
    assert len(_events(store)) == count
