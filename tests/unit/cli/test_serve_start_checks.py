"""What ``serve`` checks and prints while it starts, before it serves.

An init that did not finish (no environment file) is run again by ``--init-if-new``; a serve
that stops before its JSON line (a signal before any worker accepted) prints the bootstrap token
it issued; SIGTERM interrupts a starting serve as SIGINT does. ``_run_serving`` is replaced by a
stand-in that stops the way a signal would, so nothing is bound.
"""

from __future__ import annotations

import importlib
import json
import signal
from pathlib import Path
from typing import Any

import click
import pytest

from uid2_operator.bootstrap import (
    ensure_keyring,
    open_services,
    record_environment,
    upgrade_database,
)
from uid2_operator.cli import main
from uid2_operator.cli.output import FAILURE_EXIT
from uid2_operator.settings import Settings

serve = importlib.import_module("uid2_operator.cli.serve")  # the package names its command so

SMALL_TABLE = {"UID2_SALT_BUCKETS": "16"}


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # serve runs in this process here: its core-size limit of 0 could not be raised again.
    monkeypatch.setattr(serve, "_no_core_dumps", lambda: None)
    for name in ("UID2_ENVIRONMENT", "UID2_KEYRING", "UID2_KEYRING_FILE", "UID2_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in SMALL_TABLE.items():
        monkeypatch.setenv(name, value)


def test_a_data_directory_without_its_environment_file_needs_init(tmp_path: Path) -> None:
    settings = Settings.from_env(SMALL_TABLE, data_dir=str(tmp_path / "data"))
    assert serve._needs_init(settings)
    # What an init interrupted just before it records the environment leaves.
    ensure_keyring(settings)
    upgrade_database(settings)
    opened = open_services(settings)
    try:
        opened.material.initialise()
    finally:
        opened.close()
    assert serve._needs_init(settings)
    record_environment(settings)
    assert not serve._needs_init(settings)


def _serve(tmp_path: Path) -> int:
    status = main.main(
        ["--data-dir", str(tmp_path / "data"), "serve", "--json", "--init-if-new",
         "--port", "0", "--admin-port", "0"],
        standalone_mode=False,
    )  # fmt: skip
    assert isinstance(status, int)
    return status


def test_a_serve_stopped_before_its_json_line_prints_the_bootstrap_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def stopped_by_a_signal(*args: Any) -> None:  # before any worker accepted
        del args

    monkeypatch.setattr(serve, "_run_serving", stopped_by_a_signal)
    status = _serve(tmp_path)
    out, err = capsys.readouterr()
    assert status == 0
    assert err.endswith("stopped\n")
    (line,) = out.splitlines()
    init = json.loads(line)["init"]
    assert init["admin_token"].startswith(init["admin_token_id"] + ".")
    assert init["data_dir"] == str((tmp_path / "data").resolve())


def test_sigterm_interrupts_a_starting_serve_as_sigint_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    before = signal.getsignal(signal.SIGTERM)
    handlers: list[Any] = []

    def terminated(*args: Any) -> None:  # SIGTERM before serving installs its stop handler
        del args
        handler = signal.getsignal(signal.SIGTERM)
        handlers.append(handler)
        if callable(handler):
            handler(signal.SIGTERM, None)

    monkeypatch.setattr(serve, "_run_serving", terminated)
    status = _serve(tmp_path)
    out, err = capsys.readouterr()
    assert callable(handlers[0])
    assert status == FAILURE_EXIT
    assert err.endswith("Error: aborted\n")
    line, error = out.splitlines()  # one JSON document per line
    assert json.loads(line)["init"]["admin_token"]
    assert json.loads(error)["error"]["code"] == "interrupted"
    assert signal.getsignal(signal.SIGTERM) == before


def test_a_serve_that_fails_after_init_prints_one_json_document_per_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def port_taken(*args: Any) -> None:
        del args
        raise click.ClickException("cannot listen on 127.0.0.1:8080: Address already in use")

    monkeypatch.setattr(serve, "_run_serving", port_taken)
    status = _serve(tmp_path)
    out, err = capsys.readouterr()
    assert status == FAILURE_EXIT
    assert err.endswith("Error: cannot listen on 127.0.0.1:8080: Address already in use\n")
    line, error = out.splitlines()
    assert json.loads(line)["init"]["admin_token"]
    assert json.loads(error) == {
        "error": {
            "code": "command_failed",
            "message": "cannot listen on 127.0.0.1:8080: Address already in use",
        }
    }
