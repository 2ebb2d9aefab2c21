"""The audit events of refused admin requests: outcome ``denied`` or ``failed``.

A change that succeeds is recorded by its service, inside the transaction that makes it. A refused
request changes nothing (its unit of work never starts, or rolls back), so the edge records the
attempt in a transaction of its own (``AdminService.record_refusal``), on the same hash chain:

* ``denied``: an authenticated admin token whose roles do not allow the route's action (403), on
  any route, reads included, so an attempted privilege escalation leaves a trace. Requests
  without a valid token (401) are not recorded: anyone can send those and grow the table.
* ``failed``: a write the token may perform, refused by a rule once the service ran it: an unknown
  target (404), an invalid transition or a taken id (409), input the service refused (422).
  ``after`` holds the error's stable code, never its message (which may repeat what was sent).
  Reads are not recorded, nor requests refused while the edge read them (400, 413, 415, and 422
  for a body or query that breaks the route's declared fields): those never reached the action.

The action recorded is the route's ``AdminAction``. The target comes from the path: its type from
the path parameter (or the resource, for a route without one), its id only when the path value has
the exact shape of the public id it stands for, so a key or secret pasted into a URL never lands in
the trail (the id is then left empty).

Writing the event never changes the answer: if it fails (the store is down, say), the failure is
logged by exception class only and the caller gets the status it would have got anyway.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool

from uid2_operator.domain.audit import Outcome
from uid2_operator.domain.authorization import AdminAction
from uid2_operator.domain.keypairs import is_subscription_id
from uid2_operator.domain.participants import MAX_SITE_ID, MIN_SITE_ID
from uid2_operator.errors import InvalidInput
from uid2_operator.services import inputs
from uid2_operator.services.context import Actor
from uid2_operator.web.admin_api.errors import render_error
from uid2_operator.web.admin_api.routing import WRITE_METHODS, AdminServices, Operation

logger = logging.getLogger(__name__)

FAILED_STATUSES = frozenset({404, 409, 422})
"""The statuses of a rule refusing an authorised write: unknown target, conflict, refused input."""

PARAM_TARGETS: Mapping[str, str] = {
    "key_id": "api_key",
    "token_id": "admin_token",
    "site_id": "participant",
    "subscription_id": "keypair",
}
"""Path parameter -> the audit target type it names (the same types the services record)."""

RESOURCE_TARGETS: Mapping[str, str] = {
    "participants": "participant",
    "keys": "api_key",
    "admin-tokens": "admin_token",
    "keypairs": "keypair",
    "audit": "audit_trail",
}
"""First path segment -> target type, for a route whose path names no target."""

OTHER_TARGET = "admin_api"
_SITE_ID_TEXT = re.compile(r"[1-9][0-9]{0,9}", re.ASCII)


@dataclass(frozen=True, slots=True)
class Target:
    type: str
    id: str  # empty: the path names none, or not in a readable form
    site_id: int | None = None


def target_of(op: Operation, params: Mapping[str, str]) -> Target:
    """What ``op`` was aimed at, from its path (the last parameter that names a target)."""
    for name in reversed(re.findall(r"{([a-z_]+)}", op.path)):
        if name in PARAM_TARGETS:
            return _param_target(name, params.get(name, ""))
    resource = op.path.strip("/").split("/", 1)[0]
    return Target(RESOURCE_TARGETS.get(resource, OTHER_TARGET), "")


def _param_target(name: str, value: str) -> Target:
    kind = PARAM_TARGETS[name]
    if name == "site_id":
        if _SITE_ID_TEXT.fullmatch(value) and MIN_SITE_ID <= int(value) <= MAX_SITE_ID:
            return Target(kind, value, int(value))
        return Target(kind, "")
    if name == "subscription_id":
        return Target(kind, value if is_subscription_id(value) else "")
    try:
        return Target(kind, inputs.credential_id(value, name))
    except InvalidInput:
        return Target(kind, "")


def failed_code(op: Operation, error: BaseException) -> str | None:
    """The error code to record as a ``failed`` event, or None when ``error`` is not one."""
    if op.method not in WRITE_METHODS:
        return None
    reply = render_error(error)
    if reply.status not in FAILED_STATUSES:
        return None
    code: str = reply.body["error"]["code"]
    return code


async def record_denied(
    services: AdminServices, op: Operation, actor: Actor, params: Mapping[str, str]
) -> None:
    await _record(services, op, actor, params, outcome=Outcome.DENIED, code=None)


async def record_failed(
    services: AdminServices,
    op: Operation,
    actor: Actor,
    params: Mapping[str, str],
    error: BaseException,
) -> None:
    code = failed_code(op, error)
    if code is not None:
        await _record(services, op, actor, params, outcome=Outcome.FAILED, code=code)


async def _record(
    services: AdminServices,
    op: Operation,
    actor: Actor,
    params: Mapping[str, str],
    *,
    outcome: Outcome,
    code: str | None,
) -> None:
    if not isinstance(op.access, AdminAction):
        return  # a public route: nobody is denied it, and it changes nothing
    try:
        target = target_of(op, params)
        await run_in_threadpool(
            services.admin.record_refusal,
            actor,
            outcome=outcome,
            action=op.access.value,
            target_type=target.type,
            target_id=target.id,
            site_id=target.site_id,
            error_code=code,
        )
    except Exception as exc:  # the caller still gets the answer it was due
        logger.error(
            "admin %s %s: the %s audit event could not be written (%s) request_id=%s",
            op.method,
            op.full_path,
            outcome.value,
            type(exc).__qualname__,
            actor.request_id,
        )
