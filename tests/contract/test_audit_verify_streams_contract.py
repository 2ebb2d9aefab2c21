"""Verifying the audit trail walks it in pieces, on every backend.

The trail grows with every opt-out a logout records, without bound, and ``audit verify`` (the
command and the admin API's ``POST /audit/verify``, in the serve process) walks all of it. The
rows are fetched a thousand at a time and checked as they come, so the memory a verification takes
does not grow with the trail: four times the events must not take anywhere near four times the
memory (Python allocations, measured with ``tracemalloc``: a count, not a time).
"""

from __future__ import annotations

import os
import tracemalloc

from sqlalchemy import delete, update

from uid2_operator.clock import FixedClock
from uid2_operator.domain.environments import Environment
from uid2_operator.domain.sealing import generate_keyring
from uid2_operator.services.audit_trail import EventDetails, record_events
from uid2_operator.services.context import SYSTEM
from uid2_operator.services.credentials import CredentialService
from uid2_operator.storage import SqlStore
from uid2_operator.storage import schema as t

T0 = 1_760_000_000_000
BATCH = 1_000


def _append(store: SqlStore, count: int) -> None:
    for start in range(0, count, BATCH):
        with store.transaction() as tx:
            record_events(
                tx,
                SYSTEM,
                [
                    EventDetails(
                        at_ms=T0 + start + i,
                        action="optout.add",
                        target_type="optout",
                        target_id=f"optout-{start + i}",
                        after={"identity_type": "email", "n": start + i},
                    )
                    for i in range(min(BATCH, count - start))
                ],
            )


def _credentials(store: SqlStore) -> CredentialService:
    return CredentialService(
        store, generate_keyring(os.urandom), Environment.LOCAL, FixedClock(), os.urandom
    )


def _verify_peak(credentials: CredentialService) -> tuple[int, int]:
    """(events checked, peak bytes allocated while verifying)."""
    tracemalloc.start()
    try:
        verdict = credentials.verify_audit(SYSTEM)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert verdict.ok, verdict
    return verdict.checked, peak


def test_verifying_four_times_the_events_takes_about_the_same_memory(store: SqlStore) -> None:
    credentials = _credentials(store)
    _append(store, 3 * BATCH)
    credentials.verify_audit(SYSTEM)  # the first walk warms caches (statements, types)
    checked, smaller = _verify_peak(credentials)
    assert checked == 3 * BATCH
    _append(store, 9 * BATCH)
    checked, larger = _verify_peak(credentials)
    assert checked == 12 * BATCH
    # Held whole, 12,000 events take about four times what 3,000 do; streamed, the walk holds
    # one fetch of rows whatever the trail's length.
    assert larger < 1.6 * smaller, (smaller, larger)


def test_a_whole_chain_without_its_head_is_reported_with_the_remedy(store: SqlStore) -> None:
    # How an earlier version left a trail: every link holds, no head recorded. The verdict says
    # how to record one; a chain that also breaks somewhere is not given that remedy.
    _append(store, 2 * BATCH + 5)
    m = t.store_meta.c
    with store.engine.begin() as conn:
        conn.execute(delete(t.store_meta).where(m.name.in_([t.AUDIT_HEAD_SEQ, *t.AUDIT_HEAD_HASH])))
    verdict = _credentials(store).verify_audit(SYSTEM)
    assert (verdict.ok, verdict.checked, verdict.first_bad_seq) == (False, 2 * BATCH + 5, 1)
    assert verdict.reason is not None
    assert verdict.reason.endswith("run `uid2-operator db upgrade` to record the head of its chain")

    c = t.audit_events.c
    with store.engine.begin() as conn:
        conn.execute(update(t.audit_events).where(c.seq == BATCH + 1).values(target_id="edited"))
    verdict = _credentials(store).verify_audit(SYSTEM)
    assert (verdict.ok, verdict.first_bad_seq) == (False, BATCH + 1)
    assert verdict.reason is not None
    assert "db upgrade" not in verdict.reason
