"""``keys rotate``, ``salts rotate`` and ``optout add``, invoked as click groups."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from uid2_operator.bootstrap import ensure_keyring, open_services, upgrade_database
from uid2_operator.cli.material import COMMANDS, keys, optout, salts
from uid2_operator.cli.runtime import GlobalOptions
from uid2_operator.clock import FixedClock, SystemClock
from uid2_operator.domain.salts import LOCAL_BUCKET_COUNT, rotation_effective_at
from uid2_operator.settings import Settings


@pytest.fixture(scope="module")
def migrated_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory with a keyring and a migrated database, but no material yet."""
    root = tmp_path_factory.mktemp("cli-migrated")
    settings = Settings.from_env({}, data_dir=str(root))
    ensure_keyring(settings)
    upgrade_database(settings)
    return root


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, migrated_template: Path) -> Path:
    """A data directory after ``init`` (keyring, migrated database, material), copied per test."""
    root = tmp_path_factory.mktemp("cli-template")
    _copy(migrated_template, root)
    opened = open_services(Settings.from_env({}, data_dir=str(root)))
    try:
        opened.material.initialise()
    finally:
        opened.close()
    return root


def _copy(source: Path, target: Path) -> None:
    for item in source.iterdir():
        if item.is_file():
            (target / item.name).write_bytes(item.read_bytes())


@pytest.fixture
def data_dir(template: Path, tmp_path: Path) -> Path:
    target = tmp_path / "data"
    target.mkdir()
    _copy(template, target)
    return target


@pytest.fixture
def bare_dir(migrated_template: Path, tmp_path: Path) -> Path:
    target = tmp_path / "bare"
    target.mkdir()
    _copy(migrated_template, target)
    return target


_LIFETIME_VARIABLES = (
    "UID2_IDENTITY_TOKEN_EXPIRES_AFTER_S",
    "UID2_REFRESH_TOKEN_EXPIRES_AFTER_S",
    "UID2_REFRESH_IDENTITY_AFTER_S",
    "UID2_SHARING_TOKEN_EXPIRY_S",
    "UID2_MAX_BIDSTREAM_LIFETIME_S",
    "UID2_MAX_SHARING_LIFETIME_S",
)


