"""Credential text: whether a piece of text holds an API key, admin token or client secret.

Free text (names, reasons, contacts) is stored and shown in plaintext, and a caller's request id is
written to logs and to hash-chained audit rows, so neither may keep credential material. Found
anywhere in the text:

* a full API key or admin token: key id, '.', tail (``CREDENTIAL_TEXT``);
* a client secret as it is handed out: 44 characters of standard base64 ending in '=', not part
  of a longer base64 run (``CLIENT_SECRET_TEXT``; the keyring's keys and pepper have the same
  shape);
* a key tail on its own, whole or cut to its random part: a run of 33 or more base62
  characters (the key id is public, so the tail alone is the whole secret: 33 random characters
  and a 5-character checksum, see ``key_format``). A longer run counts too: no boundary is
  required;
* a client secret re-encoded: 43 characters of standard or URL-safe base64, not part of a longer
  run of that alphabet, with or without its '=' padding.

A key tail and a re-encoded secret count only when their run mixes upper- and lower-case letters,
as random base62 and base64 do: a 33-character random run lacks one of the two cases about once in
30 million, and a 43-character one about once in 3 billion. Digits are not required (a random tail
lacks one now and then). This keeps ordinary text of those lengths that sticks to one case: a hex
digest or commit hash, a long lower-case e-mail local part or domain label, a slug, a run of one
character used as filler. Ordinary names, addresses, domain names and app ids mostly break their
runs with '.', '-', '@' or spaces long before 33 characters; a long CamelCase word does not, and
is refused with a message that says so.
"""

from __future__ import annotations

import re
from typing import Final

from uid2_operator.domain.key_format import RANDOM_LENGTH

# A full credential (key id, '.', tail) appearing inside any string value: an API key or an
# admin token. The audit trail drops any value holding one (``audit.redact``).
CREDENTIAL_TEXT: Final = re.compile(
    r"(UID2|EUID)-[A-Z]-[A-Z]-[0-9]+-[A-Za-z0-9]{6}\.[A-Za-z0-9+/=]{20,}"
)
# 32 bytes in base64 without padding: ceil(32 * 4 / 3) characters.
_SECRET_CHARS: Final = 43
# A client secret exactly as it is handed out: refused whatever its characters.
CLIENT_SECRET_TEXT: Final = re.compile(
    f"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{{{_SECRET_CHARS}}}=(?![A-Za-z0-9+/=])"
)
# A key tail, whole or cut to its random part.
KEY_TAIL_TEXT: Final = re.compile(f"[A-Za-z0-9]{{{RANDOM_LENGTH},}}")
# A client secret re-encoded: padding optional, standard or URL-safe alphabet, not part of a
# longer run of the same alphabet (so a longer encoded value, such as a public key, is no secret).
STANDARD_SECRET_TEXT: Final = re.compile(
    f"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{{{_SECRET_CHARS}}}=?(?![A-Za-z0-9+/=])"
)
URL_SAFE_SECRET_TEXT: Final = re.compile(
    f"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{{{_SECRET_CHARS}}}=?(?![A-Za-z0-9_=-])"
)
# Recognised by shape alone.
_EXACT: Final = (CREDENTIAL_TEXT, CLIENT_SECRET_TEXT)
# Recognised by shape when the run mixes upper- and lower-case letters. Masking order matters:
# secrets before tails, whose mask would otherwise cut a secret into pieces no pattern knows.
_RANDOM_LOOKING: Final = (STANDARD_SECRET_TEXT, URL_SAFE_SECRET_TEXT, KEY_TAIL_TEXT)
_UPPER: Final = re.compile("[A-Z]")
_LOWER: Final = re.compile("[a-z]")


def _mixes_case(run: str) -> bool:
    return _UPPER.search(run) is not None and _LOWER.search(run) is not None


def holds_credential_text(value: str) -> bool:
    """Whether ``value`` holds a full API key or admin token, a key tail (whole or cut) or a client
    secret in standard or URL-safe base64, padded or not (see the module's description)."""
    if any(pattern.search(value) is not None for pattern in _EXACT):
        return True
    return any(
        _mixes_case(match.group())
        for pattern in _RANDOM_LOOKING
        for match in pattern.finditer(value)
    )


def mask_credential_text(value: str, mask: str) -> str:
    """``value`` with every part ``holds_credential_text`` recognises replaced by ``mask``."""

    def masked(match: re.Match[str]) -> str:
        return mask if _mixes_case(match.group()) else match.group()

    for pattern in _EXACT:
        value = pattern.sub(mask, value)
    for pattern in _RANDOM_LOOKING:
        value = pattern.sub(masked, value)
    return value


def recordable(value: str | None, shape: re.Pattern[str]) -> str | None:
    """``value`` if it matches ``shape`` whole and holds no credential text, else None: for a
    caller-given name that is written where anyone reading logs or the audit trail sees it."""
    if value is None or shape.fullmatch(value) is None or holds_credential_text(value):
        return None
    return value
