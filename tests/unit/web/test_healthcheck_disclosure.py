"""The unauthenticated health check says what state a worker is in, never where its store is.

A store outage raises ``StoreUnavailable`` with the database's URL in its text (user, host, port
and database name, password masked; or the SQLite file's path). The worker here polls a real store
that cannot be reached, and its 503 carries a fixed phrase while the log keeps the detail.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry

from uid2_operator.clock import FixedClock
from uid2_operator.errors import KekVersionMissing, KeyringError, SealedSecretUnreadable
from uid2_operator.services.snapshot_loader import Loaded
from uid2_operator.services.snapshot_source import SnapshotSource
from uid2_operator.storage import open_store
from uid2_operator.storage.interface import Store
from uid2_operator.web.operator_api.app import OperatorApi
from uid2_operator.web.operator_api.metrics import RequestMetrics
from uid2_operator.web.operator_api.server import ROUTES, OperatorServer, Worker

USER, HOST, DATABASE = "alice_operator", "localhost", "uid2_private_db"
# Port 1 refuses at once on the loopback host: a real connection failure, no waiting.
POSTGRES_URL = f"postgresql://{USER}:hunter2-secret@{HOST}:1/{DATABASE}"


class _Snapshot:
    def __init__(self, generation: int) -> None:
        self.generation = generation
        self.change_seq = 1


class _Switch:
    """The store's change sequence: 1 while up, then the unreachable real store's answer."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.down = False

    def change_seq(self) -> int:
        return self.store.change_seq() if self.down else 1


def _load(previous: Loaded | None, generation: int) -> Loaded:
    del previous
    return Loaded(cast(Any, _Snapshot(generation)), cast(Any, None))


def _health(source: SnapshotSource) -> tuple[int, bytes]:
    worker = Worker(
        store=cast(Any, None),
        source=source,
        write_behind=cast(Any, None),
        metrics=RequestMetrics(ROUTES),
        registry=CollectorRegistry(auto_describe=False),
    )
    server = OperatorServer(OperatorApi(), worker)
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/ops/healthcheck", "headers": []}
    asyncio.run(server(scope, receive, send))
    return sent[0]["status"], sent[1]["body"]


def _assert_nothing_of(url_parts: list[str], body: bytes) -> None:
    text = body.decode()
    for part in url_parts:
        assert part not in text
    assert "@" not in text


@pytest.mark.parametrize("loaded_first", [True, False], ids=["degraded", "never-loaded"])
def test_an_unreachable_postgres_store_is_not_named_on_the_health_check(
    loaded_first: bool, caplog: pytest.LogCaptureFixture
) -> None:
    store = open_store(POSTGRES_URL, check_schema=False)
    switch = _Switch(store)
    clock = FixedClock()
    source = SnapshotSource(
        _load, switch.change_seq, clock, poll_interval_s=1, max_snapshot_age_s=10
    )
    try:
        if loaded_first:
            assert source.refresh()
        switch.down = True
        with caplog.at_level(logging.WARNING, logger="uid2_operator.services.snapshot_source"):
            assert not source.refresh()
        status, body = _health(source)
        assert status == 503
        expected = b"Degraded: store unreachable since " if loaded_first else b"No snapshot loaded"
        assert body.startswith(expected)
        assert b"store unreachable" in body
        _assert_nothing_of([USER, HOST, DATABASE, ":1/", "hunter2", "postgres"], body)
        # The detail is kept for the operator: in the log and in problem_detail.
        assert USER in caplog.text
        assert HOST in caplog.text
        assert USER in (source.problem_detail or "")
        assert "hunter2" not in caplog.text

        clock.advance(11_000)
        source.check_age()
        status, body = _health(source)
        assert status == 503
        _assert_nothing_of([USER, HOST, DATABASE, ":1/"], body)
    finally:
        source.close()
        store.close()


