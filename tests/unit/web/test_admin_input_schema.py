"""The admin API's input declarations: what they check, and the JSON Schema they render.

The patterns are written out character class by character class, so they are checked here
against what Python itself does: ``str.strip()`` (names are trimmed), Unicode category Cc (refused
everywhere), and ``str.upper()``/``str.lower()`` (role and type names are compared in one case).
"""

from __future__ import annotations

import re
import sys
import unicodedata
from typing import Any, cast

import pytest

from uid2_operator.domain.participants import ParticipantType
from uid2_operator.domain.roles import AdminRole, ClientRole, parse_admin_roles, parse_client_roles
from uid2_operator.errors import InvalidInput
from uid2_operator.web.admin_api import admin_tokens, create_admin_app, sharing
from uid2_operator.web.admin_api.bodies import (
    CONTROL_CHARACTERS,
    NON_BLANK_PATTERN,
    TEXT_PATTERN,
    TRIMMED_SPACE,
    BodyRule,
    BodySpec,
    Field,
    Kind,
    Values,
    parse_query,
    pattern_class,
)
from uid2_operator.web.admin_api.openapi import build_document
from uid2_operator.web.admin_api.participants import CLIENT_ROLE_PATTERN, CONTACT_PATTERN
from uid2_operator.web.admin_api.routing import Call, Operation, Reply, RouteTableError

EVERY_CHARACTER = "".join(map(chr, range(sys.maxunicode + 1)))


def _matching(character_class: str) -> set[str]:
    return set(re.findall(f"[{character_class}]", EVERY_CHARACTER))


def test_control_characters_are_unicode_category_cc() -> None:
    cc = {ch for ch in EVERY_CHARACTER if unicodedata.category(ch) == "Cc"}
    assert _matching(CONTROL_CHARACTERS) == cc


def test_trimmed_space_is_what_strip_removes_besides_control_characters() -> None:
    stripped = {ch for ch in EVERY_CHARACTER if ch.isspace() and unicodedata.category(ch) != "Cc"}
    assert _matching(TRIMMED_SPACE) == stripped


def _case_fellows(fold: str) -> dict[str, set[str]]:
    """Non-ASCII characters by the ASCII text they fold to with ``str.<fold>()``."""
    fellows: dict[str, set[str]] = {}
    for ch in EVERY_CHARACTER:
        folded = getattr(ch, fold)()
        if not ch.isascii() and folded.isascii() and folded.isalpha():
            fellows.setdefault(folded, set()).add(ch)
    return fellows


@pytest.mark.parametrize(
    ("names", "fold", "pattern", "parse"),
    [
        (list(ClientRole.__members__), "upper", CLIENT_ROLE_PATTERN, parse_client_roles),
        (
            list(AdminRole.__members__),
            "upper",
            admin_tokens.CREATE_BODY.fields[1].pattern,
            parse_admin_roles,
        ),
        (
            [t.value for t in ParticipantType],
            "lower",
            sharing.SHARING_BODY.fields[2].pattern,
            lambda names: [ParticipantType(n.strip().lower()) for n in names],
        ),
    ],
    ids=["client roles", "admin roles", "participant types"],
)
def test_a_name_pattern_admits_every_spelling_the_service_reads(
    names: list[str], fold: str, pattern: str, parse: Any
) -> None:
    fellows = _case_fellows(fold)
    spellings: list[str] = []
    for name in names:
        spellings += [name, name.swapcase(), f"\u3000{name.lower()} ", f"{name.upper()}\u00a0"]
        for index, letter in enumerate(name):
            for fellow in fellows.get(letter, set()):
                spellings.append(name[:index] + fellow + name[index + 1 :])
        # A character folding to several letters (the German sharp s is "SS") would spell a
        # name the pattern, one character per letter, cannot see.
        assert not [text for text in fellows if len(text) > 1 and text in name]
    for text in spellings:
        assert re.search(pattern, text), text
        parse([text])
    for text in ["", " ", "WIZARD", names[0] + "x", names[0][:-1], f"{names[0]}\t", "a b"]:
        assert not re.search(pattern, text), text


def test_the_contact_pattern_is_the_services_address_rule_after_trimming() -> None:
    for good in ["ops@example.com", " ops@example.com\u3000", "a.b+c@d.e.f", "é@ü.中国"]:
        assert re.search(CONTACT_PATTERN, good), good
    for bad in ["ops@example", "o ps@example.com", "ops@@example.com", "@example.com", "a@b."]:
        assert not re.search(CONTACT_PATTERN, bad), bad


NAME = Field(
    "name",
    Kind.STRING,
    "A name",
    required=True,
    max_length=10,
    min_length=1,
    pattern=NON_BLANK_PATTERN,
    pattern_rule="must not be blank",
)
TAGS = Field(
    "tags",
    Kind.STRING_LIST,
    "Tags",
    min_items=1,
    max_items=2,
    pattern=NON_BLANK_PATTERN,
    pattern_rule="must not be blank",
)


