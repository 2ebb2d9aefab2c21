"""A uvicorn server run in a thread of the test process, on a socket the test bound."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

START_WITHIN_S = 10.0


@contextmanager
def server_in_thread(
    config: uvicorn.Config, sock: socket.socket
) -> Iterator[tuple[uvicorn.Server, threading.Thread]]:
    """Serve ``config`` on ``sock`` in a daemon thread: the server and its thread once it has
    started; on leaving, the server is told to exit, its thread joined and ``sock`` closed."""
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + START_WITHIN_S
    try:
        while not server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        yield server, thread
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def loopback_socket(*, send_buffer: int | None = None) -> socket.socket:
    """A TCP socket bound to a free loopback port (``SO_SNDBUF`` set first when given, so that
    the connections it accepts inherit it)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if send_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
    sock.bind(("127.0.0.1", 0))
    return sock


def protocol_config(app: Any, http: Any, **options: Any) -> uvicorn.Config:
    """uvicorn on uvloop with the HTTP protocol class ``http``, the test's own log handling (no
    log configuration, warnings only, no access log) and ``options``."""
    return uvicorn.Config(
        app,
        loop="uvloop",
        http=http,
        lifespan="on",
        log_config=None,  # the test attaches its own handler to uvicorn's logger
        log_level="warning",
        access_log=False,
        **options,
    )


async def run_lifespan(receive: Any, send: Any) -> None:
    """A test application's side of the ASGI lifespan: start-up and shut-down acknowledged."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        else:
            await send({"type": "lifespan.shutdown.complete"})
            return
