"""The check values of a keyring's versions are recorded by the first process that can write; one
that cannot (a read-only copy of the database, a write lock held elsewhere) still compares and
still works, rather than failing a read-only command over a record it could not make."""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from store_wrapper import StoreWrapper
from uid2_operator.bootstrap import check_store_keyring
from uid2_operator.clock import system_random
from uid2_operator.domain.sealing import generate_keyring
from uid2_operator.errors import KeyringError, StoreUnavailable
from uid2_operator.storage import open_store, upgrade
from uid2_operator.storage.interface import Tx


class _ReadOnly(StoreWrapper):
    def transaction(self) -> AbstractContextManager[Tx]:
        raise StoreUnavailable("The store is read-only")


def test_a_store_that_cannot_be_written_is_still_compared_and_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path / 'uid2.db'}"
    upgrade(url)
    store = open_store(url)
    try:
        keyring = generate_keyring(system_random, development=True)
        with caplog.at_level(logging.WARNING, logger="uid2_operator.bootstrap"):
            check_store_keyring(_ReadOnly(store), keyring)  # does not raise
        assert [r.getMessage() for r in caplog.records] == [
            "check values of the pepper and key-encryption key version(s) 1 not recorded: The "
            "store is read-only"
        ]
        with store.read() as tx:
            assert dict(tx.deployment.kek_check_values()) == {}

        check_store_keyring(store, keyring)  # a process that can write records them
        other = generate_keyring(system_random, development=True)  # version 1, another key
        with pytest.raises(KeyringError):
            check_store_keyring(_ReadOnly(store), other)  # compared even where nothing is written
    finally:
        store.close()
