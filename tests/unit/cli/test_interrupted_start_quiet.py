"""A stop signal that interrupts ``serve``'s start or ``init`` lands wherever the main thread
is: in a library that logs the ``KeyboardInterrupt`` with its traceback before raising it again
(SQLAlchemy's pool closing a connection), in a garbage collector's callback, or in a step whose
invariant it breaks so that it fails another way on its way out. Each ends the command with its
one line, never a traceback or an internal error."""

from __future__ import annotations

import importlib
import logging
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from uid2_operator.cli import main as command_line
from uid2_operator.stop_signals import STOP_SIGNALS, StopRequest, interruptions_quiet

serve = importlib.import_module("uid2_operator.cli.serve")
database = importlib.import_module("uid2_operator.cli.database")


@pytest.fixture(autouse=True)
def _stop_signal_handlers(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Serve and init leave the stop signals ignored once one stopped them (the process is about
    to exit); this process goes on, with its own handlers back, and its core-size limit."""
    monkeypatch.setattr(serve, "_no_core_dumps", lambda: None)
    before = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    yield
    for signum, handler in before.items():
        signal.signal(signum, handler)


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def root_lines() -> Iterator[_Lines]:
    handler = _Lines()
    logging.getLogger().addHandler(handler)
    try:
        yield handler
    finally:
        logging.getLogger().removeHandler(handler)


def _logged_with(exception: BaseException) -> None:
    pool = logging.getLogger("sqlalchemy.pool.impl.QueuePool")
    try:
        raise exception
    except BaseException:
        pool.error("Exception closing connection", exc_info=True)


def test_an_interruption_a_library_logs_is_not_reported_but_other_errors_are(
    root_lines: _Lines,
) -> None:
    with interruptions_quiet():
        _logged_with(KeyboardInterrupt())
        _logged_with(OSError("disk"))
    _logged_with(KeyboardInterrupt())  # outside: as before
    assert root_lines.lines == ["Exception closing connection", "Exception closing connection"]
    assert all(not f for f in (h.filters for h in logging.getLogger().handlers))


def test_an_interruption_lost_in_a_callback_is_not_printed_but_other_errors_are(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[type[BaseException]] = []

    def hook(report: Any) -> None:
        seen.append(type(report.exc_value))

    monkeypatch.setattr(sys, "unraisablehook", hook)
    with interruptions_quiet():
        for exc in (KeyboardInterrupt(), ValueError("x")):
            sys.unraisablehook(SimpleNamespace(exc_value=exc))  # type: ignore[arg-type]
    assert seen == [ValueError]
    assert sys.unraisablehook is hook


def _interrupted_then(error: BaseException) -> Any:
    """A step the stop interrupts, which then fails with ``error`` on its way out."""

    def step(*args: Any) -> None:
        stop = next(a for a in args if isinstance(a, StopRequest))
        try:
            stop.interrupt(signal.SIGINT, None)
        except KeyboardInterrupt:
            raise error from None

    return step


def _serve_with(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, step: Any) -> int:
    """``serve``'s exit status with ``step`` in place of its start and serving."""
    monkeypatch.setattr(serve, "_serve", step)
    code = command_line.main(
        ["--data-dir", str(tmp_path / "data"), "serve", "--port", "0", "--admin-port", "0"],
        standalone_mode=False,
    )
    assert isinstance(code, int)
    return code


def test_a_start_that_fails_once_interrupted_is_aborted_not_an_internal_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert _serve_with(monkeypatch, tmp_path, _interrupted_then(AssertionError())) == 1
    assert capsys.readouterr().err.endswith("Error: aborted\n")


def test_a_start_that_fails_without_an_interruption_is_reported_as_it_is(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    def step(*args: Any) -> None:
        raise AssertionError

    assert _serve_with(monkeypatch, tmp_path, step) == 1
    assert capsys.readouterr().err.endswith("Error: internal error (AssertionError)\n")


def test_an_init_that_fails_once_interrupted_says_how_to_finish(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    def step(settings: Any, deliver: Any) -> None:
        del settings, deliver
        stop = database_stop[0]
        try:
            stop.interrupt(signal.SIGINT, None)
        except KeyboardInterrupt:
            raise AssertionError from None

    database_stop: list[StopRequest] = []
    made = StopRequest

    def recording() -> StopRequest:
        stop = made()
        database_stop.append(stop)
        return stop

    monkeypatch.setattr(database, "StopRequest", recording)
    monkeypatch.setattr(database, "_initialise", step)
    data_dir = tmp_path / "data"
    code = command_line.main(["--data-dir", str(data_dir), "init"], standalone_mode=False)
    assert code == 1
    assert capsys.readouterr().err.endswith(
        f"Error: interrupted before init finished setting up the data directory "
        f"{data_dir.resolve()}; run `uid2-operator init` (or `serve --init-if-new`) again with "
        "the same options to finish it\n"
    )
