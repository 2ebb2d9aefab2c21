"""Writing audit events: inside the unit of work that makes the change an event records, or, for
an attempt that was refused, in a unit of work of its own.

Every audited change is recorded here, inside its own transaction, so this is also where a change
made with an admin token checks that the token is still active (``require_active_token``):
whichever service makes the change, a token revoked after its request was authenticated changes
nothing.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from contextlib import closing
from dataclasses import dataclass
from typing import Any

from uid2_operator.domain.admin_tokens import authenticate_admin_token
from uid2_operator.domain.audit import (
    AuditDraft,
    AuditEvent,
    ChainHead,
    Outcome,
    check_adoption,
    draft_event,
    event_hash,
)
from uid2_operator.domain.authorization import Denied
from uid2_operator.errors import CredentialRejected, InvalidInput, InvalidTransition
from uid2_operator.services import inputs
from uid2_operator.services.context import Actor
from uid2_operator.storage.interface import ReadTx, Store, Tx

logger = logging.getLogger(__name__)

ADOPT_ACTION = "audit.adopt"
AUDIT_TRAIL_TARGET = "audit_trail"
KEYPAIR_TARGET = "keypair"

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


def require_active_token(tx: ReadTx, actor: Actor) -> None:
    """Refuse (``CredentialRejected``, 401 at the admin API, as authentication refuses it) an
    actor whose admin token is no longer active: revoked since its request was authenticated, or
    gone. Nothing to check for an actor without a token (the command line, the system).

    ``record_event`` and ``record_events`` call it in the transaction of the change they record.
    A write transaction holds the store-wide write lock from its start, so of a revocation and a
    change made with the revoked token, the one that takes the lock second sees the other: the
    change either commits before the revocation or is refused and rolls back with its whole unit
    of work. A use case whose change may end the acting token itself (revoking an admin token)
    calls it before that change instead. An admin token's roles never change (it is issued with
    them, and revocation is its only change), so the roles its request was authorised with still
    hold.
    """
    token_id = actor.admin_token_id
    if token_id is None:
        return
    token = tx.admin_tokens.get(token_id)
    if token is None:
        reason = "unknown"
    else:
        decision = authenticate_admin_token(token)
        if not isinstance(decision, Denied):
            return
        reason = str(decision.reason)
    logger.info("admin token refused at its change token_id=%s reason=%s", token_id, reason)
    raise CredentialRejected("The admin token is not valid")


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
    check_token: bool = True,
) -> AuditEvent:
    """Redacts ``before``/``after`` (records or dicts) and appends the event to the chain.

    The store assigns ``seq`` and ``prev_hash`` under its write lock, so the chain stays linear
    however many writers there are; the event commits or rolls back with the change itself. An
    actor with an admin token is refused first if that token is no longer active
    (``require_active_token``), which rolls the change back; ``check_token=False`` skips that,
    for a caller that checked it itself before its change (one that may end the token) or that
    records a refusal.
    """
    if check_token:
        require_active_token(tx, actor)
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
    (a chunk of opt-outs); a use case that records one event uses ``record_event``. The actor's
    admin token, if any, is checked as ``record_event`` checks it.
    """
    require_active_token(tx, actor)
    return tx.audit.append_many([_draft(actor, details) for details in events], event_hash)


