"""Per-request context: the request id, when the request arrived, and the headers every admin
API response carries.

The caller's ``X-Request-ID`` is kept when it is a short token of safe characters that holds no
credential text; otherwise a new id is drawn from the random source the app was built with. It is
written to logs and to hash-chained audit rows (which cannot be scrubbed later), so anything that
could forge a log line is replaced, and so is an API key, admin token, key tail or client secret
sent there by mistake (``credential_text``). The id is echoed in the response.

Every response also gets ``Cache-Control: no-store`` (any admin response may name credentials, and
the ones that issue them carry a secret that must never sit in a cache) and
``X-Content-Type-Options: nosniff``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from uid2_operator.clock import Clock, RandomBytes
from uid2_operator.domain.credential_text import recordable

REQUEST_ID_HEADER = "X-Request-ID"
_ACCEPTED_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}", re.ASCII)
REQUEST_ID_BYTES = 16


def request_id_source(random: RandomBytes) -> Callable[[], str]:
    """New request ids: 128 random bits as hex."""

    def new_request_id() -> str:
        return random(REQUEST_ID_BYTES).hex()

    return new_request_id


def accepted_request_id(value: str | None) -> str | None:
    """The caller's request id, or ``None`` (draw a new one) if it is missing, too long, has
    characters outside ``[A-Za-z0-9._:-]`` or holds credential text."""
    return recordable(value, _ACCEPTED_REQUEST_ID)


class RequestContext:
    """ASGI middleware: assigns ``scope["state"]["request_id"]`` and ``["started_ms"]`` (when the
    request arrived, by ``clock``: a request the router refuses is timed on its log line from the
    same point as one a route answers), and sets the common headers."""

    def __init__(self, app: ASGIApp, *, new_request_id: Callable[[], str], clock: Clock) -> None:
        self._app = app
        self._new_request_id = new_request_id
        self._clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        presented = Headers(scope=scope).get(REQUEST_ID_HEADER)
        request_id = accepted_request_id(presented) or self._new_request_id()
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["started_ms"] = self._clock.now_ms()

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers[REQUEST_ID_HEADER] = request_id
                headers["Cache-Control"] = "no-store"
                headers["X-Content-Type-Options"] = "nosniff"
            await send(message)

        await self._app(scope, receive, send_with_headers)
