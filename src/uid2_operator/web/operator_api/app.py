"""The operator's ASGI application, written against the bare ASGI interface.

The hot path of the operator does a few microseconds of cryptography per request; a framework
router and request object would cost more than the work, so requests are dispatched here directly.

Every request goes through the same pipeline, in the reference operator's order (operator-api
§1.2), so the same error wins as there:

1. CORS: any origin, pre-flight ``OPTIONS`` answered 204 (§1.7).
2. Routing: unknown path 404, wrong method 405 (plain-text reason phrases); a path is matched
   as the reference's router matches it, runs of ``/`` as one, ``.`` and ``..`` segments
   resolved and a final ``/`` not significant (``OperatorApi.route_path``).
3. Body, at most 1 MiB, checked against ``Content-Length`` and again while reading, before
   anything else is looked at: 413.
4. API key: bearer header, the key format's shape/checksum/environment check, one lookup by key id
   in the snapshot, a constant-time keyed-hash compare (a text that passed is remembered by the
   snapshot, ``Snapshot.remember_verified``), then the key's and its participant's state and the
   endpoint -> roles table, on every request: 401 ``{"status":"unauthorized"}`` for every failure
   alike. A key whose text verified but that is refused (its state, its participant's, a role it
   lacks, no live secret) is counted under its key id and logged with its reason
   (``RefusalLog``). A text that does not verify, whatever key id it names, is neither a metrics
   label nor logged under a key id: ``/metrics`` and the log would otherwise tell anyone who can
   send a request which key ids exist, and made-up ids could grow both. One such text is logged,
   with no key id: a key of another environment (``WrongEnvironment``), whose line names both
   environments, since the caller is told only the protocol's bare 401.
5. Envelope: opened with each secret the key currently accepts (newest first, so a client may
   switch to a rotated secret during the overlap): 400 ``client_error``.
6. Replay: the same key and nonce again while the envelope could still pass the timestamp check:
   400 ``client_error``.
7. The endpoint, against the snapshot taken at the start of the request.
8. The answer sealed under the secret that opened the request, echoing its nonce, framed like the
   request (raw bytes for ``application/octet-stream``, base64 text otherwise).

``/v2/token/refresh`` skips 4-6: the refresh token is the credential; a valid API key only makes
error answers more specific. The request is counted (metrics, usage) under the key id only when
the key also passes the state checks.

Every answer but a 204 carries ``Content-Length`` (so a server need not chunk it; for ``HEAD``
the length of the body a ``GET`` would get, which the server does not send), except an answer
written in pieces (``data_plane.StreamedReply`` with more than one piece: ``/v2/identity/buckets``
listing many buckets). That one starts once every check above has passed and its first two pieces
are made; each piece is then sealed, framed and sent as its own body message, the event loop
given to other connections between pieces, with no ``Content-Length`` (the server uses chunked
transfer encoding). An HTTP/1.0 client cannot read chunked transfer encoding: its answer is
announced with its ``Content-Length``, known before the answer is made from the length of its
JSON (``framed_response_size``), which the pieces are made once more to count, the event loop
given to other connections between pieces there too; then it is sent in parts as above, so it is
never held whole either. A piece that cannot be made after the start is logged as any failed request
and the response ends without its last message, so the client sees it cut off. A client that
disconnects meanwhile is noticed before the next piece is made: no more are made, and the
observer is told 499. The request's headers are read in one pass into a map, the first
occurrence of a name winning, as before.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from itertools import chain
from typing import Any, Final

from uid2_operator.clock import Clock, SystemClock, system_random
from uid2_operator.domain.authorization import (
    OPERATOR_ENDPOINTS,
    Denied,
    authorize_endpoint,
)
from uid2_operator.domain.credentials import authenticate, verify_api_key
from uid2_operator.domain.optout import OptOutRecord
from uid2_operator.error_text import described
from uid2_operator.errors import (
    BodyTooLarge,
    CredentialMissing,
    CredentialRejected,
    EnvelopeDecryptionFailed,
    MethodNotAllowed,
    NotFound,
    NotServing,
    ReplayedRequest,
    UID2Error,
    WrongEnvironment,
)
from uid2_operator.services import data_plane
from uid2_operator.services.data_plane import OptOutSink, StreamedReply
from uid2_operator.services.log_throttle import LogThrottle, held_back
from uid2_operator.services.public_suffix import registrable_domain_lookup
from uid2_operator.services.replay import DEFAULT_MAX_ENTRIES, ReplayCache
from uid2_operator.services.replay_table import ReplayGuard
from uid2_operator.services.snapshot import ClientRecord, Snapshot
from uid2_operator.web.http_connection import REFUSED_SCOPE
from uid2_operator.web.operator_api.errors import JSON, TEXT, render
from uid2_operator.wire.aead import IV_SIZE, RandomBytes, seal_with_iv
from uid2_operator.wire.cstg import DEFAULT_CSTG_TIMESTAMP_WINDOW
from uid2_operator.wire.encoding import b64encode_ascii
from uid2_operator.wire.envelope import (
    DEFAULT_TIMESTAMP_WINDOW,
    OCTET_STREAM,
    TEXT_PLAIN,
    RequestEnvelope,
    TimestampWindow,
    frame_response,
    framed_response_size,
    parse_request,
    seal_response,
    stream_response,
)
from uid2_operator.wire.tcf import DEFAULT_VENDOR_ID

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]
Fields = dict[bytes, bytes]
"""A request's headers by (lower-case) name, the first occurrence of each."""


