"""Opening the store never creates the SQLite file: only the upgrade does (owner-only)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from uid2_operator.errors import SchemaOutOfDate, StoreUnavailable
from uid2_operator.storage import open_store, upgrade


def test_a_missing_file_is_refused_as_never_initialised(tmp_path: Path) -> None:
    path = tmp_path / "uid2.db"
    with pytest.raises(SchemaOutOfDate, match="revision none") as caught:
        open_store(f"sqlite:///{path}")
    assert "run `uid2-operator init` first" in str(caught.value)
    assert not path.exists()


def test_an_unchecked_store_fails_each_use_without_creating_the_file(tmp_path: Path) -> None:
    path = tmp_path / "uid2.db"
    store = open_store(f"sqlite:///{path}", check_schema=False)
    try:
        with pytest.raises(StoreUnavailable):
            store.change_seq()
        with pytest.raises(StoreUnavailable), store.transaction():
            pass
    finally:
        store.close()
    assert list(tmp_path.iterdir()) == []


def test_an_upgraded_file_opens_and_keeps_working(tmp_path: Path) -> None:
    path = tmp_path / "uid2.db"
    upgrade(f"sqlite:///{path}")
    path.chmod(0o600)
    store = open_store(f"sqlite:///{path}")
    try:
        with store.transaction() as tx:
            assert tx.participants.list_all() == []
        assert store.change_seq() >= 0
    finally:
        store.close()
    journals = [p for p in tmp_path.iterdir() if p.name.startswith("uid2.db")]
    assert {stat.S_IMODE(p.stat().st_mode) for p in journals} == {0o600}


def test_an_unavailable_sqlite_store_is_named_by_its_plain_path(tmp_path: Path) -> None:
    missing = tmp_path / "sp ace" / "uid2.db"
    missing.parent.mkdir()
    store = open_store(f"sqlite:///{missing}", check_schema=False)
    try:
        with pytest.raises(StoreUnavailable) as caught, store.read() as tx:
            tx.participants.list_all()
    finally:
        store.close()
    message = str(caught.value)
    assert str(missing) in message
    assert "file%3A" not in message
    assert "mode=rw" not in message
