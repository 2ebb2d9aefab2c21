"""Text and integer framing shared by every wire format.

Base64 decoding is strict (the operator rejects what Python's lenient decoder would silently drop)
but, like Java's decoder, tolerates missing trailing ``=`` padding.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import struct
from typing import Any

_I32 = struct.Struct(">i")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_I64 = struct.Struct(">q")


class Base64Error(ValueError):
    """Text that is not strict standard (or URL-safe) base64."""


def b64encode(data: bytes) -> str:
    """Standard alphabet, padded."""
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str | bytes) -> bytes:
    """Strict standard-alphabet decode; missing padding is accepted, anything else is not."""
    return _decode(text, altchars=None)


def b64url_encode(data: bytes) -> str:
    """URL-safe alphabet with the padding stripped (v4 advertising tokens)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str | bytes) -> bytes:
    """Strict URL-safe decode; padding optional."""
    return _decode(text, altchars=b"-_")


def _decode(text: str | bytes, altchars: bytes | None) -> bytes:
    try:
        raw = text.encode("ascii") if isinstance(text, str) else bytes(text)
    except UnicodeEncodeError as exc:
        raise Base64Error("not ASCII") from exc
    stripped = raw.rstrip(b"=")
    pads = len(raw) - len(stripped)
    # Like Java's decoder: padding may be left out, but when present it must complete the quantum.
    if pads > 2 or len(stripped) % 4 == 1 or (pads and len(raw) % 4):
        raise Base64Error("bad length or padding")
    padded = stripped + b"=" * (-len(stripped) % 4)
    try:
        if altchars is None:
            return base64.b64decode(padded, validate=True)
        if b"+" in padded or b"/" in padded:
            raise Base64Error("standard alphabet in URL-safe text")
        return base64.b64decode(padded, altchars=altchars, validate=True)
    except binascii.Error as exc:
        raise Base64Error(str(exc)) from exc


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON, the way the reference operator writes it.

    A lone surrogate (legal as a JSON escape in a request, not encodable as UTF-8) is written as
    U+FFFD, as a Java encoder would, rather than failing the response.
    """
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return _LONE_SURROGATE.sub("\ufffd", text).encode("utf-8")


def pack_i32(value: int) -> bytes:
    return _I32.pack(value)


def pack_i64(value: int) -> bytes:
    return _I64.pack(value)


def unpack_i32(data: bytes, offset: int = 0) -> int:
    return int(_I32.unpack_from(data, offset)[0])


def unpack_i64(data: bytes, offset: int = 0) -> int:
    return int(_I64.unpack_from(data, offset)[0])
