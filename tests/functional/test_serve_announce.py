"""``serve --json`` says where it listens in one JSON line, and the admin API stays on this
machine whatever interface the operator API is given, unless ``--admin-host`` says otherwise.

The bound addresses are read from the kernel's socket table (``/proc/net/tcp``), not from what
serve prints."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from serve_harness import UID2_OPERATOR, clean_env

pytestmark = pytest.mark.functional

ANY_V4 = "0.0.0.0"  # noqa: S104 (the point of the test: every interface)


@dataclass
class Run:
    """A ``serve --json`` run: its JSON line, its process, and (once stopped) the rest of its
    standard output and all its standard error."""

    document: dict[str, Any]
    process: subprocess.Popen[str]
    rest: str = ""
    errors: str = ""


@contextmanager
def _serving(data_dir: Path, *args: str) -> Iterator[Run]:
    """``serve --json --init-if-new`` on ephemeral ports, stopped (SIGTERM) afterwards."""
    process = subprocess.Popen(  # noqa: S603 (our own command)
        [UID2_OPERATOR, "--data-dir", str(data_dir), "serve", "--json", "--init-if-new",
         "--port", "0", "--admin-port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env({"UID2_SALT_BUCKETS": "1024"}),
    )  # fmt: skip
    run: Run | None = None
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        run = Run(json.loads(line) if line else {}, process)
        assert line, "serve printed no JSON line"
        yield run
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            rest, errors = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            rest, errors = process.communicate()
        if run is not None:
            run.rest, run.errors = rest, errors


def _listening(port: int) -> set[str]:
    """The local IPv4 addresses a socket listens on at ``port`` (``/proc/net/tcp``)."""
    found: set[str] = set()
    for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = row.split()[1], row.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            octets = bytes.fromhex(address)[::-1]  # little-endian on the machines this runs on
            found.add(".".join(str(o) for o in octets))
    return found


def test_serve_json_is_one_line_with_the_urls_and_the_first_runs_admin_token(
    tmp_path: Path,
) -> None:
    with _serving(tmp_path / "data") as run:
        document = run.document
        assert set(document) == {
            "operator_url",
            "admin_url",
            "metrics_url",
            "workers",
            "pid",
            "data_dir",
            "environment",
            "init",
        }
        assert document["workers"] == 1
        assert document["metrics_url"] == document["operator_url"] + "/metrics"
        assert document["pid"] == run.process.pid
        assert document["environment"] == "local"
        token = document["init"]["admin_token"]
        assert document["init"]["keyring_created"] is True
        health = httpx.get(document["operator_url"] + "/ops/healthcheck", timeout=30)
        assert health.status_code == 200
        listed = httpx.get(
            document["admin_url"] + "/participants",
            headers={"authorization": f"Bearer {token}"},
            timeout=30,
        )
        assert listed.status_code == 200
    assert run.rest == ""  # nothing but the one line
    # A second start initialises nothing, and says so.
    with _serving(tmp_path / "data") as again:
        assert again.document["init"] is None


def test_the_admin_api_stays_on_loopback_when_the_operator_api_listens_everywhere(
    tmp_path: Path,
) -> None:
    with _serving(tmp_path / "data", "--host", ANY_V4) as run:
        operator_port = urlsplit(run.document["operator_url"]).port
        admin_port = urlsplit(run.document["admin_url"]).port
        assert operator_port is not None
        assert admin_port is not None
        assert _listening(operator_port) == {ANY_V4}
        assert _listening(admin_port) == {"127.0.0.1"}
        assert urlsplit(run.document["admin_url"]).hostname == "127.0.0.1"
    assert "reachable from other machines" not in run.errors


def test_admin_host_puts_the_admin_api_elsewhere_with_a_warning(tmp_path: Path) -> None:
    with _serving(tmp_path / "data", "--admin-host", ANY_V4) as run:
        admin_port = urlsplit(run.document["admin_url"]).port
        assert admin_port is not None
        assert _listening(admin_port) == {ANY_V4}
    assert "reachable from other machines, over plain HTTP" in run.errors


def test_a_serve_that_fails_after_init_still_hands_over_the_bootstrap_token(
    tmp_path: Path,
) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        port = busy.getsockname()[1]
        done = subprocess.run(  # noqa: S603 (our own command)
            [UID2_OPERATOR, "--data-dir", str(tmp_path / "data"), "serve", "--json",
             "--init-if-new", "--port", str(port), "--admin-port", "0"],
            capture_output=True,
            text=True,
            env=clean_env({"UID2_SALT_BUCKETS": "1024"}),
            timeout=120,
            check=False,
        )  # fmt: skip
    finally:
        busy.close()
    assert done.returncode != 0
    assert "Address already in use" in done.stdout + done.stderr
    first = json.loads(done.stdout.splitlines()[0])
    token = first["init"]["admin_token"]
    listed = subprocess.run(  # noqa: S603 (our own command)
        [UID2_OPERATOR, "--data-dir", str(tmp_path / "data"), "admin-token", "list", "--json"],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=120,
        check=True,
    )
    assert first["init"]["admin_token_id"] in listed.stdout
    assert token.startswith(first["init"]["admin_token_id"] + ".")
