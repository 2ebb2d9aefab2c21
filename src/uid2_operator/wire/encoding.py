"""Text and integer framing shared by every wire format.

Base64 decoding is strict (the operator rejects what Python's lenient decoder would silently drop)
but, like Java's decoder, tolerates missing trailing ``=`` padding.
"""

from __future__ import annotations

import binascii
import json
import json.encoder
import re
import struct
from collections.abc import Callable
from typing import Any, Final

_I32 = struct.Struct(">i")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_I64 = struct.Struct(">q")
_TO_URL = bytes.maketrans(b"+/", b"-_")
_FROM_URL = bytes.maketrans(b"-_", b"+/")
# One encoder for every call: ``json.dumps`` with non-default arguments builds a new one each time.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
# What ``_ENCODER`` writes every string with (``ensure_ascii=False``): quotes and escapes.
_ESCAPE: Final[Callable[[str], str]] = json.encoder.encode_basestring


class Base64Error(ValueError):
    """Text that is not strict standard (or URL-safe) base64."""


def b64encode(data: bytes) -> str:
    """Standard alphabet, padded."""
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def b64encode_ascii(data: bytes) -> bytes:
    """``b64encode`` as ASCII bytes, for bodies that go straight onto the wire."""
    return binascii.b2a_base64(data, newline=False)


def b64decode(text: str | bytes) -> bytes:
    """Strict standard-alphabet decode; missing padding is accepted, anything else is not."""
    return _decode(text, url=False)


def b64url_encode(data: bytes) -> str:
    """URL-safe alphabet with the padding stripped (v4 advertising tokens)."""
    return binascii.b2a_base64(data, newline=False).translate(_TO_URL).rstrip(b"=").decode("ascii")


def b64url_decode(text: str | bytes) -> bytes:
    """Strict URL-safe decode; padding optional."""
    return _decode(text, url=True)


def _decode(text: str | bytes, url: bool) -> bytes:
    try:
        raw = text.encode("ascii") if isinstance(text, str) else bytes(text)
    except UnicodeEncodeError as exc:
        raise Base64Error("not ASCII") from exc
    if not url and not len(raw) % 4 and not raw.endswith(b"==="):
        # Whole quanta with at most two pads: exactly what the checks below would pass on as is.
        try:
            return binascii.a2b_base64(raw, strict_mode=True)
        except binascii.Error as exc:
            raise Base64Error(str(exc)) from exc
    stripped = raw.rstrip(b"=")
    pads = len(raw) - len(stripped)
    # Like Java's decoder: padding may be left out, but when present it must complete the quantum.
    if pads > 2 or len(stripped) % 4 == 1 or (pads and len(raw) % 4):
        raise Base64Error("bad length or padding")
    padded = stripped + b"=" * (-len(stripped) % 4)
    if url:
        if b"+" in padded or b"/" in padded:
            raise Base64Error("standard alphabet in URL-safe text")
        padded = padded.translate(_FROM_URL)
    try:
        return binascii.a2b_base64(padded, strict_mode=True)
    except binascii.Error as exc:
        raise Base64Error(str(exc)) from exc


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON, the way the reference operator writes it.

    A lone surrogate (legal as a JSON escape in a request, not encodable as UTF-8) is written as
    U+FFFD, as a Java encoder would, rather than failing the response.
    """
    return json_utf8(_ENCODER.encode(value))


def json_string(text: str) -> str:
    """``text`` as a JSON string literal, quoted and escaped exactly as ``dumps`` writes a string
    anywhere in a value (the encoder's own function), for JSON written out piece by piece."""
    return _ESCAPE(text)


def json_utf8(text: str) -> bytes:
    """JSON text built from ``json_string`` pieces as the bytes ``dumps`` would give for it (a
    lone surrogate written as U+FFFD)."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return _LONE_SURROGATE.sub("\ufffd", text).encode("utf-8")


class Base64Stream:
    """Standard, padded base64 of bytes that arrive in parts, written as they come.

    ``update`` returns the text of every whole 3-byte group received so far and holds back the
    rest (at most two bytes); ``finish`` returns the text of what is held, padded, and starts
    over. Joined, the outputs are ``b64encode_ascii`` of the parts joined, so a body can be
    framed without ever holding all of it.
    """

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held = b""

    def update(self, data: bytes) -> bytes:
        held = self._held + data if self._held else data
        whole = len(held) - len(held) % 3
        self._held = held[whole:]
        return binascii.b2a_base64(memoryview(held)[:whole], newline=False)

    def finish(self) -> bytes:
        held, self._held = self._held, b""
        return binascii.b2a_base64(held, newline=False)


def pack_i32(value: int) -> bytes:
    return _I32.pack(value)


def pack_i64(value: int) -> bytes:
    return _I64.pack(value)


def unpack_i32(data: bytes, offset: int = 0) -> int:
    return int(_I32.unpack_from(data, offset)[0])


def unpack_i64(data: bytes, offset: int = 0) -> int:
    return int(_I64.unpack_from(data, offset)[0])
