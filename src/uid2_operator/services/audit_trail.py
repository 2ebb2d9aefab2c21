"""Writing audit events: inside the unit of work that makes the change an event records, or, for
an attempt that was refused, in a unit of work of its own."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from uid2_operator.domain.audit import AuditDraft, AuditEvent, Outcome, draft_event, event_hash
from uid2_operator.errors import InvalidInput
from uid2_operator.services.context import Actor
from uid2_operator.storage.interface import Store, Tx

# Error codes are class constants (``UID2Error.code``): short snake_case names, never input.
_ERROR_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}", re.ASCII)


@dataclass(frozen=True, slots=True)
class EventDetails:
    """What one event of ``record_events`` says; who did it comes from the actor."""

    at_ms: int
    action: str
    target_type: str
    target_id: str
    site_id: int | None = None
    before: object = None
    after: object = None
    outcome: Outcome = Outcome.SUCCESS


def _draft(actor: Actor, details: EventDetails) -> AuditDraft:
    return draft_event(
        at_ms=details.at_ms,
        actor=actor.id,
        action=details.action,
        target_type=details.target_type,
        target_id=details.target_id,
        site_id=details.site_id,
        before=details.before,
        after=details.after,
        request_id=actor.request_id,
        source=actor.source,
        outcome=details.outcome,
    )


def record_event(
    tx: Tx,
    actor: Actor,
    *,
    at_ms: int,
    action: str,
    target_type: str,
    target_id: str,
    site_id: int | None = None,
    before: object = None,
    after: object = None,
    outcome: Outcome = Outcome.SUCCESS,
) -> AuditEvent:
    """Redacts ``before``/``after`` (records or dicts) and appends the event to the chain.

    The store assigns ``seq`` and ``prev_hash`` under its write lock, so the chain stays linear
    however many writers there are; the event commits or rolls back with the change itself.
    """
    details = EventDetails(
        at_ms=at_ms,
        action=action,
        target_type=target_type,
        target_id=target_id,
        site_id=site_id,
        before=before,
        after=after,
        outcome=outcome,
    )
    return tx.audit.append(_draft(actor, details), event_hash)


def record_events(tx: Tx, actor: Actor, events: Iterable[EventDetails]) -> list[AuditEvent]:
    """``record_event`` for each of ``events``, in order, as one append to the chain.

    The events are stored exactly as that many ``record_event`` calls would store them (the
    same seq, prev_hash and hash for each); the store reads the chain end and records the new
    head once, and inserts the rows together. For a use case that records many events at once
    (a chunk of opt-outs); a use case that records one event uses ``record_event``.
    """
    return tx.audit.append_many([_draft(actor, details) for details in events], event_hash)


def record_refusal(
    store: Store,
    actor: Actor,
    *,
    at_ms: int,
    outcome: Outcome,
    action: str,
    target_type: str,
    target_id: str,
    site_id: int | None = None,
    error_code: str | None = None,
    repeated: int = 0,
) -> AuditEvent:
    """Record an attempt that was refused, in a transaction of its own.

    ``denied``: the actor's roles do not allow ``action``; ``failed``: the action was allowed but a
    rule refused it (``error_code`` is the error's stable code). Either way the attempt changed
    nothing (it was stopped before its unit of work, or its unit of work rolled back), so there
    is no ``before``; ``after`` holds the error code only, never an error message, which could
    repeat what was sent, and ``repeated``, when not 0: how many repeats of the attempt since the
    last one recorded were left out (the admin API records a repeated denial once a minute). The
    event joins the same hash chain as every other.
    """
    if outcome is Outcome.SUCCESS:
        raise InvalidInput("a refusal is recorded as denied or failed, not success")
    if error_code is not None and _ERROR_CODE.fullmatch(error_code) is None:
        raise InvalidInput("an audit error code must be a short snake_case name")
    if isinstance(repeated, bool) or not isinstance(repeated, int) or repeated < 0:
        raise InvalidInput("the number of repeats left out must be an integer of 0 or more")
    after: dict[str, object] = {}
    if error_code is not None:
        after["code"] = error_code
    if repeated:
        after["repeated"] = repeated
    with store.transaction() as tx:
        return record_event(
            tx,
            actor,
            at_ms=at_ms,
            action=action,
            target_type=target_type,
            target_id=target_id,
            site_id=site_id,
            after=after or None,
            outcome=outcome,
        )
