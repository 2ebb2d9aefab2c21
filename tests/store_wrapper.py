"""A real store behind a wrapper that a test changes one method of (counting transactions,
failing the first few writes, ...): everything it does not override goes to the store as is."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager

from uid2_operator.storage.interface import ReadTx, Snapshot, Store, Tx, UsageEntry


class StoreWrapper:
    """Passes every ``Store`` call to ``inner``; subclasses override what their test needs."""

    def __init__(self, inner: Store) -> None:
        self._inner = inner

    @property
    def backend(self) -> str:
        return self._inner.backend

    def transaction(self) -> AbstractContextManager[Tx]:
        return self._inner.transaction()

    def read(self) -> AbstractContextManager[ReadTx]:
        return self._inner.read()

    def one_read(self) -> AbstractContextManager[None]:
        return self._inner.one_read()

    def change_seq(self) -> int:
        return self._inner.change_seq()

    def change_state(self) -> object:
        return self._inner.change_state()

    def snapshot(self, now_ms: int, since: int = 0) -> Snapshot:
        return self._inner.snapshot(now_ms, since)

    def record_usage(self, batch: Sequence[UsageEntry]) -> list[str]:
        return self._inner.record_usage(batch)

    def close(self) -> None:
        self._inner.close()