@dataclass(frozen=True, slots=True)
class SizedParts:
    """A streamed answer whose length is announced first (for an HTTP/1.0 client): its
    ``parts``, and the JSON pieces made afresh (``measured``) to count, whose total length gives
    the body's (``framed_response_size`` with ``binary``)."""

    parts: Iterator[bytes]
    measured: Iterator[bytes]
    binary: bool


Body = bytes | Iterator[bytes] | SizedParts
"""An answer's body: whole, or (a streamed answer) its parts in order, with or without its
length announced."""
RequestObserver = Callable[[str, "str | None", int, float], None]
"""Told of every answered request: ``(path, key id or None, HTTP status, seconds)``."""

BODY_LIMIT: Final = 1 << 20
HEALTHCHECK: Final = "/ops/healthcheck"
REFRESH: Final = "/v2/token/refresh"
CLIENT_GENERATE: Final = "/v2/token/client-generate"
VALIDATE: Final = "/v2/token/validate"
_BEARER: Final = "bearer "
_CORS_HEADERS: Final = (
    "X-UID2-Client-Version, Access-Control-Request-Method, Access-Control-Allow-Credentials, "
    "Access-Control-Allow-Origin, Access-Control-Allow-Headers, Content-Type"
)
_CORS_METHODS: Final = b"GET, POST, OPTIONS"
_CONTENT_TYPE: Final = b"content-type"
_CONTENT_LENGTH: Final = b"content-length"
_AUTHORIZATION: Final = b"authorization"
_ORIGIN: Final = b"origin"
_TRACE_ID: Final = b"x-amzn-trace-id"
_PREFLIGHT_METHOD: Final = b"access-control-request-method"
_TEXT_TYPE: Final = (_CONTENT_TYPE, TEXT)
_JSON_TYPE: Final = (_CONTENT_TYPE, JSON)
_OCTET_TYPE: Final = (_CONTENT_TYPE, OCTET_STREAM.encode())
_FRAMED_TYPES: Final = {
    OCTET_STREAM: _OCTET_TYPE,
    TEXT_PLAIN: (_CONTENT_TYPE, TEXT_PLAIN.encode()),
}
_HEALTH_BODY: Final = b"OK"
_HEALTH_LENGTH: Final = (_CONTENT_LENGTH, b"%d" % len(_HEALTH_BODY))
_HEALTH_START: Final = {
    "type": "http.response.start",
    "status": 200,
    "headers": (_TEXT_TYPE, _HEALTH_LENGTH),
}
"""The health check's answer without CORS headers; each request sends a copy."""
_HEALTH_ANSWER: Final = {"type": "http.response.body", "body": _HEALTH_BODY}
_READ_METHODS: Final = frozenset({"GET", "HEAD"})
ALLOW_READ: Final = (b"allow", b"GET, HEAD")
"""What a 405 on a path answered to ``GET`` and ``HEAD`` says it takes (RFC 9110 §15.5.6)."""
_ALLOW_POST: Final = (b"allow", b"POST")
_OCTET_BYTES: Final = OCTET_STREAM.encode()
KEY_ID_SCOPE: Final = "uid2.key_id"
"""Where a request's ASGI scope records the id of the API key that authenticated it, or of the
key whose text verified but was refused (never an id taken from a text that did not verify)."""
CLIENT_CLOSED_REQUEST: Final = 499
"""The status the observer is given for an answer cut short by its client leaving (as proxies
name it; the admin API logs the same)."""
REFUSAL_LOG_INTERVAL_MS: Final = 60_000
REFUSAL_LOG_MAX_ENTRIES: Final = 10_000
_NO_LIVE_SECRET: Final = "no_live_client_secret"  # noqa: S105 (a reason code, not a secret)

log = logging.getLogger(__name__)


