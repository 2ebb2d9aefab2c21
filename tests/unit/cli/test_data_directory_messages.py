"""A command that finds no keyring where the data directory should hold one says which directory
it looked in (its absolute path: a relative ``--data-dir`` depends on where the command runs)
and how to name the right one, before it suggests ``init``."""

from __future__ import annotations

from pathlib import Path

import pytest

from uid2_operator.bootstrap import ensure_keyring
from uid2_operator.cli.output import MAX_MESSAGE_LENGTH
from uid2_operator.cli.runtime import require_data_directory
from uid2_operator.errors import KeyringMissing
from uid2_operator.settings import Settings


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The working directory: not the one serve runs in."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _refusal(settings: Settings) -> str:
    with pytest.raises(KeyringMissing) as refused:
        require_data_directory(settings)
    message = str(refused.value)
    path = str(settings.data_dir.resolve())
    assert path in message
    assert len(message) - len(path) <= MAX_MESSAGE_LENGTH - 75  # room for a long path
    return message


def test_a_missing_data_directory_is_named_with_its_absolute_path(elsewhere: Path) -> None:
    message = _refusal(Settings.from_env({}, data_dir="data"))
    assert message.startswith(f"No keyring: there is no data directory {elsewhere / 'data'}. ")
    named = message.index("--data-dir (or UID2_DATA_DIR)")
    assert "the directory serve runs in" in message
    assert named < message.index("`uid2-operator init`")
    assert not (elsewhere / "data").exists()


@pytest.mark.parametrize(
    ("environment", "otherwise"),
    [("local", "or run init to create one"), ("prod", "prod needs a provisioned keyring")],
)
def test_a_data_directory_without_a_keyring_is_named_with_its_absolute_path(
    elsewhere: Path, environment: str, otherwise: str
) -> None:
    (elsewhere / "data").mkdir()
    settings = Settings.from_env({"UID2_ENVIRONMENT": environment}, data_dir="data")
    message = _refusal(settings)
    assert message.startswith(f"No keyring: the data directory {elsewhere / 'data'} has no ")
    assert message.index("--data-dir (or UID2_DATA_DIR)") < message.index(otherwise)
    assert (environment == "prod") is ("init" not in message)


def test_a_keyring_present_or_given_elsewhere_is_not_refused(elsewhere: Path) -> None:
    settings = Settings.from_env({}, data_dir="data")
    ensure_keyring(settings)
    require_data_directory(settings)
    # Given as UID2_KEYRING or UID2_KEYRING_FILE: loading it says what is wrong, if anything.
    require_data_directory(Settings.from_env({"UID2_KEYRING": "{}"}, data_dir="missing"))
    named = {"UID2_KEYRING_FILE": str(elsewhere / "nowhere.json")}
    require_data_directory(Settings.from_env(named, data_dir="missing"))
