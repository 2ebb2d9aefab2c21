"""A SQLite file deleted or replaced under an open store: the store refuses, and writes nowhere.

An open SQLite connection keeps its file open, so without a check it would go on committing into
a deleted file (or the one a backup was moved over), which nothing else reads again. The engine
keeps to the file it first opened: once the path names another file or none, every transaction
fails with StoreUnavailable, no new file appears where the old one was, and the file now at the
path is left as it is.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from store_records import participant

from uid2_operator.errors import StoreUnavailable
from uid2_operator.storage import SqlStore, open_store, upgrade
from uid2_operator.storage.engines import make_engine

GONE = "was removed or replaced while in use"


def _opened(path: Path) -> SqlStore:
    """An upgraded store at ``path`` that has written once (its pool holds a connection)."""
    upgrade(f"sqlite:///{path}")
    store = open_store(f"sqlite:///{path}")
    with store.transaction() as tx:
        tx.participants.add(participant(1001))
    return store


def _write(store: SqlStore, ran: list[str]) -> None:
    """One write transaction; ``ran`` records that its body ran."""
    with store.transaction() as tx:
        ran.append("write")
        tx.participants.add(participant(2002))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_deleted_file_makes_every_transaction_unavailable_and_is_not_recreated(
    tmp_path: Path,
) -> None:
    path = tmp_path / "uid2.db"
    store = _opened(path)
    try:
        path.unlink()
        ran: list[str] = []
        for _ in range(3):  # the pooled connection, then each new one
            with pytest.raises(StoreUnavailable, match=GONE) as caught:
                _write(store, ran)
            assert str(path) in str(caught.value)
            with pytest.raises(StoreUnavailable, match=GONE):
                store.change_seq()
        assert ran == []
        assert not path.exists()
    finally:
        store.close()
    assert not path.exists()


def test_a_replaced_file_is_neither_read_nor_written(tmp_path: Path) -> None:
    path = tmp_path / "uid2.db"
    backup = tmp_path / "backup.db"
    store = _opened(path)
    try:
        with closing(sqlite3.connect(path)) as source, closing(sqlite3.connect(backup)) as copy:
            source.backup(copy)  # a consistent copy: participant 1001 included
        os.replace(backup, path)
        replacement = _digest(path)
        journal = path.with_name("uid2.db-wal")
        journal_before = journal.stat()
        ran: list[str] = []
        for _ in range(3):
            with pytest.raises(StoreUnavailable, match=GONE):
                _write(store, ran)
            with pytest.raises(StoreUnavailable, match=GONE):
                store.change_seq()
        assert ran == []
        assert _digest(path) == replacement
        # The journal is the old file's: nothing more was committed into it either.
        journal_after = journal.stat()
        assert (journal_after.st_size, journal_after.st_mtime_ns) == (
            journal_before.st_size,
            journal_before.st_mtime_ns,
        )
    finally:
        store.close()

    # Started again, with the old file's journals out of the way, a store opens the replacement.
    for name in ("uid2.db-wal", "uid2.db-shm"):
        path.with_name(name).unlink(missing_ok=True)
    restarted = open_store(f"sqlite:///{path}")
    try:
        with restarted.read() as tx:
            assert [p.site_id for p in tx.participants.list_all()] == [1001]
    finally:
        restarted.close()


def test_an_engine_that_may_create_the_file_does_not_create_it_again(tmp_path: Path) -> None:
    path = tmp_path / "uid2.db"
    engine, _ = make_engine(f"sqlite:///{path}")  # as the schema upgrade opens it
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("CREATE TABLE probe (x)")
        assert path.exists()
        path.unlink()
        for _ in range(2):
            with pytest.raises(StoreUnavailable, match=GONE), engine.connect():
                pass
        assert not path.exists()
    finally:
        engine.dispose()
    assert not path.exists()


def test_a_store_opened_before_its_file_exists_uses_the_file_created_later(
    tmp_path: Path,
) -> None:
    path = tmp_path / "uid2.db"
    store = open_store(f"sqlite:///{path}", check_schema=False)
    try:
        with pytest.raises(StoreUnavailable):
            store.change_seq()
        assert not path.exists()
        upgrade(f"sqlite:///{path}")
        assert store.change_seq() == 0
        with store.transaction() as tx:
            tx.participants.add(participant(1001))
    finally:
        store.close()
