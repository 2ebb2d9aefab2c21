"""What ``serve`` checks and prints while it starts, before it serves.

An init that did not finish (no environment file) is run again by ``--init-if-new``; a serve
that stops before its JSON line (a signal before any worker accepted) prints the bootstrap token
it issued; SIGTERM interrupts a starting serve as SIGINT does. ``_run_serving`` is replaced by a
stand-in that stops the way a signal would, so nothing is bound.
"""

from __future__ import annotations

import errno
import gc
import importlib
import json
import resource
import signal
import sys
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import uvicorn

from uid2_operator.bootstrap import (
    ensure_keyring,
    open_services,
    record_environment,
    upgrade_database,
)
from uid2_operator.cli import database as database_commands
from uid2_operator.cli import main
from uid2_operator.cli.output import FAILURE_EXIT
from uid2_operator.services.admin import AdminService
from uid2_operator.services.context import SYSTEM
from uid2_operator.settings import Settings
from uid2_operator.stop_signals import STOP_SIGNALS

serve = importlib.import_module("uid2_operator.cli.serve")  # the package names its command so

SMALL_TABLE = {"UID2_SALT_BUCKETS": "16"}


@pytest.fixture(autouse=True)
def _stop_signal_handlers() -> Iterator[None]:
    """Serve and init leave the stop signals ignored once one stopped them (the process is about
    to exit); this process goes on, with its own handlers back."""
    before = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    yield
    for signum, handler in before.items():
        signal.signal(signum, handler)


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
    assert serve._needs_init(settings)  # as an init that failed issuing the token leaves it
    opened = open_services(settings)
    try:
        assert opened.admin.bootstrap_token(SYSTEM) is not None
    finally:
        opened.close()
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
    def stopped_by_a_signal(*args: Any, **kwargs: Any) -> None:  # before any worker accepted
        del args, kwargs

    monkeypatch.setattr(serve, "_run_serving", stopped_by_a_signal)
    status = _serve(tmp_path)
    out, err = capsys.readouterr()
    assert status == 0
    assert err.endswith("stopped\n")
    (line,) = out.splitlines()
    init = json.loads(line)["init"]
    assert init["admin_token"].startswith(init["admin_token_id"] + ".")
    assert init["data_dir"] == str((tmp_path / "data").resolve())


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_stop_signal_interrupts_a_starting_serve_as_sigint_does(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    signum: signal.Signals,
) -> None:
    handlers: list[Any] = []

    def terminated(*args: Any, **kwargs: Any) -> None:  # before serving installs its handler
        del args, kwargs
        handler = signal.getsignal(signum)
        handlers.append(handler)
        if callable(handler):
            handler(signum, None)

    monkeypatch.setattr(serve, "_run_serving", terminated)
    status = _serve(tmp_path)
    out, err = capsys.readouterr()
    assert callable(handlers[0])
    assert status == FAILURE_EXIT
    assert err.endswith("Error: aborted\n")
    line, error = out.splitlines()  # one JSON document per line
    assert json.loads(line)["init"]["admin_token"]
    assert json.loads(error)["error"]["code"] == "interrupted"
    # Stopped: a further stop signal before the process exits changes nothing.
    assert signal.getsignal(signum) is signal.SIG_IGN


def test_a_serve_that_fails_after_init_prints_one_json_document_per_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def port_taken(*args: Any, **kwargs: Any) -> None:
        del args, kwargs
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


