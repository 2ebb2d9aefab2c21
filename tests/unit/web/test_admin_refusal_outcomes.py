"""Which refused admin requests become audit events, what they are named, and how repeated
denials are limited."""

from __future__ import annotations

import logging
from dataclasses import fields
from pathlib import Path
from typing import Any, cast

import pytest

from uid2_operator.clock import FixedClock
from uid2_operator.domain.authorization import AdminAction
from uid2_operator.errors import (
    AlreadyExists,
    BodyTooLarge,
    InvalidInput,
    InvalidTransition,
    KeyringError,
    MalformedBody,
    NotFound,
    StoreUnavailable,
    UnsupportedMediaType,
)
from uid2_operator.web.admin_api import create_admin_app
from uid2_operator.web.admin_api.outcomes import (
    OTHER_TARGET,
    PARAM_TARGETS,
    REFUSAL_WINDOW_MS,
    Attempt,
    RefusalLimiter,
    Target,
    failed_code,
    target_of,
)
from uid2_operator.web.admin_api.routing import WRITE_METHODS, Operation

CREDENTIALS_DOC = Path(__file__).resolve().parents[3] / "docs" / "credentials.md"


def _operations() -> tuple[Operation, ...]:
    app = create_admin_app(cast(Any, object()))
    ops: tuple[Operation, ...] = app.state.operations
    return ops


OPERATIONS = {(op.method, op.path): op for op in _operations()}


def _op(method: str, path: str) -> Operation:
    return OPERATIONS[(method, path)]


def test_every_guarded_route_names_a_known_target_type() -> None:
    for op in OPERATIONS.values():
        if op.public:
            continue
        params = dict.fromkeys(PARAM_TARGETS, "")
        assert target_of(op, params).type != OTHER_TARGET, (op.method, op.path)


KEY_REVOKE = ("POST", "/keys/{key_id}/revoke")
SITE_DISABLE = ("POST", "/participants/{site_id}/disable")
KEYPAIR_DISABLE = ("POST", "/keypairs/{subscription_id}/disable")
KEY_ID = "UID2-C-L-1001-abcDEF"
TOKEN_ID = "UID2-A-L-0-abcDEF"


@pytest.mark.parametrize(
    ("route", "params", "target"),
    [
        (("POST", "/keys"), {}, Target("api_key", "")),
        (("POST", "/audit/verify"), {}, Target("audit_trail", "")),
        (("GET", "/admin-tokens"), {}, Target("admin_token", "")),
        # An API key's id names its participant's site; an id naming no valid site gives none.
        (KEY_REVOKE, {"key_id": KEY_ID}, Target("api_key", KEY_ID, 1001)),
        (KEY_REVOKE, {"key_id": "UID2-C-L-1-abcDEF"}, Target("api_key", "UID2-C-L-1-abcDEF")),
        # A whole key, a secret-like string or garbage in the path is not recorded.
        (KEY_REVOKE, {"key_id": KEY_ID + ".tail"}, Target("api_key", "")),
        (KEY_REVOKE, {"key_id": "QUJDREVGR0hJSktMTU5PUA"}, Target("api_key", "")),
        (
            ("POST", "/admin-tokens/{token_id}/revoke"),
            {"token_id": TOKEN_ID},
            Target("admin_token", TOKEN_ID),
        ),
        (SITE_DISABLE, {"site_id": "1001"}, Target("participant", "1001", 1001)),
        (SITE_DISABLE, {"site_id": "1"}, Target("participant", "")),
        (SITE_DISABLE, {"site_id": "9" * 12}, Target("participant", "")),
        # the path check reads ``0012`` as site 12, and so does the request: so does its event
        (SITE_DISABLE, {"site_id": "0012"}, Target("participant", "12", 12)),
        (SITE_DISABLE, {"site_id": "0" * 19}, Target("participant", "")),
        (
            ("PUT", "/participants/{site_id}/sharing"),
            {"site_id": "77"},
            Target("participant", "77", 77),
        ),
        (KEYPAIR_DISABLE, {"subscription_id": "abcdEFGH12"}, Target("keypair", "abcdEFGH12")),
        (KEYPAIR_DISABLE, {"subscription_id": "abc0OIl..."}, Target("keypair", "")),
    ],
)
def test_the_target_comes_from_the_path_in_its_public_shape_only(
    route: tuple[str, str], params: dict[str, str], target: Target
) -> None:
    assert target_of(_op(*route), params) == target


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (NotFound(), "not_found"),
        (InvalidTransition(), "invalid_transition"),
        (AlreadyExists(), "already_exists"),
        (InvalidInput("the site 'UID2-C-L-3-abcDEF.tail' is unknown"), "invalid_input"),
        (MalformedBody(), None),
        (BodyTooLarge(), None),
        (UnsupportedMediaType(), None),
        (StoreUnavailable(), None),
        (KeyringError(), None),
        (RuntimeError("boom"), None),
    ],
)
def test_a_write_refused_by_a_rule_is_failed_with_its_code(
    error: BaseException, code: str | None
) -> None:
    assert failed_code(_op("POST", "/keys/{key_id}/revoke"), error) == code


