"""The v2 request envelope and the response envelope that echoes its nonce (operator-api §2).

Request, as POSTed: the raw bytes when the request's ``Content-Type`` is exactly
``application/octet-stream``, otherwise their standard base64 text::

    0x01 (1) || IV (12) || GCM( timestamp_ms (8) || nonce (8) || JSON object (m >= 0) ) || tag (16)

Response (HTTP 200 only), framed the way the request was (raw bytes or base64 text)::

    IV (12) || GCM( server_ms (8) || the request's nonce (8) || UTF-8 JSON ) || tag (16)

Both directions are sealed under the caller's 32-byte client secret with no AAD. Responses carry no
version byte. The nonce is only echoed here; whether a nonce was seen before is decided elsewhere.

A response too large to hold at once is sealed and framed as it is written (``stream_response``):
the same bytes, encrypted part by part (``aead.seal_in_parts``).

``parse_request`` is the operator's hot path: every API-key request passes through it once. It
decodes base64 once, decrypts once, and parses the JSON payload once.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final, NoReturn

from uid2_operator.errors import (
    BodyMissing,
    BodyTooShort,
    EnvelopeDecryptionFailed,
    EnvelopeError,
    InvalidPayload,
    NotBase64,
    ResponseEnvelopeError,
    StaleTimestamp,
    UnencryptedJson,
    UnsupportedEnvelopeVersion,
)
from uid2_operator.wire import aead
from uid2_operator.wire.aead import AeadFailure, RandomBytes
from uid2_operator.wire.encoding import (
    Base64Error,
    Base64Stream,
    b64decode,
    b64encode_ascii,
    dumps,
    pack_i64,
)
from uid2_operator.wire.scope import IdentityScope

JsonObject = dict[str, Any]

ENVELOPE_VERSION: Final = 1
NONCE_SIZE: Final = 8
TIMESTAMP_SIZE: Final = 8
INNER_HEADER_SIZE: Final = TIMESTAMP_SIZE + NONCE_SIZE
MIN_REQUEST_SIZE: Final = 1 + aead.OVERHEAD + INNER_HEADER_SIZE  # 45

OCTET_STREAM: Final = "application/octet-stream"
TEXT_PLAIN: Final = "text/plain"

_VERSION_PREFIX: Final = bytes((ENVELOPE_VERSION,))
_DOCS_PATH: Final = "/docs/getting-started/gs-encryption-decryption"


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


# The reference parser (Jackson) refuses NaN and Infinity; Python's accepts them unless told not to.
# One shared decoder keeps ``decode`` as cheap as ``json.loads`` with default arguments.
_JSON: Final = json.JSONDecoder(parse_constant=_reject_constant)
# Its scanner alone decides a text that starts with ``{`` and ends with ``}`` (no whitespace to
# skip around the value), about twice as fast as ``decode``. Where ``decode`` raises
# ``JSONDecodeError`` for a value missing inside the object (``{"email":}``), the C scanner
# raises ``StopIteration``: both mean "not JSON".
_SCAN: Final[Callable[[str, int], tuple[Any, int]]] = vars(_JSON)["scan_once"]
_INNER_HEADER: Final = struct.Struct(">q8s")  # timestamp_ms, nonce


# ------------------------------------------------------------------------------ timestamp window


@dataclass(frozen=True, slots=True)
class TimestampWindow:
    """How far a request timestamp may lie behind or ahead of the operator's clock, in ms.

    A request is accepted iff ``-max_future_ms <= now_ms - timestamp_ms <= max_past_ms``.

    ``DEFAULT_TIMESTAMP_WINDOW`` (119 999 ms past, 119 000 ms future) reproduces the reference
    operator exactly: it compares ``|Duration(ts -> now).toMinutes()| <= 1``, where the duration's
    seconds are floored and the minutes then truncated toward zero, which works out to those two
    bounds. The default is chosen so that no client the reference operator accepts is refused here,
    whatever its clock drift. The window also bounds replay protection: a nonce only needs to be
    remembered for as long as a request carrying it can still pass this check, so a cache of seen
    nonces is sized by ``max_past_ms + max_future_ms``. Narrowing the window shrinks that cache and
    the replay opportunity, at the price of refusing clients with more drift; it is a setting, not
    a protocol constant.
    """

    max_past_ms: int
    max_future_ms: int

    def __post_init__(self) -> None:
        if self.max_past_ms < 0 or self.max_future_ms < 0:
            raise ValueError("timestamp window bounds must not be negative")

    def accepts(self, timestamp_ms: int, now_ms: int) -> bool:
        return -self.max_future_ms <= now_ms - timestamp_ms <= self.max_past_ms


DEFAULT_TIMESTAMP_WINDOW: Final = TimestampWindow(max_past_ms=119_999, max_future_ms=119_000)


# -------------------------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class _Messages:
    """The client-visible failure texts of one identity scope (they name its documentation host)."""

    unencrypted_json: str
    not_base64: str
    too_short: str
    decryption_failed: str
    hint: str

    @classmethod
    def for_scope(cls, scope: IdentityScope) -> _Messages:
        docs = scope.docs_host + _DOCS_PATH
        hint = f" See {docs} for details on the request envelope format."
        return cls(
            unencrypted_json=(
                "Invalid body: The request body is unencrypted JSON. It must be an encrypted "
                f"request envelope. See {docs}#encryption-and-decryption-code-examples for "
                "encryption and decryption code examples."
            ),
            not_base64="Invalid body: Body is not valid base64." + hint,
            too_short="Invalid body: Body too short. Check encryption method." + hint,
            decryption_failed="Invalid body: Check encryption key (ClientSecret)." + hint,
            hint=hint,
        )

    def bad_version(self, received: int) -> str:
        return (
            "Invalid body: Invalid request envelope format version: "
            f"received {received}, must be {ENVELOPE_VERSION}.{self.hint}"
        )


_MESSAGES: Final = {scope: _Messages.for_scope(scope) for scope in IdentityScope}


# --------------------------------------------------------------------------------------- request


@dataclass(frozen=True, slots=True)
class RequestEnvelope:
    """An opened, authentic, fresh request.

    ``payload`` is None when the plaintext ends after the nonce (the key endpoints send no JSON);
    it holds what the caller sent (emails, phone numbers, tokens), so the repr leaves it out.
    ``binary`` tells how the response must be framed: raw bytes when True, base64 text otherwise.
    """

    timestamp_ms: int
    nonce: bytes
    payload: JsonObject | None = field(repr=False)
    binary: bool


def parse_request(
    body: bytes,
    *,
    octet_stream: bool,
    secret: bytes,
    now_ms: int,
    window: TimestampWindow,
    scope: IdentityScope,
) -> RequestEnvelope:
    """Open a v2 request body, checking in the reference operator's order (operator-api §2.3).

    ``octet_stream`` says whether the request's Content-Type equals ``application/octet-stream``
    (compared case-insensitively, the whole value, no parameters); any other Content-Type, or none,
    means base64 text. An octet-stream body is first read as raw envelope bytes; if that fails but
    the body is base64 text of an envelope, the text is read instead and the response is to be
    sent as text (operator-api §1.6). When that second reading fails too, its error is the one
    reported; when the body is not base64 at all, the error of the raw reading stands.

    Raises a subclass of ``EnvelopeError`` whose message is the exact text the client must see.
    """
    messages = _MESSAGES[scope]
    if octet_stream:
        try:
            return _open(body, secret, now_ms, window, messages, binary=True)
        except EnvelopeError:
            decoded = _base64_or_none(body)
            if decoded is None:
                raise
        return _open(decoded, secret, now_ms, window, messages, binary=False)

    decoded = _base64_or_none(body)
    if decoded is None:
        if _is_json_object(body):
            raise UnencryptedJson(messages.unencrypted_json)
        raise NotBase64(messages.not_base64)
    return _open(decoded, secret, now_ms, window, messages, binary=False)


def _open(
    data: bytes,
    secret: bytes,
    now_ms: int,
    window: TimestampWindow,
    messages: _Messages,
    *,
    binary: bool,
) -> RequestEnvelope:
    if not data:
        raise BodyMissing
    if len(data) < MIN_REQUEST_SIZE:
        if _is_json_object(data):
            raise UnencryptedJson(messages.unencrypted_json)
        raise BodyTooShort(messages.too_short)
    if data[0] != ENVELOPE_VERSION:
        if _is_json_object(data):
            raise UnencryptedJson(messages.unencrypted_json)
        raise UnsupportedEnvelopeVersion(messages.bad_version(data[0]))
    try:
        plaintext = aead.open_(secret, data[1:])
    except AeadFailure:
        raise EnvelopeDecryptionFailed(messages.decryption_failed) from None

    timestamp_ms, nonce = _INNER_HEADER.unpack_from(plaintext)
    if not -window.max_future_ms <= now_ms - timestamp_ms <= window.max_past_ms:
        raise StaleTimestamp
    payload = _payload(plaintext) if len(plaintext) > INNER_HEADER_SIZE else None
    return RequestEnvelope(
        timestamp_ms=timestamp_ms,
        nonce=nonce,
        payload=payload,
        binary=binary,
    )


def _payload(plaintext: bytes) -> JsonObject:
    """The JSON object after the inner header.

    Bytes that are not UTF-8 are refused outright. (The reference operator substitutes U+FFFD and
    parses on; no client produces such bytes, and refusing them keeps mangled text out of
    identifiers that are later hashed or echoed.)
    """
    value = _json_object(plaintext[INNER_HEADER_SIZE:])
    if value is None:
        raise InvalidPayload
    return value


def _base64_or_none(body: bytes) -> bytes | None:
    try:
        return b64decode(body)
    except Base64Error:
        return None


def _is_json_object(data: bytes) -> bool:
    """Whether a body that failed as an envelope is plain JSON, to give the caller a better hint.

    Only consulted on failure paths. Invalid UTF-8 is replaced rather than refused, as the
    reference operator does when it asks the same question.
    """
    return _json_object(data, errors="replace") is not None


def _json_object(data: bytes, errors: str = "strict") -> JsonObject | None:
    """``data`` as a JSON object, or None when it is not UTF-8, not JSON, or not an object."""
    try:
        text = data.decode("utf-8", errors)
        if text[:1] == "{" and text[-1:] == "}":
            value, end = _SCAN(text, 0)
            if end != len(text):
                return None
        else:
            value = _JSON.decode(text)
    except (ValueError, RecursionError, StopIteration):
        return None
    return value if isinstance(value, dict) else None


def seal_request(
    payload: bytes | None,
    *,
    secret: bytes,
    now_ms: int,
    nonce: bytes,
    random: RandomBytes,
) -> bytes:
    """Build the raw request envelope a client POSTs (base64 it for text mode)."""
    _check_nonce(nonce)
    inner = b"".join((pack_i64(now_ms), nonce, payload or b""))
    return _VERSION_PREFIX + aead.seal(secret, inner, random)


# -------------------------------------------------------------------------------------- response


def success_body(body: Any) -> bytes:
    """The compact JSON of a successful response: ``{"status":"success","body":...}``."""
    return dumps({"status": "success", "body": body})


def seal_response(
    body_json: bytes,
    *,
    secret: bytes,
    nonce: bytes,
    now_ms: int,
    random: RandomBytes,
) -> bytes:
    """Seal a response's JSON for the client that sent ``nonce``: ``IV || GCM(...) || tag``."""
    _check_nonce(nonce)
    return aead.seal_with_iv(secret, random(aead.IV_SIZE), pack_i64(now_ms) + nonce + body_json)


