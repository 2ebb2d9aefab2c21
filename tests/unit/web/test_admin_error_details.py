"""The admin API's error table keeps the details its documents promise, logs what it answers
500, and the Bearer scheme is read in any case (RFC 9110 §11.1)."""

from __future__ import annotations

import pytest
from starlette.datastructures import Headers

from uid2_operator.errors import (
    AuditChainAhead,
    AuditHeadMissing,
    AuditRowUnreadable,
    KeyringError,
    MalformedCredential,
    SchemaOutOfDate,
    StoreError,
)
from uid2_operator.web.admin_api.auth import bearer_token
from uid2_operator.web.admin_api.errors import render_error


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_the_bearer_scheme_is_read_in_any_case(scheme: str) -> None:
    assert bearer_token(Headers({"authorization": f"{scheme} tok"})) == "tok"


@pytest.mark.parametrize("value", ["Basic tok", "Bearertok", "Bearer ", "tok"])
def test_another_scheme_or_no_token_is_malformed(value: str) -> None:
    with pytest.raises(MalformedCredential):
        bearer_token(Headers({"authorization": value}))


@pytest.mark.parametrize(
    "error",
    [SchemaOutOfDate("x"), KeyringError("x"), StoreError("x"), AuditHeadMissing("x")],
    ids=lambda e: type(e).__name__,
)
def test_an_internal_error_answered_500_is_one_the_caller_logs(error: Exception) -> None:
    reply = render_error(error)
    assert reply.status == 500
    assert reply.expected is False


def test_audit_refusals_keep_the_seqs_and_fields_they_name() -> None:
    ahead = "Audit rows exist past the recorded head (seq 9 > 7)"
    assert render_error(AuditChainAhead(ahead)).body["error"]["message"] == ahead
    unreadable = render_error(AuditRowUnreadable(5, "after is not JSON")).body["error"]
    assert "seq 5" in unreadable["message"]
    assert "after is not JSON" in unreadable["message"]
    missing = "The recorded audit head through seq 12 is missing"
    assert render_error(AuditHeadMissing(missing)).body["error"]["message"] == missing
