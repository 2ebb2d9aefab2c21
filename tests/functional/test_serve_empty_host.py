"""An empty ``--host``, ``--admin-host`` or ``--metrics-host`` is every interface, as ``0.0.0.0``:
serve listens there and names it so, in its URLs and in the admin API's warning.

The bound addresses are read from the kernel's socket table (``/proc/net/tcp``)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from serve_harness import UID2_OPERATOR, clean_env, listening_addresses

pytestmark = [
    pytest.mark.functional,
    pytest.mark.skipif(sys.platform != "linux", reason="reads the kernel's socket table"),
]

ANY_V4 = "0.0.0.0"  # noqa: S104 (the point of the test: every interface)


def test_an_empty_host_is_every_interface_and_named_so(tmp_path: Path) -> None:
    process = subprocess.Popen(  # noqa: S603 (our own command)
        [UID2_OPERATOR, "--data-dir", str(tmp_path / "data"), "serve", "--json", "--init-if-new",
         "--host", "", "--port", "0", "--admin-host", "", "--admin-port", "0",
         "--metrics-host", "", "--metrics-port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env({"UID2_SALT_BUCKETS": "1024"}),
    )  # fmt: skip
    try:
        assert process.stdout is not None
        document = json.loads(process.stdout.readline())
        urls = {name: urlsplit(document[name]) for name in ("operator_url", "admin_url")}
        for url in (*urls.values(), urlsplit(document["metrics_url"])):
            assert url.hostname == ANY_V4, document
            assert url.port is not None
            assert listening_addresses(url.port) == {ANY_V4}
        health = httpx.get(f"http://127.0.0.1:{urls['operator_url'].port}/ops/healthcheck")
        assert health.status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            _, errors = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            _, errors = process.communicate()
    assert f"the admin API listens on {ANY_V4}: reachable from other machines" in errors
