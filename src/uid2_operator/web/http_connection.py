"""The HTTP/1.1 connections of ``uid2-operator serve``: uvicorn's httptools protocol, guarded
against clients that hold a connection, or the server's memory, without sending a request or
without reading its answer.

uvicorn's protocol bounds neither the size of a request head (httptools keeps a header value
until it ends) nor the time a client takes to send one (its only timer is the keep-alive one,
armed after a response and cancelled by any byte received); it reads and discards the rest of a
body answered early for as long as the client sends it; it switches a request carrying
``Upgrade: websocket`` to a websocket the applications do not serve; it logs a warning for
every malformed request; and it waits for a client to take its answer for ever (a send waits
for a full write buffer to drain, and a closed transport keeps its socket until what it still
holds is sent). ``HttpConnection`` adds, per connection:

- **a head limit**: a request head still incomplete once more than ``max_head_bytes`` of it
  arrived is answered 431 with ``connection: close``, and the connection closed; a whole message
  (head, body, chunk framing and trailers) still incomplete past ``max_head_bytes +
  max_body_bytes`` is answered 413 the same way, and one whose trailers hold more fields than a
  head at the limit could is answered 431 (trailer fields are counted, never added to the
  request's headers). Bytes are counted per read; a read that carries
  anything before the message it begins (the end of another, whole pipelined requests) is not
  counted, so a limit may be passed by one read (at most 256 KiB) before it applies;
- **timeouts**: a new connection must complete its first request head within
  ``head_timeout_s``, and so must any head begun later (between requests the keep-alive timeout
  of the server applies until the first byte, as before); a body incomplete after its head must
  arrive within ``body_timeout_s``. On expiry the request is answered 408 with
  ``connection: close`` (only closed when a response is already under way) and the connection
  closed;
- **a send deadline**: a client must take what it is sent. Once the transport's write buffer
  passes its high-water mark (the protocol's ``pause_writing``), it must drain below the
  low-water mark (``resume_writing``) within ``send_timeout_s``; a connection closed with data
  still unsent (by the keep-alive timeout, a ``connection: close`` answer, a refusal, the
  server's stop) gets the same deadline for what it holds (the one under way, if writing was
  paused at the close; a new one from a resume that leaves data unsent). Otherwise the
  connection is reset (``SO_LINGER`` 0, then ``transport.abort()``: what is still
  buffered, in the process and in the kernel, is dropped and the socket closed at once); the
  request's send waiting for the buffer returns, as after any disconnect, so that its task
  ends. A client that reads steadily but slowly keeps its connection as long as each full
  buffer drains within the deadline;
- **a bound on queued requests**: the parser reads every whole request a read carries, and
  each one pipelined behind the request being answered is queued (its scope, headers and body)
  until its turn, so a read of tiny requests (up to 256 KiB of them) would queue thousands. A
  read longer than ``PARSE_SLICE_BYTES`` is parsed a slice at a time, the queue checked before
  each; once it is full (``MAX_QUEUED_REQUESTS`` requests, or as many header fields as one head
  at the limit can hold, or one body at the limit), the rest of the read is held unparsed and
  reading paused until answers make room, so a connection queues at most that and one slice's
  worth more (``PARSE_SLICE_BYTES`` of the smallest requests, or of header fields or body).
  Reading stays paused while anything is held, whatever asks to resume it (an answer, or an
  application waiting for its client's disconnect): what is held is at most one read, and the
  rest waits in the kernel. Nothing is refused or dropped: the client only waits, as for any
  answer. Held bytes are parsed as one read, so the size limits below may be passed by one read
  there too;
- **answers in order**: a malformed request behind requests still to be answered is not
  answered 400 at once (the client would take that for the answer to the first of them): the
  requests before it are answered, the last with ``connection: close``, and it and anything
  after it are dropped unread. With nothing owed it is answered 400 at once, as before;
- **the path as named**: uvicorn decodes every percent-escape of the path, so ``%2F`` became a
  separator; only escapes of unreserved characters are decoded (``_unreserved_decoded``), as
  the reference's web framework does, so an escaped slash routes nowhere;
- **every request told of a disconnect**: uvicorn tells only the newest request of a connection
  that the client has gone; the request being answered, when others are queued behind it, is
  told as well, so an answer that waits for a disconnect, or streams, ends as for any client
  gone rather than writing to a closed connection;
- **no reading after an early answer**: while a body is still arriving its request is marked to
  close the connection, so an answer given before the body ended (a 413, a 401) carries
  ``connection: close`` and ends the connection; a request whose body arrives whole keeps it
  alive as asked;
- **closing in stages**: that answer's close, the one after an answer the connection gives
  itself (400, 413, 414, 431, 408), and the one after the last answer owed before a malformed
  request or after an ignored upgrade, sends the answer and then the end of what the server
  sends (nothing after it: not even a 100 Continue to a request told of the end), and reads
  and drops what the client still sends until it closes, goes quiet for ``LINGER_IDLE_S`` or
  has had the body timeout (RFC 9112 §9.6): closed with unread bytes, the socket would send a
  reset that destroys the answer before a client sending its whole request first reads it;
- **no protocol switch**: an ``Upgrade`` header is ignored (RFC 9110 §7.8 lets a server do so):
  the request goes to the application as a plain HTTP request; the parser stops at its head,
  so the connection closes after the answer. A request asking for an upgrade that declares a
  body (``Content-Length`` above 0, or ``Transfer-Encoding``) is malformed instead, answered
  as one is (400) and never run: the parser leaves that body unread, and the request would
  run as if it had none (a rotation asked with no grace would get the default grace);
- **no 100 Continue to HTTP/1.0**: such a client's ``Expect: 100-continue`` is ignored (RFC
  9110 §10.1.1): a 1xx answer is not sent to it, since it would read it as the final one;
- **one Host, naming a host**: an HTTP/1.1 request without a ``Host`` field, a request of any
  version with more than one, and one whose ``Host`` is not ``uri-host [ ":" port ]``, are
  malformed (RFC 9112 §3.2) and answered as one is (400);
- **targets the parser reads**: a request-target longer than ``MAX_TARGET_BYTES`` is answered
  414 (RFC 9112 §3), whatever the head limit;
- **chunked alone**: a request whose ``Transfer-Encoding`` names a coding besides ``chunked``
  (``gzip, chunked``) is malformed and answered as one is (400): the server decodes no other,
  and would hand the application a body still encoded;
- **throttled warnings**: the protocol's WARNING lines (an invalid request, an upgrade) and
  the send deadline's (a client that stopped reading) are written at most once a minute each,
  saying how many were held back. ERROR lines are not throttled;
- **no waiting for a body at shutdown**: when the server stops, a request whose body is still
  arriving and whose answer has not started is answered 503 with ``connection: close`` and the
  connection closed, so that a client trickling a body cannot hold up the stop (uvicorn waits
  for every open request before the application's shutdown). A request already answering, or a
  whole one, keeps uvicorn's behaviour: its connection closes after the answer;
- **its own answers told**: an answer the connection gives itself (400 to a malformed request,
  408, 413, 431, the 503 at shutdown) is told to the application, so that the request metrics
  count every answer of the port. A request whose application was already reading its body gets
  ``REFUSED_SCOPE`` set in its scope to the status before the application is told of the
  disconnect (it counts that status in place of whatever it answers, or of a client gone);
  any other is told to the application's
  ``connection_answered(path, status, seconds, server)``, when it has one: the path as far as it
  was read ("" when none was, and for a message not begun after an answered one), the seconds
  since the message began (or since the connection opened, or its last answer ended, when none
  had), and the local address the connection came in on.

A request whose head and body arrive in one read (the usual case) takes the same path as in
uvicorn, with one check more after the parser, and arms no timer beyond uvicorn's keep-alive
one; a new connection arms one (its first head's deadline); an answer taken as fast as it is
written arms none (the send deadline is armed only when writing pauses, or when a connection
closes with data unsent). The limits are per class:
``http_protocol`` makes one per server, with its own throttle, to pass as
``uvicorn.Config(http=...)``.
"""

