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
  for a path value, body or query that breaks the route's declarations): those never reached
  the action.

``denied`` events are rate-limited (``RefusalLimiter``, one per app process). A denied request
takes no write lock of its own, so without a limit its event would be the only write it causes,
and any token, READ_ONLY included, could fill the table and queue on the store-wide write lock
(which the workers' opt-out flushes, admin writes and serve's upkeep share) by asking again and
again. An attempt is the actor, the method, the route template and the action, not the target: a
token walking through ids (``/participants/3/roles``, ``/4/roles``, ...) makes one attempt. The
first denial of an attempt is recorded, naming its target; the repeats in the next
``REFUSAL_WINDOW_MS``, whatever their target, are only counted. The count appears once: in
``after`` (``{"repeated": n}``) of the next recorded denial of that attempt, when that is the
first denial the limiter sees after the window ended; otherwise in a WARNING log line (actor,
action, route, ``repeated=n``) written as soon as the limiter next sees any denial after the
window ended, or when the app shuts down (its lifespan), and then the window is forgotten.
``failed`` events are not limited: only a token allowed to make the change gets one, its request
has already taken the write lock for the transaction that rolled back, and it could write a
``success`` event with each request anyway.
The answer is the same whether or not an event was written.

The action recorded is the route's ``AdminAction`` and the target comes from the path. For most
write routes these are the action and target type the service records when the same request
succeeds, but not for these (the success events carry the services' own, narrower names):

* ``PUT /participants/{site_id}/roles``, ``.../domain-names`` and ``.../app-names``: refused as
  ``participant.update``; they succeed as ``participant.set_roles``, ``participant.domains`` and
  ``participant.app_names`` (all three on ``participant:<site_id>``);
* ``POST /keys/{key_id}/rename`` and ``PUT /keys/{key_id}/roles``: refused as ``key.update``;
  they succeed as ``key.rename`` and ``key.set_roles`` (both on ``api_key:<key_id>``);
* ``PUT /participants/{site_id}/sharing``: refused as ``sharing.set`` on
  ``participant:<site_id>``; it succeeds as ``keyset.sharing`` on ``keyset:<keyset_id>``, the
  site's keyset (with the site id in ``site_id``);
* ``POST /audit/verify``: refused as ``audit.verify`` on ``audit_trail``; a check that succeeds
  records nothing.

So the refusals of these routes are found by the route's action (``audit list --action
key.update``, ``--action participant.update``, ``--action sharing.set``), not by the success
event's. The target type comes from the path parameter (or the resource, for a route without one),
its id only when the path value has the exact shape of the public id it stands for, so a key or
secret pasted into a URL never lands in the trail (the id is then left empty). The site id comes
from the path too: a participant route's ``site_id``, or the site an API key's id names
(``UID2-C-<env>-<site id>-...``, the participant it was issued to); a keypair's, whose path
names no site, is its owner's, looked up as the refusal is recorded. A create, whose path names
no target, takes the site its body names (``POST /keys`` and ``POST /keypairs``: the participant
the credential was asked for; ``POST /participants``: the site id asked for, also as the
target's id): a ``failed`` event comes after the body passed the route's declarations. So
``audit list --site-id`` finds the refusals about a site's keys and keypairs as it finds their
successes. A write whose path value breaks the route's declaration is refused at the edge and
not recorded at all; a denied request's path value is not checked first (the token's roles
are), so its event may have no id.

Writing the event never changes the answer: if it fails (the store is down, say), the failure is
logged by exception class only and the caller gets the status it would have got anyway.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool

from uid2_operator.clock import Clock
from uid2_operator.domain.audit import Outcome
from uid2_operator.domain.authorization import AdminAction
from uid2_operator.domain.keypairs import is_subscription_id
from uid2_operator.domain.participants import MAX_SITE_ID, MIN_SITE_ID
from uid2_operator.errors import InvalidInput
from uid2_operator.services import inputs
from uid2_operator.services.context import Actor
from uid2_operator.web.admin_api.bodies import EMPTY, Values
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
"""Path parameter -> the audit target type it names (the type the service records on success,
except for the sharing route: see the module docstring)."""

RESOURCE_TARGETS: Mapping[str, str] = {
    "participants": "participant",
    "keys": "api_key",
    "admin-tokens": "admin_token",
    "keypairs": "keypair",
    "audit": "audit_trail",
}
"""First path segment -> target type, for a route whose path names no target."""

OTHER_TARGET = "admin_api"
REFUSAL_WINDOW_MS = 60_000
"""After a denied event is recorded, its repeats within this time are counted, not recorded."""
MAX_LIMITED_ATTEMPTS = 10_000
"""The most attempts the limiter remembers; beyond, the one remembered first is dropped."""
# as the path check reads a site id (leading zeros allowed: ``03`` is site 3)
_SITE_ID_TEXT = re.compile(r"[0-9]{1,19}", re.ASCII)


