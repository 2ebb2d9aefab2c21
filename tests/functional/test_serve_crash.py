"""A serve that dies without stopping, and two serves on one data directory, with real processes.

``serve --workers 2`` is killed with SIGKILL, so it can neither stop its workers nor clean up.
Its workers must then stop by themselves, gracefully: each writes its pending usage (the flush
interval here is an hour, so only a graceful stop writes it) and the port is free again, so a new
serve can listen on the very same port. That new serve, on the same data directory, takes over
what the dead one left: the runtime directory in ``/dev/shm`` is removed, its own is the only one
recorded for the data directory, and the replay table comes with it, so an envelope answered
just before the kill is refused after it.

A second serve on a data directory in use stops at once with a message naming the directory and
the pid of the serve holding it, before binding anything (it is given the first one's ports, so
a bind would fail with another message), and the first one serves on with the same table.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from cli_harness import Database, database_for
from serve_harness import (
    UID2_OPERATOR,
    Prepared,
    SealedRequest,
    Served,
    alive,
    clean_env,
    cli,
    prepare,
    runtime_dir_of,
    served,
)

from uid2_operator.cli.serve_lock import LOCK_FILE
from uid2_operator.services.replay_table import TABLE_FILE

pytestmark = pytest.mark.functional

WORKERS = 2
GENERATE = "/v2/token/generate"
REPLAYS = 10
DEADLINE_S = 60.0
# A small table, and usage written only when a worker stops.
ENV = {"UID2_REPLAY_TABLE_ENTRIES": "65536", "UID2_FLUSH_INTERVAL_S": "3600"}


def _record(database: Database) -> dict[str, Any]:
    """What the data directory's lock file says: the serve holding it and its runtime dirs."""
    document = json.loads((database.data_dir / LOCK_FILE).read_text())
    assert isinstance(document, dict)
    return document


@dataclass
class Crash:
    prepared: Prepared
    killed: Served
    workers: set[int]
    survivors: set[int]  # workers still running when the wait ended (killed then)
    runtime_dir: Path  # the killed serve's
    port: int
    usage_before: int
    request: SealedRequest  # an envelope answered just before the kill
    again: Served  # the serve started afterwards on the same data directory and port


@pytest.fixture(scope="module")
def crash(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Crash]:
    with database_for("sqlite", tmp_path_factory.mktemp("crash")) as database:
        prepared = prepare(database)
        cred = prepared.key
        usage_before = cli(database, "key", "show", cred.key_id)["usage"].get(GENERATE, 0)
        with served(database, workers=WORKERS, env=ENV) as killed:
            workers = {int(w) for w in killed.workers(WORKERS, timeout_s=DEADLINE_S)}
            record = _record(database)
            assert record["pid"] == killed.process.pid
            (runtime_dir,) = map(Path, record["runtime_dirs"])
            assert runtime_dir.is_dir()
            request = SealedRequest.of({"email": "before-the-kill@example.com"}, cred)
            killed.answered(GENERATE, request, cred)
            os.kill(killed.process.pid, signal.SIGKILL)
            killed.process.wait()
            deadline = time.monotonic() + DEADLINE_S
            while any(map(alive, workers)) and time.monotonic() < deadline:
                time.sleep(0.1)
            survivors = set(filter(alive, workers))
            for pid in survivors:  # a failure here must not leave them serving the port
                os.kill(pid, signal.SIGKILL)
        port = urlsplit(killed.base_url).port
        assert port is not None
        with served(database, workers=WORKERS, env=ENV, extra_args=("--port", str(port))) as again:
            yield Crash(
                prepared,
                killed,
                workers,
                survivors,
                runtime_dir,
                port,
                usage_before,
                request,
                again,
            )


def test_the_workers_of_a_killed_serve_stop_by_themselves_gracefully(crash: Crash) -> None:
    assert crash.survivors == set()
    stopping = [line for line in crash.killed.lines if "is gone; stopping" in line]
    assert len(stopping) == WORKERS, crash.killed.lines
    # Only a graceful stop writes the usage of the request answered just before the kill.
    cred = crash.prepared.key
    usage = cli(crash.prepared.database, "key", "show", cred.key_id)["usage"].get(GENERATE, 0)
    assert usage >= crash.usage_before + 1


def test_the_next_serve_listens_on_the_same_port_and_takes_over_the_runtime_directory(
    crash: Crash,
) -> None:
    assert urlsplit(crash.again.base_url).port == crash.port
    assert not crash.runtime_dir.exists()
    record = _record(crash.prepared.database)
    assert record["pid"] == crash.again.process.pid
    (runtime_dir,) = record["runtime_dirs"]
    assert Path(runtime_dir) != crash.runtime_dir
    assert (Path(runtime_dir) / TABLE_FILE).is_file()
    workers = crash.again.workers(WORKERS, timeout_s=DEADLINE_S)
    assert {runtime_dir_of(pid) for pid in workers} == {Path(runtime_dir)}
    assert any("stopped without cleaning up: took over" in x for x in crash.again.lines)


def test_an_envelope_answered_before_the_kill_is_refused_after_it(crash: Crash) -> None:
    cred = crash.prepared.key
    crash.again.replayed(GENERATE, crash.request, cred, REPLAYS)
    fresh = SealedRequest.of({"email": "after-the-kill@example.com"}, cred)
    crash.again.answered(GENERATE, fresh, cred)


def test_a_second_serve_on_a_data_directory_in_use_stops_and_the_first_serves_on(
    tmp_path: Path,
) -> None:
    with database_for("sqlite", tmp_path) as database:
        prepared = prepare(database)
        cred = prepared.key
        with served(database, env=ENV) as first:
            record = _record(database)
            (runtime_dir,) = map(Path, record["runtime_dirs"])
            table = (runtime_dir / TABLE_FILE).stat()
            request = SealedRequest.of({"email": "before-the-second@example.com"}, cred)
            first.answered(GENERATE, request, cred)
            ports = [str(urlsplit(url).port) for url in (first.base_url, first.admin_url)]
            second = subprocess.run(  # noqa: S603 (our own command)
                [UID2_OPERATOR, *database.cli_args(), "serve", "--port", ports[0],
                 "--admin-port", ports[1]],
                capture_output=True,
                text=True,
                env=clean_env(ENV),
                timeout=DEADLINE_S,
                check=False,
            )  # fmt: skip
            assert second.returncode == 1, (second.stdout, second.stderr)
            assert (
                f"the data directory {database.data_dir} is in use by another uid2-operator "
                f"serve (pid {first.process.pid})"
            ) in second.stderr
            assert "Traceback" not in second.stderr
            # The first one: same record, same table file, same port, still refusing replays.
            assert first.process.poll() is None
            assert _record(database) == record
            assert (runtime_dir / TABLE_FILE).stat().st_ino == table.st_ino
            first.replayed(GENERATE, request, cred, REPLAYS)
            fresh = SealedRequest.of({"email": "after-the-second@example.com"}, cred)
            first.answered(GENERATE, fresh, cred)
