"""Standard output that cannot be written: full, closed by its reader, or not open at all.

A command whose output is lost says so on stderr in one line and exits 1, never with a
traceback; the line says that what the command changed is done, since a key or a secret shown
only once may be what was lost. With standard output closed (file descriptor 1 not open) no
command runs at all: what it printed would vanish without a word.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ENTRY_POINT = Path(sys.executable).with_name("uid2-operator")
DEV_FULL = Path("/dev/full")

pytestmark = pytest.mark.skipif(not DEV_FULL.exists(), reason="needs /dev/full")


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UID2_")}
    env["UID2_DATA_DIR"] = str(data_dir)
    return env


def _run(
    data_dir: Path, *args: str, stdout: int | None = subprocess.PIPE
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 (our own entry point, fixed arguments)
        [str(ENTRY_POINT), *args],
        stdout=stdout,
        stderr=subprocess.PIPE,
        env=_env(data_dir),
        text=True,
        timeout=120,
        check=False,
    )


def _full(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    with DEV_FULL.open("w") as full:
        return _run(data_dir, *args, stdout=full.fileno())


def _keys(data_dir: Path) -> list[str]:
    listed = _run(data_dir, "key", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    return [key["name"] for key in json.loads(listed.stdout)]


@pytest.fixture
def site(tmp_path: Path) -> str:
    assert _run(tmp_path, "init").returncode == 0
    created = _run(tmp_path, "participant", "create", "--name", "Pub", "--type", "publisher",
                   "--roles", "GENERATOR", "--json")  # fmt: skip
    assert created.returncode == 0, created.stderr
    return str(json.loads(created.stdout)["site_id"])


def _says_output_lost(result: subprocess.CompletedProcess[str], reason: str) -> None:
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines[-1].startswith(f"Error: could not write to standard output ({reason})"), lines
    assert "shown only once" in lines[-1]


@pytest.mark.parametrize("as_json", [True, False], ids=["json", "text"])
def test_a_full_standard_output_is_one_error_line_and_the_change_stands(
    tmp_path: Path, site: str, as_json: bool
) -> None:
    args = ["key", "create", "--site-id", site, "--name", "lost", "--roles", "GENERATOR"]
    result = _full(tmp_path, *args, *(["--json"] if as_json else []))
    _says_output_lost(result, "No space left on device")
    assert _keys(tmp_path) == ["lost"]  # done, as the line says


def test_a_full_standard_output_fails_a_read_too(tmp_path: Path, site: str) -> None:
    _says_output_lost(_full(tmp_path, "participant", "list", "--json"), "No space left on device")
    _says_output_lost(_full(tmp_path, "participant", "show", site), "No space left on device")


def test_init_says_its_admin_token_may_be_lost(tmp_path: Path) -> None:
    result = _full(tmp_path, "init", "--json")
    _says_output_lost(result, "No space left on device")
    assert "admin token" in result.stderr


@pytest.mark.usefixtures("site")
def test_a_reader_that_goes_away_is_one_error_line(tmp_path: Path) -> None:
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written
    try:
        result = _run(tmp_path, "participant", "list", stdout=write)
    finally:
        os.close(write)
    _says_output_lost(result, "Broken pipe")


def test_with_standard_output_closed_nothing_runs(tmp_path: Path, site: str) -> None:
    args = ["key", "create", "--site-id", site, "--name", "unseen", "--roles", "GENERATOR"]
    result = subprocess.run(  # noqa: S603 (our own entry point, fixed arguments)
        [sys.executable, "-c", "import os, sys; os.close(1); os.execv(sys.argv[1], sys.argv[1:])",
         str(ENTRY_POINT), *args, "--json"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=_env(tmp_path),
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr == (
        "Error: standard output is closed: nothing this command prints could be read; "
        "redirect it to a file, or to /dev/null to discard it\n"
    )
    assert _keys(tmp_path) == []


def test_serve_that_stops_says_why_as_well_as_what_it_could_not_print(tmp_path: Path) -> None:
    # --init-if-new issues the token, then the operator port is found taken: the token's line
    # cannot be written on the way out, and the reason serve stopped is still the last line.
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    port = held.getsockname()[1]
    try:
        result = _full(tmp_path / "data", "serve", "--json", "--init-if-new", "--port",
                       str(port), "--admin-port", "0")  # fmt: skip
    finally:
        held.close()
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines[-1] == f"Error: cannot listen on 127.0.0.1:{port}: Address already in use"
    assert lines[-2].startswith("Error: could not write to standard output (No space left")


def _full_stderr(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    with DEV_FULL.open("w") as full:
        return subprocess.run(  # noqa: S603 (our own entry point, fixed arguments)
            [str(ENTRY_POINT), *args],
            stdout=subprocess.PIPE,
            stderr=full.fileno(),
            env=_env(data_dir),
            text=True,
            timeout=120,
            check=False,
        )


def test_a_full_standard_error_fails_no_command_whose_work_is_done(tmp_path: Path) -> None:
    # The reminder that a key is shown only once cannot be written: the key was created and
    # printed, so the command succeeded (a retry would make a second key).
    assert _run(tmp_path, "init").returncode == 0
    created = _full_stderr(tmp_path, "participant", "create", "--name", "Pub", "--type", "dsp",
                           "--roles", "ID_READER", "--json")  # fmt: skip
    assert created.returncode == 0
    site = str(json.loads(created.stdout)["site_id"])
    issued = _full_stderr(tmp_path, "key", "create", "--site-id", site, "--name", "bidder",
                          "--roles", "ID_READER", "--json")  # fmt: skip
    assert issued.returncode == 0
    assert json.loads(issued.stdout)["key"].startswith(f"UID2-C-L-{site}-")
    assert _keys(tmp_path) == ["bidder"]


def test_serve_with_a_full_standard_error_serves_and_stops_cleanly(tmp_path: Path) -> None:
    # "press Ctrl-C to stop" and "stopped" are hints: failing to write them neither stops a
    # serving process nor turns a clean stop into exit status 1.
    argv = [str(ENTRY_POINT), "serve", "--json", "--init-if-new", "--port", "0"]
    argv += ["--admin-port", "0"]
    with DEV_FULL.open("w") as full:
        served = subprocess.Popen(  # noqa: S603 (our own entry point, fixed arguments)
            argv, stdout=subprocess.PIPE, stderr=full.fileno(), env=_env(tmp_path / "data")
        )
    assert served.stdout is not None
    with served.stdout:
        try:
            announced = json.loads(served.stdout.readline())
            url = f"{announced['operator_url']}/ops/healthcheck"
            with urllib.request.urlopen(url, timeout=30) as health:  # noqa: S310 (loopback)
                assert health.status == 200
            time.sleep(1)  # past the announcement's hint, which a full stderr refused
            assert served.poll() is None
            served.send_signal(signal.SIGTERM)
            assert served.wait(timeout=60) == 0
        finally:
            if served.poll() is None:
                served.kill()
                served.wait()


@pytest.mark.parametrize(
    ("args", "code", "status"),
    [
        (["participant", "show", "abc"], "usage", 2),
        (["optout", "add", "--email", "optout@example.com"], "invalid_input", 2),
        (["participant", "show", "99"], "not_found", 1),
    ],
)
def test_a_full_standard_error_leaves_a_refusal_its_document_and_status(
    tmp_path: Path, args: list[str], code: str, status: int
) -> None:
    # The Error: line cannot be written: the command's one JSON document and its exit status
    # are what automation reads, and stay as documented.
    assert _run(tmp_path, "init").returncode == 0
    refused = _full_stderr(tmp_path, *args, "--json")
    assert refused.returncode == status
    assert json.loads(refused.stdout)["error"]["code"] == code  # one document, nothing after