@dataclass(frozen=True, slots=True)
class Target:
    type: str
    id: str  # empty: the path names none, or not in a readable form
    site_id: int | None = None


@dataclass(frozen=True, slots=True)
class Attempt:
    """What makes two denied requests the same attempt (the key of ``RefusalLimiter``). The
    target is left out: a token changing the id in the path on every request is one attempt."""

    actor: str
    method: str
    path: str  # the route template, e.g. ``/participants/{site_id}/roles``
    action: str


@dataclass(slots=True)
class _Window:
    started_ms: int
    repeats: int = 0  # denials of the attempt since the last recorded one, not recorded


class RefusalLimiter:
    """At most one recorded denial per attempt per window, with a count of the others.

    ``admit`` says whether to record a denial now and, if so, how many repeats since the last
    recorded one went unrecorded. The windows are kept in the order they started, so each call
    ends the windows whose time is up by looking at the oldest ones only: a window that ended with
    repeats is logged (WARNING, ``repeated=n``) and forgotten, unless the call is for that very
    attempt, whose recorded denial then carries the count. ``flush`` logs every pending count (at
    shutdown). Memory is bounded: at most ``max_attempts`` attempts are remembered, and when a
    new one would exceed that the attempt whose window started first is forgotten (its unreported
    repeats are logged as lost).
    """

    def __init__(
        self,
        clock: Clock,
        *,
        window_ms: int = REFUSAL_WINDOW_MS,
        max_attempts: int = MAX_LIMITED_ATTEMPTS,
    ) -> None:
        if window_ms < 1 or max_attempts < 1:
            raise ValueError("the refusal window and the number of attempts must be positive")
        self._clock = clock
        self._window_ms = window_ms
        self._max_attempts = max_attempts
        self._windows: OrderedDict[Attempt, _Window] = OrderedDict()  # in start order
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._windows)

    def admit(self, attempt: Attempt) -> int | None:
        """None: a repeat inside ``attempt``'s window, counted and not to be recorded. Otherwise
        the denial is to be recorded, and the value is the number of repeats not recorded since
        the last recorded denial of ``attempt`` (0 for none)."""
        now = self._clock.now_ms()
        unreported: list[tuple[str, Attempt, int]] = []
        with self._lock:
            window = self._windows.get(attempt)
            if window is not None and self._open(window, now):
                window.repeats += 1
                repeats: int | None = None
            else:
                repeats = 0 if window is None else window.repeats
                self._windows.pop(attempt, None)
                self._windows[attempt] = _Window(now)
                while len(self._windows) > self._max_attempts:
                    dropped, old = self._windows.popitem(last=False)
                    if old.repeats:
                        unreported.append(("the limiter is full", dropped, old.repeats))
            self._end_windows(now, unreported)
        _log_unreported(unreported)
        return repeats

    def not_recorded(self, attempt: Attempt, count: int) -> None:
        """``count`` admitted denials of ``attempt`` could not be written: report them with the
        next recorded one (or the log line of its window)."""
        with self._lock:
            window = self._windows.get(attempt)
            if window is not None:
                window.repeats += count

    def flush(self) -> None:
        """Log the count of every window with unreported repeats and forget all windows (the app
        is shutting down: those counts would otherwise never be reported)."""
        with self._lock:
            unreported = [
                ("the app is shutting down", attempt, window.repeats)
                for attempt, window in self._windows.items()
                if window.repeats
            ]
            self._windows.clear()
        _log_unreported(unreported)

    def _open(self, window: _Window, now: int) -> bool:
        return 0 <= now - window.started_ms < self._window_ms

    def _end_windows(self, now: int, unreported: list[tuple[str, Attempt, int]]) -> None:
        """Forget the windows that ended, oldest first; collect the counts they still held."""
        while self._windows:
            attempt, window = next(iter(self._windows.items()))
            if self._open(window, now):
                return
            self._windows.popitem(last=False)
            if window.repeats:
                unreported.append(("their window ended", attempt, window.repeats))


def _log_unreported(unreported: list[tuple[str, Attempt, int]]) -> None:
    for why, attempt, count in unreported:
        logger.warning(
            "admin refusal limiter: repeated denials not recorded, %s actor=%s action=%s "
            "route=%s %s repeated=%d",
            why,
            attempt.actor,
            attempt.action,
            attempt.method,
            attempt.path,
            count,
        )


