"""The admin API application: ``create_admin_app(services)`` builds it; nothing exists at import.

Each request goes through the same steps, in this order, so no route can skip one:

1. the request id (``RequestContext``);
2. the bearer admin token, authenticated by ``AdminService.authenticate`` (401 otherwise), and the
   route's declared ``AdminAction`` checked against the token's roles (403 otherwise). This happens
   before the body is read: an unauthenticated caller cannot make the server buffer or parse
   anything;
3. the path values, the query string and the JSON body, checked against the route's
   declarations (4xx); ``/health`` does not read its query string, as the operator's
   ``/ops/healthcheck`` does not (a load balancer may add a cache-busting parameter);
4. the service call, in a worker thread (the services and the store are synchronous), as an
   ``Actor`` named ``admin:<token_id>`` carrying the token id, the request id and the client
   address. A change checks, in its own write transaction, that the token is still active
   (``audit_trail.require_active_token``): a token revoked after step 2 changes nothing and gets
   401, as if it had been revoked before. A write its service refused by a rule (404, 409, 422) is
   answered 401 as well when its token has been revoked by then;
5. the result as JSON, or the error through the one error table (``errors.py``).

A 403 in step 2 and a rule's refusal of a write in step 4 are recorded in the audit trail as
``denied`` and ``failed`` events (``outcomes.py``); a 401 and a refusal in step 3 are not. The
app's ``RefusalLimiter`` records the same denied attempt at most once a minute, by the app's
clock; the app's lifespan, when the server runs it, logs the counts still unreported at shutdown.

Every request gets one INFO line (``admin <method> <route> -> <status> actor=... request_id=...
duration_ms=...``), a request the router refuses (404 for an unknown path, 405 for a wrong method)
included: as route it gives the path as declared, or ``<unmatched>`` when none matched, never the
path as sent (an administrator may paste a key's text into a URL); such a request is not
authenticated, so its actor is ``anonymous``.

An unexpected exception becomes a bare 500 ``internal_error``. It is logged on one line with its
class and the frames it came through (``error_text.where``: this project's, and the one that
raised it) only: exception messages can hold SQL parameters (key hashes, sealed secrets) and are
never logged or sent.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from uid2_operator import __version__
from uid2_operator.clock import Clock, RandomBytes, SystemClock, system_random
from uid2_operator.domain.authorization import AdminAction
from uid2_operator.error_text import where
from uid2_operator.errors import (
    BodyTooLarge,
    InvalidContentLength,
    MethodNotAllowed,
    NotFound,
    PermissionDenied,
    StoreUnavailable,
    UnsupportedMediaType,
)
from uid2_operator.services.context import ADMIN_ACTOR_PREFIX, MAX_SOURCE_LENGTH, Actor
from uid2_operator.services.log_throttle import LogThrottle
from uid2_operator.services.views import AdminTokenView
from uid2_operator.web.admin_api import admin_tokens, audit, keys, participants, sharing
from uid2_operator.web.admin_api.auth import WWW_AUTHENTICATE, bearer_token, require, token_roles
from uid2_operator.web.admin_api.bodies import EMPTY, MAX_BODY_BYTES, check_path, parse_query
from uid2_operator.web.admin_api.errors import error_body, render_error
from uid2_operator.web.admin_api.openapi import build_document, path_fields
from uid2_operator.web.admin_api.outcomes import (
    RefusalLimiter,
    failed_code,
    record_denied,
    record_failed,
)
from uid2_operator.web.admin_api.request_context import RequestContext, request_id_source
from uid2_operator.web.admin_api.routing import (
    PUBLIC,
    AdminServices,
    Call,
    Operation,
    Public,
    Reply,
    check_operations,
)
from uid2_operator.web.http_connection import REFUSED_SCOPE

logger = logging.getLogger(__name__)

ANONYMOUS = "anonymous"
UNMATCHED_ROUTE = "<unmatched>"
"""The route a request's log line gives when the router matched no route and method to it."""
LOGGED_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"})
"""The methods a log line names as sent; any other is written ``<other>``: the method is the
caller's text, and only a route's declared path and these names reach the log."""
Endpoint = Callable[[Request], Awaitable[Response]]
JSON_MEDIA_TYPE = "application/json"


