"""Writing one audit event inside the unit of work that makes the change it records."""

from __future__ import annotations

from uid2_operator.domain.audit import AuditEvent, Outcome, draft_event, event_hash
from uid2_operator.services.context import Actor
from uid2_operator.storage.interface import Tx


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
    draft = draft_event(
        at_ms=at_ms,
        actor=actor.id,
        action=action,
        target_type=target_type,
        target_id=target_id,
        site_id=site_id,
        before=before,
        after=after,
        request_id=actor.request_id,
        source=actor.source,
        outcome=outcome,
    )
    return tx.audit.append(draft, event_hash)
