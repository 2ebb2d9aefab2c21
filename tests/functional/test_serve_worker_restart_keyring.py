"""A worker serve restarts while the keyring file cannot be used serves on (real processes).

Running processes keep the keyring they read when the file is cut short, removed or edited into
something unusable (docs/credentials.md). A worker that dies meanwhile (killed, out of memory) is
restarted by serve, and the new one has read nothing yet: it starts with the keyring serve holds,
logs the file once, and serves; the file is followed from there. Before, it failed to start with a
traceback, three times, and serve stopped altogether, its healthy worker with it.
"""

from __future__ import annotations

import base64
import os
import signal
from pathlib import Path

import pytest
from cli_harness import database_for
from serve_harness import SealedRequest, prepare, served

from uid2_operator.domain.sealing import Keyring

pytestmark = pytest.mark.functional

GENERATE = "/v2/token/generate"
DEADLINE_S = 60.0


def test_workers_restarted_while_the_keyring_file_cannot_be_used_serve_on(tmp_path: Path) -> None:
    with database_for("sqlite", tmp_path) as database:
        prepared = prepare(database)
        cred = prepared.key
        keyring_path = database.data_dir / "keyring.json"
        with served(database, workers=2) as server:
            first = server.workers(2, timeout_s=DEADLINE_S)
            keyring = Keyring.from_json(keyring_path.read_text(encoding="utf-8"))
            keyring_path.write_text('{"active_kek_version": 1,', encoding="utf-8")  # cut short
            for pid in sorted(first):  # every worker that had read the file
                os.kill(int(pid), signal.SIGKILL)
            fresh = server.workers(2, timeout_s=DEADLINE_S, excluding=frozenset(first))
            for n in range(8):  # new connections, spread over both new workers
                request = SealedRequest.of({"email": f"after-restart-{n}@example.com"}, cred)
                assert server.answered(GENERATE, request, cred)["status"] == "success"
            assert server.process.poll() is None
            output = "\n".join(server.lines)
            assert "Traceback" not in output
            fell_back = [x for x in server.lines if "using the keyring the serving process" in x]
            assert len(fell_back) == len(fresh) == 2, output
            assert all(f"The keyring file {keyring_path}" in x for x in fell_back), fell_back
            raw = [keyring.kek(v) for v in keyring.versions] + [keyring.pepper]
            forms = [base64.b64encode(b).decode() for b in raw] + [b.hex() for b in raw]
            assert [form for form in forms if form in output] == []
