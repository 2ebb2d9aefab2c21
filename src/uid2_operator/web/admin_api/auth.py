"""Who is calling, and may they: the bearer admin token and the action's roles.

Authentication is the service's (``AdminService.authenticate``: shape, checksum, environment, one
lookup by token id, constant-time compare, revocation). This module only extracts the token from
the ``Authorization`` header and applies the domain's action table, which denies by default.

The token is taken from the header only, never from a query string or a cookie: URLs end up in
access logs and browser history, and a cookie would make the API reachable by cross-site requests.
Messages never repeat what was presented.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.datastructures import Headers

from uid2_operator.domain.authorization import ADMIN_ACTIONS, AdminAction, authorize_admin
from uid2_operator.domain.roles import AdminRole, parse_admin_roles
from uid2_operator.errors import CredentialMissing, MalformedCredential, PermissionDenied

# Well above the longest admin token; anything longer is not one and is not worth hashing.
MAX_TOKEN_LENGTH = 256
WWW_AUTHENTICATE = 'Bearer realm="uid2-admin"'


def bearer_token(headers: Headers) -> str:
    """The token text of ``Authorization: Bearer <token>``; refuses anything else."""
    values = headers.getlist("authorization")
    if not values:
        raise CredentialMissing(
            "An admin token is required: send the header 'Authorization: Bearer <token>'"
        )
    if len(values) > 1:
        raise MalformedCredential("Send exactly one Authorization header")
    scheme, _, token = values[0].strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise MalformedCredential("The Authorization header must be 'Bearer <admin token>'")
    if len(token) > MAX_TOKEN_LENGTH:
        raise MalformedCredential("The bearer token is not an admin token")
    return token


def token_roles(names: Iterable[str]) -> frozenset[AdminRole]:
    return parse_admin_roles(names)


def require(action: AdminAction, roles: Iterable[AdminRole]) -> None:
    """Raise ``PermissionDenied`` unless one of ``roles`` may perform ``action``."""
    held = frozenset(roles)
    if not authorize_admin(action, held).allowed:
        needed = ", ".join(sorted(ADMIN_ACTIONS.get(action, frozenset()))) or "none"
        raise PermissionDenied(
            f"This admin token may not perform {action.value} (it needs one of: {needed})"
        )
