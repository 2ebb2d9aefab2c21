"""Which audit events an admin role may list: decided by the authorisation table, and the table
names every target type an event is recorded on."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from uid2_operator.domain.authorization import (
    ADMIN_ACTIONS,
    AUDIT_TARGET_READS,
    AUDIT_TARGET_TYPES,
    AdminAction,
    audit_targets_hidden_from,
    authorize_admin,
)
from uid2_operator.domain.roles import AdminRole
from uid2_operator.services.audit_trail import AUDIT_TRAIL_TARGET
from uid2_operator.services.keyring_rotation import KEYRING_TARGET
from uid2_operator.web.admin_api.outcomes import OTHER_TARGET, PARAM_TARGETS, RESOURCE_TARGETS

SRC = Path(__file__).resolve().parents[3] / "src" / "uid2_operator"


def test_admin_token_events_are_hidden_from_every_role_that_may_not_list_admin_tokens() -> None:
    assert audit_targets_hidden_from({AdminRole.READ_ONLY}) == {"admin_token"}
    assert audit_targets_hidden_from({AdminRole.MAINTAINER}) == {"admin_token"}
    assert audit_targets_hidden_from({AdminRole.SUPER_USER}) == frozenset()
    assert audit_targets_hidden_from({AdminRole.READ_ONLY, AdminRole.SUPER_USER}) == frozenset()


@pytest.mark.parametrize("roles", [set(), *({role} for role in AdminRole)])
def test_the_hidden_targets_follow_the_action_table(roles: set[AdminRole]) -> None:
    expected = {
        target for target, action in AUDIT_TARGET_READS.items() if not ADMIN_ACTIONS[action] & roles
    }
    assert audit_targets_hidden_from(roles) == expected
    # Listing an admin token's events is exactly as open as listing admin tokens.
    admin_tokens_hidden = "admin_token" in audit_targets_hidden_from(roles)
    assert admin_tokens_hidden == (not authorize_admin(AdminAction.ADMIN_TOKEN_LIST, roles).allowed)


def test_no_role_without_the_audit_list_action_sees_anything() -> None:
    assert audit_targets_hidden_from(()) == set(AUDIT_TARGET_TYPES)


def test_every_read_action_is_in_the_action_table() -> None:
    assert set(AUDIT_TARGET_READS.values()) <= set(ADMIN_ACTIONS)
    assert list(AUDIT_TARGET_TYPES) == sorted(AUDIT_TARGET_READS)


def _literal_target_types() -> set[str]:
    """Every ``target_type="..."`` keyword argument written in the package's source."""
    found: set[str] = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            for keyword in node.keywords:
                if keyword.arg == "target_type" and isinstance(keyword.value, ast.Constant):
                    found.add(str(keyword.value.value))
    return found


def test_every_recorded_target_type_is_in_the_table() -> None:
    literals = _literal_target_types()
    assert {"participant", "api_key", "admin_token", "keyset", "keypair"} <= literals
    recorded = (
        literals
        | set(PARAM_TARGETS.values())
        | set(RESOURCE_TARGETS.values())
        | {OTHER_TARGET, KEYRING_TARGET, AUDIT_TRAIL_TARGET}
    )
    assert recorded == set(AUDIT_TARGET_TYPES)