def stream_response(
    pieces: Iterable[bytes],
    *,
    secret: bytes,
    nonce: bytes,
    now_ms: int,
    random: RandomBytes,
    binary: bool,
) -> tuple[Iterator[bytes], str]:
    """``frame_response(seal_response(b"".join(pieces), ...), binary)`` one piece at a time.

    The body comes out as one part per piece of JSON, the last also carrying the tag and, in
    base64 framing, the end of the text; joined, the parts are the one-shot body for the same
    IV. So a large answer is sealed and framed without ever being held whole. The IV is drawn and
    the arguments checked at the call; ``pieces`` is read as the parts are.
    """
    _check_nonce(nonce)
    sealer = aead.seal_in_parts(secret, random(aead.IV_SIZE))
    header = pack_i64(now_ms) + nonce
    if binary:
        return _parts(sealer, header, None, iter(pieces)), OCTET_STREAM
    return _parts(sealer, header, Base64Stream(), iter(pieces)), TEXT_PLAIN


def _parts(
    sealer: aead.PartSealer, header: bytes, text: Base64Stream | None, pieces: Iterator[bytes]
) -> Iterator[bytes]:
    """One part per piece (at least one; the first sealed with the envelope's ``header``
    before it, as ``seal_response`` seals it), framed as base64 ``text`` unless None: a part is
    given once the next piece is read, the last with the tag and the end of the text."""
    sealed = sealer.update(header + next(pieces, b""))
    for piece in pieces:
        yield sealed if text is None else text.update(sealed)
        sealed = sealer.update(piece)
    sealed += sealer.finish()
    yield sealed if text is None else text.update(sealed) + text.finish()