def test_a_read_is_never_failed() -> None:
    assert failed_code(_op("GET", "/keys/{key_id}"), NotFound()) is None


# ------------------------------------------------------------------ what refusal events are named

# Every write route, with the action and target type of its refusal events (denied or failed).
# Where this differs from the success event (see outcomes.py and docs/credentials.md), the success
# event is noted: a refusal is found with ``audit list --action <the refusal action>``.
REFUSAL_EVENTS_OF_WRITE_ROUTES = {
    ("POST", "/participants"): ("participant.create", "participant"),
    ("POST", "/participants/{site_id}/disable"): ("participant.disable", "participant"),
    ("POST", "/participants/{site_id}/enable"): ("participant.enable", "participant"),
    # success: participant.set_roles on participant
    ("PUT", "/participants/{site_id}/roles"): ("participant.update", "participant"),
    # success: participant.domains on participant
    ("PUT", "/participants/{site_id}/domain-names"): ("participant.update", "participant"),
    # success: participant.app_names on participant
    ("PUT", "/participants/{site_id}/app-names"): ("participant.update", "participant"),
    # success: keyset.sharing on the site's keyset
    ("PUT", "/participants/{site_id}/sharing"): ("sharing.set", "participant"),
    ("POST", "/keys"): ("key.create", "api_key"),
    # success: key.rename on api_key
    ("POST", "/keys/{key_id}/rename"): ("key.update", "api_key"),
    # success: key.set_roles on api_key
    ("PUT", "/keys/{key_id}/roles"): ("key.update", "api_key"),
    ("POST", "/keys/{key_id}/disable"): ("key.disable", "api_key"),
    ("POST", "/keys/{key_id}/enable"): ("key.enable", "api_key"),
    ("POST", "/keys/{key_id}/revoke"): ("key.revoke", "api_key"),
    ("POST", "/keys/{key_id}/rotate"): ("key.rotate", "api_key"),
    ("POST", "/keys/{key_id}/retire-now"): ("key.retire_now", "api_key"),
    ("POST", "/keys/{key_id}/rotate-secret"): ("key.rotate_secret", "api_key"),
    # success: no event (a check, not a change)
    ("POST", "/audit/verify"): ("audit.verify", "audit_trail"),
    ("POST", "/admin-tokens"): ("admin_token.create", "admin_token"),
    ("POST", "/admin-tokens/{token_id}/revoke"): ("admin_token.revoke", "admin_token"),
    ("POST", "/keypairs"): ("keypair.create", "keypair"),
    ("POST", "/keypairs/{subscription_id}/disable"): ("keypair.disable", "keypair"),
    ("POST", "/keypairs/{subscription_id}/enable"): ("keypair.enable", "keypair"),
    ("DELETE", "/keypairs/{subscription_id}"): ("keypair.delete", "keypair"),
}


def test_every_write_route_records_its_refusals_under_a_listed_action_and_target_type() -> None:
    recorded = {}
    for (method, path), op in OPERATIONS.items():
        if op.public or method not in WRITE_METHODS:
            continue
        assert isinstance(op.access, AdminAction)
        target = target_of(op, dict.fromkeys(PARAM_TARGETS, ""))
        recorded[method, path] = (op.access.value, target.type)
    assert recorded == REFUSAL_EVENTS_OF_WRITE_ROUTES


@pytest.mark.parametrize("action", ["participant.update", "key.update", "sharing.set"])
def test_the_docs_say_how_to_find_the_refusals_named_unlike_their_success(action: str) -> None:
    assert f"--action {action}" in " ".join(CREDENTIALS_DOC.read_text(encoding="utf-8").split())


# ------------------------------------------------------------------------ the refusal limiter

WINDOW = REFUSAL_WINDOW_MS


def _attempt(actor: str = "admin:A", path: str = "/keys", action: str = "key.create") -> Attempt:
    return Attempt(actor, "POST", path, action)


def _unreported(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "repeated=" in r.getMessage()
    ]


def test_one_denial_per_window_is_admitted_and_the_others_are_counted() -> None:
    clock = FixedClock()
    limiter = RefusalLimiter(clock)
    attempt = _attempt()
    assert limiter.admit(attempt) == 0
    assert [limiter.admit(attempt) for _ in range(99)] == [None] * 99
    clock.advance(WINDOW - 1)
    assert limiter.admit(attempt) is None
    clock.advance(1)
    assert limiter.admit(attempt) == 100  # the window starts again here
    clock.advance(WINDOW)
    assert limiter.admit(attempt) == 0


