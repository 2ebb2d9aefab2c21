"""Request bodies, query strings and path values: declared field by field, checked before any
service runs.

Each route declares the fields it accepts (``BodySpec`` for a JSON body, a tuple of ``Field`` for
its query string, one ``Field`` per path parameter). Anything else is refused with a 4xx naming
the problem: a body that is not a JSON object (400), a field of the wrong type, out of range, too
long or too short, of the wrong form, unknown or missing, or fields a body's rule forbids together
(``BodyRule``: sites given with a sharing mode that takes none) (422). The same declarations
produce the route's JSON Schema in the OpenAPI document, so the document and the checks cannot
drift apart: a ``pattern`` is a regular expression that both JSON Schema (ECMA-262) and Python's
``re`` read the same way, and it is checked here as written. What no JSON Schema can state is said
in the field's description and left to the services: credential text pasted into a field,
references to stored data (a site that must exist), and that an integer is written without a
fraction (JSON Schema counts ``42.0`` as the integer 42; this API refuses it, like ``"42"``).

Why so strict:

* unknown fields are refused, so a misspelt optional field is an error instead of a silent no-op;
* values are never echoed in messages (a caller may paste a secret into the wrong field);
* every string must encode as UTF-8 and carry no control characters (lone surrogates and NUL would
  otherwise fail deep inside a database driver, as a 500, or end up in logs);
* integers are bounded here, before they reach a 64-bit database column;
* an explicit ``null`` means "not given": optional fields are documented as nullable.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, TypeAlias

from uid2_operator.domain.credential_text import holds_credential_text
from uid2_operator.domain.participants import BIDI_CONTROL_RANGES, INVISIBLE_BASIC_PLANE_RANGES
from uid2_operator.errors import InvalidInput, MalformedBody

MAX_BODY_BYTES = 64 * 1024
DEFAULT_MAX_LENGTH = 1000
DEFAULT_MAX_ITEMS = 32
# Up to 19 digits: every bound a field declares (at most 2**62) can be written.
_INTEGER_TEXT = re.compile(r"-?[0-9]{1,19}", re.ASCII)
_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}", re.ASCII)

# Character classes of the patterns below, written out with ``\uXXXX`` escapes: ECMA-262 and Python
# disagree on what ``\s`` covers, and agree on these.
CONTROL_CHARACTERS: Final = r"\u0000-\u001f\u007f-\u009f"
"""Unicode category Cc: refused in every string (``check_clean_text``)."""
TRIMMED_SPACE: Final = r"\u0020\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
"""What ``str.strip()`` removes from text without control characters: the services trim names,
role names, contacts, domain and app names before checking them."""
TEXT_PATTERN: Final = f"^[^{CONTROL_CHARACTERS}]*$"
"""Any text without control characters: what every string field accepts at least."""


def pattern_class(ranges: tuple[tuple[int, int], ...]) -> str:
    """``ranges`` as the inside of a regular expression character class, in ``\\uXXXX``
    escapes, which read the same in Python and ECMA-262 (the OpenAPI document's patterns).
    ValueError for a range past U+FFFF, which no such escape names."""
    if any(high > 0xFFFF for _, high in ranges):
        raise ValueError("a \\uXXXX pattern class names characters up to U+FFFF only")
    return "".join(
        f"\\u{low:04x}" if low == high else f"\\u{low:04x}-\\u{high:04x}" for low, high in ranges
    )


INVISIBLE: Final = pattern_class(INVISIBLE_BASIC_PLANE_RANGES)
"""The characters that show nothing a pattern can name, inside a character class."""
BIDI_CONTROLS: Final = pattern_class(BIDI_CONTROL_RANGES)
"""The bidirectional controls, inside a character class (``domain.participants``)."""
NON_BLANK_PATTERN: Final = (
    f"^[{TRIMMED_SPACE}{INVISIBLE}]*[^{CONTROL_CHARACTERS}{TRIMMED_SPACE}{INVISIBLE}{BIDI_CONTROLS}]"
    f"[^{CONTROL_CHARACTERS}{BIDI_CONTROLS}]*$"
)
"""Text that is not blank once trimmed and shows something, with no bidirectional controls
(``domain.participants.refuse_deceptive_text``)."""
NON_BLANK_RULE: Final = "must show a visible character, with no bidirectional controls"
LABEL_PATTERN: Final = f"^[{TRIMMED_SPACE}]*$|{NON_BLANK_PATTERN}"
"""Text that is blank once trimmed, or else as ``NON_BLANK_PATTERN`` asks: an optional label."""
LABEL_RULE: Final = "must be empty or show a visible character, with no bidirectional controls"
# Characters other than ASCII letters whose upper or lower case is one ASCII letter: dotless i
# (upper case 'I'), long s (upper case 'S') and the Kelvin sign (lower case 'k'). The services
# compare names in one case, so these spell the same names.
_ASCII_CASE_FELLOWS: Final = "\u0131\u017f\u212a"

Value: TypeAlias = str | int | tuple[str, ...]


def trimmed_pattern(inner: str) -> str:
    """Text that matches ``inner`` (an unanchored pattern) once trimmed."""
    return f"^[{TRIMMED_SPACE}]*(?:{inner})[{TRIMMED_SPACE}]*$"


def any_case_pattern(words: Iterable[str], fold: Callable[[str], str]) -> str:
    """Text that is one of ``words`` once trimmed and folded to their case by ``fold``
    (``str.upper`` or ``str.lower``), as the services read role and participant type names."""

    def letter(ch: str) -> str:
        fellows = dict.fromkeys(c for c in (ch, ch.lower(), ch.upper(), *_ASCII_CASE_FELLOWS))
        same = [c for c in fellows if fold(c) == fold(ch)]
        return f"[{''.join(same)}]" if len(same) > 1 else re.escape(ch)

    return trimmed_pattern("|".join("".join(letter(ch) for ch in word) for word in words))


def integer_schema(minimum: int, maximum: int) -> dict[str, Any]:
    return {"type": "integer", "minimum": minimum, "maximum": maximum}


INTEGER_NOTE: Final = "an integer written without a fraction or exponent: 42, not 42.0 or 4.2e1"
"""JSON Schema counts 42.0 as an integer and cannot say otherwise: the description does."""


def nullable(schema: Mapping[str, Any]) -> dict[str, Any]:
    """``schema`` that also admits ``null`` (which means "not given")."""
    widened = dict(schema)
    widened["type"] = [schema["type"], "null"]
    if "enum" in schema:
        widened["enum"] = [*schema["enum"], None]
    return widened


class Kind(StrEnum):
    STRING = "string"
    INTEGER = "integer"
    STRING_LIST = "string_list"


@dataclass(frozen=True, slots=True)
class Field:
    """One accepted field (of a body, a query string or a path) and its limits."""

    name: str
    kind: Kind
    description: str
    required: bool = False
    max_length: int = DEFAULT_MAX_LENGTH  # strings, and each item of a string list
    max_items: int = DEFAULT_MAX_ITEMS
    minimum: int = 0  # integers are always bounded: they end up in 32- and 64-bit columns
    maximum: int = 2**31 - 1
    choices: tuple[str, ...] = ()  # strings only
    min_length: int = 0  # strings, and each item of a string list
    min_items: int = 0
    # Strings, and each item of a string list, must match ``pattern`` (``TEXT_PATTERN`` when
    # empty); ``pattern_rule`` says what it asks, in words, for the refusal ("must not be blank").
    pattern: str = ""
    pattern_rule: str = ""

    def __post_init__(self) -> None:
        if self.pattern and not self.pattern_rule:
            raise ValueError(f"field {self.name}: a pattern needs its rule in words")

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any]
        description = self.description
        if self.kind is Kind.STRING:
            schema = self._text_schema()
        elif self.kind is Kind.INTEGER:
            schema = integer_schema(self.minimum, self.maximum)
            description = f"{description} ({INTEGER_NOTE})"
        else:
            schema = {"type": "array", "items": self._text_schema(), "maxItems": self.max_items}
            if self.min_items:
                schema["minItems"] = self.min_items
        schema["description"] = description
        return schema

    def _text_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "string", "maxLength": self.max_length}
        if self.min_length:
            schema["minLength"] = self.min_length
        if self.choices:
            schema["enum"] = list(self.choices)
        else:
            schema["pattern"] = self.pattern or TEXT_PATTERN
        return schema

    def check(self, value: object) -> Value:
        """``value`` as decoded from JSON, checked against this field; never echoes it."""
        if self.kind is Kind.STRING:
            if not isinstance(value, str):
                raise InvalidInput(f"Field '{self.name}' must be a string")
            return self._text(value, f"Field '{self.name}'")
        if self.kind is Kind.INTEGER:
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidInput(f"Field '{self.name}' must be an integer")
            return self._bounded(value)
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise InvalidInput(f"Field '{self.name}' must be a list of strings")
        self._counted(value)
        return tuple(self._text(item, f"Each item of '{self.name}'") for item in value)

    def check_text(self, text: str, where: str = "Query parameter") -> Value:
        """A query-string or path value (always text), converted to this field's kind."""
        if self.kind is Kind.INTEGER:
            if not _INTEGER_TEXT.fullmatch(text):
                raise InvalidInput(f"{where} '{self.name}' must be an integer")
            return self._bounded(int(text))
        if self.kind is Kind.STRING:
            return self._text(text, f"{where} '{self.name}'")
        raise AssertionError(f"query and path parameters are strings or integers, not {self.kind}")

    def _counted(self, items: list[Any]) -> None:
        if len(items) > self.max_items:
            raise InvalidInput(f"Field '{self.name}' takes at most {self.max_items} items")
        if len(items) < self.min_items:
            raise InvalidInput(f"Field '{self.name}' takes at least {self.min_items} item(s)")

    def _bounded(self, value: int) -> int:
        if not self.minimum <= value <= self.maximum:
            raise InvalidInput(
                f"'{self.name}' must be an integer between {self.minimum} and {self.maximum}"
            )
        return value

    def _text(self, value: str, what: str) -> str:
        if len(value) > self.max_length:
            raise InvalidInput(f"{what} must be at most {self.max_length} characters")
        if len(value) < self.min_length:
            raise InvalidInput(f"{what} must be at least {self.min_length} character(s)")
        check_clean_text(value, what)
        if self.choices and value not in self.choices:
            raise InvalidInput(f"{what} must be one of: {', '.join(self.choices)}")
        # After check_clean_text: with no line break left, '$' means the same here as in ECMA-262.
        if self.pattern and re.search(self.pattern, value) is None:
            raise InvalidInput(f"{what} {self.pattern_rule}")
        return value


def check_clean_text(value: str, what: str) -> None:
    """Refuse text that cannot be stored or logged safely: lone surrogates, control characters."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{what} is not valid Unicode text") from None
    if any(unicodedata.category(ch) == "Cc" for ch in value):
        raise InvalidInput(f"{what} must not contain control characters")


class Values:
    """Checked values by field name, with typed accessors for handlers."""

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, Value]) -> None:
        self._values = dict(values)

    def text(self, name: str) -> str:
        value = self._values[name]
        if not isinstance(value, str):
            raise AssertionError(f"{name} is declared as another kind")
        return value

    def optional_text(self, name: str) -> str | None:
        return self.text(name) if name in self._values else None

    def integer(self, name: str) -> int:
        value = self._values[name]
        if isinstance(value, bool) or not isinstance(value, int):
            raise AssertionError(f"{name} is declared as another kind")
        return value

    def optional_integer(self, name: str) -> int | None:
        return self.integer(name) if name in self._values else None

    def texts(self, name: str) -> tuple[str, ...]:
        value = self._values[name]
        if not isinstance(value, tuple):
            raise AssertionError(f"{name} is declared as another kind")
        return value

    def optional_texts(self, name: str) -> tuple[str, ...] | None:
        return self.texts(name) if name in self._values else None


EMPTY = Values({})


@dataclass(frozen=True, slots=True)
class BodyRule:
    """A rule between fields of one body (which fields a mode takes): ``schema`` states it in the
    document (a JSON Schema the whole object must match), ``check`` enforces it on the checked
    values, raising ``InvalidInput``. A body that breaks it is refused while the body is read, as
    a field that breaks its declaration is, before any service runs; the service may check the
    same rule again for its other callers."""

    description: str
    schema: Mapping[str, Any]
    check: Callable[[Values], None]

    def json_schema(self) -> dict[str, Any]:
        return {"description": self.description, **self.schema}


@dataclass(frozen=True, slots=True)
class BodySpec:
    """The JSON object a route accepts. An empty spec accepts only no body or ``{}``.

    ``rules`` are rules between fields, checked once every field is (``BodyRule``) and stated in
    the document as schemas the whole object must also match (``allOf``).
    """

    fields: tuple[Field, ...] = ()
    rules: tuple[BodyRule, ...] = ()

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                # An explicit null means "not given" (``check_fields``): optional fields take it.
                f.name: f.json_schema() if f.required else nullable(f.json_schema())
                for f in self.fields
            },
        }
        required = [f.name for f in self.fields if f.required]
        if required:
            schema["required"] = required
        if self.rules:
            schema["allOf"] = [rule.json_schema() for rule in self.rules]
        return schema

    def parse(self, raw: bytes) -> Values:
        values = check_fields(decode_object(raw), self.fields)
        for rule in self.rules:
            rule.check(values)
        return values


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, value in pairs:
        if name in result:
            raise MalformedBody("The request body repeats a field")
        result[name] = value
    return result


def _refuse_constant(name: str) -> Any:
    raise MalformedBody("The request body is not valid JSON (NaN and Infinity are not JSON)")


def decode_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object. A zero-length body is ``{}`` (routes whose fields are
    optional); any other body must be JSON, so one of whitespace only is malformed. JSON between
    systems is UTF-8 (RFC 8259 §8.1), with no byte-order mark: the bytes are decoded as that
    and nothing else (``json.loads`` given bytes would also take UTF-16 and UTF-32, which a
    proxy reading the body as UTF-8 would see otherwise), as the operator API decodes them."""
    if not raw:
        return {}
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedBody("The request body is not valid JSON (it must be UTF-8)") from None
    try:
        document = json.loads(
            text, object_pairs_hook=_refuse_duplicates, parse_constant=_refuse_constant
        )
    except (ValueError, RecursionError):
        # Also a byte-order mark, and integers longer than Python's conversion limit.
        raise MalformedBody("The request body is not valid JSON") from None
    if not isinstance(document, dict):
        kind = "an array" if isinstance(document, list) else "a JSON scalar"
        raise MalformedBody(f"The request body must be a JSON object, not {kind}")
    return document


def describe_name(name: str) -> str:
    """A field name fit to repeat in a message: a plain identifier, never pasted text (a key's
    tail, or a secret in URL-safe base64 without padding, can be a plain identifier too)."""
    if _PLAIN_NAME.fullmatch(name) and not holds_credential_text(name):
        return f"'{name}'"
    return "(a field with an unexpected name)"


def check_fields(document: Mapping[str, Any], fields: Iterable[Field]) -> Values:
    declared = {f.name: f for f in fields}
    unknown = sorted(describe_name(name) for name in document if name not in declared)
    if unknown:
        allowed = ", ".join(declared) or "none"
        raise InvalidInput(f"Unknown field(s): {', '.join(unknown)} (allowed: {allowed})")
    missing = [name for name, f in declared.items() if f.required and document.get(name) is None]
    if missing:
        raise InvalidInput(f"Missing required field(s): {', '.join(missing)}")
    return Values(
        {
            name: declared[name].check(value)
            for name, value in document.items()
            if value is not None  # an explicit null means "not given" for optional fields
        }
    )


def check_path(params: Mapping[str, str], fields: Iterable[Field]) -> None:
    """Refuse a path value that breaks its parameter's declaration (the shape the OpenAPI
    document gives it), as a body field or query parameter is refused: before the route runs."""
    for field in fields:
        field.check_text(params[field.name], "Path parameter")


def parse_query(items: Iterable[tuple[str, str]], fields: Iterable[Field]) -> Values:
    declared = {f.name: f for f in fields}
    values: dict[str, Value] = {}
    for name, text in items:
        field = declared.get(name)
        if field is None:
            allowed = ", ".join(declared) or "none"
            raise InvalidInput(
                f"Unknown query parameter {describe_name(name)} (allowed: {allowed})"
            )
        if name in values:
            raise InvalidInput(f"Query parameter '{name}' is given more than once")
        values[name] = field.check_text(text)
    return Values(values)
