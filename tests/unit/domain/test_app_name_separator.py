"""An app name never holds a comma: app ids (package names, bundle ids, App Store ids) have none,
and the command line separates app names with commas. The one rule every surface applies refuses
it, and the admin API's declared pattern for ``app_names`` says the same of every text."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from uid2_operator.domain.origins import (
    APP_NAME_SEPARATOR,
    MAX_APP_NAME_LENGTH,
    validate_app_name,
    validate_app_names,
)
from uid2_operator.errors import InvalidInput
from uid2_operator.web.admin_api.sharing import APP_NAME_PATTERN

# Letters, digits, the punctuation of app ids, the separator, white space around it and characters
# that show nothing (a zero-width space, a soft hyphen, a Hangul filler).
APP_NAME_ALPHABET = "abcXYZ019._-,: \u00a0\u3000\u200b\u00ad\u3164"


@pytest.mark.parametrize(
    "name",
    ["com.a,com.b", ",", "com.a,", ",com.a", " com.a,com.b ", "123456789,987654321", "a,,b"],
)
def test_an_app_name_with_a_comma_is_refused(name: str) -> None:
    with pytest.raises(InvalidInput, match="no commas") as refused:
        validate_app_name(name)
    assert "each app id" in refused.value.detail


def test_a_list_holding_a_name_with_a_comma_is_refused_whole() -> None:
    with pytest.raises(InvalidInput, match="no commas"):
        validate_app_names(["com.example.app", "com.a,com.b", "123456789"])


def test_app_ids_without_a_comma_still_pass() -> None:
    names = ["com.example.app", "123456789", "org.example.app_beta-2", "id1234:5"]
    assert validate_app_names(names) == tuple(sorted(names, key=str.lower))


@pytest.mark.parametrize(
    "name",
    [
        "\u200b",  # shows nothing at all
        "com.exa\u200bmple.app",  # lists exactly as com.example.app
        "com.example\u00ad.app",
        "com.example.app\ufe0f",
        "com.example.app\U000e0041",  # a tag character, past what the declared pattern names
        "com.\u3164",  # a Hangul filler, shown as a blank
    ],
)
def test_an_app_name_with_an_invisible_character_is_refused(name: str) -> None:
    with pytest.raises(InvalidInput, match="must not contain invisible characters"):
        validate_app_name(name)
    with pytest.raises(InvalidInput, match="must not contain invisible characters"):
        validate_app_names(["com.example.app", name])


@settings(deadline=None)
@given(st.text(alphabet=APP_NAME_ALPHABET, max_size=12))
@example("com.a,com.b")
@example(" com.a ")
@example("com.\u200ba")
def test_the_declared_pattern_admits_exactly_what_the_rule_accepts(text: str) -> None:
    declared = re.search(APP_NAME_PATTERN, text) is not None
    try:
        validate_app_name(text)
    except InvalidInput:
        accepted = False
    else:
        accepted = True
    assert declared == accepted
    if APP_NAME_SEPARATOR in text:
        assert not accepted


@settings(deadline=None)
@given(
    st.lists(
        st.text(alphabet="abcXYZ019._-", min_size=1, max_size=MAX_APP_NAME_LENGTH // 4),
        min_size=2,
        max_size=4,
    )
)
def test_names_run_together_with_commas_are_never_one_name(parts: list[str]) -> None:
    with pytest.raises(InvalidInput, match="no commas"):
        validate_app_name(APP_NAME_SEPARATOR.join(parts))