def record_refusal(
    store: Store,
    actor: Actor,
    *,
    now_ms: Callable[[], int],
    outcome: Outcome,
    action: str,
    target_type: str,
    target_id: str,
    site_id: int | None = None,
    error_code: str | None = None,
    repeated: int = 0,
) -> AuditEvent:
    """Record an attempt that was refused, in a transaction of its own, stamped with
    ``now_ms()`` read once that transaction holds the write lock (as every change is stamped).

    ``denied``: the actor's roles do not allow ``action``; ``failed``: the action was allowed but a
    rule refused it (``error_code`` is the error's stable code). Either way the attempt changed
    nothing (it was stopped before its unit of work, or its unit of work rolled back), so there
    is no ``before``; ``after`` holds the error code only, never an error message, which could
    repeat what was sent, and ``repeated``, when not 0: how many repeats of the attempt since the
    last one recorded were left out (the admin API records a repeated denial once a minute). The
    event joins the same hash chain as every other. The actor's admin token is not checked again:
    the attempt is recorded even if the token was revoked meanwhile.
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
        if site_id is None and target_type == KEYPAIR_TARGET and target_id:
            # Its path names the keypair alone: the site its successes carry is its owner's.
            keypair = tx.keypairs.get(target_id)
            site_id = None if keypair is None else keypair.site_id
        return record_event(
            tx,
            actor,
            at_ms=now_ms(),
            action=action,
            target_type=target_type,
            target_id=target_id,
            site_id=site_id,
            after=after or None,
            outcome=outcome,
            check_token=False,
        )


@dataclass(frozen=True, slots=True)
class AdoptedRows:
    """What ``adopt_rows_past_head`` did: the rows it adopted (``from_seq`` to ``through_seq``,
    ``count`` of them) and the chain's head after its own ``audit.adopt`` event, which operators
    may keep outside the database as they keep the head ``audit verify`` prints."""

    from_seq: int
    through_seq: int
    count: int
    head: ChainHead

    def to_json(self) -> dict[str, Any]:
        return {
            "adopted_from_seq": self.from_seq,
            "adopted_through_seq": self.through_seq,
            "adopted": self.count,
            "head_seq": self.head.seq,
            "head_hash": self.head.hash.hex(),
        }


def adopt_rows_past_head(
    store: Store, actor: Actor, *, through_seq: Any, at_ms: int
) -> AdoptedRows:
    """Make the audit rows an earlier version appended past the recorded head the chain's own.

    Such a version appends without moving the head, after which every audited change of this one
    is refused (``AuditChainAhead``). In one write unit, under the store's write lock (no append
    can come between the check and the move): re-read the head and every row past it, check
    those rows link to it and to each other (``check_adoption``: ``through_seq`` must be the last
    of them, and a broken link is refused naming its seq), move the head to ``through_seq``, then
    append an ``audit.adopt`` event, which builds on the moved head. Any refusal or failure rolls
    back the whole unit: the head stays where it was and no event is written.

    Rows up to the recorded head are not walked again: a break there stays for ``audit verify``
    to report, before and after the adoption.
    """
    through = inputs.integer(through_seq, "through_seq", low=1, high=2**62)
    with store.transaction() as tx:
        recorded = tx.audit.head()
        if recorded is None:
            raise InvalidTransition(
                "Nothing to adopt: no audit chain head is recorded; `uid2-operator db upgrade` "
                "records the head of a chain an earlier version wrote"
            )
        with closing(tx.audit.chain_events(since_seq=recorded.seq)) as rows:
            past_head = list(rows)  # only what an earlier version wrote past the head
        adoption = check_adoption(recorded, past_head, through)
        tx.audit.move_head(adoption.head)
        event = record_event(
            tx,
            actor,
            at_ms=at_ms,
            action=ADOPT_ACTION,
            target_type=AUDIT_TRAIL_TARGET,
            target_id=str(adoption.head.seq),
            before={"head_seq": adoption.previous_head.seq},
            after={
                "first_seq": adoption.from_seq,
                "last_seq": adoption.head.seq,
                "count": adoption.count,
            },
        )
    logger.info(
        "audit rows adopted first_seq=%d last_seq=%d count=%d actor=%s",
        adoption.from_seq,
        adoption.head.seq,
        adoption.count,
        actor.id,
    )
    return AdoptedRows(
        from_seq=adoption.from_seq,
        through_seq=adoption.head.seq,
        count=adoption.count,
        head=ChainHead(event.seq, event.hash),
    )