def framed_response_size(json_size: int, binary: bool) -> int:
    """The length of ``frame_response(seal_response(body_json, ...), binary)[0]`` for a
    ``body_json`` of ``json_size`` bytes: the same for every IV, secret, nonce and time, so an
    answer sent in pieces can be announced with its Content-Length before it is made."""
    sealed = aead.OVERHEAD + INNER_HEADER_SIZE + json_size
    return sealed if binary else 4 * -(-sealed // 3)


def frame_response(sealed: bytes, binary: bool) -> tuple[bytes, str]:
    """The HTTP body and Content-Type for a sealed response, mirroring the request's framing.

    A binary client feeds the body straight to GCM, so it must get raw bytes; every other client
    gets base64 text.
    """
    if binary:
        return sealed, OCTET_STREAM
    return b64encode_ascii(sealed), TEXT_PLAIN


def unframe_response(body: bytes, binary: bool) -> bytes:
    """Inverse of ``frame_response``: the sealed bytes of a response body."""
    if binary:
        return body
    try:
        return b64decode(body)
    except Base64Error:
        raise ResponseEnvelopeError("Response body is not valid base64") from None


def open_response(blob: bytes, *, secret: bytes, nonce: bytes) -> JsonObject:
    """Open a sealed response and check that it answers the request that carried ``nonce``.

    The nonce check is what ties a response to its request: without it a response recorded for
    one request could be replayed as the answer to another.
    """
    try:
        plaintext = aead.open_(secret, blob)
    except AeadFailure:
        raise ResponseEnvelopeError("Response envelope does not decrypt") from None
    if len(plaintext) < INNER_HEADER_SIZE:
        raise ResponseEnvelopeError("Response envelope too short")
    if plaintext[TIMESTAMP_SIZE:INNER_HEADER_SIZE] != nonce:
        raise ResponseEnvelopeError("nonce mismatch")
    value = _json_object(plaintext[INNER_HEADER_SIZE:])
    if value is None:
        raise ResponseEnvelopeError("Response payload is not a JSON object")
    return value


def _check_nonce(nonce: bytes) -> None:
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"nonce must be {NONCE_SIZE} bytes")
