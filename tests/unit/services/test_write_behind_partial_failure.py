"""The write-behind's two batches fail and are retried independently.

Opt-outs and usage are written in separate transactions, so when one write fails the other may
already be committed; only the failed batch may go back in the queue. A real migrated SQLite store
is wrapped so that one of its writes fails a given number of times.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence
from contextlib import AbstractContextManager

import pytest
from service_fixtures import ACTOR

from store_wrapper import StoreWrapper
from uid2_operator.clock import FixedClock
from uid2_operator.domain.optout import OptOutRecord
from uid2_operator.errors import StoreUnavailable
from uid2_operator.services.credentials import CredentialService
from uid2_operator.services.write_behind import WriteBehind
from uid2_operator.storage import SqlStore
from uid2_operator.storage.interface import Tx, UsageEntry

ENDPOINT = "/v2/token/generate"


class FlakyStore(StoreWrapper):
    """A real store whose usage writes or write transactions fail the first few times."""

    def __init__(self, inner: SqlStore, *, usage_failures: int = 0, tx_failures: int = 0) -> None:
        super().__init__(inner)
        self.usage_failures = usage_failures
        self.tx_failures = tx_failures

    def transaction(self) -> AbstractContextManager[Tx]:
        if self.tx_failures:
            self.tx_failures -= 1
            raise StoreUnavailable("database is unreachable")
        return self._inner.transaction()

    def record_usage(self, batch: Sequence[UsageEntry]) -> list[str]:
        if self.usage_failures:
            self.usage_failures -= 1
            raise StoreUnavailable("database is unreachable")
        return self._inner.record_usage(batch)

    def close(self) -> None:
        self._inner.close()


def _key_id(svc: CredentialService) -> str:
    site = svc.create_participant(ACTOR, name="Publisher", type="publisher", roles=("GENERATOR",))
    return svc.create_key(ACTOR, site_id=site.site_id, name="web", roles=["GENERATOR"]).key_id


def _optout_events(store: SqlStore) -> int:
    with store.read() as tx:
        return len(tx.audit.list_events(action="optout.add"))


def _usage(store: SqlStore, key_id: str) -> dict[str, int]:
    with store.read() as tx:
        return {u.endpoint: u.count for u in tx.usage.list_for_key(key_id)}


def _queue(writer: WriteBehind, key_id: str, clock: FixedClock) -> None:
    writer.tick()
    writer.usage.add(key_id, ENDPOINT)
    writer.record_optout(OptOutRecord(hashlib.sha256(b"person").digest(), clock.now_ms()))


def test_a_failed_usage_write_does_not_write_committed_optouts_again(
    store: SqlStore, svc: CredentialService, clock: FixedClock
) -> None:
    key_id = _key_id(svc)
    flaky = FlakyStore(store, usage_failures=1)
    writer = WriteBehind(flaky, clock, flush_interval_s=60)
    try:
        _queue(writer, key_id, clock)
        seq_before = store.change_seq()

        writer.flush()
        assert writer.failures == 1
        assert (len(writer.optouts), len(writer.usage)) == (0, 1)
        assert _optout_events(store) == 1
        assert _usage(store, key_id) == {}

        writer.flush()
        assert writer.failures == 1
        assert (len(writer.optouts), len(writer.usage)) == (0, 0)
        assert _optout_events(store) == 1
        assert store.change_seq() == seq_before + 1
        assert _usage(store, key_id) == {ENDPOINT: 1}
    finally:
        writer.close()


def test_a_failed_optout_write_keeps_the_optouts_and_still_writes_usage(
    store: SqlStore, svc: CredentialService, clock: FixedClock
) -> None:
    key_id = _key_id(svc)
    flaky = FlakyStore(store, tx_failures=1)
    writer = WriteBehind(flaky, clock, flush_interval_s=60)
    try:
        _queue(writer, key_id, clock)

        writer.flush()
        assert (len(writer.optouts), len(writer.usage)) == (1, 0)
        assert _optout_events(store) == 0
        assert _usage(store, key_id) == {ENDPOINT: 1}

        writer.flush()
        assert (len(writer.optouts), len(writer.usage)) == (0, 0)
        assert _optout_events(store) == 1
        assert _usage(store, key_id) == {ENDPOINT: 1}
    finally:
        writer.close()


def test_the_background_flush_puts_back_only_the_failed_batch(
    store: SqlStore, svc: CredentialService, clock: FixedClock
) -> None:
    key_id = _key_id(svc)
    flaky = FlakyStore(store, usage_failures=1)
    writer = WriteBehind(flaky, clock, flush_interval_s=0.05)

    async def scenario() -> None:
        _queue(writer, key_id, clock)
        task = asyncio.create_task(writer.run())
        for _ in range(200):
            await asyncio.sleep(0.02)
            if writer.failures and not len(writer.usage) and not len(writer.optouts):
                break
        writer.stop()
        await task

    try:
        asyncio.run(scenario())
    finally:
        writer.close()
    assert writer.failures == 1
    assert _optout_events(store) == 1
    assert _usage(store, key_id) == {ENDPOINT: 1}


def test_usage_of_a_key_the_store_lost_does_not_cost_the_other_keys_theirs(
    store: SqlStore, svc: CredentialService, clock: FixedClock, caplog: pytest.LogCaptureFixture
) -> None:
    # Keys are never deleted, but a store restored from an earlier backup can lack one the
    # serving snapshot still holds: only that key's counts go, with a warning naming it.
    key_id = _key_id(svc)
    lost = key_id[:-6] + "lost00"
    writer = WriteBehind(store, clock, flush_interval_s=60)
    try:
        writer.tick()
        writer.usage.add(key_id, ENDPOINT)
        writer.usage.add(lost, ENDPOINT)
        writer.usage.add(key_id, ENDPOINT)
        with caplog.at_level(logging.WARNING, logger="uid2_operator.services.write_behind"):
            writer.flush()
        assert writer.failures == 0
        assert len(writer.usage) == 0
        assert _usage(store, key_id) == {ENDPOINT: 2}
        assert _usage(store, lost) == {}
        assert [r.getMessage() for r in caplog.records] == [
            f"usage of API keys the store does not hold dropped, the rest written: {lost}"
        ]
    finally:
        writer.close()
