"""Logout opt-outs dropped because the queue for an unreachable store is full are visible.

A worker (``build_worker``) serving the test world's snapshot over a store whose writes fail:
more logouts than the queue holds are answered, the drops appear at ``/metrics`` as a counter of
the worker, and a WARNING says how many were dropped, at most once a minute.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import os
import re
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from operator_harness import Credential, build_world_snapshot

from uid2_operator.bootstrap import open_configured_store
from uid2_operator.clock import FixedClock
from uid2_operator.domain.sealing import generate_keyring
from uid2_operator.errors import StoreUnavailable
from uid2_operator.serve_settings import ServeSettings
from uid2_operator.services import write_behind
from uid2_operator.settings import Settings
from uid2_operator.storage.interface import Store, Tx
from uid2_operator.web.operator_api.server import OperatorServer, build_worker
from uid2_operator.wire.envelope import seal_request

LOGOUT = "/v2/token/logout"
LOGGER = "uid2_operator.services.write_behind"
CAP = 3


class _Unwritable:
    """A real store (never reached here) whose write transactions fail as if it were down."""

    def __init__(self, inner: Store) -> None:
        self._inner = inner

    def transaction(self) -> AbstractContextManager[Tx]:
        raise StoreUnavailable("The store at sqlite:///test is unavailable: switched off")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@pytest.fixture
def world(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[OperatorServer, FixedClock, Credential]]:
    monkeypatch.setattr(write_behind, "MAX_PENDING_OPTOUTS", CAP)
    clock = FixedClock()
    snapshot, credentials = build_world_snapshot(clock.now_ms())
    settings = Settings.from_env({}, data_dir=str(tmp_path / "data"))
    server = build_worker(
        settings,
        ServeSettings(),
        store=_Unwritable(open_configured_store(settings, check_schema=False)),  # type: ignore[arg-type]
        keyring=generate_keyring(os.urandom, development=True),
        clock=clock,
    )
    server.worker.source.current = snapshot  # what the API reads, as a poll would install it
    yield server, clock, credentials["O"]  # O holds the OPTOUT role
    server.worker.write_behind.close()
    server.worker.source.close()
    server.worker.store.close()


async def _send(server: OperatorServer, method: str, path: str, **kwargs: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=server)
    async with httpx.AsyncClient(transport=transport, base_url="http://op.test") as client:
        return await client.request(method, path, **kwargs)


def _logouts(server: OperatorServer, clock: FixedClock, key: Credential, count: int) -> None:
    for n in range(count):
        sealed = seal_request(
            json.dumps({"email": f"leaving{n}.{clock.now_ms()}@example.com"}).encode(),
            secret=key.secret_bytes,
            now_ms=clock.now_ms(),
            nonce=os.urandom(8),
            random=os.urandom,
        )
        headers = {"authorization": f"Bearer {key.key}", "content-type": "text/plain"}
        response = anyio.run(
            functools.partial(
                _send, server, "POST", LOGOUT, content=base64.b64encode(sealed), headers=headers
            )
        )
        assert response.status_code == 200


def _dropped(server: OperatorServer) -> float:
    text = anyio.run(lambda: _send(server, "GET", "/metrics")).text
    assert "# TYPE uid2_operator_optouts_dropped_total counter" in text
    found = re.search(r'^uid2_operator_optouts_dropped_total\{worker="\d+"\} (\S+)$', text, re.M)
    assert found is not None, text
    return float(found.group(1))


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == LOGGER and r.levelno == logging.WARNING and "dropped" in r.getMessage()
    ]


def test_dropped_optouts_are_counted_at_metrics_and_logged_once_a_minute(
    world: tuple[OperatorServer, FixedClock, Credential], caplog: pytest.LogCaptureFixture
) -> None:
    server, clock, key = world
    assert _dropped(server) == 0
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        _logouts(server, clock, key, CAP + 2)
        server.worker.write_behind.flush()  # the write fails: the queue keeps CAP of them
        assert len(server.worker.write_behind.optouts) == CAP
        assert _dropped(server) == 2
        assert _warnings(caplog) == [
            f"2 logout opt-outs dropped (2 since this worker started): {CAP} were already "
            "waiting for the store; a dropped opt-out is never written and is lost at the next "
            "snapshot reload"
        ]

        _logouts(server, clock, key, 2)
        server.worker.write_behind.flush()
        assert _dropped(server) == 4
        assert len(_warnings(caplog)) == 1  # within the minute: counted, not logged again

        clock.advance(write_behind.DROP_WARNING_INTERVAL_MS)
        server.worker.write_behind.flush()
    warnings = _warnings(caplog)
    assert len(warnings) == 2
    assert warnings[1].startswith("2 logout opt-outs dropped (4 since this worker started)")