from __future__ import annotations

import contextlib
import http
import ipaddress
import logging
import re
import socket
import struct
from asyncio import TimerHandle, Transport
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Final

import httptools
from uvicorn._types import ASGI3Application
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from uid2_operator.serve_settings import DEFAULT_HTTP_SEND_TIMEOUT_S, ServeSettings
from uid2_operator.services.log_throttle import LogThrottle, held_back

WARNING_INTERVAL_MS: Final = 60_000
_WARNING_KEYS: Final = 16
_INVALID_REQUEST: Final = "Invalid HTTP request received."
_UPGRADE_IGNORED: Final = "Unsupported upgrade request (answered as plain HTTP)."
_UPGRADE_WITH_BODY: Final = "Unsupported upgrade request with a body (refused)."
_STOPPED_READING: Final = "Client stopped reading (connection reset at the send timeout)."
_HOST_VALUE: Final = re.compile(
    rb"(?:\[(?P<literal>[^\]]*)\]|(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})*)(?::[0-9]*)?"
)
"""A ``Host`` field's value as RFC 9112 §3.2 takes it, ``uri-host [ ":" port ]``: a registered
name (possibly empty), or an IP literal in brackets, checked by ``_names_a_host``."""
_IP_FUTURE: Final = re.compile(rb"v[0-9A-Fa-f]+\.[A-Za-z0-9\-._~!$&'()*+,;=:]+")
MAX_TARGET_BYTES: Final = 0xFFFF
"""The longest request-target the parser's URL reader takes (``httptools.parse_url``): a longer
one is answered 414 (RFC 9112 §3), not taken for a malformed request, whatever the head limit."""
MAX_QUEUED_REQUESTS: Final = 64
"""Past this many requests queued behind the one being answered, a connection parses no further
(see the module docstring)."""
PARSE_SLICE_BYTES: Final = 8192
"""A read longer than this is parsed a slice of this size at a time, the queue checked between
slices. Small enough that a slice of the smallest requests (18 bytes each) queues a few hundred
at most; large enough that a body arriving in reads of up to 256 KiB is handed on in few pieces
(each piece is appended to the body received so far)."""
LINGER_IDLE_S: Final = 2.0
"""How long a connection closing in stages (``_linger``) waits for the client's next bytes, or
its close, before it closes too."""
_RESET: Final = struct.pack("ii", 1, 0)
"""``SO_LINGER`` on, for 0 s: closing the socket resets the connection and drops what the kernel
still holds for it, rather than leave the kernel sending it to a client that reads nothing."""
REFUSED_SCOPE: Final = "uid2.connection_refused"
"""The scope key a connection sets to the status it answered a request with, itself, while the
request's application was reading the body (see the module docstring)."""
_PERCENT_ESCAPE: Final = re.compile(rb"%([0-9A-Fa-f]{2})")
_UNRESERVED: Final = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
)
"""RFC 3986's unreserved characters: the only ones an escape in the path is read as."""
_MIN_FIELD_BYTES: Final = 4
"""The fewest bytes a header (or trailer) line takes: ``a:`` and its line end. Trailers are
kept as headers, a Python object each: past as many as a head at the limit could hold, the
request is refused (431) before its trailers grow to the message limit."""


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """What a connection may take (see the module docstring); ``max_body_bytes`` is the
    application's own body limit, which it enforces on the body it reads. ``send_timeout_s``
    defaults to the serve setting's default."""

    max_head_bytes: int
    max_body_bytes: int
    head_timeout_s: float
    body_timeout_s: float
    send_timeout_s: float = DEFAULT_HTTP_SEND_TIMEOUT_S

    @classmethod
    def of(cls, settings: ServeSettings, max_body_bytes: int) -> HttpLimits:
        """The limits ``settings`` set for an application whose body limit is
        ``max_body_bytes``."""
        return cls(
            max_head_bytes=settings.http_max_head_bytes,
            max_body_bytes=max_body_bytes,
            head_timeout_s=settings.http_head_timeout_s,
            body_timeout_s=settings.http_body_timeout_s,
            send_timeout_s=settings.http_send_timeout_s,
        )


