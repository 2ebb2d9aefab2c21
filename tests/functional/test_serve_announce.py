"""``serve --json`` says where it listens in one JSON line, and the admin API stays on this
machine whatever interface the operator API is given, unless ``--admin-host`` says otherwise.

The bound addresses are read from the kernel's socket table (``/proc/net/tcp``), not from what
serve prints."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from serve_harness import UID2_OPERATOR, clean_env, listening_addresses, serving_json

pytestmark = pytest.mark.functional

ANY_V4 = "0.0.0.0"  # noqa: S104 (the point of the test: every interface)


def test_serve_json_is_one_line_with_the_urls_and_the_first_runs_admin_token(
    tmp_path: Path,
) -> None:
    with serving_json(tmp_path / "data") as run:
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
    with serving_json(tmp_path / "data") as again:
        assert again.document["init"] is None


def test_the_admin_api_stays_on_loopback_when_the_operator_api_listens_everywhere(
    tmp_path: Path,
) -> None:
    with serving_json(tmp_path / "data", "--host", ANY_V4) as run:
        operator_port = urlsplit(run.document["operator_url"]).port
        admin_port = urlsplit(run.document["admin_url"]).port
        assert operator_port is not None
        assert admin_port is not None
        assert listening_addresses(operator_port) == {ANY_V4}
        assert listening_addresses(admin_port) == {"127.0.0.1"}
        assert urlsplit(run.document["admin_url"]).hostname == "127.0.0.1"
    assert "reachable from other machines" not in run.errors


def test_admin_host_puts_the_admin_api_elsewhere_with_a_warning(tmp_path: Path) -> None:
    with serving_json(tmp_path / "data", "--admin-host", ANY_V4) as run:
        admin_port = urlsplit(run.document["admin_url"]).port
        assert admin_port is not None
        assert listening_addresses(admin_port) == {ANY_V4}
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
