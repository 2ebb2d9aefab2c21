"""``uid2-operator keyring ...`` through the main command, on an initialised SQLite data dir."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from uid2_operator.bootstrap import ensure_keyring, load_keyring, open_services, upgrade_database
from uid2_operator.cli import main
from uid2_operator.cli.keyring import keyring
from uid2_operator.domain.sealing import Keyring
from uid2_operator.services.context import SYSTEM
from uid2_operator.settings import Settings

BUCKETS = "64"
_AMBIENT = ("UID2_ENVIRONMENT", "UID2_KEYRING", "UID2_KEYRING_FILE", "UID2_DATABASE_URL")
KINDS = ["client_secrets", "encryption_keys", "salt_table", "salt_chunks", "keypairs"]


def _settings(data_dir: Path) -> Settings:
    return Settings.from_env({"UID2_SALT_BUCKETS": BUCKETS}, data_dir=str(data_dir))


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """After ``init``, with one participant, one API key and one keypair."""
    root = tmp_path_factory.mktemp("keyring-cli")
    settings = _settings(root)
    ensure_keyring(settings)
    upgrade_database(settings)
    opened = open_services(settings)
    try:
        site = opened.credentials.create_participant(
            SYSTEM, name="Pub", type="publisher", roles=["GENERATOR"]
        ).site_id
        opened.material.initialise()
        opened.credentials.create_key(SYSTEM, site_id=site, name="web", roles=["GENERATOR"])
        opened.sharing.create_keypair(SYSTEM, site_id=site)
    finally:
        opened.close()
    return root


@pytest.fixture
def data_dir(template: Path, tmp_path: Path) -> Path:
    target = tmp_path / "data"
    target.mkdir()
    for item in template.iterdir():
        (target / item.name).write_bytes(item.read_bytes())
    (target / "keyring.json").chmod(0o600)
    return target


class Run:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.runner = CliRunner()

    def __call__(self, *args: str, env: dict[str, str] | None = None) -> Result:
        environment: dict[str, str | None] = dict.fromkeys(_AMBIENT)
        environment["UID2_SALT_BUCKETS"] = BUCKETS
        environment.update(env or {})
        return self.runner.invoke(main, ["--data-dir", str(self.data_dir), *args], env=environment)


@pytest.fixture
def run(data_dir: Path) -> Run:
    return Run(data_dir)


def _json(result: Result) -> dict[str, Any]:
    assert result.exit_code == 0, (result.stdout, result.stderr)
    document = json.loads(result.stdout)
    assert isinstance(document, dict)
    return document


def _encryption_keys(data_dir: Path) -> int:
    opened = open_services(_settings(data_dir))
    try:
        with opened.store.read() as rx:
            return len(rx.encryption_keys.list_all())
    finally:
        opened.close()


def test_the_group_is_registered_with_its_five_commands() -> None:
    assert main.commands["keyring"] is keyring
    assert set(keyring.commands) == {
        "status",
        "add-version",
        "activate-version",
        "reseal",
        "drop-version",
    }


def test_status_json_names_every_field(run: Run, data_dir: Path) -> None:
    document = _json(run("keyring", "status", "--json"))
    keys = _encryption_keys(data_dir)
    assert document == {
        "source": str((data_dir / "keyring.json").absolute()),
        "development": True,
        "active_version": 1,
        "keyring_versions": [1],
        "versions": [
            {
                "version": 1,
                "in_keyring": True,
                "active": True,
                "sealed": {
                    "client_secrets": 1,
                    "encryption_keys": keys,
                    "salt_table": 2,
                    "salt_chunks": 1,
                    "keypairs": 1,
                },
                "total": keys + 5,
            }
        ],
        "unknown_versions": [],
        "to_reseal": 0,
        "active_version_dropped": False,
    }
    assert _json(run("--json", "keyring", "status")) == document  # the global flag counts too


def test_status_text_shows_versions_and_counts_never_key_bytes(run: Run, data_dir: Path) -> None:
    result = run("keyring", "status")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:4] == [
        f"keyring         {(data_dir / 'keyring.json').absolute()}",
        "development     yes",
        "active version  1",
        "versions        1",
    ]
    assert lines[5].split() == ["version", "in", "keyring", *KINDS, "total"]
    keys = _encryption_keys(data_dir)
    assert lines[6].split() == [
        "1",
        "(active)",
        "yes",
        "1",
        str(keys),
        "2",
        "1",
        "1",
        str(keys + 5),
    ]
    assert lines[-1] == "Every item is sealed under the active version 1."
    ring = load_keyring(_settings(data_dir))
    for secret in (ring.kek(1), ring.pepper):
        assert secret.hex() not in result.output
        assert json.dumps(ring.to_json()) not in result.output
    assert "keks" not in result.output
    assert result.stderr == ""


def test_the_three_steps_through_the_command_line(run: Run, data_dir: Path) -> None:
    keys = _encryption_keys(data_dir)
    total = keys + 5

    added = run("keyring", "add-version")
    assert added.exit_code == 0, added.stderr
    assert added.stdout.splitlines() == [
        "Added key-encryption key version 2; it is now active (versions 1, 2).",
        "Running `uid2-operator serve` processes that read this keyring file seal with version "
        "2 within about a second (copy the file to every other keyring file: each data "
        "directory, on this machine or another).",
        "Until it reaches them, their processes cannot open what is sealed under version 2 "
        "(`keyring add-version --inactive` avoids that gap).",
        "Then run `uid2-operator keyring reseal`.",
    ]
    keyring_file = data_dir / "keyring.json"
    assert stat.S_IMODE(keyring_file.stat().st_mode) == 0o600
    assert load_keyring(_settings(data_dir)).versions == (1, 2)
    status = _json(run("keyring", "status", "--json"))
    assert status["to_reseal"] == total
    text = run("keyring", "status").stdout.splitlines()
    assert text[-1] == (
        f"{total} items are not under the active version 2: run `uid2-operator keyring reseal`."
    )
    assert [v["active"] for v in status["versions"]] == [False, True]

    refused = run("keyring", "drop-version", "1")
    assert refused.exit_code == 2
    assert refused.stdout == ""
    assert refused.stderr == (
        f"Error: Version 1 still seals {total} items (client_secrets 1, encryption_keys {keys}, "
        "salt_table 2, salt_chunks 1, keypairs 1); dropping it would make them unreadable. Run "
        "uid2-operator keyring reseal first\n"
    )
    refused_json = run("keyring", "drop-version", "1", "--json")
    assert refused_json.exit_code == 2
    assert json.loads(refused_json.stdout)["error"]["code"] == "invalid_input"
    assert load_keyring(_settings(data_dir)).versions == (1, 2)

    resealed = run("keyring", "reseal")
    assert resealed.exit_code == 0, resealed.stderr
    assert resealed.stdout.splitlines()[0] == (
        f"Re-sealed {total} items (client_secrets 1, encryption_keys {keys}, salt_table 2, "
        "salt_chunks 1, keypairs 1) under version 2, from versions 1."
    )
    again = _json(run("keyring", "reseal", "--json"))
    assert list(again) == ["at_ms", "active_version", "from_versions", "resealed", "total"]
    assert (again["active_version"], again["from_versions"], again["total"]) == (2, [], 0)
    assert again["resealed"] == dict.fromkeys(KINDS, 0)
    nothing = run("keyring", "reseal")
    assert nothing.stdout == "Nothing to re-seal: every item is under the active version 2.\n"

    dropped = _json(run("keyring", "drop-version", "1", "--json"))
    assert list(dropped) == [
        "at_ms",
        "version",
        "active_version",
        "keyring_versions",
        "source",
        "active",
    ]
    assert dropped["active"] is False
    assert (dropped["version"], dropped["active_version"], dropped["keyring_versions"]) == (
        1,
        2,
        [2],
    )
    assert dropped["source"] == str(keyring_file.absolute())
    assert load_keyring(_settings(data_dir)).versions == (2,)
    assert stat.S_IMODE(keyring_file.stat().st_mode) == 0o600
    status = _json(run("keyring", "status", "--json"))
    assert [v["version"] for v in status["versions"]] == [2]
    assert status["versions"][0]["total"] == total

    third = _json(run("keyring", "add-version", "--json"))
    assert list(third) == [
        "at_ms",
        "version",
        "active_version",
        "keyring_versions",
        "source",
        "active",
    ]
    assert third["keyring_versions"] == [2, 3]
    assert third["active"] is True


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["drop-version", "1"], "Version 1 is the active key-encryption key version"),
        (["drop-version", "4"], "The keyring has no key-encryption key version 4 (it holds 1)"),
        (["drop-version", "one"], "'one' is not a valid integer"),
        (["drop-version"], "Missing argument 'VERSION'"),
    ],
)
def test_drop_version_refusals_exit_2(run: Run, args: list[str], message: str) -> None:
    result = run("keyring", *args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert load_keyring(_settings(run.data_dir)).versions == (1,)


def test_a_keyring_from_the_environment_is_refused_with_what_to_provision(
    run: Run, data_dir: Path
) -> None:
    ring = (data_dir / "keyring.json").read_text()
    (data_dir / "keyring.json").unlink()
    env = {"UID2_KEYRING": ring}
    status = _json(run("keyring", "status", "--json", env=env))
    assert status["source"] == "environment"
    # Each refusal reserves the number it names, so that no keyring file is given it again.
    for version, args in ((2, ["add-version"]), (3, ["add-version", "--json"])):
        result = run("keyring", *args, env=env)
        assert result.exit_code == 2
        assert result.stderr == (
            "Error: The keyring comes from UID2_KEYRING and cannot be written here: provision "
            f"keyring JSON there with version {version} added (32 random bytes, base64) as "
            "active_kek_version, restart, then run uid2-operator keyring reseal\n"
        )
    assert json.loads(result.stdout)["error"]["code"] == "invalid_input"
    assert not (data_dir / "keyring.json").exists()
    assert _json(run("keyring", "reseal", "--json", env=env))["total"] == 0


def test_status_warns_about_versions_the_keyring_lacks(run: Run, data_dir: Path) -> None:
    assert run("keyring", "add-version").exit_code == 0
    assert run("keyring", "reseal").exit_code == 0
    settings = _settings(data_dir)
    rotated = load_keyring(settings)
    # A hand edit that loses the version everything is sealed under.
    lost = Keyring({1: rotated.kek(1)}, 1, rotated.pepper, development=True)
    (data_dir / "keyring.json").write_text(lost.to_json())
    result = run("keyring", "status", "--json")
    document = _json(result)
    assert document["unknown_versions"] == [2]
    assert document["versions"][1]["in_keyring"] is False
    assert result.stderr.startswith(
        "Warning: items are sealed under versions the keyring lacks (version 2: "
    )
    text = run("keyring", "status")
    assert any(line.split()[:2] == ["2", "NO"] for line in text.stdout.splitlines())
    assert text.stdout.splitlines()[-1].endswith(
        "; put versions 2 back into the keyring, then run `uid2-operator keyring reseal`."
    )
    refused = run("keyring", "reseal")
    assert refused.exit_code == 1
    assert refused.stderr.startswith(
        "Error: Items are sealed under key-encryption key versions the keyring lacks (version 2:"
    )


def test_a_missing_keyring_is_an_error_not_a_new_keyring(run: Run, data_dir: Path) -> None:
    (data_dir / "keyring.json").unlink()
    for command in ("status", "add-version", "reseal"):
        result = run("keyring", command)
        assert result.exit_code == 1
        assert result.stderr.startswith("Error: No keyring")
    assert not (data_dir / "keyring.json").exists()


EVERY_COMMAND = (
    ["status"],
    ["add-version"],
    ["reseal"],
    ["activate-version", "2"],
    ["drop-version", "1"],
)


def _refusals(run: Run, env: dict[str, str]) -> Iterator[tuple[list[str], dict[str, str]]]:
    """Each keyring command's ``--json`` error document (each must exit 1)."""
    for command in EVERY_COMMAND:
        result = run("--json", "keyring", *command, env=env)
        assert result.exit_code == 1, (command, result.output)
        yield command, json.loads(result.stdout)["error"]


