"""A first ``serve --init-if-new`` cut short never loses the one-time bootstrap admin token.

An ``init`` interrupted before it finished (SIGINT while it runs) leaves a keyring and a database
but no environment file and no token: the next ``serve --init-if-new`` finishes it, issuing the
token once and creating no second set of material. A serve stopped by SIGINT or SIGTERM after
init issued the token and before it printed its JSON line prints ``{"init": ...}`` with the
token on its way out, whichever phase of its start the signal meets. The points where the
signal is sent are read from serve's standard error, not waited for.
"""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cli_harness import Cli, Database
from serve_harness import UID2_OPERATOR, clean_env

from uid2_operator.bootstrap import open_services
from uid2_operator.cli import database as database_commands
from uid2_operator.errors import StoreUnavailable
from uid2_operator.services.admin import AdminService
from uid2_operator.settings import Settings

pytestmark = pytest.mark.functional

SMALL_TABLE: dict[str, str] = {"UID2_SALT_BUCKETS": "1024"}
_TIMEOUT_S = 60.0


@dataclass
class Stopped:
    returncode: int
    stdout: str
    stderr: str


class Serve:
    """A running serve whose standard error is read line by line, as it comes."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.errors: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self._lines.put(line)
        self._lines.put(None)

    def wait_for(self, text: str) -> None:
        """Until serve writes a line holding ``text`` on standard error."""
        while True:
            line = self._lines.get(timeout=_TIMEOUT_S)
            assert line is not None, f"serve ended before {text!r}: {''.join(self.errors)}"
            self.errors.append(line)
            if text in line:
                return

    def first_line(self) -> str:
        """The next line serve writes on standard output."""
        assert self.process.stdout is not None
        return self.process.stdout.readline()

    def stop(self, signum: signal.Signals) -> Stopped:
        """Send ``signum``; what serve writes until it ends."""
        assert self.process.stdout is not None
        self.process.send_signal(signum)
        stdout = self.process.stdout.read()
        self.process.wait(timeout=_TIMEOUT_S)
        while (line := self._lines.get(timeout=_TIMEOUT_S)) is not None:
            self.errors.append(line)
        return Stopped(self.process.returncode, stdout, "".join(self.errors))


@contextmanager
def _serve(data_dir: Path, *args: str, cwd: Path | None = None) -> Iterator[Serve]:
    """``serve --json --init-if-new`` on ephemeral ports; killed if the test leaves it running."""
    process = subprocess.Popen(  # noqa: S603 (our own command)
        [UID2_OPERATOR, "--data-dir", str(data_dir), "serve", "--json", "--init-if-new",
         "--port", "0", "--admin-port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(SMALL_TABLE),
        cwd=cwd,
    )  # fmt: skip
    try:
        yield Serve(process)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=_TIMEOUT_S)
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()


def _material(data_dir: Path) -> tuple[tuple[int, ...], tuple[int, ...], int, int, int]:
    """Keyset ids, key ids, salt table version and buckets, and how many admin tokens exist."""
    opened = open_services(Settings.from_env(SMALL_TABLE, data_dir=str(data_dir)))
    try:
        material = opened.material.load_material()
        with opened.store.read() as tx:
            tokens = len(tx.admin_tokens.list_all())
    finally:
        opened.close()
    return (
        tuple(sorted(k.keyset_id for k in material.keysets)),
        tuple(sorted(k.id for k in material.keys)),
        material.salts.version,
        material.salts.bucket_count,
        tokens,
    )


def _admin_token_ids(data_dir: Path) -> str:
    listed = subprocess.run(  # noqa: S603 (our own command)
        [UID2_OPERATOR, "--data-dir", str(data_dir), "admin-token", "list", "--json"],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=120,
        check=True,
    )
    return listed.stdout


def _served_once(data_dir: Path, cwd: Path | None = None) -> dict[str, Any]:
    """What ``serve --init-if-new --json`` announces once it serves, stopped by SIGTERM."""
    with _serve(data_dir, cwd=cwd) as serving:
        serving.wait_for("press Ctrl-C to stop")
        document: dict[str, Any] = json.loads(serving.first_line())
        assert serving.stop(signal.SIGTERM).returncode == 0
    return document


def test_an_interrupted_command_under_json_prints_an_error_document(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = Database("sqlite", tmp_path / "data", None)

    def interrupted(settings: Settings) -> None:
        del settings
        raise KeyboardInterrupt

    monkeypatch.setattr(database_commands, "record_environment", interrupted)
    cut_short = Cli(database)("init", "--json", env={**SMALL_TABLE})
    assert cut_short.exit_code == 1
    document = json.loads(cut_short.stdout)
    assert document["error"]["code"] == "interrupted"
    assert document["error"]["message"].startswith(
        "interrupted before init finished setting up the data directory "
    )


def test_serve_init_if_new_finishes_an_init_that_was_interrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = Database("sqlite", tmp_path / "data", None)

    def interrupted(settings: Settings) -> None:  # SIGINT just before the environment file
        del settings
        raise KeyboardInterrupt

    monkeypatch.setattr(database_commands, "record_environment", interrupted)
    cut_short = Cli(database)("init", env={**SMALL_TABLE})
    monkeypatch.undo()
    assert cut_short.exit_code == 1
    assert cut_short.stdout == ""
    assert (
        "Error: interrupted before init finished setting up the data directory "
        f"{database.data_dir.resolve()}; run `uid2-operator init`"
    ) in cut_short.stderr
    left = {p.name for p in database.data_dir.iterdir()}
    assert {"keyring.json", "uid2.db"} <= left
    assert "environment" not in left
    keysets, keys, version, buckets, tokens = _material(database.data_dir)
    assert keysets
    assert keys
    assert tokens == 0

    init = _served_once(database.data_dir)["init"]
    assert init is not None
    assert init["keyring_created"] is False
    assert init["material_created"] is False
    assert init["admin_token"].startswith(init["admin_token_id"] + ".")
    assert (database.data_dir / "environment").read_text(encoding="utf-8") == "local\n"
    assert _material(database.data_dir) == (keysets, keys, version, buckets, 1)
    assert init["admin_token_id"] in _admin_token_ids(database.data_dir)

    # Initialised now: nothing more to do. (Named relative to where serve runs, printed absolute.)
    announced = _served_once(Path("data"), cwd=tmp_path)
    assert announced["init"] is None
    assert announced["data_dir"] == str(database.data_dir.resolve())
    assert _material(database.data_dir) == (keysets, keys, version, buckets, 1)


def test_serve_init_if_new_issues_the_token_an_init_failed_to_issue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Init records the environment file just before it issues the token: a store locked or full
    # at that moment fails it with the file written. The directory then looks initialised, but
    # has no admin token for anyone to administer it with.
    database = Database("sqlite", tmp_path / "data", None)

    def locked(self: object, actor: object) -> None:
        del self, actor
        raise StoreUnavailable("The store at sqlite:///uid2.db is unavailable: database is locked")

    monkeypatch.setattr(AdminService, "bootstrap_token", locked)
    failed = Cli(database)("init", env={**SMALL_TABLE})
    monkeypatch.undo()
    assert failed.exit_code == 1
    assert "database is locked" in failed.stderr
    assert (database.data_dir / "environment").read_text(encoding="utf-8") == "local\n"
    keysets, keys, version, buckets, tokens = _material(database.data_dir)
    assert tokens == 0

    init = _served_once(database.data_dir)["init"]
    assert init is not None
    assert init["admin_token"].startswith(init["admin_token_id"] + ".")
    assert _material(database.data_dir) == (keysets, keys, version, buckets, 1)


@pytest.mark.parametrize(
    ("after", "signum"),
    [
        # once init has issued the token, before serve handles the stop signal itself
        ("Store these now", signal.SIGTERM),
        ("Store these now", signal.SIGINT),
        # serve handles it: its workers are starting, none accepts yet
        ("replay table", signal.SIGTERM),
        ("replay table", signal.SIGINT),
    ],
)
def test_a_serve_stopped_before_its_json_line_still_hands_over_the_bootstrap_token(
    tmp_path: Path, after: str, signum: signal.Signals
) -> None:
    with _serve(Path("data"), "--log-level", "info", cwd=tmp_path) as serving:
        serving.wait_for(after)
        stopped = serving.stop(signum)
    # The init line first; what follows, if anything, is the interruption's error document.
    lines = stopped.stdout.splitlines()
    rest = "\n".join(lines[1:])
    assert rest == "" or json.loads(rest)["error"]["code"] == "interrupted", stopped
    # {"init": ...}; or, should a worker have accepted first, the whole document
    init = json.loads(lines[0])["init"]
    assert init["data_dir"] == str((tmp_path / "data").resolve())
    assert init["admin_token"].startswith(init["admin_token_id"] + ".")
    assert init["admin_token_id"] in _admin_token_ids(tmp_path / "data")
