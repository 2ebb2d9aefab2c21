"""A calibrated ASGI application for ``generate_budget.py``: it answers like generate and costs a
chosen amount of CPU.

``POST /spin/<µs>`` reads the body (the size of a generate request in the benchmark), busy-waits
for that many microseconds of the process's own CPU time, and answers 200 with a body the size of
a generate answer and its ``Content-Length``, in two ASGI messages as the operator does. Any ``GET``
answers ``OK`` (two bytes), like the operator's health check. Lifespan is acknowledged.

The spin reads ``time.process_time_ns`` (CPU time, not wall time), so a preempted server does not
count the time it was off the core as work.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

from uid2_operator.web.operator_api.app import acknowledge_lifespan

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

ANSWER_BYTES: Final = 780
"""About the size of a base64 generate answer (the benchmark's emails give 776 to 784 bytes)."""
_ANSWER: Final = b"A" * ANSWER_BYTES
_OK_HEADERS: Final = [(b"content-type", b"text/plain"), (b"content-length", b"2")]
_SPIN_HEADERS: Final = [
    (b"content-type", b"text/plain"),
    (b"content-length", str(ANSWER_BYTES).encode()),
]
_PREFIX: Final = "/spin/"


async def spin(scope: Scope, receive: Receive, send: Send) -> None:
    """The application (see the module docstring)."""
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
    await send({"type": "http.response.start", "status": 200, "headers": _SPIN_HEADERS})
    await send({"type": "http.response.body", "body": _ANSWER})