class _ThrottledLog:
    """One line per key per ``interval_ms``, the repeats held back in between counted on the
    next line (``LogThrottle``)."""

    __slots__ = ("_throttle",)

    def __init__(
        self,
        interval_ms: int = REFUSAL_LOG_INTERVAL_MS,
        max_entries: int = REFUSAL_LOG_MAX_ENTRIES,
    ) -> None:
        self._throttle: LogThrottle[tuple[str, str]] = LogThrottle(interval_ms, max_entries)

    def _write(
        self, level: int, key: tuple[str, str], now_ms: int, message: str, *args: object
    ) -> None:
        skipped = self._throttle.due(key, now_ms)
        if skipped is None:
            return
        log.log(level, message + "%s", *args, held_back(skipped))


class ServerErrorLog(_ThrottledLog):
    """One error line per route and error code per ``interval_ms`` for the project's own errors
    that are answered 5xx (no active encryption key, a salt table that cannot serve): the
    caller is told only ``unknown``, so without this line nothing would say why. Later repeats
    inside the interval are counted and reported on the next line. Errors of any other type are
    logged at ERROR on every request, as unexpected, by their class and the frames they came
    through (``error_text.described``): never their text nor a traceback, which for a database
    driver's error repeat the statement's parameters."""

    __slots__ = ()

    def failed(self, error: UID2Error, status: int, path: str, now_ms: int) -> None:
        self._write(
            logging.ERROR,
            (path, error.code),
            now_ms,
            "operator request answered %d: path=%s code=%s: %s",
            status,
            path,
            error.code,
            error.detail,
        )


class RefusalLog(_ThrottledLog):
    """One warning line per refused key id and reason per ``interval_ms``.

    Keys whose presented text verified are logged under their key id (``refused``), so a reason
    is one of ``DenyReason``'s values (the key's or its participant's state, a missing role) or
    ``no_live_client_secret``. A text that does not verify is never logged under a key id,
    whatever key id it names; of those, only a key of another environment is logged
    (``wrong_environment``), with no key id, its line naming both environments, one line per
    pair of environments per ``interval_ms``. A client retrying with a disabled key would
    otherwise write a line per request. Lines carry the key id (public) when there is one, the
    reason and the route, never the presented text. Later refusals inside the interval are
    counted and reported on the next line.
    At most ``max_entries`` (key id, reason) pairs are remembered; past that, expired ones are
    dropped, and if none has expired, all.
    """

    __slots__ = ()

    def refused(self, key_id: str, reason: str, path: str, now_ms: int) -> None:
        self._write(
            logging.WARNING,
            (key_id, reason),
            now_ms,
            "API key refused: key_id=%s reason=%s path=%s",
            key_id,
            reason,
            path,
        )

    def wrong_environment(self, error: WrongEnvironment, path: str, now_ms: int) -> None:
        """A key of another environment: its text did not verify, so no key id is named. The
        error's message names both environments and nothing else of the presented text."""
        self._write(
            logging.WARNING,
            ("", error.detail),  # a key id is never empty: no clash with ``refused``'s pairs
            now_ms,
            "API key refused: reason=%s path=%s: %s",
            error.code,
            path,
            error.detail,
        )


class ClientGone(Exception):
    """The client disconnected before its body was read; nothing is answered (the observer is
    told 499, with no key id: none was checked)."""


class _KeyDenied(CredentialRejected):
    """A key whose presented text verified, refused for its (or its participant's) state or for
    the endpoint's roles. Answered as every other 401; ``key_id`` is the verified key's."""

    def __init__(self, key_id: str, reason: str) -> None:
        super().__init__(reason)
        self.key_id = key_id