def test_an_unopenable_sqlite_store_path_is_not_shown(tmp_path: Path) -> None:
    path = tmp_path / "secret-location" / "missing" / "uid2.db"
    store = open_store(f"sqlite:///{path}", check_schema=False)
    source = SnapshotSource(
        _load, store.change_seq, FixedClock(), poll_interval_s=1, max_snapshot_age_s=10
    )
    try:
        assert not source.refresh()
        status, body = _health(source)
        assert (status, body.startswith(b"No snapshot loaded: store unreachable since")) == (
            503,
            True,
        )
        _assert_nothing_of(["secret-location", str(tmp_path), "uid2.db", "sqlite"], body)
    finally:
        source.close()
        store.close()


def _unreadable(cause: Exception | None) -> SealedSecretUnreadable:
    try:
        raise SealedSecretUnreadable("The sealed encryption_key 3 does not open") from cause
    except SealedSecretUnreadable as exc:
        return exc


@pytest.mark.parametrize(
    ("error", "cause"),
    [
        (KekVersionMissing(7), "(no key-encryption key version 7)"),
        (
            KeyringError("The keyring file /srv/secret-location/keyring.json is unreadable"),
            "(keyring_invalid)",
        ),
        (
            KekVersionMissing(4, "The active key-encryption key version 4 is absent"),
            "(no key-encryption key version 4)",
        ),
        # A version named for another reason is not called missing, and the error's text does
        # not decide: only the refusal of a missing version names one.
        (KeyringError("Key-encryption key version 5 is not 32 bytes"), "(keyring_invalid)"),
        (KeyringError("The keyring has no key-encryption key version 9"), "(keyring_invalid)"),
        # An item that does not open because its version is missing names the version; one
        # that does not open for another reason (tampered, say) does not.
        (_unreadable(KekVersionMissing(6)), "(no key-encryption key version 6)"),
        (_unreadable(None), "(sealed_secret_unreadable)"),
        (RuntimeError("driver said: /srv/secret-location/db"), "(RuntimeError)"),
    ],
)
def test_a_failing_reload_is_named_by_kek_version_code_or_class_only(
    error: Exception, cause: str
) -> None:
    failing = False

    def load(previous: Loaded | None, generation: int) -> Loaded:
        if failing:
            raise error
        return _load(previous, generation)

    seq = iter(range(1, 100))
    source = SnapshotSource(
        load, lambda: next(seq), FixedClock(), poll_interval_s=1, max_snapshot_age_s=10
    )
    try:
        assert source.refresh()
        failing = True
        assert not source.refresh()
        status, body = _health(source)
        assert status == 503
        assert body.startswith(b"Degraded: snapshot reload failing since ")
        assert f" {cause}; serving the last snapshot".encode() in body
        assert b"secret-location" not in body
    finally:
        source.close()


def test_the_detail_the_health_check_leaves_out_is_logged_once_per_change(
    caplog: pytest.LogCaptureFixture,
) -> None:
    errors = iter(
        [
            KeyringError("The keyring file /srv/a is unreadable"),
            KeyringError("The keyring file /srv/a is unreadable"),
            KekVersionMissing(2),
        ]
    )
    failing = False

    def load(previous: Loaded | None, generation: int) -> Loaded:
        if failing:
            raise next(errors)
        return _load(previous, generation)

    seq = iter(range(1, 100))
    source = SnapshotSource(
        load, lambda: next(seq), FixedClock(), poll_interval_s=1, max_snapshot_age_s=10
    )
    try:
        assert source.refresh()
        failing = True
        with caplog.at_level(logging.WARNING, logger="uid2_operator.services.snapshot_source"):
            for _ in range(3):
                assert not source.refresh()
        logged = [r.getMessage() for r in caplog.records if "refresh failed" in r.getMessage()]
        assert logged == [
            "snapshot refresh failed: The keyring file /srv/a is unreadable",
            "snapshot refresh failed: The keyring has no key-encryption key version 2",
        ]
    finally:
        source.close()
