"""The service input checks' exact bounds and types, what their refusals never repeat, the
fields a key's view carries, and the helpers that cut and count what messages and logs show."""

from __future__ import annotations

import pytest
from service_fixtures import ACTOR

from uid2_operator.error_text import described, some_of
from uid2_operator.errors import InvalidInput, KeyringError
from uid2_operator.services import inputs
from uid2_operator.services.credentials import CredentialService
from uid2_operator.services.log_throttle import LogThrottle

TAIL = "Ab1Cd2Ef3Gh4Ij5Kl6Mn7Op8Qr9St0Uv1Wx2Yz"  # random-looking, both cases


def _refusal(call: object, *args: object, **kwargs: object) -> str:
    assert callable(call)
    with pytest.raises(InvalidInput) as caught:
        call(*args, **kwargs)
    return str(caught.value)


def test_text_is_bounded_inclusively_and_refuses_nul() -> None:
    assert inputs.text("x" * inputs.MAX_TEXT, "f") == "x" * inputs.MAX_TEXT
    assert "at most 1000 characters" in _refusal(inputs.text, "x" * 1001, "f")
    assert "NUL" in _refusal(inputs.text, "a\x00b", "f")
    assert "NUL" in _refusal(inputs.optional_search_text, "a\x00b", "f")


def test_integers_are_bounded_inclusively_and_a_bool_is_no_integer() -> None:
    assert inputs.integer(1000, "limit", low=1, high=1000) == 1000
    assert "between 1 and 1000" in _refusal(inputs.integer, 1001, "limit", low=1, high=1000)
    assert "must be an integer" in _refusal(inputs.integer, True, "limit", low=0, high=1000)


def test_a_mapping_is_no_list_of_names() -> None:
    assert "list of strings" in _refusal(inputs.names, {"GENERATOR": 1}, "roles")


def test_a_search_value_may_have_a_secret_s_shape() -> None:
    # An opt-out's audit target id is the base64 of its hash: a client secret's shape.
    target = "A" * 21 + "b" * 22 + "="
    assert inputs.optional_search_text(target, "target_id", max_length=200) == target


@pytest.mark.parametrize(
    ("value", "call"),
    [
        (TAIL, lambda v: inputs.credential_id(v, "key_id")),  # a tail alone: no id
        ("UID2-C-L-1-abcdef" + TAIL, lambda v: inputs.credential_id(v, "key_id")),  # glued on
        (TAIL + "-" + TAIL, lambda v: inputs.text(v, "action", max_length=64)),  # too long
        (TAIL, lambda v: inputs.text(v, "name")),
    ],
)
def test_a_refusal_never_repeats_the_value(value: str, call: object) -> None:
    assert TAIL not in _refusal(call, value)


def test_service_bounds(svc: CredentialService) -> None:
    site = svc.create_participant(ACTOR, name="P", type="publisher", roles=["GENERATOR"]).site_id
    svc.create_key(ACTOR, site_id=site, name="k", roles=["GENERATOR"], expires_in_days=3650)
    assert "between 1 and 3650" in _refusal(
        svc.create_key, ACTOR, site_id=site, name="k", roles=["GENERATOR"], expires_in_days=3651
    )
    assert "between 1 and 1000" in _refusal(svc.key_page, ACTOR, limit=1001)
    assert "at most 64" in _refusal(svc.list_audit, ACTOR, action="x" * 65)
    assert svc.list_audit(ACTOR, target_id="A" * 21 + "b" * 22 + "=") == []


def test_an_issued_key_formats_without_its_key_or_secret(svc: CredentialService) -> None:
    site = svc.create_participant(ACTOR, name="P", type="publisher", roles=["GENERATOR"]).site_id
    issued = svc.create_key(ACTOR, site_id=site, name="k", roles=["GENERATOR"])
    for shown in (f"{issued}", format(issued, ""), f"{issued!s}", f"{issued!r}"):
        assert issued.key not in shown
        assert issued.secret not in shown
    assert set(issued.key_view.to_json()) == {
        "key_id", "site_id", "name", "roles", "state", "created_at_ms", "created_by",
        "expires_at_ms", "retires_at_ms", "rotated_from", "rotated_to", "revoked_at_ms",
        "revoked_by", "revoked_reason", "last_used_at_ms", "rotation_due", "usage", "usable",
    }  # fmt: skip


def test_an_error_line_keeps_three_hundred_characters_of_its_message() -> None:
    assert described(KeyringError("x" * 400)) == "KeyringError: " + "x" * 300


def test_ids_past_those_shown_are_counted() -> None:
    assert some_of([1, 2], 1) == "1 and 1 more"
    assert some_of([1, 2], 2) == "1, 2"


def test_a_full_throttle_keeps_the_keys_still_in_their_interval() -> None:
    throttle: LogThrottle[str] = LogThrottle(interval_ms=1_000, max_entries=2)
    assert throttle.due("a", 0) == 0
    assert throttle.due("b", 900) == 0
    assert throttle.due("c", 1_500) == 0  # full: "a" has ended and goes, "b" stays
    assert throttle.due("b", 1_600) is None
    assert throttle.due("a", 1_700) == 0