def test_a_stop_whose_interruption_was_lost_still_stops_a_starting_serve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The interruption a stop signal raises can be lost (raised inside a garbage collector's
    callback, which Python would only report); the stop it noted still ends the start before
    serving, and the lost exception is not printed on the way."""
    real_initialise = serve.initialise
    served: list[object] = []
    unraisable: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)

    def initialise_then_lose_a_sigterm(*args: Any) -> None:
        real_initialise(*args)
        _lose_a_sigterm()

    monkeypatch.setattr(serve, "initialise", initialise_then_lose_a_sigterm)
    monkeypatch.setattr(serve, "_run_serving", lambda *a, **k: served.append(a))
    status = _serve(tmp_path)
    out, err = capsys.readouterr()
    assert unraisable == []  # lost, and not reported either: "aborted" says it
    assert served == []  # never started serving
    assert status == FAILURE_EXIT
    assert err.endswith("Error: aborted\n")
    line, error = out.splitlines()
    assert json.loads(line)["init"]["admin_token"]  # the token issued is still shown
    assert json.loads(error)["error"]["code"] == "interrupted"


def _lose_a_sigterm() -> None:
    """A SIGTERM whose interruption is lost: raised inside a garbage collector's callback."""
    watched = type("Watched", (), {})()
    handler = signal.getsignal(signal.SIGTERM)
    assert callable(handler)
    watch = weakref.ref(watched, lambda _ref: handler(signal.SIGTERM, None))
    del watched
    gc.collect()
    assert watch() is None


@pytest.mark.parametrize("moment", ["lost while the ports are bound", "noted before workers"])
def test_a_stop_before_the_workers_start_interrupts_serve_and_starts_none(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    moment: str,
) -> None:
    started: list[object] = []
    unraisable: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    monkeypatch.setattr(serve._Workers, "start", lambda self: started.append(self))  # noqa: PLW0108
    if moment.startswith("lost"):
        real_bind = serve._bind_admin

        def bind_then_lose_a_sigterm(*args: Any) -> Any:
            bound = real_bind(*args)
            _lose_a_sigterm()
            return bound

        monkeypatch.setattr(serve, "_bind_admin", bind_then_lose_a_sigterm)
    else:
        real_share = serve._share_runtime_dir

        def share_then_terminated(*args: Any) -> Any:
            shared = real_share(*args)
            signal.raise_signal(signal.SIGTERM)  # serve's handler only notes it by now
            return shared

        monkeypatch.setattr(serve, "_share_runtime_dir", share_then_terminated)
    status = _serve(tmp_path)
    _, err = capsys.readouterr()
    assert started == []
    assert status == FAILURE_EXIT
    assert err.endswith("Error: aborted\n")
    assert unraisable == []  # a lost interruption is not reported either: "aborted" says it


def _signal_once_the_token_is_issued(
    monkeypatch: pytest.MonkeyPatch, signals: list[signal.Signals]
) -> None:
    """Send ``signals`` to this process right after init commits the bootstrap admin token."""
    real_bootstrap = AdminService.bootstrap_token

    def bootstrap_then_signal(self: AdminService, *args: Any, **kwargs: Any) -> Any:
        issued = real_bootstrap(self, *args, **kwargs)
        for signum in signals:
            signal.raise_signal(signum)
        return issued

    monkeypatch.setattr(AdminService, "bootstrap_token", bootstrap_then_signal)


@pytest.mark.parametrize(
    "signals",
    [
        [signal.SIGTERM],
        [signal.SIGINT],
        [signal.SIGHUP],
        [signal.SIGTERM, signal.SIGHUP],  # as systemd sends them with SendSIGHUP=yes
        [signal.SIGINT, signal.SIGTERM],
    ],
)
def test_a_stop_signal_while_init_issues_the_token_waits_until_the_token_is_shown(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    signals: list[signal.Signals],
) -> None:
    """Signals that land once the bootstrap token is committed, and before it is printed, take
    effect once it is, however many: the token is never issued and lost."""
    _signal_once_the_token_is_issued(monkeypatch, signals)
    served: list[object] = []
    monkeypatch.setattr(serve, "_run_serving", lambda *a, **k: served.append(a))
    status = _serve(tmp_path)
    out, err = capsys.readouterr()
    assert served == []
    assert status == FAILURE_EXIT
    assert err.endswith("Error: aborted\n")
    line, error = out.splitlines()
    init = json.loads(line)["init"]
    assert init["admin_token"].startswith(init["admin_token_id"] + ".")
    assert json.loads(error)["error"]["code"] == "interrupted"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_init_interrupted_once_its_token_is_issued_shows_it_and_succeeds(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    signum: signal.Signals,
) -> None:
    # (SIGTERM's default action would end the process there)
    _signal_once_the_token_is_issued(monkeypatch, [signum])
    status = main.main(
        ["--data-dir", str(tmp_path / "data"), "init", "--json"], standalone_mode=False
    )
    out, err = capsys.readouterr()
    assert status in (None, 0), err
    document = json.loads(out)  # the whole document, and nothing after it
    assert document["admin_token"].startswith(document["admin_token_id"] + ".")
    assert signal.getsignal(signum) is signal.SIG_IGN  # a late one cannot change the status