def _refusal(field: Field, value: object) -> str:
    with pytest.raises(InvalidInput) as refused:
        field.check(value)
    return str(refused.value)


def test_a_field_refuses_text_its_pattern_or_minimum_length_excludes() -> None:
    assert NAME.check(" x ") == " x "  # trimming is the service's
    assert _refusal(NAME, "") == "Field 'name' must be at least 1 character(s)"
    assert _refusal(NAME, " \u3000 ") == "Field 'name' must not be blank"
    assert _refusal(TAGS, []) == "Field 'tags' takes at least 1 item(s)"
    assert _refusal(TAGS, ["a", " "]) == "Each item of 'tags' must not be blank"
    assert TAGS.check(["a", "b"]) == ("a", "b")


def test_a_pattern_class_names_only_what_a_basic_plane_escape_can() -> None:
    assert pattern_class(((0x200B, 0x200F), (0xFEFF, 0xFEFF))) == "\\u200b-\\u200f\\ufeff"
    # "\\u1bca0" would read as U+1BCA and a "0" in both Python and ECMA-262.
    with pytest.raises(ValueError, match="up to U\\+FFFF"):
        pattern_class(((0x1BCA0, 0x1BCA3),))


def test_a_pattern_needs_its_rule_in_words() -> None:
    with pytest.raises(ValueError, match="rule in words"):
        Field("x", Kind.STRING, "X", pattern=TEXT_PATTERN)


def test_every_bound_a_query_integer_declares_can_be_written() -> None:
    since = Field("since_seq", Kind.INTEGER, "Since", maximum=2**62)
    assert parse_query([("since_seq", str(2**62))], [since]).integer("since_seq") == 2**62
    with pytest.raises(InvalidInput):
        parse_query([("since_seq", str(2**62 + 1))], [since])


def test_the_body_schema_states_lengths_patterns_nulls_and_rules() -> None:
    kind = Field("kind", Kind.STRING, "Kind", choices=("a", "b"))
    count = Field("count", Kind.INTEGER, "Count", minimum=1, maximum=9)
    rule = {"if": {"properties": {"kind": {"const": "a"}}}, "then": {"required": ["count"]}}

    def count_for_a(values: Values) -> None:
        if values.optional_text("kind") == "a" and values.optional_integer("count") is None:
            raise InvalidInput("Kind a takes a count")

    spec = BodySpec(
        (NAME, TAGS, kind, count), rules=(BodyRule("A takes a count", rule, count_for_a),)
    )
    schema = spec.json_schema()
    properties = schema["properties"]
    assert properties["name"] == {
        "type": "string",
        "maxLength": 10,
        "minLength": 1,
        "pattern": NON_BLANK_PATTERN,
        "description": "A name",
    }
    assert properties["tags"]["type"] == ["array", "null"]
    assert (properties["tags"]["minItems"], properties["tags"]["items"]["pattern"]) == (
        1,
        NON_BLANK_PATTERN,
    )
    assert (properties["kind"]["type"], properties["kind"]["enum"]) == (
        ["string", "null"],
        ["a", "b", None],
    )
    assert properties["count"]["type"] == ["integer", "null"]
    assert "42.0" in properties["count"]["description"]
    assert schema["required"] == ["name"]
    assert schema["allOf"] == [{"description": "A takes a count", **rule}]
    # The rule is checked with the fields, while the body is read.
    assert spec.parse(b'{"name": "n", "kind": "a", "count": 1}').integer("count") == 1
    with pytest.raises(InvalidInput, match="Kind a takes a count"):
        spec.parse(b'{"name": "n", "kind": "a"}')


def _no_reply(call: Call) -> Reply:
    raise AssertionError("not called")


class _NoServices:
    store = None
    credentials = None
    admin = None


def test_every_path_parameter_has_a_schema_and_an_undeclared_one_stops_the_document() -> None:
    operations = create_admin_app(cast(Any, _NoServices())).state.operations
    document = build_document(operations, version="test")
    for methods in document["paths"].values():
        for operation in methods.values():
            for parameter in operation.get("parameters", []):
                assert parameter["schema"]["type"] in ("string", "integer")
                assert set(parameter["schema"]) & {"pattern", "enum", "minimum"}, parameter
    unknown = Operation(
        "GET",
        "/things/{thing_id}",
        operations[0].access,
        _no_reply,
        operation_id="getThing",
        summary="A thing",
        response="Health",
        tag="things",
        path_params=(("thing_id", "The thing"),),
    )
    with pytest.raises(RouteTableError, match="thing_id"):
        build_document([unknown], version="test")
