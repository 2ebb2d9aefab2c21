"""Type checks for arguments that arrive from outside (decoded JSON, command-line text).

The admin API hands use cases whatever a JSON body held, so a name may be a number and a role list
may be a bare string (which would iterate as characters). These checks turn every wrong type into
``InvalidInput`` before a domain rule sees it. Messages name the argument, never echo its value: a
caller may have pasted a credential into the wrong field. Text holding a credential (a full API
key or admin token, a key's tail alone, a client secret in any base64 form: see
``domain.credential_text``) is refused outright: free text is stored and shown in plaintext.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from uid2_operator.domain.key_format import KEY_ID_PATTERN
from uid2_operator.domain.participants import (
    MAX_NAME_LENGTH,
    ParticipantType,
    refuse_credential_text,
    refuse_surrogates,
)
from uid2_operator.errors import InvalidInput

# A key or token id: the public prefix of a credential, never the part after the '.'.
_CREDENTIAL_ID = re.compile(KEY_ID_PATTERN)
MAX_ITEMS = 100
MAX_DAYS = 3650
MAX_TEXT = 1000
MAX_NAME_TEXT = 64


def text(value: Any, what: str, *, max_length: int = MAX_TEXT) -> str:
    """A string of bounded length without NUL characters (PostgreSQL text cannot hold them),
    surrogate code points (no database encoding can: invalid UTF-8 on a command line gives them)
    or credential text (a full API key or admin token, a key's tail, a client secret)."""
    return refuse_credential_text(_plain_text(value, what, max_length=max_length), what)


def _plain_text(value: Any, what: str, *, max_length: int) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be a string")
    if len(value) > max_length:
        raise InvalidInput(f"{what} must be at most {max_length} characters")
    if "\x00" in value:
        raise InvalidInput(f"{what} must not contain NUL characters")
    return refuse_surrogates(value, what)


def optional_text(value: Any, what: str, *, max_length: int = MAX_TEXT) -> str | None:
    return None if value is None else text(value, what, max_length=max_length)


def bounded_text(value: Any, what: str, too_long: InvalidInput) -> str:
    """``text`` for free text that a domain rule bounds once trimmed: a value too long to read
    at all is refused with that rule's own refusal (``too_long``: the bounds the caller was
    told), not with the bound on raw text."""
    if isinstance(value, str) and len(value) > MAX_TEXT:
        raise too_long
    return text(value, what)


def name_text(value: Any, what: str = "name") -> str:
    """``bounded_text`` for a display name or a reason, which ``validate_name`` judges."""
    return bounded_text(
        value, what, InvalidInput(f"{what} must be 1 to {MAX_NAME_LENGTH} characters")
    )


def optional_name_text(value: Any, what: str = "name") -> str | None:
    return None if value is None else name_text(value, what)


def optional_search_text(value: Any, what: str, *, max_length: int = MAX_TEXT) -> str | None:
    """``optional_text`` for a value that is only compared, never stored, logged or repeated (a
    filter): credential text is not refused there, since what it is compared with may have that
    shape (an opt-out's audit target id is the base64 of its hash: a client secret's shape)."""
    return None if value is None else _plain_text(value, what, max_length=max_length)


def integer(value: Any, what: str, *, low: int, high: int) -> int:
    """An int (not a bool) within ``low..high``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{what} must be an integer")
    if not low <= value <= high:
        raise InvalidInput(f"{what} must be between {low} and {high}")
    return value


def optional_integer(value: Any, what: str, *, low: int, high: int) -> int | None:
    return None if value is None else integer(value, what, low=low, high=high)


def names(value: Any, what: str, *, max_length: int = MAX_NAME_TEXT) -> list[str]:
    """A list, tuple or set of strings (a bare string is refused: it is not a list of names)."""
    if isinstance(value, str | bytes | dict) or not isinstance(value, Iterable):
        raise InvalidInput(f"{what} must be a list of strings")
    items = list(value)
    if len(items) > MAX_ITEMS:
        raise InvalidInput(f"{what} may hold at most {MAX_ITEMS} entries")
    for item in items:
        if not isinstance(item, str):
            raise InvalidInput(f"{what} must be a list of strings")
        _plain_text(item, f"each of {what}", max_length=max_length)
        refuse_credential_text(item, f"an entry of {what}")
    return items


def participant_type(value: Any) -> ParticipantType:
    if isinstance(value, ParticipantType):
        return value
    raw = text(value, "type").strip().lower()
    try:
        return ParticipantType(raw)
    except ValueError:
        allowed = ", ".join(t.value for t in ParticipantType)
        raise InvalidInput(f"type must be one of {allowed}") from None


def credential_id(value: Any, what: str) -> str:
    """A key or token id (the part before the '.'); full credential text is refused unechoed."""
    raw = _plain_text(value, what, max_length=MAX_TEXT).strip()
    if "." in raw:
        raise InvalidInput(
            f"{what} is the public part before the '.'; never pass the full credential"
        )
    if _CREDENTIAL_ID.fullmatch(raw) is None:
        raise InvalidInput(f"{what} is not a valid id")
    return raw