def create_admin_app(
    services: AdminServices,
    *,
    clock: Clock | None = None,
    random: RandomBytes = system_random,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> Starlette:
    """The admin API as an ASGI app, every route under ``/admin/api``.

    ``random`` is where generated request ids come from; ``clock`` times requests for the access
    log. ``app.state.operations`` holds the checked route table (the OpenAPI document is built
    from it, and tests enumerate it).
    """
    timer = clock or SystemClock()
    document: dict[str, Any] = {}

    def serve_document(call: Call) -> Reply:
        del call
        return Reply(document)

    operations = check_operations(
        (
            *participants.OPERATIONS,
            *keys.OPERATIONS,
            *audit.OPERATIONS,
            *admin_tokens.OPERATIONS,
            *sharing.OPERATIONS,
            Operation(
                "GET",
                "/health",
                PUBLIC,
                health,
                operation_id="health",
                summary="Liveness, and whether the store answers",
                response="Health",
                tag="service",
                query_ignored=True,  # as the operator's /ops/healthcheck: probes may add one
                errors=(503,),
            ),
            Operation(
                "GET",
                "/openapi.json",
                PUBLIC,
                serve_document,
                operation_id="openapi",
                summary="This API's OpenAPI 3.1 document",
                response="OpenApiDocument",
                tag="service",
            ),
        )
    )
    document.update(build_document(operations, version=__version__))
    limiter = RefusalLimiter(timer)
    outages = StoreOutageLog(timer)
    by_path: dict[str, dict[str, Endpoint]] = {}
    for op in operations:
        by_path.setdefault(op.full_path, {})[op.method] = _endpoint(
            op, services, timer, max_body_bytes, limiter, outages=outages
        )
    # One route per path, so a wrong method gets a 405 listing every method the path has.
    routes = [
        Route(path, _by_method(endpoints), methods=sorted(endpoints))
        for path, endpoints in by_path.items()
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        del app
        try:
            yield
        finally:
            limiter.flush()  # the counts no later denial will report

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[
            Middleware(RequestContext, new_request_id=request_id_source(random), clock=timer),
        ],
        exception_handlers={HTTPException: _routing_errors(timer), Exception: _last_resort},
    )
    # A trailing slash is an unknown route (404 ``not_found``), not a bare 307 to the other path.
    app.router.redirect_slashes = False
    app.state.operations = operations
    return app


def health(call: Call) -> Reply:
    try:
        call.services.store.change_seq()
    except StoreUnavailable:
        raise  # its own message says why (logged by the endpoint, as every 503 is)
    except Exception:
        raise StoreUnavailable from None
    return Reply({"status": "ok"})


OUTAGE_LOG_INTERVAL_MS = 60_000


class StoreOutageLog:
    """The admin API's answers while its store does not answer: one WARNING line when the first
    request is refused, then at most one a minute, each saying how many were refused since the
    last line, so an outage under steady traffic does not flood the log."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._throttle: LogThrottle[str] = LogThrottle(OUTAGE_LOG_INTERVAL_MS, 1)

    def refused(self, where: str, error: StoreUnavailable) -> None:
        held = self._throttle.due("store", self._clock.now_ms())
        if held is None:
            return
        since = f" ({held} more answered 503 since the last line)" if held else ""
        logger.warning("admin %s answered 503: %s%s", where, error.detail, since)


def _log_request(  # noqa: PLR0917 (the fields of the one access line)
    clock: Clock, request: Request, method: str, route: str, status: int, actor: str
) -> None:
    """The request's INFO line; ``route`` is a declared path or ``UNMATCHED_ROUTE``, never the
    path as sent. A request the connection answered itself (a body too slow or too large, a
    stop) is logged with that answer's status, which is what the client got."""
    started: int = request.state.started_ms  # set by ``RequestContext``
    status = request.scope.get(REFUSED_SCOPE, status)
    logger.info(
        "admin %s %s -> %d actor=%s request_id=%s duration_ms=%d",
        method if method in LOGGED_METHODS else "<other>",
        route,
        status,
        actor,
        _request_id(request),
        clock.now_ms() - started,
    )


CLIENT_CLOSED_REQUEST = 499
"""What the log line gives as the status of a request whose client disconnected before its body
was read (no answer is sent)."""


def _by_method(endpoints: dict[str, Endpoint]) -> Endpoint:
    async def dispatch(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await endpoints[method](request)

    return dispatch


def _endpoint(
    op: Operation,
    services: AdminServices,
    clock: Clock,
    max_body_bytes: int,
    limiter: RefusalLimiter,
    *,
    outages: StoreOutageLog,
) -> Endpoint:
    path = path_fields(op)

    async def endpoint(request: Request) -> Response:
        request_id: str = request.state.request_id
        actor = Actor(ANONYMOUS, request_id, _source(request))
        params = dict(request.path_params)
        try:
            # Named before the roles are checked: a 403's log line names the token refused (the
            # audit trail's denied event does too); only a request with no valid token is
            # logged as anonymous.
            access = op.access
            if not isinstance(access, Public):
                actor, token = await _authenticate(services, request, actor)
                await _authorise(access, op, services, request, actor, token, limiter)
            check_path(params, path)
            query = EMPTY
            if not op.query_ignored:
                query = parse_query(request.query_params.multi_items(), op.query)
            body = EMPTY
            if op.body is not None:
                body = op.body.parse(await _read_json(request, max_body_bytes))
            call = Call(services, actor, params, body, query)
            try:
                reply = await run_in_threadpool(op.handler, call)
            except Exception as exc:
                if failed_code(op, exc) is not None:
                    # Nothing changed: a token revoked meanwhile gets the answer of a request
                    # sent after its revocation (401, not recorded), not the rule's. A store
                    # that cannot be read for it leaves the rule's answer as it is.
                    with contextlib.suppress(StoreUnavailable):
                        await run_in_threadpool(services.admin.require_active, actor)
                await record_failed(services, op, actor, params, body, error=exc)
                raise
            response: Response = JSONResponse(reply.payload, status_code=reply.status)
        except ClientDisconnect:
            # The client left before its body was read: nothing was done and nobody is left to
            # answer. Logged below like any request (499, as proxies name it), not as a failure.
            response = Response(status_code=CLIENT_CLOSED_REQUEST)
        except Exception as exc:  # every failure leaves through the error table
            response = _error_response(exc, op, request_id)
            if isinstance(exc, StoreUnavailable):
                outages.refused(f"{op.method} {op.full_path}", exc)
        _log_request(clock, request, op.method, op.full_path, response.status_code, actor.id)
        return response

    return endpoint


async def _authenticate(
    services: AdminServices, request: Request, anonymous: Actor
) -> tuple[Actor, AdminTokenView]:
    """The actor of the request's bearer token and the token (401 without a valid one)."""
    text = bearer_token(request.headers)
    token = await run_in_threadpool(services.admin.authenticate, text)
    actor = Actor(
        ADMIN_ACTOR_PREFIX + token.token_id,
        anonymous.request_id,
        anonymous.source,
        admin_token_id=token.token_id,
    )
    return actor, token


async def _authorise(  # noqa: PLR0917 (one call site, in order)
    action: AdminAction,
    op: Operation,
    services: AdminServices,
    request: Request,
    actor: Actor,
    token: AdminTokenView,
    limiter: RefusalLimiter,
) -> None:
    """Raise ``PermissionDenied`` (403, recorded as denied) unless the authenticated token's
    roles allow ``action``, the route's."""
    try:
        require(action, token_roles(token.roles))
    except PermissionDenied:
        await record_denied(services, op, actor, request.path_params, limiter)
        raise


def _source(request: Request) -> str | None:
    """The peer address, as the socket gives it. Forwarded-for headers are not trusted: serve
    tells its server not to apply them (``proxy_headers=False``), and what a server hands over
    is recorded only when it is an IP address, so no text a client chose reaches the audit
    trail as its address."""
    if request.client is None or not request.client.host:
        return None
    host = request.client.host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    return host[:MAX_SOURCE_LENGTH]


async def _read_json(request: Request, limit: int) -> bytes:
    """The body, at most ``limit`` bytes (413 beyond); unless it is zero-length (no body), sent
    as application/json (415 otherwise), whitespace only included."""
    declared = request.headers.get("content-length")
    if declared is not None:
        # Whitespace around a field value is not part of it (RFC 9112 §5), and servers pass
        # what follows the digits on.
        declared = declared.strip(" \t")
        if not (declared.isascii() and declared.isdigit()):
            raise InvalidContentLength
        # 1*DIGIT (RFC 9110 §8.6): leading zeros are allowed, and any length (int() refuses
        # over 4300 digits: a size of more than 12 is over the limit whatever it is)
        significant = declared.lstrip("0")
        if len(significant) > 12 or int(significant or "0") > limit:
            raise BodyTooLarge(f"The request body must be at most {limit} bytes")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise BodyTooLarge(f"The request body must be at most {limit} bytes")
    if raw:
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != JSON_MEDIA_TYPE:
            raise UnsupportedMediaType
    return bytes(raw)


def _error_response(
    error: Exception, op: Operation | None, request_id: str, headers: dict[str, str] | None = None
) -> Response:
    reply = render_error(error)
    route = f"{op.method} {op.full_path}" if op is not None else "(no route)"
    if not reply.expected:
        # Where it failed, not what it said: the frames it came through, no value, no text.
        logger.error(
            "admin %s failed with %s request_id=%s at %s",
            route,
            type(error).__qualname__,
            request_id,
            where(error),
        )
    elif reply.status in (401, 403):
        logger.info(
            "admin %s refused %s request_id=%s",
            route,
            reply.body["error"]["code"],
            request_id,
        )
    extra = dict(headers or {})
    if reply.status == 401:
        extra["WWW-Authenticate"] = WWW_AUTHENTICATE
    return JSONResponse(reply.body, status_code=reply.status, headers=extra)


def _request_id(request: Request) -> str:
    value = request.scope.get("state", {}).get("request_id")
    return value if isinstance(value, str) else "-"


def _routing_errors(clock: Clock) -> Callable[[Request, Exception], Awaitable[Response]]:
    """The handler of the router's refusals: the answer (``_routing_error``), and the request's
    log line, which names no route (``UNMATCHED_ROUTE``) and, as nothing was authenticated, the
    actor ``anonymous``."""

    async def routing_error(request: Request, exc: Exception) -> Response:
        response = _routing_error(request, exc)
        _log_request(
            clock, request, request.method, UNMATCHED_ROUTE, response.status_code, ANONYMOUS
        )
        return response

    return routing_error


def _routing_error(request: Request, exc: Exception) -> Response:
    """404 and 405 from the router, in the API's error format."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    if status == 404:
        return _error_response(NotFound("No such admin API route"), None, _request_id(request))
    if status == 405 and isinstance(exc, HTTPException):
        allow = (exc.headers or {}).get("Allow", "")
        error = MethodNotAllowed(f"This path accepts: {allow}" if allow else None)
        return _error_response(error, None, _request_id(request), {"Allow": allow})
    return JSONResponse(error_body("http_error", "The request failed"), status_code=status)


async def _last_resort(request: Request, exc: Exception) -> Response:
    return _error_response(exc, None, _request_id(request))