@pytest.fixture
def invoke(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> click.testing.CliRunner:
    for name in ("UID2_ENVIRONMENT", "UID2_KEYRING", "UID2_KEYRING_FILE", "UID2_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    for name in ("UID2_EXPIRED_KEY_RETENTION_S", *_LIFETIME_VARIABLES):
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


def test_keys_rotate_after_init_has_nothing_due(invoke: CliRunner, data_dir: Path) -> None:
    first = run(invoke, data_dir, keys, "rotate")
    assert first.exit_code == 0, first.output
    assert "No key was due for rotation." in first.stdout
    second = run(invoke, data_dir, keys, "rotate", "--json")
    assert second.exit_code == 0, second.output
    body = document(second)
    assert body["created"] == []
    assert "initialised" not in body


def _stored_state(data_dir: Path) -> tuple[int, int, bool, int]:
    """Keysets, encryption keys, whether a salt table exists, and the change sequence."""
    opened = open_services(Settings.from_env({}, data_dir=str(data_dir)))
    try:
        with opened.store.read() as tx:
            return (
                len(tx.keysets.list_all()),
                len(tx.encryption_keys.list_all()),
                tx.salts.header() is not None,
                tx.change_seq(),
            )
    finally:
        opened.close()


@pytest.mark.parametrize(
    ("group", "args"),
    [
        (keys, ["rotate"]),
        (salts, ["rotate"]),
        (optout, ["add", "--email", "someone@example.com"]),
    ],
    ids=["keys", "salts", "optout"],
)
def test_material_commands_before_init_refuse_and_create_nothing(
    invoke: CliRunner, bare_dir: Path, group: click.Group, args: list[str]
) -> None:
    before = _stored_state(bare_dir)
    assert before[:3] == (0, 0, False)
    result = run(invoke, bare_dir, group, *args, "--json")
    assert result.exit_code == 1, result.output
    assert result.stderr == (
        "Error: The encryption material is not initialised; run uid2-operator init first\n"
    )
    error = document(result)["error"]
    assert isinstance(error, dict)
    assert error["code"] == "not_found"
    assert _stored_state(bare_dir) == before


def test_salts_rotate(invoke: CliRunner, data_dir: Path) -> None:
    result = run(invoke, data_dir, salts, "rotate", "--fraction", "0.25", "--json")
    assert result.exit_code == 0, result.output
    body = document(result)
    assert body["rotated"] == LOCAL_BUCKET_COUNT // 4
    assert body["version"] == 2
    assert set(body) == {
        "at_ms",
        "fraction",
        "rotated",
        "bucket_count",
        "version",
        "chunks_rewritten",
        "effective_at_ms",
    }
    # The new salts take effect at the first UTC midnight more than an hour after the rotation.
    at_ms, effective_at_ms = body["at_ms"], body["effective_at_ms"]
    assert isinstance(at_ms, int)
    assert effective_at_ms == rotation_effective_at(at_ms)
    text = run(invoke, data_dir, salts, "rotate")
    assert text.exit_code == 0, text.output
    assert f"of {LOCAL_BUCKET_COUNT} buckets" in text.stdout
    assert "version" in text.stdout
    assert re.search(r"takes effect\s+\d{4}-\d\d-\d\dT00:00:00Z", text.stdout), text.stdout
    default = run(invoke, data_dir, salts, "rotate", "--json")
    assert default.exit_code == 0, default.output
    assert document(default)["fraction"] == 0.05  # the documented default: a twentieth


def test_salts_rotate_in_the_last_hour_of_a_day_takes_effect_at_the_midnight_after(
    invoke: CliRunner, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    midnight = (SystemClock().now_ms() // 86_400_000 + 2) * 86_400_000
    monkeypatch.setattr(SystemClock, "now_ms", lambda _self: midnight - 2000)
    result = run(invoke, data_dir, salts, "rotate", "--fraction", "0.25", "--json")
    assert result.exit_code == 0, result.output
    body = document(result)
    assert (body["at_ms"], body["effective_at_ms"]) == (midnight - 2000, midnight + 86_400_000)
    text = run(invoke, data_dir, salts, "rotate")
    assert text.exit_code == 0, text.output
    day_after = datetime.fromtimestamp(midnight / 1000 + 86_400, UTC).date().isoformat()
    assert re.search(rf"takes effect\s+{day_after}T00:00:00Z", text.stdout), text.stdout


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


# ------------------------------------------------------------------------- expired key purge

DAY_MS = 86_400_000


def _material_made_days_ago(directory: Path, days: int) -> set[int]:
    """Initialise the material as if ``init`` had run ``days`` ago; the ids of its keys."""
    settings = Settings.from_env({}, data_dir=str(directory))
    opened = open_services(settings, clock=FixedClock(SystemClock().now_ms() - days * DAY_MS))
    try:
        return {k.key_id for k in opened.material.initialise().keys_created}
    finally:
        opened.close()


def test_keys_rotate_purges_keys_long_past_their_expiry(invoke: CliRunner, bare_dir: Path) -> None:
    old = _material_made_days_ago(bare_dir, 100)  # 30-day keys, expired 70 days ago
    result = run(invoke, bare_dir, keys, "rotate", "--json")
    assert result.exit_code == 0, result.output
    body = document(result)
    purged = body["purged"]
    assert isinstance(purged, list)
    assert {k["key_id"] for k in purged} == old
    assert set(purged[0]) == {"key_id", "keyset_id", "site_id", "created", "activates", "expires"}
    assert "secret" not in result.stdout
    created = body["created"]
    assert isinstance(created, list)
    assert len(created) == len(old)  # successors first: no keyset is left without a key
    assert _stored_state(bare_dir)[1] == len(old)
    again = run(invoke, bare_dir, keys, "rotate")
    assert again.exit_code == 0, again.output
    assert "No key was due for rotation.\nPurged 0 keys that expired at least 31 days ago.\n" in (
        again.stdout
    )


def test_keys_rotate_says_how_many_it_purged(invoke: CliRunner, bare_dir: Path) -> None:
    old = _material_made_days_ago(bare_dir, 100)
    result = run(invoke, bare_dir, keys, "rotate")
    assert result.exit_code == 0, result.output
    assert f"Purged {len(old)} keys that expired at least 31 days ago." in result.stdout


@pytest.mark.parametrize(
    ("retention", "shown"), [(80 * 86_400, "80 days"), (80 * 86_400 + 1, "6912001 s")]
)
def test_keys_rotate_keeps_keys_within_a_raised_retention(
    invoke: CliRunner,
    bare_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    retention: int,
    shown: str,
) -> None:
    _material_made_days_ago(bare_dir, 100)  # expired 70 days ago: kept for 80
    monkeypatch.setenv("UID2_EXPIRED_KEY_RETENTION_S", str(retention))
    result = run(invoke, bare_dir, keys, "rotate", "--json")
    assert result.exit_code == 0, result.output
    assert document(result)["purged"] == []
    human = run(invoke, bare_dir, keys, "rotate")
    assert f"Purged 0 keys that expired at least {shown} ago." in human.stdout


@pytest.mark.parametrize(
    ("env", "minimum"),
    [
        ({"UID2_EXPIRED_KEY_RETENTION_S": "86400"}, 31 * 86_400),
        (
            {
                "UID2_EXPIRED_KEY_RETENTION_S": str(31 * 86_400),
                "UID2_SHARING_TOKEN_EXPIRY_S": str(40 * 86_400),
            },
            41 * 86_400,
        ),
    ],
)
def test_keys_rotate_refuses_a_retention_below_the_minimum_and_changes_nothing(
    invoke: CliRunner,
    bare_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    minimum: int,
) -> None:
    _material_made_days_ago(bare_dir, 100)
    before = _stored_state(bare_dir)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = run(invoke, bare_dir, keys, "rotate", "--json")
    assert result.exit_code == 1, result.output
    given = env["UID2_EXPIRED_KEY_RETENTION_S"]
    assert result.stderr == (
        f"Error: UID2_EXPIRED_KEY_RETENTION_S ({given}) is below the minimum of {minimum} "
        "seconds in the local environment (the longest token lifetime plus one day): it may "
        "only raise the retention\n"
    )
    error = document(result)["error"]
    assert isinstance(error, dict)
    assert error["code"] == "settings_invalid"
    assert _stored_state(bare_dir) == before


def _world_with_recorded_lifetime(
    directory: Path, lifetime_s: int | None
) -> tuple[set[int], set[int]]:
    """Keys that expired 92 days ago and their successors, expired 40 days ago (made by
    processes that purge nothing), and ``lifetime_s`` recorded as a serve would at start-up."""
    settings = Settings.from_env({}, data_dir=str(directory))
    clock = FixedClock(SystemClock().now_ms() - 122 * DAY_MS)
    opened = open_services(settings, clock=clock)
    try:
        old = {k.key_id for k in opened.material.initialise().keys_created}
        clock.advance(52 * DAY_MS)
        recent = {k.key_id for k in opened.material.rotate_keys().created}
        if lifetime_s is not None:
            opened.material.record_token_lifetime(lifetime_s)
    finally:
        opened.close()
    return old, recent


def _key_ids(directory: Path) -> set[int]:
    opened = open_services(Settings.from_env({}, data_dir=str(directory)))
    try:
        with opened.store.read() as tx:
            return {k.id for k in tx.encryption_keys.list_all()}
    finally:
        opened.close()


def test_keys_rotate_keeps_keys_a_serve_with_longer_lifetimes_may_still_need(
    invoke: CliRunner, bare_dir: Path
) -> None:
    """A serve recorded a 90-day token lifetime; ``keys rotate`` runs with the default lifetimes
    (a 31-day retention of its own) and still keeps every key expired less than 91 days ago."""
    old, recent = _world_with_recorded_lifetime(bare_dir, 90 * 86_400)
    result = run(invoke, bare_dir, keys, "rotate", "--json")
    assert result.exit_code == 0, result.output
    body = document(result)
    assert body["retention_s"] == 91 * 86_400
    purged = body["purged"]
    assert isinstance(purged, list)
    assert {k["key_id"] for k in purged} == old
    assert set(body) == {"at_ms", "created", "keysets_created", "purged", "retention_s"}
    stored = _key_ids(bare_dir)
    assert recent <= stored
    assert not old & stored
    human = run(invoke, bare_dir, keys, "rotate")
    assert human.exit_code == 0, human.output
    assert "Purged 0 keys that expired at least 91 days ago." in human.stdout


def test_keys_rotate_without_a_recorded_lifetime_uses_its_own_retention(
    invoke: CliRunner, bare_dir: Path
) -> None:
    old, recent = _world_with_recorded_lifetime(bare_dir, None)
    result = run(invoke, bare_dir, keys, "rotate", "--json")
    assert result.exit_code == 0, result.output
    body = document(result)
    assert body["retention_s"] == 31 * 86_400
    purged = body["purged"]
    assert isinstance(purged, list)
    assert {k["key_id"] for k in purged} == old | recent