@pytest.mark.parametrize("parent", ["exists", "missing"])
def test_a_keyring_file_given_and_missing_is_named_by_every_command(
    run: Run, tmp_path: Path, parent: str
) -> None:
    missing = tmp_path / ("elsewhere" if parent == "exists" else "no-such-dir") / "k.json"
    if parent == "exists":
        missing.parent.mkdir()
    env = {"UID2_KEYRING_FILE": str(missing)}
    for command, error in _refusals(run, env):
        assert error["code"] == "keyring_missing", command
        assert error["message"].startswith(
            f"No keyring: the keyring file {missing} does not exist"
        ), command
    assert not missing.parent.exists() or list(missing.parent.iterdir()) == []  # no lock left


def test_a_keyring_file_that_cannot_be_looked_at_is_named_by_every_command(
    run: Run, tmp_path: Path
) -> None:
    unreadable = tmp_path / f"{'x' * 300}.json"  # longer than a file name may be
    env = {"UID2_KEYRING_FILE": str(unreadable)}
    for command, error in _refusals(run, env):
        assert error["code"] == "keyring_invalid", (command, error)
        assert error["message"].startswith("The keyring file "), command
        assert error["message"].endswith("cannot be read: File name too long"), command


def test_commands_need_an_initialised_database(tmp_path: Path) -> None:
    settings = _settings(tmp_path / "fresh")
    ensure_keyring(settings)
    result = Run(settings.data_dir)("keyring", "status")
    assert result.exit_code == 1
    assert "schema revision" in result.stderr