def test_sigterm_interrupts_init_as_sigint_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def terminated(*args: Any, **kwargs: Any) -> None:  # before the token is issued
        del args, kwargs
        signal.raise_signal(signal.SIGTERM)  # its default action would end the process here

    monkeypatch.setattr(database_commands, "record_environment", terminated)
    status = main.main(["--data-dir", str(tmp_path / "data"), "init"], standalone_mode=False)
    assert status == FAILURE_EXIT
    assert "Error: interrupted before init finished" in capsys.readouterr().err
    opened = open_services(Settings.from_env(SMALL_TABLE, data_dir=str(tmp_path / "data")))
    try:
        assert opened.admin.list_admin_tokens(SYSTEM) == []  # nothing issued, nothing lost
    finally:
        opened.close()


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_init_interrupted_while_it_reads_its_settings_fails(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    json_flag: list[str],
) -> None:
    # A signal before init could say what it did: the command must not report success (a
    # provisioning script would go on with no data directory).
    real_load = database_commands.load_settings

    def load_then_terminated(*args: Any, **kwargs: Any) -> Any:
        loaded = real_load(*args, **kwargs)
        signal.raise_signal(signal.SIGTERM)  # its default action would end the process here
        return loaded

    monkeypatch.setattr(database_commands, "load_settings", load_then_terminated)
    status = main.main(
        ["--data-dir", str(tmp_path / "data"), "init", *json_flag], standalone_mode=False
    )
    out, err = capsys.readouterr()
    assert status == FAILURE_EXIT
    assert err == "Error: aborted\n"  # that line alone (click would write an empty one first)
    if json_flag:
        assert json.loads(out)["error"]["code"] == "interrupted"
    else:
        assert out == ""
    assert not (tmp_path / "data").exists()


def test_a_stop_signal_ignored_at_start_stays_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Under ``nohup`` SIGHUP is ignored: serve must not take it up and stop when the terminal
    closes."""
    seen: list[Any] = []

    def serving(*args: Any, **kwargs: Any) -> None:
        del args, kwargs
        seen.extend(signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGTERM))

    monkeypatch.setattr(serve, "_run_serving", serving)
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        assert _serve(tmp_path) == 0
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)
    hup, term = seen
    assert hup is signal.SIG_IGN
    assert callable(term)
    capsys.readouterr()


def test_an_admin_api_that_cannot_run_stops_serve_with_its_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Its server fails in its thread (no file descriptor left for its event loop): serve stops
    # and says why, rather than serve on without it or print the thread's traceback.
    def out_of_descriptors(self: uvicorn.Server, *args: Any, **kwargs: Any) -> None:
        del self, args, kwargs
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(uvicorn.Server, "run", out_of_descriptors)
    status = _serve(tmp_path)
    out, err = capsys.readouterr()
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert status == 1
    assert "Traceback" not in err
    assert err.endswith(
        "Error: the admin API stopped: OSError: Too many open files; the open-files limit "
        f"(ulimit -n) is {soft}\n"
    )
    assert json.loads(out.splitlines()[-1])["error"]["message"].startswith(
        "the admin API stopped: OSError: Too many open files"
    )
