"""Which refused admin requests become audit events, and what target they name."""

from __future__ import annotations

from typing import Any, cast

import pytest

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
    Target,
    failed_code,
    target_of,
)
from uid2_operator.web.admin_api.routing import Operation


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
        (KEY_REVOKE, {"key_id": KEY_ID}, Target("api_key", KEY_ID)),
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
        (SITE_DISABLE, {"site_id": "0012"}, Target("participant", "")),
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