def http_protocol(limits: HttpLimits) -> type[HttpConnection]:
    """A protocol class for one uvicorn server (``uvicorn.Config(http=...)``): its connections
    apply ``limits`` and share one warning throttle."""

    class Connection(HttpConnection):
        LIMITS = limits
        WARNINGS = LogThrottle[str](WARNING_INTERVAL_MS, _WARNING_KEYS)

    return Connection


class _HoldingFlow(FlowControl):
    """uvicorn's flow control for one connection, reading never resumed while it holds bytes
    unparsed (``holding``)."""

    def __init__(self, transport: Transport, holding: Callable[[], bool]) -> None:
        super().__init__(transport)
        self._holding = holding

    def resume_reading(self) -> None:
        if not self._holding():
            super().resume_reading()


class _StagedClose:
    """The transport as a request whose body was still arriving when it began sees it: its
    answer's close, if it closes the connection, is in stages (``HttpConnection._linger``)."""

    __slots__ = ("_connection",)

    def __init__(self, connection: HttpConnection) -> None:
        self._connection = connection

    def write(self, data: bytes) -> None:
        self._connection.transport.write(data)

    def is_closing(self) -> bool:
        return self._connection.transport.is_closing()

    def close(self) -> None:
        self._connection._linger()


class HttpConnection(HttpToolsProtocol):
    """One HTTP/1.1 connection (see the module docstring). Subclasses made by ``http_protocol``
    set the limits and the throttle; uvicorn builds one instance per connection."""

    LIMITS: ClassVar[HttpLimits]
    WARNINGS: ClassVar[LogThrottle[str]]

    # Per connection (class values until first set):
    _deadline: TimerHandle | None = None
    _awaited: object = None
    """What the deadline waits for: a head (keyed by the request before it, or the connection
    for the first) or a body (keyed by its request's scope)."""
    _counted: object = None
    """The message (its scope) whose bytes ``_received`` counts; None when the last read left
    no message incomplete."""
    _received = 0
    _begun = 0
    """The messages the parser began during the current read."""
    _reopen: RequestResponseCycle | None = None
    """A request marked to close the connection while its body arrives, to keep alive again if
    the body ends before its answer starts."""
    _sending: TimerHandle | None = None
    """The send deadline: armed while writing is paused, or while the connection closes with
    data unsent."""
    _held: bytes | bytearray = b""
    """What was received but not yet parsed, since the queue was full (a ``bytearray`` once
    anything is held); reading is paused while it is not empty."""
    _broken = False
    """A malformed request came behind requests still to be answered: nothing more is read."""
    _running: RequestResponseCycle | None = None
    """The request whose application was started last (the one being answered)."""
    _malformed: str = _INVALID_REQUEST
    """The warning for a request the parser refuses (set when a check of ours refused it)."""
    _host_checked = b"\x00"  # no Host value holds a NUL: none checked yet
    """The last ``Host`` value found valid on this connection."""
    _target_too_long = False
    """The request the parser stopped at names a target longer than ``MAX_TARGET_BYTES``."""
    _began_at = 0.0
    """When the current message began (the connection, before the first): loop time."""
    _lingering: TimerHandle | None = None
    """Armed while the connection closes in stages (``_linger``)."""
    _linger_ends = 0.0
    _last_read = 0.0
    _stopping = False
    """The server stops: a connection closes at once, never in stages."""

    def connection_made(self, transport: Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._began_at = self.loop.time()
        self.flow = _HoldingFlow(transport, self._holding)
        self._wait(self, self.LIMITS.head_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        running = self._running  # uvicorn tells only the newest request (``self.cycle``)
        if running is not None and running is not self.cycle and not running.response_complete:
            running.disconnected = True
            running.message_event.set()
        self._settle()
        if self._sending is not None:
            self._sending.cancel()
            self._sending = None
        if self._lingering is not None:
            self._lingering.cancel()
            self._lingering = None
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        """The write buffer is full: it must drain within the send timeout."""
        super().pause_writing()
        if self._sending is None:
            self._sending = self.loop.call_later(self.LIMITS.send_timeout_s, self._not_taken)

    def resume_writing(self) -> None:
        """The write buffer drained: no deadline while the connection stays open; a closing one
        gets a new one for what it still holds."""
        super().resume_writing()
        if self._sending is not None:
            self._sending.cancel()
            self._sending = None
        if self.transport.is_closing():
            self._closing()

    def on_response_complete(self) -> None:
        """uvicorn's (the next pipelined request started, or the keep-alive timer armed), with
        a connection its answer closed (``connection: close``) given the send deadline, and what
        was held unparsed parsed once the queue has room."""
        self._began_at = self.loop.time()  # what is refused next waited from here
        super().on_response_complete()  # resumes reading, unless bytes are held
        if self._lingering is not None:
            self._unset_keepalive_if_required()  # the linger's own bounds apply
            return
        keep_alive = self.timeout_keep_alive_task
        if keep_alive is not None and self._deadline is not None:
            # A message is under way (the start of a head came in the read that completed the
            # last one): its own deadline applies, not the keep-alive timeout, which would
            # close the connection with no answer before the head deadline.
            keep_alive.cancel()
            self.timeout_keep_alive_task = None
        if self.transport.is_closing():
            self._closing()
        elif self._held and not self._queue_full():
            held, self._held = self._held, b""
            self._receive(bytes(held))  # holds what still does not fit, reading paused
            self.flow.resume_reading()  # a no-op if it did

    def timeout_keep_alive_handler(self) -> None:
        super().timeout_keep_alive_handler()
        self._closing()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a malformed request, its connection closed in stages."""
        self._answer_and_end(400, msg.encode("ascii"))
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and cycle.scope is self.scope:
            # Its application runs (a malformed chunk in its body): the application counts the
            # request, with this status in place of the answer it gives, which goes nowhere.
            if not cycle.response_started:
                cycle.scope[REFUSED_SCOPE] = 400  # type: ignore[typeddict-unknown-key]
            return
        self._tell(400)

    def shutdown(self) -> None:
        """A stopping server: a request whose body is still arriving, not yet answered, is
        answered 503 and its connection closed at once (the server would otherwise wait for the
        rest of the body, up to the body timeout, before its application's shutdown); any other
        connection closes after the answer under way, as uvicorn's does (a request queued
        behind one still being answered among them: the server's graceful-shutdown bound ends
        it)."""
        self._reopen = None  # a stopping server closes the connection after the answer
        self._stopping = True
        if self._lingering is not None:
            self._lingered()
            return
        cycle = self.cycle
        if (
            cycle is not None
            and cycle.more_body
            and not cycle.response_started
            and not self.pipeline
            and not self.transport.is_closing()
        ):
            self._refuse(503)
            return
        super().shutdown()
        if self.transport.is_closing():
            self._closing()

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        self._running = cycle
        super()._start_asgi_task(cycle, app)

    def _holding(self) -> bool:
        return self._broken or bool(self._held)

    def on_message_begin(self) -> None:
        self._begun += 1
        self._began_at = self.loop.time()
        super().on_message_begin()

    def _should_upgrade(self) -> bool:
        return False  # the applications serve no websocket: plain HTTP, Upgrade ignored

    def on_headers_complete(self) -> None:
        hosts = 0
        for name, value in self.headers:
            if name == b"host":
                hosts += 1
                if value != self._host_checked:  # a kept-alive connection sends the same one
                    if not _names_a_host(value.strip(b" \t")):
                        raise httptools.HttpParserError("a Host field that names no host")
                    self._host_checked = value
            elif name == b"transfer-encoding" and not _only_chunked(value):
                # The parser reads a body framed ``chunked`` and would hand the application what
                # the other codings (gzip, say) left encoded: refused as a malformed request, as
                # the parser refuses those codings when ``chunked`` is not the last.
                raise httptools.HttpParserError("a transfer coding other than chunked")
        if self.parser.get_http_version() == "1.0":
            self.expect_100_continue = False  # no 1xx to an HTTP/1.0 client (RFC 9110 §15.2)
            if hosts > 1:  # one is optional in HTTP/1.0; two are malformed in any version
                raise httptools.HttpParserError("a request with more than one Host field")
        elif hosts != 1:  # answered as any malformed request (``_receive``)
            raise httptools.HttpParserError("an HTTP/1.1 request needs one Host field")
        if len(self.url) > MAX_TARGET_BYTES:  # answered 414 (``_receive``), not read
            self._target_too_long = True
            raise httptools.HttpParserError("a request-target longer than the parser reads")
        if self.parser.should_upgrade() and _declares_body(self.headers):
            # The parser stops at this head and would leave the body unread: run, the request
            # would not be the one sent. Refused as a malformed request, before any task starts.
            self._malformed = _UPGRADE_WITH_BODY
            raise httptools.HttpParserError("an upgrade request that declares a body")
        super().on_headers_complete()
        raw_path = self.scope["raw_path"]
        if b"%" in raw_path:
            self.scope["path"] = _unreserved_decoded(raw_path)
        # The parser reports a chunked body's trailer fields as it did the head's: from here on
        # they go to a list of their own, counted against the limits (``_incomplete``) and never
        # read. Merged into the request's headers, an ``Authorization`` sent as a trailer would
        # authenticate, and only when the trailers came in the same read as the head (RFC 9110
        # §6.5.1: trailers are not header fields; authentication may not be sent in one).
        self.headers = []

    def data_received(self, data: bytes) -> None:
        """uvicorn's, with its warnings throttled, an upgrade answered as plain HTTP, at most
        ``MAX_QUEUED_REQUESTS`` queued (the rest held unparsed), and the limits checked once the
        parser has taken ``data``."""
        if self._broken:
            if self._lingering is not None:
                self._last_read = self.loop.time()  # read and dropped: the client still sends
            return
        if self._held:  # a read already under way when reading was paused: held after the rest
            self._held += data
            return
        self._receive(data)

    def _receive(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        self._begun = 0
        try:
            rest = self._parse(data)
        except httptools.HttpParserError:
            if self._target_too_long:
                if not self._end_after_owed():  # no content to a HEAD (RFC 9110 §9.3.2)
                    self._refuse(414, content=self.parser.get_method() != b"HEAD")
                return
            self._warn(self._malformed)
            if not self._end_after_owed():
                self.send_400_response(_INVALID_REQUEST)
            return
        except httptools.HttpParserUpgrade:
            self._upgrade_ignored()
            return
        if rest:  # the queue is full: the client waits for answers, not the other way round
            self._held = bytearray(rest)
            self.flow.pause_reading()
            self._settle()
            return
        cycle = self.cycle
        if (
            cycle is not None
            and cycle.scope is self.scope
            and not cycle.more_body
            and not cycle.response_complete
        ):  # every message received is whole, its answer up to the application
            if self._deadline is not None:
                self._settle()
            return
        self._incomplete(cycle, len(data))

    # ------------------------------------------------------------------------------ internals

    def _parse(self, data: bytes) -> memoryview | bytes:
        """Feed ``data`` to the parser, a slice at a time when it is long; what is left once the
        queue is full (empty when all of it was parsed)."""
        if self._queue_full():
            return data
        if len(data) <= PARSE_SLICE_BYTES:
            self.parser.feed_data(data)
            return b""
        view = memoryview(data)
        for start in range(0, len(data), PARSE_SLICE_BYTES):
            if self._queue_full():
                return view[start:]
            self.parser.feed_data(view[start : start + PARSE_SLICE_BYTES])
        return b""

    def _queue_full(self) -> bool:
        """Whether the requests queued behind the one being answered fill the queue: by number,
        by header fields (a Python object each) or by body bytes."""
        pipeline = self.pipeline
        if not pipeline:
            return False
        if len(pipeline) >= MAX_QUEUED_REQUESTS:
            return True
        limits = self.LIMITS
        fields = body = 0
        for queued, _ in pipeline:
            fields += len(queued.scope["headers"])  # type: ignore[arg-type]  # uvicorn's list
            body += len(queued.body)
        return fields > limits.max_head_bytes // _MIN_FIELD_BYTES or body > limits.max_body_bytes

    def _end_after_owed(self) -> bool:
        """After a malformed request: when requests before it are still to be answered, end
        the connection after the last of them (``connection: close``), the malformed one (if
        queued, incomplete) and everything after it dropped, nothing more read; True then.
        False when nothing is owed (the 400 is the next answer)."""
        pipeline = self.pipeline
        cycle = self.cycle
        if pipeline and pipeline[0][0] is cycle and cycle.more_body:
            pipeline.popleft()  # the malformed one, never started: dropped
        running = self._running
        if pipeline:
            last = pipeline[0][0]
        elif (
            running is not None
            and not running.response_complete
            and not (running is cycle and cycle.more_body)  # the malformed one itself
        ):
            last = running
        else:
            return False
        # Settled first: it gives a request whose body was still arriving back the keep-alive
        # it asked for, and ``last`` may be that request.
        self._settle()
        last.keep_alive = False
        self._stage_close(last)
        self._broken = True
        self._held = b""
        self.flow.pause_reading()
        return True

    def _incomplete(self, cycle: RequestResponseCycle | None, size: int) -> None:
        """After a read that left a message incomplete, or that began none while the connection
        waits for one (blank lines)."""
        if self.transport.is_closing():
            return
        reopen = self._reopen
        if reopen is not None and not reopen.more_body:  # its body ended: kept alive as asked
            self._reopen = None
            reopen.keep_alive = not reopen.response_started
        limits = self.LIMITS
        scope = self.scope
        if cycle is not None and cycle.scope is scope and cycle.more_body:
            head = len(scope["headers"])  # type: ignore[arg-type]  # uvicorn's list
            fields = head + len(self.headers)  # the head's and the trailers'
            if fields > limits.max_head_bytes // _MIN_FIELD_BYTES:
                self._refuse(431)
                return
            if self._count(scope, size) > limits.max_head_bytes + limits.max_body_bytes:
                self._refuse(413)
                return
            if cycle.keep_alive and not cycle.response_started:
                cycle.keep_alive = False  # an answer before the body ends closes the connection
                self._reopen = cycle
            self._stage_close(cycle)  # ... in stages, not with the rest of the body unread
            self._wait(scope, limits.body_timeout_s)
            return
        begun = scope is not None and (cycle is None or cycle.scope is not scope)
        if begun and self._count(scope, size) > limits.max_head_bytes:
            self._refuse(431)
            return
        self._wait(self if cycle is None else cycle, limits.head_timeout_s)

    def _count(self, message: object, size: int) -> int:
        """The bytes of ``message`` received so far, this read's ``size`` included unless the
        read also ended a message before it (a read is not split by message)."""
        counted = self._counted
        if counted is message:
            self._received += size
        else:
            # The read began the message: all of it counts only when nothing came before the
            # message in it (no message left incomplete by the last read, none begun before).
            self._received = size if counted is None and self._begun <= 1 else 0
            self._counted = message
        return self._received

    def _wait(self, awaited: object, timeout_s: float) -> None:
        """Close the connection (``_expired``) unless ``awaited`` arrives within ``timeout_s``
        of the first read that waited for it."""
        if awaited is self._awaited:
            return
        if self._deadline is not None:
            self._deadline.cancel()
        self._awaited = awaited
        self._deadline = self.loop.call_later(timeout_s, self._expired)

    def _settle(self) -> None:
        """Nothing awaited any more: no deadline, and the connection kept alive as asked."""
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._awaited = self._counted = None
        reopen = self._reopen
        if reopen is not None:
            self._reopen = None
            reopen.keep_alive = not reopen.response_started

    def _expired(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self._refuse(408)

    def _refuse(self, status: int, *, content: bool = True) -> None:
        """End the connection with ``status`` (``connection: close``; without ``content``, no
        body, as to a ``HEAD``); only close it when an answer is under way, or owed to an
        earlier request."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            if cycle.response_started or cycle.scope is not self.scope or self.pipeline:
                self.transport.close()
                self._closing()
                return
            cycle.disconnected = True  # the application reads a disconnect; its answer is dropped
            cycle.scope[REFUSED_SCOPE] = status  # type: ignore[typeddict-unknown-key]
            cycle.message_event.set()
        else:
            self._tell(status)
        self._answer_and_end(status, http.HTTPStatus(status).phrase.encode(), content=content)

    def _answer_and_end(self, status: int, text: bytes, *, content: bool = True) -> None:
        """An answer of the connection's own (``text``, plain, with ``connection: close``;
        its length only, without ``content``), then the connection closed in stages
        (``_linger``)."""
        answer = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            answer.extend([name, b": ", value, b"\r\n"])
        answer.extend(
            [
                b"content-type: text/plain; charset=utf-8\r\n",
                b"content-length: %d\r\n" % len(text),
                b"connection: close\r\n\r\n",
                text if content else b"",
            ]
        )
        self.transport.write(b"".join(answer))
        self._linger()

    def _stage_close(self, cycle: RequestResponseCycle) -> None:
        """Whatever closes the connection after ``cycle``'s answer closes it in stages."""
        if cycle.transport is self.transport:
            cycle.transport = _StagedClose(self)  # type: ignore[assignment]

    def _linger(self) -> None:
        """Close in stages (RFC 9112 §9.6): a client still sending its request when its answer
        came (a 413 to a body it sends whole before it reads) would otherwise have the answer
        destroyed by the reset a socket closed with unread bytes sends, and see a broken pipe.
        The answer goes, then the end of what the server sends; what the client still sends is
        read and dropped until it closes, sends nothing for ``LINGER_IDLE_S``, or has had the
        body timeout in all; then the connection closes. A stopping server closes at once."""
        transport = self.transport
        if transport.is_closing() or self._lingering is not None:
            return
        if self._stopping or not transport.can_write_eof():
            transport.close()
            self._closing()
            return
        self._settle()  # no head or body deadline: nothing more is parsed
        self._broken = True  # everything read from here on is dropped (``data_received``)
        self._held = b""
        self.pipeline.clear()  # nothing queued is answered on a connection that ends
        for cycle in (self.cycle, self._running):
            if cycle is not None and not cycle.response_complete:
                # Its application reads a disconnect, and writes nothing (not even a 100
                # Continue: nothing may follow the end of what the server sends).
                cycle.waiting_for_100_continue = False
                cycle.disconnected = True
                cycle.message_event.set()
        transport.write_eof()
        transport.resume_reading()
        now = self.loop.time()
        self._last_read = now
        self._linger_ends = now + self.LIMITS.body_timeout_s
        self._lingering = self.loop.call_later(LINGER_IDLE_S, self._linger_check)

    def _linger_check(self) -> None:
        now = self.loop.time()
        idle_ends = self._last_read + LINGER_IDLE_S
        if now >= idle_ends or now >= self._linger_ends:
            self._lingered()
            return
        self._lingering = self.loop.call_at(min(idle_ends, self._linger_ends), self._linger_check)

    def _lingered(self) -> None:
        if self._lingering is not None:
            self._lingering.cancel()
            self._lingering = None
        self.transport.close()
        self._closing()

    def _tell(self, status: int) -> None:
        """An answer of the connection's own, to a request no application is reading (see the
        module docstring)."""
        told = getattr(self.app, "connection_answered", None)
        if told is None:
            return
        scope, cycle = self.scope, self.cycle
        answered = cycle is not None and cycle.scope is scope and cycle.response_complete
        path = "" if scope is None or answered else scope.get("path", "")
        told(path, status, self.loop.time() - self._began_at, self.server)

    def _closing(self) -> None:
        """The connection was closed: what it still holds to send must go within the send
        timeout (a deadline already armed, by a pause, stays)."""
        if self._sending is None and self.transport.get_write_buffer_size():
            self._sending = self.loop.call_later(self.LIMITS.send_timeout_s, self._not_taken)

    def _not_taken(self) -> None:
        """The send deadline passed: the client stopped reading. The connection is reset; its
        loss wakes the request's send waiting for the buffer (uvicorn's ``connection_lost``)."""
        self._sending = None
        self._warn(_STOPPED_READING)
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            # Should it fail, the abort still closes the socket; the kernel then sends what it
            # holds, and closes when it gives up.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        self.transport.abort()

    def _upgrade_ignored(self) -> None:
        """The parser ends a request asking for an upgrade with its head and would read what
        follows as another protocol: the request (one with no body: ``on_headers_complete``
        refuses the others) is answered as it is, as plain HTTP, and the connection closed
        after the answer, nothing more read."""
        self._warn(_UPGRADE_IGNORED)
        self._settle()
        self.cycle.keep_alive = False
        self._stage_close(self.cycle)
        self.transport.pause_reading()

    def _warn(self, message: str) -> None:
        held = self.WARNINGS.due(message, int(self.loop.time() * 1000))
        if held is not None:
            self.logger.log(logging.WARNING, "%s%s", message, held_back(held))


def _names_a_host(value: bytes) -> bool:
    """Whether a ``Host`` value is ``uri-host [ ":" port ]`` (RFC 9112 §3.2, RFC 3986 §3.2.2):
    a registered name, possibly empty, or in brackets an IPv6 address (no zone id: a client
    removes it, RFC 6874 §4) or an IPvFuture literal."""
    match = _HOST_VALUE.fullmatch(value)
    if match is None:
        return False
    literal = match["literal"]
    if literal is None or _IP_FUTURE.fullmatch(literal) is not None:
        return True
    if b"%" in literal:  # a zone id, which IPv6Address would take
        return False
    try:
        ipaddress.IPv6Address(literal.decode("ascii"))
    except ValueError:  # UnicodeDecodeError included
        return False
    return True


def _unreserved_decoded(raw_path: bytes) -> str:
    """The path a request names, its escapes of unreserved characters decoded and every other
    escape kept as sent (RFC 3986 §6.2.2.2): ``%2F`` is not a path separator, so
    ``/v2%2Ftoken%2Flogout`` names no route instead of the one a proxy's rule on
    ``/v2/token/logout`` would have stopped (uvicorn decodes every escape)."""

    def decoded(escape: re.Match[bytes]) -> bytes:
        byte = int(escape[1], 16)
        return bytes((byte,)) if byte in _UNRESERVED else escape[0]

    return _PERCENT_ESCAPE.sub(decoded, raw_path).decode("ascii")


def _only_chunked(transfer_encoding: bytes) -> bool:
    """Whether every coding a ``Transfer-Encoding`` value names is ``chunked``, the only one the
    server decodes (empty list elements are ignored, as RFC 9110 §5.6.1.2 asks)."""
    codings = (coding.strip().lower() for coding in transfer_encoding.split(b","))
    return all(coding == b"chunked" for coding in codings if coding)


def _declares_body(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a request head announces a body: ``Transfer-Encoding``, or a ``Content-Length``
    other than 0 (the parser has already refused one that is not a number)."""
    for name, value in headers:
        if name == b"transfer-encoding":
            return True
        if name == b"content-length" and value.strip().lstrip(b"0"):
            return True
    return False
