"""Who may do what, as two tables, both deny by default.

* ``OPERATOR_ENDPOINTS``: operator API path -> the client roles that unlock it (any one suffices).
  A path missing from the table is denied, so a new endpoint is closed until it is listed here.
  ``KEYLESS_ENDPOINTS`` need no API key at all (the refresh token, the client-side subscription
  or nothing is the credential) and are deliberately absent from the table.
* ``ADMIN_ACTIONS``: admin API action -> the admin roles allowed to perform it. READ_ONLY reads;
  MAINTAINER also changes participants and keys; SUPER_USER also manages admin tokens and verifies
  the audit chain. No action reveals a stored secret: secrets are shown once, when issued.
* ``AUDIT_TARGET_READS``: audit target type -> the admin action a token must be allowed to list
  the audit events about such a target. An event carries its target's record (``before`` and
  ``after``), so listing it is reading that record: events about admin tokens are listed only to
  the roles that may list admin tokens. Its keys are every target type an event is recorded on.

Decisions are values (``Allowed`` or ``Denied(reason)``) so callers can log and count the reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import TypeAlias, TypeVar

from uid2_operator.domain.roles import AdminRole, ClientRole


class DenyReason(StrEnum):
    """Stable codes for logs and metrics; never shown to the caller in more detail than 401/403."""

    KEY_REVOKED = "key_revoked"
    KEY_DISABLED = "key_disabled"
    KEY_EXPIRED = "key_expired"
    KEY_RETIRED = "key_retired"
    PARTICIPANT_DISABLED = "participant_disabled"
    PARTICIPANT_MISMATCH = "participant_mismatch"
    TOKEN_REVOKED = "token_revoked"  # noqa: S105 (a name, not a secret)
    UNKNOWN_ENDPOINT = "unknown_endpoint"
    UNKNOWN_ACTION = "unknown_action"
    MISSING_ROLE = "missing_role"


@dataclass(frozen=True, slots=True)
class Allowed:
    @property
    def allowed(self) -> bool:
        return True


@dataclass(frozen=True, slots=True)
class Denied:
    reason: DenyReason

    @property
    def allowed(self) -> bool:
        return False


Decision: TypeAlias = Allowed | Denied
ALLOWED = Allowed()

_G, _M, _B, _S, _O = (
    ClientRole.GENERATOR,
    ClientRole.MAPPER,
    ClientRole.ID_READER,
    ClientRole.SHARER,
    ClientRole.OPTOUT,
)

OPERATOR_ENDPOINTS: Mapping[str, frozenset[ClientRole]] = MappingProxyType(
    {
        "/v2/token/generate": frozenset({_G}),
        "/v2/token/validate": frozenset({_G}),
        "/v2/token/logout": frozenset({_O}),
        "/v2/identity/map": frozenset({_M}),
        "/v3/identity/map": frozenset({_M}),
        "/v2/identity/buckets": frozenset({_M}),
        "/v2/optout/status": frozenset({_M, _S, _B}),
        "/v2/key/latest": frozenset({_B}),
        "/v2/key/sharing": frozenset({_S, _B}),
        "/v2/key/bidstream": frozenset({_B}),
    }
)

KEYLESS_ENDPOINTS: frozenset[str] = frozenset(
    {"/v2/token/refresh", "/v2/token/client-generate", "/ops/healthcheck"}
)


class AdminAction(StrEnum):
    PARTICIPANT_LIST = "participant.list"
    PARTICIPANT_GET = "participant.get"
    PARTICIPANT_CREATE = "participant.create"
    PARTICIPANT_UPDATE = "participant.update"
    PARTICIPANT_ENABLE = "participant.enable"
    PARTICIPANT_DISABLE = "participant.disable"
    KEY_LIST = "key.list"
    KEY_GET = "key.get"
    KEY_USAGE = "key.usage"
    KEY_CREATE = "key.create"
    KEY_UPDATE = "key.update"
    KEY_DISABLE = "key.disable"
    KEY_ENABLE = "key.enable"
    KEY_REVOKE = "key.revoke"
    KEY_ROTATE = "key.rotate"
    KEY_ROTATE_SECRET = "key.rotate_secret"  # noqa: S105 (a name, not a secret)
    KEY_RETIRE_NOW = "key.retire_now"
    ADMIN_TOKEN_LIST = "admin_token.list"  # noqa: S105 (a name, not a secret)
    ADMIN_TOKEN_CREATE = "admin_token.create"  # noqa: S105 (a name, not a secret)
    ADMIN_TOKEN_REVOKE = "admin_token.revoke"  # noqa: S105 (a name, not a secret)
    AUDIT_LIST = "audit.list"
    AUDIT_VERIFY = "audit.verify"
    SHARING_GET = "sharing.get"
    SHARING_SET = "sharing.set"
    KEYPAIR_LIST = "keypair.list"
    KEYPAIR_GET = "keypair.get"
    KEYPAIR_CREATE = "keypair.create"
    KEYPAIR_DISABLE = "keypair.disable"
    KEYPAIR_ENABLE = "keypair.enable"
    KEYPAIR_DELETE = "keypair.delete"


_READERS = frozenset({AdminRole.READ_ONLY, AdminRole.MAINTAINER, AdminRole.SUPER_USER})
_WRITERS = frozenset({AdminRole.MAINTAINER, AdminRole.SUPER_USER})
_SUPER = frozenset({AdminRole.SUPER_USER})
_A = AdminAction
_R = TypeVar("_R", ClientRole, AdminRole)

ADMIN_ACTIONS: Mapping[str, frozenset[AdminRole]] = MappingProxyType(
    {
        _A.PARTICIPANT_LIST: _READERS,
        _A.PARTICIPANT_GET: _READERS,
        _A.KEY_LIST: _READERS,
        _A.KEY_GET: _READERS,
        _A.KEY_USAGE: _READERS,
        _A.AUDIT_LIST: _READERS,
        _A.SHARING_GET: _READERS,
        _A.KEYPAIR_LIST: _READERS,
        _A.KEYPAIR_GET: _READERS,
        _A.PARTICIPANT_CREATE: _WRITERS,
        _A.PARTICIPANT_UPDATE: _WRITERS,
        _A.PARTICIPANT_ENABLE: _WRITERS,
        _A.PARTICIPANT_DISABLE: _WRITERS,
        _A.KEY_CREATE: _WRITERS,
        _A.KEY_UPDATE: _WRITERS,
        _A.KEY_DISABLE: _WRITERS,
        _A.KEY_ENABLE: _WRITERS,
        _A.KEY_REVOKE: _WRITERS,
        _A.KEY_ROTATE: _WRITERS,
        _A.KEY_ROTATE_SECRET: _WRITERS,
        _A.KEY_RETIRE_NOW: _WRITERS,
        _A.SHARING_SET: _WRITERS,
        _A.KEYPAIR_CREATE: _WRITERS,
        _A.KEYPAIR_DISABLE: _WRITERS,
        _A.KEYPAIR_ENABLE: _WRITERS,
        _A.KEYPAIR_DELETE: _WRITERS,
        _A.ADMIN_TOKEN_LIST: _SUPER,
        _A.ADMIN_TOKEN_CREATE: _SUPER,
        _A.ADMIN_TOKEN_REVOKE: _SUPER,
        _A.AUDIT_VERIFY: _SUPER,
    }
)


AUDIT_TARGET_READS: Mapping[str, AdminAction] = MappingProxyType(
    {
        "participant": _A.PARTICIPANT_GET,
        "api_key": _A.KEY_GET,
        "admin_token": _A.ADMIN_TOKEN_LIST,
        "keypair": _A.KEYPAIR_GET,
        "keyset": _A.AUDIT_LIST,
        "keyring": _A.AUDIT_LIST,
        "salt_table": _A.AUDIT_LIST,
        "optout": _A.AUDIT_LIST,
        "audit_trail": _A.AUDIT_LIST,
        "admin_api": _A.AUDIT_LIST,
    }
)
AUDIT_TARGET_TYPES: tuple[str, ...] = tuple(sorted(AUDIT_TARGET_READS))
"""Every target type an audit event is recorded on, sorted."""


def audit_targets_hidden_from(roles: Iterable[AdminRole]) -> frozenset[str]:
    """The audit target types whose events an admin token holding ``roles`` may not list: those
    whose ``AUDIT_TARGET_READS`` action the roles are not allowed."""
    held = frozenset(roles)
    return frozenset(
        target
        for target, action in AUDIT_TARGET_READS.items()
        if not authorize_admin(action, held).allowed
    )


def authorize_endpoint(path: str, roles: Iterable[ClientRole]) -> Decision:
    """Any one of the endpoint's roles suffices; an unlisted path is denied."""
    return _decide(OPERATOR_ENDPOINTS.get(path), roles, DenyReason.UNKNOWN_ENDPOINT)


def authorize_admin(action: str, roles: Iterable[AdminRole]) -> Decision:
    """Any one of the action's roles suffices; an unlisted action is denied."""
    return _decide(ADMIN_ACTIONS.get(action), roles, DenyReason.UNKNOWN_ACTION)


def _decide(required: frozenset[_R] | None, held: Iterable[_R], unknown: DenyReason) -> Decision:
    if required is None:
        return Denied(unknown)
    if required.isdisjoint(held):
        return Denied(DenyReason.MISSING_ROLE)
    return ALLOWED
