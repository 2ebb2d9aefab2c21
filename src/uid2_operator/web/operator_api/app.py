"""The operator's ASGI application, written against the bare ASGI interface.

The hot path of the operator does a few microseconds of cryptography per request; a framework
router and request object would cost more than the work, so requests are dispatched here directly.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_TEXT = [(b"content-type", b"text/plain; charset=utf-8")]


async def _respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def create_operator_app() -> ASGIApp:
    """Build the operator application. Only the health check exists so far."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if scope["path"] == "/ops/healthcheck":
            if scope["method"] in ("GET", "HEAD"):
                await _respond(send, 200, b"OK", _TEXT)
            else:
                await _respond(send, 405, b"Method Not Allowed", _TEXT)
            return
        await _respond(send, 404, b"Not Found", _TEXT)

    return app
