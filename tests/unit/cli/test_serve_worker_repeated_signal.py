"""A worker finishes the stop it has begun, whatever signals follow the first.

uvicorn takes a second SIGINT during a stop as "force exit" and skips the application's
shutdown, where a worker writes (or saves) its last usage and logout opt-outs. A worker's server
(``WorkerServer``) only ever asks for the stop under way: the requests in flight are answered
and the shutdown runs. Checked in a process of its own, since signals go to a main thread.
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

SCRIPT = textwrap.dedent(
    """
    import asyncio, socket, sys
    import uvicorn
    from uid2_operator.cli.serve import WorkerServer

    marker = sys.argv[1]

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    with open(marker, "w") as out:
                        out.write("shut down")
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        print("busy", flush=True)
        await asyncio.sleep(1.5)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    print(sock.getsockname()[1], flush=True)
    config = uvicorn.Config(app, lifespan="on", log_level="warning", timeout_graceful_shutdown=10)
    WorkerServer(config).run(sockets=[sock])
    """
)


def test_a_second_sigint_during_the_stop_still_runs_the_shutdown(tmp_path: Path) -> None:
    marker = tmp_path / "shutdown"
    script = tmp_path / "worker.py"
    script.write_text(SCRIPT)
    with subprocess.Popen(  # noqa: S603 (fixed argument list)
        [sys.executable, str(script), str(marker)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as process:
        try:
            _stop_twice_during_a_request(process)
        finally:
            if process.poll() is None:
                process.kill()
    assert marker.read_text() == "shut down"


def _stop_twice_during_a_request(process: subprocess.Popen[str]) -> None:
    """Two SIGINTs while a 1.5 s request is under way; the request is answered."""
    assert process.stdout is not None
    port = int(process.stdout.readline())
    answers: list[int] = []

    def slow_request() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", "/slow")
            answers.append(conn.getresponse().status)
        finally:
            conn.close()

    client = threading.Thread(target=slow_request)
    client.start()
    assert process.stdout.readline().strip() == "busy"  # under way: the stop waits for it
    os.kill(process.pid, signal.SIGINT)
    time.sleep(0.2)
    os.kill(process.pid, signal.SIGINT)  # what uvicorn alone takes as "force exit"
    client.join(20)
    process.wait(20)
    assert answers == [200]