async def acknowledge_lifespan(receive: Receive, send: Send) -> None:
    """Answer an ASGI lifespan scope for an application with nothing to start or stop: every
    startup and shutdown is acknowledged, and the scope ends with the shutdown."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


@dataclass(frozen=True, slots=True)
class OperatorApiConfig:
    """Knobs of the request pipeline (the protocol's defaults)."""

    body_limit: int = BODY_LIMIT
    window: TimestampWindow = DEFAULT_TIMESTAMP_WINDOW
    replay_cache_entries: int = DEFAULT_MAX_ENTRIES
    cstg_window: TimestampWindow | None = DEFAULT_CSTG_TIMESTAMP_WINDOW
    """Client-side requests' timestamp window (None: unchecked, as the reference)."""
    tcf_vendor_id: int = DEFAULT_VENDOR_ID
    """The vendor whose TCF consent EUID token generation requires."""


def _discard_optout(record: OptOutRecord) -> None:
    """Without an opt-out store a logout is acknowledged and dropped (no store wired yet)."""
    del record


def _header(headers: Headers, name: bytes) -> str | None:
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


def _fields(headers: Headers) -> Fields:
    """The headers by name; built from the end so that the first occurrence of a name wins."""
    return dict(reversed(headers))


def _text(fields: Fields, name: bytes) -> str | None:
    """A header's value as text, without the whitespace around it (RFC 9110 §5.5: not part of
    the value; the HTTP parser drops only what comes before it)."""
    value = fields.get(name)
    return None if value is None else value.strip(b" \t").decode("latin-1")


def _is_octet_stream(fields: Fields) -> bool:
    """Whether the request's media type is ``application/octet-stream``, in any case, without
    the whitespace around a field's value (RFC 9110 §5.5), which a server may leave on it."""
    value = fields.get(_CONTENT_TYPE)
    return value is not None and value.strip(b" \t").lower() == _OCTET_BYTES


async def _respond(send: Send, status: int, body: bytes, headers: Headers) -> None:
    """Send one whole answer; ``headers`` is the caller's own list and gets Content-Length."""
    if status != 204:  # a 204 has no body and must not announce one
        headers.append((_CONTENT_LENGTH, b"%d" % len(body)))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _read_body(fields: Fields, receive: Receive, limit: int) -> bytes:
    """The whole body, refusing (413) as soon as it is known to exceed ``limit`` bytes."""
    declared = _text(fields, _CONTENT_LENGTH)
    if (
        declared is not None
        and declared.strip().isascii()
        and declared.strip().isdigit()
        and int(declared) > limit
    ):
        raise BodyTooLarge
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientGone
    chunk: bytes = message.get("body", b"")
    if len(chunk) > limit:
        raise BodyTooLarge
    if not message.get("more_body", False):
        return chunk  # the usual case: the whole body in one message
    chunks = [chunk]
    size = len(chunk)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _bearer(fields: Fields) -> str | None:
    value = _text(fields, _AUTHORIZATION)
    if value is None:
        return None
    value = value.strip()
    if value[: len(_BEARER)].lower() != _BEARER:
        return None
    return value[len(_BEARER) :]


def _verify_key(snapshot: Snapshot, text: str | None) -> ClientRecord:
    """The client record whose key ``text`` is (shape, one lookup, constant-time compare)."""
    if text is None:
        raise CredentialMissing
    known = snapshot.verified_keys.get(text)
    if known is not None:
        return known

    def lookup(key_id: str) -> Any:
        record = snapshot.client(key_id)
        return None if record is None else record.key

    key = verify_api_key(
        text, environment=snapshot.identity.environment, pepper=snapshot.pepper, lookup=lookup
    )
    record = snapshot.clients[key.key_id]
    snapshot.remember_verified(text, record)
    return record


def _authenticates(record: ClientRecord, now_ms: int) -> bool:
    """Whether the (verified) key and its participant allow use at ``now_ms`` (roles aside)."""
    if now_ms < record.usable_before_ms:
        return True  # what ``authenticate`` would allow (see ``ClientRecord``), precomputed
    return not isinstance(authenticate(record.key, record.participant, now_ms), Denied)


def _authorize(snapshot: Snapshot, fields: Fields, path: str, now_ms: int) -> ClientRecord:
    """``verify_api_key``, then ``authorize_request`` (the key's and its participant's state
    at ``now_ms``, then the endpoint table with the record's effective roles).

    A text that does not verify raises what ``verify_api_key`` raises; a verified key refused
    afterwards raises ``_KeyDenied``, which alone names a key id."""
    record = _verify_key(snapshot, _bearer(fields))
    if now_ms < record.usable_before_ms and path in record.allowed_paths:
        return record  # what the checks below would allow (see ``ClientRecord``), precomputed
    decision = authenticate(record.key, record.participant, now_ms)
    if not isinstance(decision, Denied):
        decision = authorize_endpoint(path, record.roles)
    if isinstance(decision, Denied):
        # The reason is for logs and metrics only; the caller sees the same 401 for all.
        raise _KeyDenied(record.key.key_id, decision.reason.value)
    return record


class OperatorApi:
    """The ASGI application object; one per process, holding its replay guard.

    ``replay`` remembers the envelopes seen, to refuse them again: ``uid2-operator serve`` hands
    every worker the table they all share (``services.replay_table``); without one, the
    application keeps its own ``ReplayCache`` (sized by ``config.replay_cache_entries``), which
    is right for a lone application (tests, benchmarks) and wrong for several processes behind
    one port.
    """

    def __init__(
        self,
        *,
        snapshot_provider: Callable[[], Snapshot | None] | None = None,
        clock: Clock | None = None,
        random: RandomBytes = system_random,
        record_optout: OptOutSink = _discard_optout,
        config: OperatorApiConfig | None = None,
        observer: RequestObserver | None = None,
        replay: ReplayGuard | None = None,
    ) -> None:
        self._settings = config or OperatorApiConfig()
        self._body_limit = self._settings.body_limit
        self._observer = observer
        self._now = (clock or SystemClock()).now_ms
        self._provider = snapshot_provider or _no_snapshot
        self._random = random
        if replay is None:  # not ``or``: an empty cache has a length of 0
            replay = ReplayCache(
                max_past_ms=self._settings.window.max_past_ms,
                max_entries=self._settings.replay_cache_entries,
            )
        self._replay = replay
        self._endpoints: Mapping[str, data_plane.EndpointHandler] = data_plane.enveloped_endpoints(
            record_optout, tcf_vendor_id=self._settings.tcf_vendor_id
        )
        unlisted = set(self._endpoints) - set(OPERATOR_ENDPOINTS)
        if unlisted:
            raise AssertionError(f"routes without a roles entry: {sorted(unlisted)}")
        self._post_routes = frozenset({*self._endpoints, REFRESH, CLIENT_GENERATE})
        self._dispatch: ASGIApp = self
        self._traced_routes = self._post_routes - {CLIENT_GENERATE}
        """The routes behind the key check: their answers echo ``X-Amzn-Trace-Id``, refusals
        included, as the reference's key check does before it looks at the key."""
        self._registrable_domain = registrable_domain_lookup()
        self._refusals = RefusalLog()
        self._server_errors = ServerErrorLog()
        self._exposed_keys = data_plane.ExposedKeyLog()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            if scope["path"] == HEALTHCHECK and scope["method"] in _READ_METHODS:
                # The floor of every request: one scan for Origin, two sends, one observation;
                # answered here rather than in ``_handle``, one coroutine fewer.
                observer = self._observer
                started = time.perf_counter() if observer is not None else 0.0
                origin = _header(scope["headers"], _ORIGIN)
                if origin is None:
                    await send(dict(_HEALTH_START))
                else:
                    headers = [_TEXT_TYPE, *_cors(origin, HEALTHCHECK, False), _HEALTH_LENGTH]
                    await send({"type": "http.response.start", "status": 200, "headers": headers})
                await send(dict(_HEALTH_ANSWER))
                if observer is not None:
                    # 200, unless its connection answered a malformed body itself (400)
                    status = scope.get(REFUSED_SCOPE, 200)
                    observer(HEALTHCHECK, None, status, time.perf_counter() - started)
                return
            await self._handle(scope, receive, send)
        elif kind == "lifespan":
            await acknowledge_lifespan(receive, send)

    def route_path(self, path: str) -> str:
        """``path`` as routed, where it names one of this API's paths as the reference's router
        reads it: runs of ``/`` as one, ``.`` and ``..`` segments resolved (RFC 3986 §5.2.4) and
        a final ``/`` not significant. ``//v2/token/generate``, what an SDK given a base URL that
        ends in ``/`` sends, and ``/v2/token/generate/`` are ``/v2/token/generate``. Every other
        path is itself (404, and counted as ``other``)."""
        routed = _without_empty_and_dot_segments(path)
        return routed if routed in self._post_routes or routed == HEALTHCHECK else path

    def dispatch_through(self, app: ASGIApp) -> None:
        """Send a request whose path ``route_path`` changes through ``app``, the worker in front
        of this API (``OperatorServer``), so that it too sees the request under its route."""
        self._dispatch = app

    async def _preflight(
        self, scope: Scope, send: Send, origin: str, path: str, started: float
    ) -> None:
        routed = self.route_path(path)
        await _respond(send, 204, b"", _cors(origin, routed, True))
        if self._observer is not None:  # counted under the pre-flighted route (or ``other``)
            status = scope.get(REFUSED_SCOPE, 204)
            self._observer(routed, None, status, time.perf_counter() - started)

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        observer = self._observer
        started = time.perf_counter() if observer is not None else 0.0
        path: str = scope["path"]
        method: str = scope["method"]
        headers: Headers = scope["headers"]
        fields = _fields(headers)
        origin = _text(fields, _ORIGIN)
        if method == "OPTIONS" and origin is not None and _PREFLIGHT_METHOD in fields:
            # A CORS pre-flight, on any path. Another OPTIONS is routed as any request is (405
            # on a route, 404 elsewhere), as the reference's CORS handler passes it on.
            await self._preflight(scope, send, origin, path, started)
            return
        try:
            if method == "POST" and path in self._post_routes:  # every API call: no extra await
                status, body, response_headers = self._route(
                    scope, fields, await _read_body(fields, receive, self._body_limit), path
                )
            elif path == HEALTHCHECK or path in self._post_routes:  # GET/HEAD answered before
                raise MethodNotAllowed
            else:  # a miss: another form of a route's path (``route_path``), or none
                routed = self.route_path(path)
                raise NotFound if routed == path else _Elsewhere(routed)
        except _Elsewhere as elsewhere:  # sent on from here: the handlers below never answer it
            scope["path"] = elsewhere.path  # in place: what the connection records stays visible
            await self._dispatch(scope, receive, send)
            return
        except ClientGone:  # nothing to answer; counted as proxies count it, with no key id
            if observer is not None:  # unless the connection answered it itself (413, 408, 503)
                status = scope.get(REFUSED_SCOPE, CLIENT_CLOSED_REQUEST)
                observer(path, None, status, time.perf_counter() - started)
            return
        except Exception as exc:  # every failure leaves through the one error table
            status, body, response_headers = self._refusal(exc, method, path, fields)
        if origin is not None:
            response_headers += _cors(origin, path, False)
        if isinstance(body, bytes):
            await _respond(send, status, body, response_headers)
        else:
            status = await self._stream(receive, send, body, response_headers, path)
        if observer is not None:
            status = scope.get(REFUSED_SCOPE, status)  # the connection's own answer, if it gave one
            observer(path, scope.get(KEY_ID_SCOPE), status, time.perf_counter() - started)

    def _refusal(
        self, exc: Exception, method: str, path: str, fields: Fields
    ) -> tuple[int, bytes, Headers]:
        """The answer to a request that failed with ``exc``, logged as ``_failed`` logs it."""
        status, body, content_type = render(exc)
        self._failed(exc, status, path)
        headers = [(_CONTENT_TYPE, content_type)]
        if isinstance(exc, MethodNotAllowed):
            headers.append(ALLOW_READ if path == HEALTHCHECK else _ALLOW_POST)
        elif method == "POST" and path in self._traced_routes:
            trace = fields.get(_TRACE_ID)
            if trace is not None:
                headers.append((_TRACE_ID, trace))
        return status, body, headers

    def _route(
        self, scope: Scope, fields: Fields, body: bytes, path: str
    ) -> tuple[int, Body, Headers]:
        """A POST to one of the API routes, its body read."""
        snapshot = self._provider()
        out: Body
        if snapshot is None:
            status, out, content_type = render(NotServing())
            headers = [(_CONTENT_TYPE, content_type)]
        elif path == CLIENT_GENERATE:  # not behind the key check: no trace id echoed
            return self._client_generate(snapshot, fields, body, self._now())
        elif path == REFRESH:
            status, out, headers = self._refresh(snapshot, scope, fields, body, self._now())
        else:
            status, out, headers = self._enveloped(
                snapshot, path, scope, fields, body, now_ms=self._now()
            )
        trace = fields.get(_TRACE_ID)
        if trace is not None:
            headers.append((_TRACE_ID, trace))
        return status, out, headers

    def _enveloped(
        self,
        snapshot: Snapshot,
        path: str,
        scope: Scope,
        fields: Fields,
        body: bytes,
        *,
        now_ms: int,
    ) -> tuple[int, Body, Headers]:
        try:
            record = _authorize(snapshot, fields, path, now_ms)
        except _KeyDenied as denied:  # free on success: nothing here runs unless refused
            # Only a verified key is named: a text that did not verify leaves no key id behind,
            # so neither /metrics nor the log tells whether the id it names exists.
            scope[KEY_ID_SCOPE] = denied.key_id
            self._refusals.refused(denied.key_id, denied.detail, path, now_ms)
            raise
        except WrongEnvironment as wrong:  # no key id: the text did not verify
            self._refusals.wrong_environment(wrong, path, now_ms)
            raise
        caller = record.caller
        key_id = caller.key_id
        scope[KEY_ID_SCOPE] = key_id
        try:
            envelope, secret = self._open(snapshot, record, body, _is_octet_stream(fields), now_ms)
        except CredentialRejected:  # the key has no client secret left to open it with
            self._refusals.refused(key_id, _NO_LIVE_SECRET, path, now_ms)
            raise
        if not self._replay.first_use(key_id, envelope.nonce, envelope.timestamp_ms, now_ms):
            raise ReplayedRequest
        reply = self._endpoints[path](snapshot, caller, envelope.payload, now_ms, self._random)
        out: Body
        if isinstance(reply, StreamedReply):
            # HTTP/1.0 has no chunked transfer encoding: its clients are told the length first.
            sized = scope.get("http_version") == "1.0"
            out, content_type = self._pieces(reply, envelope, secret, now_ms, sized=sized)
        else:
            sealed = seal_response(
                reply.to_json(),
                secret=secret,
                nonce=envelope.nonce,
                now_ms=now_ms,
                random=self._random,
            )
            out, content_type = frame_response(sealed, envelope.binary)
        return 200, out, [_FRAMED_TYPES.get(content_type) or (_CONTENT_TYPE, content_type.encode())]

    def _pieces(
        self,
        reply: StreamedReply,
        envelope: RequestEnvelope,
        secret: bytes,
        now_ms: int,
        *,
        sized: bool,
    ) -> tuple[Body, str]:
        """The framed body of an answer written in pieces: whole when there is one piece (sent
        as any other answer); else its parts, to stream, with what gives their length first when
        ``sized`` is asked (an HTTP/1.0 client cannot read a chunked answer). The first two
        pieces are made here, before the response starts, so a failure to make them is answered
        as any error."""
        pieces = reply.pieces()
        first = next(pieces)
        second = next(pieces, None)
        if second is None:
            sealed = seal_response(
                first, secret=secret, nonce=envelope.nonce, now_ms=now_ms, random=self._random
            )
            return frame_response(sealed, envelope.binary)
        parts, content_type = stream_response(
            chain((first, second), pieces),
            secret=secret,
            nonce=envelope.nonce,
            now_ms=now_ms,
            random=self._random,
            binary=envelope.binary,
        )
        if sized:
            return SizedParts(parts, reply.pieces(), envelope.binary), content_type
        return parts, content_type

    def _failed(self, exc: Exception, status: int, path: str) -> None:
        """Log a request that failed with ``exc``, answered (or cut off) with ``status``: an
        unexpected exception always, with where it was raised; a ``UID2Error`` only when it is
        the server's fault (5xx), its lines held back when they repeat."""
        if not isinstance(exc, UID2Error):
            log.error(
                "operator request failed: path=%s %s",
                path,
                described(exc),
                extra={"path": path},
            )
        elif status >= 500:
            self._server_errors.failed(exc, status, path, self._now())

    async def _stream(
        self,
        receive: Receive,
        send: Send,
        body: Iterator[bytes] | SizedParts,
        headers: Headers,
        path: str,
    ) -> int:
        """Send a 200 whose body comes in parts: each part its own body message, other
        connections served between parts; with no Content-Length, or (``SizedParts``) with the
        one its pieces add up to, counted before the response starts, other connections served
        between pieces. The status for the observer: 200; 500 when a piece or part could not be
        made (logged as any failed request; an error answer when the response had not started,
        else the response ends without its last message); 499 when the client disconnected
        before the last part, no further piece then being made (the server drops what is sent to
        a client gone)."""
        # The body has been read: the next message can only be the client's disconnect.
        gone = asyncio.ensure_future(receive())
        started = False
        try:
            parts = body.parts if isinstance(body, SizedParts) else body
            if isinstance(body, SizedParts):
                size = 0
                for piece in body.measured:
                    size += len(piece)
                    await asyncio.sleep(0)
                    if gone.done():
                        return CLIENT_CLOSED_REQUEST
                length = framed_response_size(size, body.binary)
                headers = [*headers, (_CONTENT_LENGTH, b"%d" % length)]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            started = True
            while not gone.done():
                part = next(parts, None)
                if part is None:
                    break
                await send({"type": "http.response.body", "body": part, "more_body": True})
                await asyncio.sleep(0)
            else:  # the client left: the parts not yet made are not made
                return CLIENT_CLOSED_REQUEST
        except Exception as exc:
            self._failed(exc, 500, path)
            if not started:
                status, answer, content_type = render(exc)
                await _respond(send, status, answer, [(_CONTENT_TYPE, content_type)])
                return status
            return 500
        finally:
            if gone.done() and not gone.cancelled():
                gone.exception()  # retrieved, so that a failed receive is not reported as lost
            gone.cancel()
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return 200

    def _open(
        self, snapshot: Snapshot, record: ClientRecord, body: bytes, octet: bool, now_ms: int
    ) -> tuple[RequestEnvelope, bytes]:
        """Open the envelope with each accepted secret, newest first."""
        secrets = record.accepted_secrets(now_ms)
        if len(secrets) == 1:  # the usual case: its failure, if any, is the one reported
            secret = secrets[0]
            envelope = parse_request(
                body,
                octet_stream=octet,
                secret=secret,
                now_ms=now_ms,
                window=self._settings.window,
                scope=snapshot.identity.scope,
            )
            return envelope, secret
        failure: EnvelopeDecryptionFailed | None = None
        for secret in secrets:
            try:
                envelope = parse_request(
                    body,
                    octet_stream=octet,
                    secret=secret,
                    now_ms=now_ms,
                    window=self._settings.window,
                    scope=snapshot.identity.scope,
                )
            except EnvelopeDecryptionFailed as exc:
                failure = exc
                continue
            return envelope, secret
        if failure is None:
            raise CredentialRejected("no live client secret")
        raise failure

    def _client_generate(
        self, snapshot: Snapshot, fields: Fields, body: bytes, now_ms: int
    ) -> tuple[int, bytes, Headers]:
        """No API key: the subscription id and the request's origin or app name decide. The
        answer is base64 text with no Content-Type header, as the reference sends it (§1.6)."""
        if not snapshot.identity.client_side_generate:
            raise NotFound
        sealed = data_plane.client_generate(
            snapshot,
            body,
            origin=_text(fields, _ORIGIN),
            now_ms=now_ms,
            random=self._random,
            registrable_domain=self._registrable_domain,
            window=self._settings.cstg_window,
            exposed_keys=self._exposed_keys,
        )
        return 200, sealed.encode("ascii"), []

    def _refresh(
        self, snapshot: Snapshot, scope: Scope, fields: Fields, body: bytes, now_ms: int
    ) -> tuple[int, bytes, Headers]:
        # A key whose text verifies makes error answers specific, as in the reference, whatever
        # its state; the request is the key's (usage, metrics label) only if it authenticates.
        try:
            record = _verify_key(snapshot, _bearer(fields))
        except UID2Error:
            authenticated = False
        else:
            authenticated = True
            if _authenticates(record, now_ms):
                scope[KEY_ID_SCOPE] = record.key.key_id
        outcome = data_plane.refresh(
            snapshot, body, authenticated=authenticated, now_ms=now_ms, random=self._random
        )
        if outcome.response_key is None:
            return 200, outcome.reply.to_json(), [_JSON_TYPE]
        # ``wire.refresh.encrypt_refresh_response`` (base64 of IV || GCM(JSON) || tag, no
        # nonce), over the JSON the reply already holds; octet-stream clients get the raw bytes.
        sealed = seal_with_iv(outcome.response_key, self._random(IV_SIZE), outcome.reply.to_json())
        if _is_octet_stream(fields):
            return 200, sealed, [_OCTET_TYPE]
        return 200, b64encode_ascii(sealed), [(_CONTENT_TYPE, b"text/plain")]


def _no_snapshot() -> Snapshot | None:
    return None


class _Elsewhere(Exception):
    """The request's path is another form of ``path``, one of the API's own (``route_path``)."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


def _without_empty_and_dot_segments(path: str) -> str:
    """``path`` with its empty and ``.`` segments left out and each ``..`` taking the segment
    before it away, and no final ``/``: ``/v2//x/../token/./generate/`` is
    ``/v2/token/generate``."""
    kept: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if kept:
                kept.pop()
        elif segment and segment != ".":
            kept.append(segment)
    return "/" + "/".join(kept)


def _cors(origin: str, path: str, preflight: bool) -> Headers:
    """Any origin is echoed; credentials are not allowed; pre-flight lists methods and headers."""
    out = [(b"access-control-allow-origin", origin.encode("latin-1"))]
    if preflight:
        allowed = _CORS_HEADERS + (", Authorization" if path == VALIDATE else "")
        out += [
            (b"access-control-allow-methods", _CORS_METHODS),
            (b"access-control-allow-headers", allowed.encode()),
        ]
    return out


def create_operator_app(
    *,
    snapshot_provider: Callable[[], Snapshot | None] | None = None,
    clock: Clock | None = None,
    random: RandomBytes = system_random,
    record_optout: OptOutSink = _discard_optout,
    config: OperatorApiConfig | None = None,
    observer: RequestObserver | None = None,
    replay: ReplayGuard | None = None,
) -> ASGIApp:
    """Build the operator application.

    ``snapshot_provider`` is called once per request and returns the current snapshot (whoever
    keeps it fresh swaps what it returns); with none, or while it returns None, every API route
    answers 503 and only the health check works. ``observer``, when given, is called after
    every answered request (metrics and usage; it must be cheap: it runs on the request path).
    ``replay``: the replay guard (default: a cache of the application's own, see ``OperatorApi``).
    """
    return OperatorApi(
        snapshot_provider=snapshot_provider,
        clock=clock,
        random=random,
        record_optout=record_optout,
        config=config,
        observer=observer,
        replay=replay,
    )
