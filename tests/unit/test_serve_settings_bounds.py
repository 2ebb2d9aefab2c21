"""Every seconds setting of ``serve`` has an upper bound, refused by name with the bound in the
message, before anything starts: a finite but absurd value (``1e306``) used to pass the check and
make every worker crash at start (the snapshot age in milliseconds overflowed). The operator
guide's settings table states each bound."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from uid2_operator.clock import FixedClock
from uid2_operator.serve_settings import (
    MAX_FLUSH_INTERVAL_S,
    MAX_KEY_RETENTION_S,
    MAX_KEY_ROTATION_INTERVAL_S,
    MAX_POLL_INTERVAL_S,
    MAX_SNAPSHOT_AGE_S,
    ServeSettings,
)
from uid2_operator.services.snapshot_source import SnapshotSource
from uid2_operator.settings import SettingsError

OPERATOR_GUIDE = Path(__file__).resolve().parents[2] / "docs" / "operator.md"

# The variable, its bound, and what else must be set for the value at the bound to pass.
BOUNDS = [
    ("UID2_POLL_INTERVAL_S", MAX_POLL_INTERVAL_S, {"UID2_MAX_SNAPSHOT_AGE_S": "86400"}),
    ("UID2_MAX_SNAPSHOT_AGE_S", MAX_SNAPSHOT_AGE_S, {}),
    ("UID2_FLUSH_INTERVAL_S", MAX_FLUSH_INTERVAL_S, {}),
    ("UID2_KEY_ROTATION_INTERVAL_S", MAX_KEY_ROTATION_INTERVAL_S, {}),
    ("UID2_EXPIRED_KEY_RETENTION_S", MAX_KEY_RETENTION_S, {}),
]


def test_the_bounds() -> None:
    assert (MAX_POLL_INTERVAL_S, MAX_SNAPSHOT_AGE_S, MAX_FLUSH_INTERVAL_S) == (3600, 86400, 3600)
    assert MAX_KEY_RETENTION_S == 632_448_000


@pytest.mark.parametrize(("variable", "bound", "others"), BOUNDS)
def test_a_value_at_the_bound_is_taken(variable: str, bound: float, others: dict[str, str]) -> None:
    ServeSettings.from_env({variable: f"{bound:g}" if bound < 1e6 else str(int(bound)), **others})


def _over(variable: str, bound: float) -> list[str]:
    """Just over the bound, and far over it (a retention is whole seconds, 12 digits at most)."""
    far = "9" * 12 if variable == "UID2_EXPIRED_KEY_RETENTION_S" else "1e306"
    return [str(int(bound) + 1), far]


@pytest.mark.parametrize(
    ("variable", "text", "bound", "others"),
    [
        (variable, text, bound, others)
        for variable, bound, others in BOUNDS
        for text in _over(variable, bound)
    ],
)
def test_a_value_over_the_bound_is_refused_naming_the_variable_and_the_bound(
    variable: str, text: str, bound: float, others: dict[str, str]
) -> None:
    with pytest.raises(SettingsError) as refused:
        ServeSettings.from_env({variable: text, **others})
    message = str(refused.value)
    assert variable in message
    if not (variable == "UID2_POLL_INTERVAL_S" and text == "1e306"):
        # (A poll interval of 1e306 s is refused first for not being below the snapshot age.)
        assert f"at most {bound:g} s" in message or f"at most {int(bound)} s" in message, message


@pytest.mark.parametrize(
    "changes",
    [
        {"max_snapshot_age_s": 1e306},
        {"max_snapshot_age_s": float("inf")},
        {"flush_interval_s": 1e306},
        {"poll_interval_s": 4000.0, "max_snapshot_age_s": 5000.0},
        {"expired_key_retention_s": MAX_KEY_RETENTION_S + 1},
    ],
)
def test_settings_made_in_code_are_held_to_the_same_bounds(changes: dict[str, float]) -> None:
    with pytest.raises(SettingsError, match="at most"):
        ServeSettings(**changes)  # type: ignore[arg-type]


def test_a_worker_starts_with_the_longest_snapshot_age_allowed() -> None:
    """What used to overflow: the snapshot source turns the age into milliseconds."""
    serve = ServeSettings.from_env({"UID2_MAX_SNAPSHOT_AGE_S": f"{MAX_SNAPSHOT_AGE_S:g}"})
    source = SnapshotSource(
        lambda previous, generation: None,  # type: ignore[arg-type,return-value]
        lambda: 0,
        FixedClock(),
        poll_interval_s=serve.poll_interval_s,
        max_snapshot_age_s=serve.max_snapshot_age_s,
    )
    try:
        assert source.problem == "No snapshot loaded: not loaded yet"
    finally:
        source.close()


@pytest.mark.parametrize(("variable", "bound", "others"), BOUNDS)
def test_the_operator_guide_states_each_bound(
    variable: str, bound: float, others: dict[str, str]
) -> None:
    del others
    rows = [
        line
        for line in OPERATOR_GUIDE.read_text().splitlines()
        if line.startswith(f"| `{variable}` |")
    ]
    assert len(rows) == 1, rows
    assert re.search(rf"at most {int(bound)}\b", rows[0]), rows[0]


# Every variable read as a whole number, spelled out so that one read another way fails here.
WHOLE_NUMBER_VARIABLES = [
    "UID2_IDENTITY_TOKEN_EXPIRES_AFTER_S",
    "UID2_REFRESH_TOKEN_EXPIRES_AFTER_S",
    "UID2_REFRESH_IDENTITY_AFTER_S",
    "UID2_SHARING_TOKEN_EXPIRY_S",
    "UID2_MAX_BIDSTREAM_LIFETIME_S",
    "UID2_MAX_SHARING_LIFETIME_S",
    "UID2_REQUEST_MAX_AGE_MS",
    "UID2_REQUEST_MAX_FUTURE_MS",
    "UID2_CSTG_MAX_AGE_MS",
    "UID2_CSTG_MAX_FUTURE_MS",
    "UID2_REPLAY_TABLE_ENTRIES",
    "UID2_TCF_VENDOR_ID",
    "UID2_EXPIRED_KEY_RETENTION_S",
    "UID2_HTTP_MAX_HEAD_BYTES",
]


@pytest.mark.parametrize("variable", WHOLE_NUMBER_VARIABLES)
@pytest.mark.parametrize(
    "text",
    [
        "\u0662\u0661",  # Arabic-Indic digits, which str.isdigit() and int() take
        "\uff12\uff11",  # fullwidth digits
        "1" * 5000,  # past the longest int() converts: a refusal, not an internal error
        "1" * 13,
    ],
)
def test_a_whole_number_is_ascii_digits_of_a_bounded_length(variable: str, text: str) -> None:
    with pytest.raises(SettingsError, match=f"^{variable} must be a whole number"):
        ServeSettings.from_env({variable: text})
