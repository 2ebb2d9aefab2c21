"""``keys rotate``, ``salts rotate`` and ``optout add``, invoked as click groups."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from uid2_operator.bootstrap import ensure_keyring, upgrade_database
from uid2_operator.cli.material import COMMANDS, keys, optout, salts
from uid2_operator.cli.runtime import GlobalOptions
from uid2_operator.domain.salts import LOCAL_BUCKET_COUNT
from uid2_operator.settings import Settings


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory after ``init`` (keyring and migrated database), copied per test."""
    root = tmp_path_factory.mktemp("cli-template")
    settings = Settings.from_env({}, data_dir=str(root))
    ensure_keyring(settings)
    upgrade_database(settings)
    return root


@pytest.fixture
def data_dir(template: Path, tmp_path: Path) -> Path:
    target = tmp_path / "data"
    target.mkdir()
    for item in template.iterdir():
        if item.is_file():
            (target / item.name).write_bytes(item.read_bytes())
    return target


@pytest.fixture
def invoke(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> click.testing.CliRunner:
    for name in ("UID2_ENVIRONMENT", "UID2_KEYRING", "UID2_KEYRING_FILE", "UID2_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    return CliRunner()


def run(
    runner: CliRunner, data_dir: Path, group: click.Group, *args: str, json_global: bool = False
) -> Result:
    options = GlobalOptions(data_dir=str(data_dir), database_url=None, json=json_global)
    return runner.invoke(group, list(args), obj=options)


def document(result: Result) -> dict[str, object]:
    parsed = json.loads(result.stdout)
    assert isinstance(parsed, dict)
    return parsed


def test_the_groups_are_exported_for_registration() -> None:
    assert [g.name for g in COMMANDS] == ["keys", "salts", "optout"]
    assert set(keys.commands) == {"rotate"}
    assert set(salts.commands) == {"rotate"}
    assert set(optout.commands) == {"add"}


def test_keys_rotate_initialises_then_has_nothing_due(invoke: CliRunner, data_dir: Path) -> None:
    first = run(invoke, data_dir, keys, "rotate")
    assert first.exit_code == 0, first.output
    assert "initialised: 3 keysets, 3 keys, salts created" in first.stdout
    assert f"({LOCAL_BUCKET_COUNT} buckets)" in first.stdout
    assert "-1" in first.stdout
    second = run(invoke, data_dir, keys, "rotate", "--json")
    assert second.exit_code == 0, second.output
    body = document(second)
    assert body["created"] == []
    assert body["initialised"] is None
    third = run(invoke, data_dir, keys, "rotate")
    assert "No key was due for rotation." in third.stdout


def test_keys_rotate_json_on_a_new_directory_lists_the_first_keys(
    invoke: CliRunner, data_dir: Path
) -> None:
    result = run(invoke, data_dir, keys, "rotate", json_global=True)
    assert result.exit_code == 0, result.output
    body = document(result)
    created = body["created"]
    assert isinstance(created, list)
    assert [k["keyset_id"] for k in created] == [-2, -1, 2]
    assert all("secret" not in k for k in created)
    initialised = body["initialised"]
    assert isinstance(initialised, dict)
    assert initialised["salts_created"] is True


def test_salts_rotate(invoke: CliRunner, data_dir: Path) -> None:
    result = run(invoke, data_dir, salts, "rotate", "--fraction", "0.25", "--json")
    assert result.exit_code == 0, result.output
    body = document(result)
    assert body["rotated"] == LOCAL_BUCKET_COUNT // 4
    assert body["version"] == 2
    text = run(invoke, data_dir, salts, "rotate")
    assert text.exit_code == 0, text.output
    assert f"of {LOCAL_BUCKET_COUNT} buckets" in text.stdout
    assert "version" in text.stdout


@pytest.mark.parametrize("fraction", ["0", "1.5", "abc"])
def test_salts_rotate_refuses_a_bad_fraction(
    invoke: CliRunner, data_dir: Path, fraction: str
) -> None:
    result = run(invoke, data_dir, salts, "rotate", "--fraction", fraction)
    assert result.exit_code == 2
    assert "--fraction" in result.stderr


@pytest.mark.parametrize(
    ("option", "value", "kind"),
    [
        ("--email", "Someone@Example.com", "email"),
        ("--phone", "+12025550123", "phone"),
        ("--email-hash", "a" * 64, "email"),
        ("--phone-hash", "b" * 64, "phone"),
    ],
)
def test_optout_add(invoke: CliRunner, data_dir: Path, option: str, value: str, kind: str) -> None:
    result = run(invoke, data_dir, optout, "add", option, value, "--json")
    assert result.exit_code == 0, result.output
    body = document(result)
    assert body["identity_type"] == kind
    assert body["already_opted_out"] is False
    assert isinstance(body["advertising_id"], str)
    again = run(invoke, data_dir, optout, "add", option, value)
    assert again.exit_code == 0, again.output
    assert "already opted out  yes" in again.stdout
    assert value not in again.stdout


@pytest.mark.parametrize("args", [[], ["--email", "a@example.com", "--phone", "+12025550123"]])
def test_optout_add_needs_exactly_one_identity(
    invoke: CliRunner, data_dir: Path, args: list[str]
) -> None:
    result = run(invoke, data_dir, optout, "add", *args)
    assert result.exit_code == 2
    assert "exactly one of" in result.stderr


def test_invalid_input_is_one_clean_line_that_does_not_echo_it(
    invoke: CliRunner, data_dir: Path
) -> None:
    result = run(invoke, data_dir, optout, "add", "--phone", "private-555")
    assert result.exit_code == 2
    assert result.stderr == "Error: Invalid phone\n"
    assert result.stdout == ""
    as_json = run(invoke, data_dir, optout, "add", "--phone", "private-555", "--json")
    assert as_json.exit_code == 2
    assert document(as_json) == {"error": {"code": "invalid_input", "message": "Invalid phone"}}
    assert "private" not in as_json.output


def test_a_missing_keyring_fails_cleanly(invoke: CliRunner, data_dir: Path) -> None:
    (data_dir / "keyring.json").unlink()
    result = run(invoke, data_dir, keys, "rotate", json_global=True)
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: No keyring")
    assert result.stderr.count("\n") == 1
    error = document(result)["error"]
    assert isinstance(error, dict)
    assert error["code"] == "keyring_missing"
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_a_database_never_migrated_fails_cleanly(invoke: CliRunner, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    ensure_keyring(Settings.from_env({}, data_dir=str(empty)))
    result = run(invoke, empty, salts, "rotate")
    assert result.exit_code == 1
    assert "schema revision" in result.stderr
