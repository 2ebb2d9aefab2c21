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

from uid2_operator.clock import FixedClock
from uid2_operator.domain.environments import Environment
from uid2_operator.domain.sealing import generate_keyring
from uid2_operator.services.audit_trail import EventDetails, record_events
from uid2_operator.services.context import SYSTEM
from uid2_operator.services.credentials import CredentialService
from uid2_operator.storage import SqlStore

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
    credentials = CredentialService(
        store, generate_keyring(os.urandom), Environment.LOCAL, FixedClock(), os.urandom
    )
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
