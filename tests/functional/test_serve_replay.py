"""A replayed envelope is refused by every worker of a real ``serve``, and after they restart.

A real ``uid2-operator serve --workers 3``; every request goes on a fresh connection, so the
kernel spreads them over the workers' ``SO_REUSEPORT`` sockets. An envelope is answered once;
the very same bytes sent again on 20 new connections must all get the replay error, whichever
worker takes them (were each worker to remember only its own envelopes, all 20 would have to
land on the one worker that answered: (1/3)^20, about 3e-10). Then every worker is killed with
SIGKILL and restarted by serve, and an envelope answered before the kill is still refused by
the new workers, which have never seen it; and a whole serve stopped cleanly and started again
still refuses an envelope answered before.
"""

from __future__ import annotations

import importlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_harness import database_for
from serve_harness import Prepared, SealedRequest, Served, prepare, served

pytestmark = pytest.mark.functional

WORKERS = 3
REPLAYS = 20
GENERATE = "/v2/token/generate"
DEADLINE_S = 90.0
TABLE_SLOTS = 65_536
# serve gives up on workers that keep dying within this many seconds of their start.
QUICK_EXIT_S: float = importlib.import_module("uid2_operator.cli.serve")._QUICK_EXIT_S


@pytest.fixture(scope="module")
def serving(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Prepared, Served]]:
    with database_for("sqlite", tmp_path_factory.mktemp("replay")) as database:
        prepared = prepare(database)
        with served(
            database, workers=WORKERS, env={"UID2_REPLAY_TABLE_ENTRIES": str(TABLE_SLOTS)}
        ) as server:
            yield prepared, server


def _age_s(pid: str) -> float:
    """Seconds since process ``pid`` started (``/proc``: serve's ``SO_REUSEPORT`` layout is
    Linux's anyway)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    started = int(fields[19]) / os.sysconf("SC_CLK_TCK")
    return float(Path("/proc/uptime").read_text().split()[0]) - started


def test_a_replay_is_refused_by_every_worker(serving: tuple[Prepared, Served]) -> None:
    prepared, server = serving
    cred = prepared.key
    server.workers(WORKERS, timeout_s=DEADLINE_S)
    request = SealedRequest.of({"email": "replayed@example.com"}, cred)
    server.answered(GENERATE, request, cred)
    server.replayed(GENERATE, request, cred, REPLAYS)
    # Fresh envelopes of the same key are still answered, by every worker.
    for n in range(10):
        fresh = SealedRequest.of({"email": f"fresh{n}@example.com"}, cred)
        server.answered(GENERATE, fresh, cred)
    # The table's figures describe the whole serve: one unlabelled series, the configured size.
    metrics = server.metrics()
    assert f"uid2_operator_replay_table_slots {TABLE_SLOTS:.1f}" in metrics
    assert "uid2_operator_replay_evictions_total 0.0" in metrics


def test_workers_killed_and_restarted_still_refuse_an_earlier_envelope(
    serving: tuple[Prepared, Served],
) -> None:
    prepared, server = serving
    cred = prepared.key
    old = server.workers(WORKERS, timeout_s=DEADLINE_S)
    # Workers that die young count towards serve giving up; these have lived long enough.
    deadline = time.monotonic() + DEADLINE_S
    while min(_age_s(pid) for pid in old) < QUICK_EXIT_S + 1:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    request = SealedRequest.of({"email": "before-the-kill@example.com"}, cred)
    server.answered(GENERATE, request, cred)
    for pid in old:
        os.kill(int(pid), signal.SIGKILL)
    new = server.workers(WORKERS, timeout_s=DEADLINE_S, excluding=frozenset(old))
    assert not new & old
    server.replayed(GENERATE, request, cred, REPLAYS)
    assert any("restarting" in line for line in server.lines)


def test_a_serve_stopped_cleanly_and_started_again_still_refuses_an_earlier_envelope(
    tmp_path: Path,
) -> None:
    """serve keeps the table in its data directory when it stops and takes it back at start."""
    with database_for("sqlite", tmp_path) as database:
        prepared = prepare(database)
        cred = prepared.key
        with served(database, workers=2) as server:
            request = SealedRequest.of({"email": "before-the-restart@example.com"}, cred)
            server.answered(GENERATE, request, cred)
        with served(database, workers=2) as server:
            server.replayed(GENERATE, request, cred, REPLAYS)
            fresh = SealedRequest.of({"email": "after-the-restart@example.com"}, cred)
            server.answered(GENERATE, fresh, cred)
