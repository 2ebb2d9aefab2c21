"""A calibrated ASGI application for ``generate_budget.py``: it answers like generate and costs a
chosen amount of CPU.

``POST /spin/<µs>`` reads the body (the benchmark sends one of a real generate request's size),
busy-waits for that many microseconds of the process's own CPU time, and answers 200 with a body
of a real generate answer's size and its ``Content-Length``, in two ASGI messages as the operator
does. Any ``GET`` answers ``OK`` (two bytes), like the operator's health check. Lifespan is
acknowledged.

The answer's size is not fixed here: ``generate_budget.py`` measures one real generate on the
benchmark world at start-up and passes its answer's size in the environment
(``ANSWER_BYTES_VARIABLE``), which the factory ``spin`` reads.

The spin reads ``time.process_time_ns`` (CPU time, not wall time), so a preempted server does not
count the time it was off the core as work.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

from uid2_operator.web.operator_api.app import acknowledge_lifespan

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

ANSWER_BYTES_VARIABLE: Final = "UID2_BENCH_ANSWER_BYTES"
"""The environment variable naming the size of the answer to ``POST /spin/<µs>``, in bytes."""
_OK_HEADERS: Final = [(b"content-type", b"text/plain"), (b"content-length", b"2")]
_PREFIX: Final = "/spin/"


def spin_app(answer_bytes: int) -> App:
    """The application (see the module docstring), answering ``answer_bytes`` to a spin."""
    if answer_bytes < 0:
        raise ValueError(f"the answer size must not be negative, not {answer_bytes}")
    answer = b"A" * answer_bytes
    spin_headers = [
        (b"content-type", b"text/plain"),
        (b"content-length", str(answer_bytes).encode()),
    ]

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await acknowledge_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if scope["method"] != "POST" or not path.startswith(_PREFIX):
            await send({"type": "http.response.start", "status": 200, "headers": _OK_HEADERS})
            await send({"type": "http.response.body", "body": b"OK"})
            return
        message = await receive()
        while message.get("more_body"):
            message = await receive()
        deadline = time.process_time_ns() + int(path[len(_PREFIX) :]) * 1000
        while time.process_time_ns() < deadline:
            pass
        await send({"type": "http.response.start", "status": 200, "headers": spin_headers})
        await send({"type": "http.response.body", "body": answer})

    return app


def spin() -> App:
    """The ASGI factory a server is given: the answer's size comes from the environment."""
    value = os.environ.get(ANSWER_BYTES_VARIABLE)
    if value is None or not value.isdigit():
        raise RuntimeError(
            f"{ANSWER_BYTES_VARIABLE} must name the answer's size in bytes (got {value!r}):"
            " generate_budget.py measures it from a real generate and sets it"
        )
    return spin_app(int(value))
