from __future__ import annotations

import pytest

from uid2_operator.domain.authorization import (
    ADMIN_ACTIONS,
    KEYLESS_ENDPOINTS,
    OPERATOR_ENDPOINTS,
    AdminAction,
    Allowed,
    Denied,
    DenyReason,
    authorize_admin,
    authorize_endpoint,
)
from uid2_operator.domain.roles import AdminRole, ClientRole

G, M, B, S, OPT = (
    ClientRole.GENERATOR,
    ClientRole.MAPPER,
    ClientRole.ID_READER,
    ClientRole.SHARER,
    ClientRole.OPTOUT,
)
EXPECTED_ENDPOINTS = {
    "/v2/token/generate": {G},
    "/v2/token/validate": {G},
    "/v2/token/logout": {OPT},
    "/v2/identity/map": {M},
    "/v3/identity/map": {M},
    "/v2/identity/buckets": {M},
    "/v2/optout/status": {M, S, B},
    "/v2/key/latest": {B},
    "/v2/key/sharing": {S, B},
    "/v2/key/bidstream": {B},
}


def test_the_endpoint_table_is_exactly_the_operator_routes() -> None:
    assert {path: set(roles) for path, roles in OPERATOR_ENDPOINTS.items()} == EXPECTED_ENDPOINTS


@pytest.mark.parametrize("path", sorted(EXPECTED_ENDPOINTS))
def test_each_endpoint_admits_exactly_its_roles(path: str) -> None:
    for role in ClientRole:
        decision = authorize_endpoint(path, {role})
        if role in EXPECTED_ENDPOINTS[path]:
            assert decision == Allowed()
            assert decision.allowed
        else:
            assert decision == Denied(DenyReason.MISSING_ROLE)
            assert not decision.allowed
    assert authorize_endpoint(path, set()) == Denied(DenyReason.MISSING_ROLE)
    assert authorize_endpoint(path, set(ClientRole)).allowed


@pytest.mark.parametrize(
    "path", [*sorted(KEYLESS_ENDPOINTS), "/v2/unknown", "", "/V2/token/generate"]
)
def test_unknown_and_keyless_paths_are_denied_by_the_key_table(path: str) -> None:
    assert authorize_endpoint(path, set(ClientRole)) == Denied(DenyReason.UNKNOWN_ENDPOINT)


def test_keyless_endpoints() -> None:
    assert {
        "/v2/token/refresh",
        "/v2/token/client-generate",
        "/ops/healthcheck",
    } == KEYLESS_ENDPOINTS


READS = {"participant.list", "participant.get", "key.list", "key.get", "key.usage", "audit.list"}
READS |= {"sharing.get", "keypair.list", "keypair.get"}
SUPER_ONLY = {"admin_token.list", "admin_token.create", "admin_token.revoke", "audit.verify"}


@pytest.mark.parametrize("action", sorted(AdminAction))
def test_admin_roles(action: AdminAction) -> None:
    read_only = authorize_admin(action, {AdminRole.READ_ONLY}).allowed
    maintainer = authorize_admin(action, {AdminRole.MAINTAINER}).allowed
    assert read_only is (action in READS)
    assert maintainer is (action not in SUPER_ONLY)
    assert authorize_admin(action, {AdminRole.SUPER_USER}).allowed
    assert authorize_admin(action, set()) == Denied(DenyReason.MISSING_ROLE)


def test_every_admin_action_is_in_the_table_and_nothing_reveals() -> None:
    assert set(ADMIN_ACTIONS) == set(AdminAction)
    assert not [a for a in ADMIN_ACTIONS if "reveal" in a]


def test_unknown_admin_action_is_denied() -> None:
    assert authorize_admin("key.reveal", set(AdminRole)) == Denied(DenyReason.UNKNOWN_ACTION)