def test_attempts_are_limited_separately() -> None:
    limiter = RefusalLimiter(FixedClock())
    attempts = [
        _attempt(),
        _attempt(actor="admin:B"),
        _attempt(path="/keys/{key_id}/rename", action="key.update"),
        _attempt(path="/keys/{key_id}/roles", action="key.update"),
        Attempt("admin:A", "PUT", "/keys/{key_id}/roles", "key.update"),
        _attempt(action="key.update"),
    ]
    assert [limiter.admit(a) for a in attempts] == [0] * len(attempts)
    assert [limiter.admit(a) for a in attempts] == [None] * len(attempts)


def test_the_attempt_leaves_the_target_out() -> None:
    assert "target" not in {f.name for f in fields(Attempt)}


def test_a_denial_that_could_not_be_written_is_reported_with_the_next() -> None:
    clock = FixedClock()
    limiter = RefusalLimiter(clock)
    attempt = _attempt()
    assert limiter.admit(attempt) == 0
    assert limiter.admit(attempt) is None
    clock.advance(WINDOW)
    assert limiter.admit(attempt) == 1
    limiter.not_recorded(attempt, 1 + 1)  # that one, and the repeat it carried
    clock.advance(WINDOW)
    assert limiter.admit(attempt) == 2


def test_the_limiter_remembers_a_bounded_number_of_attempts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FixedClock()
    limiter = RefusalLimiter(clock, max_attempts=3)
    first, *others = [_attempt(actor=f"admin:{n}") for n in range(5)]
    limiter.admit(first)
    limiter.admit(first)  # a repeat, counted
    for attempt in others:
        assert limiter.admit(attempt) == 0
    assert len(limiter) == 3
    # The first attempt was forgotten with its count (logged as lost): it is admitted afresh.
    assert limiter.admit(first) == 0
    [lost] = _unreported(caplog)
    assert "the limiter is full actor=admin:0 action=key.create route=POST /keys" in lost
    assert lost.endswith("repeated=1")
    assert len(limiter) == 3


def test_an_ended_window_is_forgotten_and_its_count_logged_at_the_next_denial(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FixedClock()
    limiter = RefusalLimiter(clock)
    quiet, burst = _attempt(actor="admin:Q"), _attempt(actor="admin:R")
    limiter.admit(quiet)
    limiter.admit(burst)
    for _ in range(499):
        limiter.admit(burst)
    clock.advance(WINDOW - 1)
    limiter.admit(_attempt(actor="admin:S"))
    assert (len(limiter), _unreported(caplog)) == (3, [])  # nothing has ended yet
    clock.advance(1)
    assert limiter.admit(_attempt(actor="admin:S")) is None  # a repeat checks too
    # Both ended windows are gone; the burst's count was logged without waiting for it to recur.
    assert len(limiter) == 1
    [logged] = _unreported(caplog)
    assert logged == (
        "admin refusal limiter: repeated denials not recorded, their window ended "
        "actor=admin:R action=key.create route=POST /keys repeated=499"
    )
    # Reported once: the attempt starts afresh.
    assert limiter.admit(burst) == 0
    assert len(_unreported(caplog)) == 1


def test_the_next_denial_of_the_attempt_itself_carries_its_count_instead_of_a_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FixedClock()
    limiter = RefusalLimiter(clock)
    attempt, other = _attempt(), _attempt(actor="admin:B")
    limiter.admit(attempt)
    limiter.admit(other)
    limiter.admit(attempt)
    limiter.admit(other)
    clock.advance(WINDOW)
    assert limiter.admit(attempt) == 1  # its own count, in its event
    [logged] = _unreported(caplog)  # the other's, logged
    assert "actor=admin:B" in logged
    assert logged.endswith("repeated=1")


def test_flush_logs_every_pending_count(caplog: pytest.LogCaptureFixture) -> None:
    limiter = RefusalLimiter(FixedClock())
    quiet, burst = _attempt(actor="admin:Q"), _attempt(actor="admin:R")
    limiter.admit(quiet)
    for _ in range(4):
        limiter.admit(burst)
    limiter.flush()
    [logged] = _unreported(caplog)
    assert "the app is shutting down actor=admin:R" in logged
    assert logged.endswith("repeated=3")
    assert len(limiter) == 0


def test_a_clock_moved_back_starts_a_new_window() -> None:
    clock = FixedClock()
    limiter = RefusalLimiter(clock)
    attempt = _attempt()
    assert limiter.admit(attempt) == 0
    clock.advance(-1)
    assert limiter.admit(attempt) == 0


def test_the_limiter_refuses_a_senseless_configuration() -> None:
    with pytest.raises(ValueError, match="positive"):
        RefusalLimiter(FixedClock(), window_ms=0)
    with pytest.raises(ValueError, match="positive"):
        RefusalLimiter(FixedClock(), max_attempts=0)