def target_of(op: Operation, params: Mapping[str, str], body: Values = EMPTY) -> Target:
    """What ``op`` was aimed at, from its path (the last parameter that names a target); for a
    route whose path names none, the site its checked ``body`` names, if it has a ``site_id``
    (the participant a key or keypair was asked for, or the id a new participant was to take)."""
    for name in reversed(re.findall(r"{([a-z_]+)}", op.path)):
        if name in PARAM_TARGETS:
            return _param_target(name, params.get(name, ""))
    resource = op.path.strip("/").split("/", 1)[0]
    kind = RESOURCE_TARGETS.get(resource, OTHER_TARGET)
    site = _body_site_id(op, body)
    if site is None:
        return Target(kind, "")
    return Target(kind, str(site) if kind == "participant" else "", site)


def _body_site_id(op: Operation, body: Values) -> int | None:
    if op.body is None or all(field.name != "site_id" for field in op.body.fields):
        return None
    site = body.optional_integer("site_id")
    return site if site is not None and MIN_SITE_ID <= site <= MAX_SITE_ID else None


def _param_target(name: str, value: str) -> Target:
    kind = PARAM_TARGETS[name]
    if name == "site_id":
        if _SITE_ID_TEXT.fullmatch(value) and MIN_SITE_ID <= int(value) <= MAX_SITE_ID:
            return Target(kind, str(int(value)), int(value))
        return Target(kind, "")
    if name == "subscription_id":
        return Target(kind, value if is_subscription_id(value) else "")
    credential_id: str | None
    try:
        credential_id = inputs.credential_id(value, name)
    except InvalidInput:
        credential_id = None
    if credential_id != value:  # not an id, or one with whitespace around it: not its exact shape
        return Target(kind, "")
    if kind != "api_key":
        return Target(kind, credential_id)
    # An API key's id names its participant's site (``UID2-C-<env>-<site id>-<public id>``),
    # the site its success events carry: the refusal is found by ``site_id`` too.
    site = int(credential_id.split("-")[3])
    return Target(kind, credential_id, site if MIN_SITE_ID <= site <= MAX_SITE_ID else None)


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
    services: AdminServices,
    op: Operation,
    actor: Actor,
    params: Mapping[str, str],
    limiter: RefusalLimiter,
) -> None:
    """Record a 403, unless the same attempt (whatever its target) was recorded less than a window
    ago."""
    if not isinstance(op.access, AdminAction):
        return  # a public route: nobody is denied it
    action = op.access.value
    target = _target(op, actor, params, Outcome.DENIED)
    if target is None:
        return
    attempt = Attempt(actor.id, op.method, op.path, action)
    repeats = limiter.admit(attempt)
    if repeats is None:
        return
    if repeats:
        logger.info(
            "admin %s %s: %d repeated denials in the window were not recorded actor=%s "
            "request_id=%s",
            op.method,
            op.full_path,
            repeats,
            actor.id,
            actor.request_id,
        )
    written = await _record(
        services, op, actor, action, target, outcome=Outcome.DENIED, code=None, repeated=repeats
    )
    if not written:
        limiter.not_recorded(attempt, repeats + 1)


async def record_failed(
    services: AdminServices,
    op: Operation,
    actor: Actor,
    params: Mapping[str, str],
    body: Values,
    *,
    error: BaseException,
) -> None:
    code = failed_code(op, error)
    if code is None or not isinstance(op.access, AdminAction):
        return
    target = _target(op, actor, params, Outcome.FAILED, body)
    if target is not None:
        await _record(
            services, op, actor, op.access.value, target, outcome=Outcome.FAILED, code=code
        )


def _target(
    op: Operation, actor: Actor, params: Mapping[str, str], outcome: Outcome, body: Values = EMPTY
) -> Target | None:
    try:
        return target_of(op, params, body)
    except Exception as exc:  # the caller still gets the answer it was due
        _log_unwritten(op, actor, outcome, exc)
        return None


async def _record(
    services: AdminServices,
    op: Operation,
    actor: Actor,
    action: str,
    target: Target,
    *,
    outcome: Outcome,
    code: str | None,
    repeated: int = 0,
) -> bool:
    """Write the event; False (and a log line) when that failed."""
    try:
        await run_in_threadpool(
            services.admin.record_refusal,
            actor,
            outcome=outcome,
            action=action,
            target_type=target.type,
            target_id=target.id,
            site_id=target.site_id,
            error_code=code,
            repeated=repeated,
        )
    except Exception as exc:  # the caller still gets the answer it was due
        _log_unwritten(op, actor, outcome, exc)
        return False
    return True


def _log_unwritten(op: Operation, actor: Actor, outcome: Outcome, exc: Exception) -> None:
    logger.error(
        "admin %s %s: the %s audit event could not be written (%s) request_id=%s",
        op.method,
        op.full_path,
        outcome.value,
        type(exc).__qualname__,
        actor.request_id,
    )
