"""The console script: a Ctrl-C while the command line is still being imported ends with one
clean line, like any other interrupted command, not a traceback."""

from __future__ import annotations

import importlib.abc
import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import pytest

from uid2_operator import __version__, console_script
from uid2_operator.cli.output import INTERRUPTED


class _InterruptedImport(importlib.abc.MetaPathFinder):
    """Raises KeyboardInterrupt when the command line is imported, as a Ctrl-C would then."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> None:
        del path, target
        if fullname == "uid2_operator.cli":
            raise KeyboardInterrupt


@pytest.mark.parametrize("as_json", [False, True])
def test_a_ctrl_c_while_the_command_line_loads_is_one_clean_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], as_json: bool
) -> None:
    monkeypatch.delitem(sys.modules, "uid2_operator.cli", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_InterruptedImport(), *sys.meta_path])
    flags = ["--json"] if as_json else []
    monkeypatch.setattr(sys, "argv", ["uid2-operator", *flags, "participant", "list"])
    with pytest.raises(SystemExit) as stopped:
        console_script.main()
    assert stopped.value.code == 1
    out, err = capsys.readouterr()
    assert err == "Error: aborted\n"
    # Under --json, the document any interrupted command prints.
    expected = {"error": {"code": INTERRUPTED, "message": "aborted"}}
    assert (json.loads(out) if as_json else out) == (expected if as_json else "")


def test_otherwise_it_runs_the_command_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["uid2-operator", "--version"])
    with pytest.raises(SystemExit) as stopped:
        console_script.main()
    assert stopped.value.code == 0
    assert __version__ in capsys.readouterr().out


@pytest.mark.parametrize("stdout", ["closed", "broken"])
def test_a_ctrl_c_while_loading_with_stdout_gone_is_still_one_clean_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], stdout: str
) -> None:
    class _Broken(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.delitem(sys.modules, "uid2_operator.cli", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_InterruptedImport(), *sys.meta_path])
    monkeypatch.setattr(sys, "argv", ["uid2-operator", "--json", "participant", "list"])
    monkeypatch.setattr(sys, "stdout", None if stdout == "closed" else _Broken())
    with pytest.raises(SystemExit) as stopped:
        console_script.main()
    assert stopped.value.code == 1
    assert capsys.readouterr().err == "Error: aborted\n"


class _SignalledImport(importlib.abc.MetaPathFinder):
    """Sends the process ``signum`` when the command line is imported, as ``kill`` would then;
    refuses to when the signal's default action would end the test run instead."""

    def __init__(self, signum: int) -> None:
        self.signum = signum

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> None:
        del path, target
        if fullname == "uid2_operator.cli":
            if signal.getsignal(self.signum) in (signal.SIG_DFL, signal.SIG_IGN):
                raise AssertionError(f"signal {self.signum} is not handled while loading")
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_while_the_command_line_loads_is_one_clean_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], signum: int
) -> None:
    before = signal.getsignal(signum)
    monkeypatch.delitem(sys.modules, "uid2_operator.cli", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_SignalledImport(signum), *sys.meta_path])
    monkeypatch.setattr(sys, "argv", ["uid2-operator", "--json", "serve"])
    with pytest.raises(SystemExit) as stopped:
        console_script.main()
    assert stopped.value.code == 1
    out, err = capsys.readouterr()
    assert err == "Error: aborted\n"
    assert json.loads(out) == {"error": {"code": INTERRUPTED, "message": "aborted"}}
    assert signal.getsignal(signum) == before


def test_once_loaded_the_handlers_before_are_back(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    monkeypatch.setattr(sys, "argv", ["uid2-operator", "--version"])
    with pytest.raises(SystemExit):
        console_script.main()
    assert {s: signal.getsignal(s) for s in before} == before
    assert __version__ in capsys.readouterr().out


_CTRL_C_IN_EXEC = """
import importlib.abc, os, signal, sys

CTRL_C_THEN_WORK = (
    "os.kill(os.getpid(), signal.SIGINT)\\n"
    "n = 0\\n"
    "while n < 10_000_000:\\n"
    "    n += 1\\n"
)

class CtrlCInExec(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname == "uid2_operator.cli":
            # As a Ctrl-C landing in code dataclasses runs with exec while the command loads.
            exec(CTRL_C_THEN_WORK)
        return None

sys.meta_path.insert(0, CtrlCInExec())
sys.argv = ["uid2-operator", "participant", "list"]
from uid2_operator.console_script import main
main()
"""


def test_a_ctrl_c_while_loading_code_run_by_exec_still_exits_with_status_1(
    tmp_path: Path,
) -> None:
    # CPython ends a process run with -m (as `python -m uid2_operator`) by SIGINT at exit once a
    # KeyboardInterrupt has left code an exec of a string ran, whatever status sys.exit gave:
    # the Ctrl-C must be noted, not raised, while loading.
    (tmp_path / "ctrl_c_in_exec.py").write_text(_CTRL_C_IN_EXEC)
    done = subprocess.run(
        [sys.executable, "-m", "ctrl_c_in_exec"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert (done.returncode, done.stdout, done.stderr) == (1, "", "Error: aborted\n")
