"""The ``uid2-operator`` command line, end to end, on SQLite and PostgreSQL.

In-process runs (click's CliRunner) cover every command, its JSON output and its errors; a few
runs of the installed entry point check the real process boundary (exit status, streams).
"""

from __future__ import annotations

import errno
import json
import os
import resource
import sqlite3
import stat
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from cli_harness import Cli, Database, run_installed, settings_of, state_of

from uid2_operator.bootstrap import open_services
from uid2_operator.cli import main
from uid2_operator.wire.encoding import b64decode
from uid2_operator.wire.envelope import TimestampWindow, parse_request, seal_request
from uid2_operator.wire.scope import IdentityScope


@pytest.fixture
def cli(database: Database) -> Cli:
    return Cli(database)


@pytest.fixture
def sqlite_cli(tmp_path: Path) -> Cli:
    return Cli(Database("sqlite", tmp_path / "data", None))


def ok(cli: Cli, *args: str) -> Any:
    """Run with --json; expect success and exactly one JSON document on stdout."""
    result = cli(*args, "--json")
    assert result.exit_code == 0, (args, result.stdout, result.stderr)
    return json.loads(result.stdout)


def seeded(cli: Cli) -> dict[str, Any]:
    ok(cli, "init")
    site = ok(cli, "participant", "create", "--name", "Pub", "--type", "publisher",
              "--roles", "GENERATOR,MAPPER")["site_id"]  # fmt: skip
    issued = ok(cli, "key", "create", "--site-id", str(site), "--name", "web",
                "--roles", "GENERATOR")  # fmt: skip
    return {"site": site, "key": issued}


# ------------------------------------------------------------------------------------ init


def test_init_is_idempotent_and_shows_the_admin_token_once(cli: Cli) -> None:
    first = ok(cli, "init")
    assert first["admin_token"].startswith(first["admin_token_id"] + ".")
    assert first["database"] == cli.database.backend
    assert first["keyring_created"] is True
    keyring = cli.database.data_dir / "keyring.json"
    assert stat.S_IMODE(keyring.stat().st_mode) == 0o600
    second = ok(cli, "init")
    assert (second["admin_token_id"], second["admin_token"]) == (None, None)
    assert second["keyring_created"] is False
    services = open_services(settings_of(cli.database))
    try:
        assert services.admin.authenticate(first["admin_token"]).roles == ["SUPER_USER"]
    finally:
        services.close()
    human = cli("init")
    assert human.exit_code == 0
    assert "already initialised" in human.stdout


def test_init_in_prod_needs_a_provisioned_keyring(sqlite_cli: Cli) -> None:
    result = sqlite_cli("init", "--environment", "prod")
    assert result.exit_code == 1
    assert "keyring" in result.stderr.lower()
    assert result.stderr.count("\n") == 1
    assert not (sqlite_cli.database.data_dir / "keyring.json").exists()


def test_a_data_directory_keeps_its_environment(sqlite_cli: Cli) -> None:
    assert ok(sqlite_cli, "init", "--environment", "integ")["environment"] == "integ"
    site = ok(sqlite_cli, "participant", "create", "--name", "P", "--type", "dsp",
              "--roles", "ID_READER")["site_id"]  # fmt: skip
    issued = ok(sqlite_cli, "key", "create", "--site-id", str(site), "--name", "k",
                "--roles", "ID_READER")  # fmt: skip
    assert issued["key"].startswith(f"UID2-C-I-{site}-")
    refused = sqlite_cli("init", "--environment", "prod", "--json")
    assert refused.exit_code == 2
    assert json.loads(refused.stdout)["error"]["code"] == "invalid_input"


def test_db_upgrade(cli: Cli) -> None:
    ok(cli, "init")  # db upgrade upgrades only a database init set up
    first = ok(cli, "db", "upgrade")
    assert ok(cli, "db", "upgrade") == first
    assert first["database"] == cli.database.backend


def test_db_upgrade_names_a_sqlite_database_given_by_url_as_sqlite(
    sqlite_cli: Cli, tmp_path: Path
) -> None:
    # A sqlite:/// database URL is taken as well as the embedded default; both are SQLite.
    url = {"UID2_DATABASE_URL": f"sqlite:///{tmp_path / 'by-url.db'}"}
    for command in (["init"], ["db", "upgrade"]):
        result = sqlite_cli(*command, "--json", env=url)
        assert result.exit_code == 0, result.stderr
        assert json.loads(result.stdout)["database"] == "sqlite", command
    assert (tmp_path / "by-url.db").is_file()
    human = sqlite_cli("db", "upgrade", env=url)
    assert human.stdout.startswith("sqlite schema at revision ")


def test_commands_before_init_fail_cleanly(sqlite_cli: Cli) -> None:
    result = sqlite_cli("key", "list")
    assert result.exit_code == 1
    assert "keyring" in result.stderr.lower()
    assert "Traceback" not in result.stderr + result.stdout


# ------------------------------------------------------------------------- every command


def test_every_command_prints_one_json_document(cli: Cli) -> None:
    ok(cli, "init")
    participant = ok(cli, "participant", "create", "--name", "Acme", "--type", "dsp",
                     "--site-id", "1234", "--roles", "GENERATOR,MAPPER,ID_READER",
                     "--contact", "ops@acme.example")  # fmt: skip
    assert participant["site_id"] == 1234
    assert participant["roles"] == ["GENERATOR", "ID_READER", "MAPPER"]
    assert [p["site_id"] for p in ok(cli, "participant", "list")] == [1234]
    assert ok(cli, "participant", "show", "1234")["contacts"] == ["ops@acme.example"]
    assert ok(cli, "participant", "disable", "1234")["enabled"] is False
    assert ok(cli, "participant", "enable", "1234")["enabled"] is True
    assert ok(cli, "participant", "set-roles", "1234", "--roles", "GENERATOR,MAPPER,SHARER")[
        "roles"
    ] == ["GENERATOR", "MAPPER", "SHARER"]

    issued = ok(cli, "key", "create", "--site-id", "1234", "--name", "web",
                "--roles", "GENERATOR,MAPPER", "--expires-in-days", "90")  # fmt: skip
    assert {"key_id", "key", "secret", "roles", "site_id"} <= issued.keys()
    assert issued["key"].startswith(issued["key_id"] + ".")
    assert len(b64decode(issued["secret"])) == 32
    assert (issued["roles"], issued["site_id"]) == (["GENERATOR", "MAPPER"], 1234)
    key_id = issued["key_id"]

    listed = ok(cli, "key", "list")
    assert [k["key_id"] for k in listed] == [key_id]
    assert "key" not in listed[0]
    assert "secret" not in listed[0]
    assert [k["key_id"] for k in ok(cli, "key", "list", "--site-id", "1234")] == [key_id]
    assert ok(cli, "key", "show", key_id)["expires_at_ms"] is not None
    assert ok(cli, "key", "rename", key_id, "--name", "server")["name"] == "server"
    assert ok(cli, "key", "set-roles", key_id, "--roles", "MAPPER")["roles"] == ["MAPPER"]
    assert ok(cli, "key", "disable", key_id)["state"] == "disabled"
    assert ok(cli, "key", "enable", key_id)["state"] == "active"
    secret = ok(cli, "key", "rotate-secret", key_id, "--grace-days", "1")
    assert secret["key_id"] == key_id
    assert secret["secret"] != issued["secret"]
    successor = ok(cli, "key", "rotate", key_id, "--grace-days", "0")
    assert successor["key_id"] != key_id
    assert successor["roles"] == ["MAPPER"]
    assert {"key", "secret"} <= successor.keys()
    assert ok(cli, "key", "show", key_id)["rotated_to"] == successor["key_id"]
    revoked = ok(cli, "key", "revoke", successor["key_id"], "--reason", "test over")
    assert (revoked["state"], revoked["revoked_reason"]) == ("revoked", "test over")

    events = ok(cli, "audit", "list", "--limit", "1000")
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert all(e["actor"].startswith("cli:") for e in events)
    assert [e["action"] for e in ok(cli, "audit", "list", "--target", key_id,
                                    "--action", "key.rotate")] == ["key.rotate"]  # fmt: skip
    assert len(ok(cli, "audit", "list", "--limit", "2")) == 2
    assert ok(cli, "audit", "verify")["ok"] is True

    token = ok(cli, "admin-token", "create", "--name", "ci", "--roles", "READ_ONLY")
    assert token["token"].startswith(token["token_id"] + ".")
    assert len(ok(cli, "admin-token", "list")) == 2
    assert ok(cli, "admin-token", "revoke", token["token_id"])["revoked_at_ms"] is not None

    before_subcommand = cli("--json", "key", "list")
    assert json.loads(before_subcommand.stdout)[0]["key_id"] == key_id


def test_human_output(sqlite_cli: Cli) -> None:
    state = seeded(sqlite_cli)
    key_id = state["key"]["key_id"]
    for args, expected in [
        (["participant", "list"], "Pub"),
        (["participant", "show", str(state["site"])], "GENERATOR,MAPPER"),
        (["key", "list"], key_id),
        (["key", "show", key_id], "web"),
        (["audit", "list"], "key.create"),
        (["audit", "verify"], "intact"),
        (["admin-token", "list"], "SUPER_USER"),
    ]:
        result = sqlite_cli(*args)
        assert result.exit_code == 0, result.stderr
        assert expected in result.stdout
    rotated = sqlite_cli("key", "rotate", key_id)
    assert "retiring" in sqlite_cli("key", "list").stdout
    assert "shown only this once" in rotated.stderr
    assert "retiring" in sqlite_cli("key", "show", key_id).stdout


def test_a_cli_made_key_opens_a_sealed_request(cli: Cli) -> None:
    issued = seeded(cli)["key"]
    secret = b64decode(issued["secret"])
    now_ms = 1_700_000_000_000
    body = seal_request(b'{"email":"user@example.com"}', secret=secret, now_ms=now_ms,
                        nonce=os.urandom(8), random=os.urandom)  # fmt: skip
    services = open_services(settings_of(cli.database))
    try:
        client = services.credentials.resolve_client(issued["key"])
    finally:
        services.close()
    assert client.key.key_id == issued["key_id"]
    assert {role.value for role in client.roles} == {"GENERATOR"}
    envelope = parse_request(
        body,
        octet_stream=True,
        secret=client.secrets[0],
        now_ms=now_ms,
        window=TimestampWindow(max_past_ms=60_000, max_future_ms=60_000),
        scope=IdentityScope.UID2,
    )
    assert envelope.payload == {"email": "user@example.com"}


# ------------------------------------------------------------------------------ bad input

HUGE = "n" * 5000
UNKNOWN_KEY = "UID2-C-L-3-AAAAAA"
MALFORMED_SUBSCRIPTION = "subscription_id must be 10 characters of "

# (argv with {site}, {key}, {keytext}, {secret}, {token}, {subscription} placeholders, expected
# exit status[, the start of the expected error message])
BAD_COMMANDS: list[tuple[list[str], int] | tuple[list[str], int, str]] = [
    (["participant", "create", "--name", "X", "--type", "bank"], 2),
    (["participant", "create", "--name", "X", "--type", "dsp", "--roles", "ROOT"], 2),
    (["participant", "create", "--name", HUGE, "--type", "dsp"], 2),
    (["participant", "create", "--name", "X", "--type", "dsp", "--site-id", "abc"], 2),
    (["participant", "create", "--name", "X", "--type", "dsp", "--site-id", "1"], 2),
    (["participant", "create", "--name", "X", "--type", "dsp", "--site-id", "99999999999"], 2),
    (["participant", "create", "--name", "X", "--type", "dsp", "--site-id", "{site}"], 1),
    (["participant", "create", "--name", "X", "--type", "dsp", "--contact", "nope"], 2),
    (["participant", "create", "--type", "dsp"], 2),
    (["participant", "show", "999"], 1),
    (["participant", "show", "abc"], 2),
    (["participant", "disable", "999"], 1),
    (["participant", "enable", "{site}"], 1),
    (["participant", "set-roles", "{site}", "--roles", "MAPPER"], 2),
    (["participant", "set-roles", "{site}", "--roles", "ROOT"], 2),
    (["key", "create", "--site-id", "999", "--name", "k", "--roles", "GENERATOR"], 1),
    (["key", "create", "--site-id", "{site}", "--name", "k", "--roles", "GENERATOR,FOO"], 2),
    (["key", "create", "--site-id", "{site}", "--name", "k", "--roles", "SHARER"], 2),
    (["key", "create", "--site-id", "{site}", "--name", "k", "--roles", ","], 2),
    (["key", "create", "--site-id", "{site}", "--name", HUGE, "--roles", "GENERATOR"], 2),
    (
        [
            "key",
            "create",
            "--site-id",
            "{site}",
            "--name",
            "k",
            "--roles",
            "GENERATOR",
            "--expires-in-days",
            "0",
        ],
        2,
    ),
    (
        [
            "key",
            "create",
            "--site-id",
            "{site}",
            "--name",
            "k",
            "--roles",
            "GENERATOR",
            "--expires-in-days",
            "soon",
        ],
        2,
    ),
    (["key", "create", "--site-id", "x{secret}", "--name", "k", "--roles", "GENERATOR"], 2),
    (["key", "list", "--site-id", "999"], 1),
    (["key", "show", UNKNOWN_KEY], 1),
    (["key", "show", "not-a-key-id"], 2),
    (["key", "show", "{keytext}"], 2),
    (["key", "rename", UNKNOWN_KEY, "--name", "n"], 1),
    (["key", "rename", "{key}", "--name", HUGE], 2),
    (["key", "rename", "{key}", "--name", "   "], 2),
    (["key", "set-roles", "{key}", "--roles", "ROOT"], 2),
    (["key", "set-roles", "{key}", "--roles", "OPTOUT"], 2),
    (["key", "disable", UNKNOWN_KEY], 1),
    (["key", "enable", "{key}"], 1),
    (["key", "revoke", UNKNOWN_KEY], 1),
    (["key", "revoke", "{key}", "--reason", HUGE], 2),
    (["key", "rotate", "{key}", "--grace-days", "-1"], 2),
    (["key", "rotate", "{key}", "--grace-days", "365"], 2),
    (["key", "rotate", "{key}", "--grace-days", "week"], 2),
    (["key", "rotate", UNKNOWN_KEY], 1),
    (["key", "rotate-secret", UNKNOWN_KEY], 1),
    (["key", "rotate-secret", "{key}", "--grace-days", "91"], 2),
    (["audit", "list", "--limit", "0"], 2),
    (["audit", "list", "--limit", "many"], 2),
    (["admin-token", "create", "--name", "x", "--roles", "GENERATOR"], 2),
    (["admin-token", "create", "--name", HUGE, "--roles", "READ_ONLY"], 2),
    (["admin-token", "revoke", "UID2-A-L-0-AAAAAA"], 1),
    (["admin-token", "revoke", "{token}"], 2),
    (["no-such-command"], 2),
    (["key", "create", "--site-id", "{site}", "--name", "k"], 2),
    # sharing
    (["sharing", "set", "--site-id", "999", "--owner-only"], 1),
    (["sharing", "set", "--site-id", "abc", "--owner-only"], 2),
    (["sharing", "set", "--site-id", "{site}"], 2),
    (["sharing", "set", "--site-id", "{site}", "--owner-only", "--all-bidders"], 2),
    (["sharing", "set", "--site-id", "{site}", "--owner-only", "--allow", "{site}"], 2),
    (["sharing", "set", "--site-id", "{site}", "--allow", "abc"], 2),
    (["sharing", "set", "--site-id", "{site}", "--allow", "999"], 2),
    (["sharing", "set", "--site-id", "{site}", "--allow-types", "bank"], 2),
    (["sharing", "show", "--site-id", "999"], 1),
    (["sharing", "show", "--site-id", "abc"], 2),
    (["sharing", "show"], 2),
    # client-side keypairs
    (["keypair", "create", "--site-id", "999"], 1),
    (["keypair", "create", "--site-id", "abc"], 2),
    (["keypair", "create", "--site-id", "{site}", "--name", HUGE], 2),
    (["keypair", "create", "--site-id", "{site}", "--contact", HUGE], 2),
    (["keypair", "list", "--site-id", "999"], 1),
    (["keypair", "list", "--site-id", "abc"], 2),
    (["keypair", "disable", "nope"], 2),
    (["keypair", "disable", ""], 2),
    (["keypair", "disable", HUGE], 2),
    (["keypair", "disable"], 2),
    (["keypair", "show", "zzzzzzzzzz"], 1, "No keypair zzzzzzzzzz"),
    (["keypair", "show", "nope"], 2, MALFORMED_SUBSCRIPTION),
    (["keypair", "show", HUGE], 2, "subscription_id must be at most 64 characters"),
    (["keypair", "show"], 2, "Missing argument 'SUBSCRIPTION_ID'."),
    (["keypair", "enable", "{subscription}"], 1, "keypair {subscription} is already enabled"),
    (["keypair", "enable", "zzzzzzzzzz"], 1, "No keypair zzzzzzzzzz"),
    (["keypair", "enable", "nope"], 2, MALFORMED_SUBSCRIPTION),
    (["keypair", "enable", HUGE], 2, "subscription_id must be at most 64 characters"),
    (["keypair", "enable"], 2, "Missing argument 'SUBSCRIPTION_ID'."),
    (["keypair", "delete", "zzzzzzzzzz"], 1, "No keypair zzzzzzzzzz"),
    (["keypair", "delete", "nope"], 2, MALFORMED_SUBSCRIPTION),
    (["keypair", "delete", ""], 2, MALFORMED_SUBSCRIPTION),
    (["keypair", "delete", HUGE], 2, "subscription_id must be at most 64 characters"),
    (["keypair", "delete"], 2, "Missing argument 'SUBSCRIPTION_ID'."),
    # client-side origins
    (["participant", "set-domains", "--site-id", "999", "--domains", "example.com"], 1),
    (["participant", "set-domains", "--site-id", "{site}", "--domains", "not a domain"], 2),
    (["participant", "set-domains", "--site-id", "{site}", "--domains", "co.uk"], 2),
    (["participant", "set-domains", "--site-id", "{site}", "--domains", "https://a.com/x"], 2),
    (["participant", "set-domains", "--site-id", "{site}", "--domains", HUGE + ".com"], 2),
    (["participant", "set-domains", "--site-id", "{site}"], 2),
    (["participant", "set-app-names", "--site-id", "999", "--app-names", "com.example"], 1),
    (["participant", "set-app-names", "--site-id", "{site}", "--app-names", "an app"], 2),
    (["participant", "set-app-names", "--site-id", "{site}", "--app-names", HUGE], 2),
    (["participant", "set-app-names", "--site-id", "abc", "--app-names", "com.example"], 2),
    (["participant", "show-origins", "--site-id", "999"], 1, "No participant 999"),
    (
        ["participant", "show-origins", "--site-id", "1"],
        2,
        "site_id must be between 3 and 2147483647",
    ),
    (
        ["participant", "show-origins", "--site-id", "abc"],
        2,
        "Invalid value for '--site-id': 'abc' is not a valid integer.",
    ),
    (["participant", "show-origins"], 2, "Missing option '--site-id'."),
    # set-up and serving
    (
        ["init", "--environment", "bogus"],
        2,
        "Invalid value for '--environment': 'bogus' is not one of 'local', 'integ', 'prod'.",
    ),
    (
        ["--database-url", "mysql://ops:pw@db.example/uid2", "db", "upgrade"],
        1,
        "Unsupported database URL mysql://ops:***@db.example/uid2: use sqlite:///<path> or "
        "postgresql+psycopg://...",
    ),
    (
        ["--database-url", "not a url", "db", "upgrade"],
        1,
        "Unsupported database URL: cannot parse it",
    ),
    (
        ["--database-url", "postgresql://ops:pw@127.0.0.1:abc/uid2", "db", "upgrade"],
        1,
        "Unsupported database URL: cannot parse it",
    ),
    (
        ["--database-url", "sqlite://", "db", "upgrade"],
        1,
        "Unsupported database URL sqlite://: SQLite needs a file path, sqlite:///<path>",
    ),
    (
        # Nothing listens on port 1: refused at once, no wait.
        ["--database-url", "postgresql://ops:pw@127.0.0.1:1/uid2", "db", "upgrade"],
        1,
        "The store at postgresql+psycopg://ops:***@127.0.0.1:1/uid2 is unavailable:",
    ),
    (
        ["serve", "--port", "-1"],
        2,
        "Invalid value for '--port': -1 is not in the range 0<=x<=65535.",
    ),
    (
        ["serve", "--port", "65536"],
        2,
        "Invalid value for '--port': 65536 is not in the range 0<=x<=65535.",
    ),
    (
        ["serve", "--admin-port", "-1"],
        2,
        "Invalid value for '--admin-port': -1 is not in the range 0<=x<=65535.",
    ),
    (
        ["serve", "--workers", "0"],
        2,
        "Invalid value for '--workers': 0 is not in the range 1<=x<=256.",
    ),
    # encryption keys and salts
    (["keys", "rotate", "now"], 2),
    (["keys", "rotate", "--fraction", "1"], 2),
    (["salts", "rotate", "--fraction", "0"], 2),
    (["salts", "rotate", "--fraction", "1.5"], 2),
    (["salts", "rotate", "--fraction", "-1"], 2),
    (["salts", "rotate", "--fraction", "nan"], 2),
    (["salts", "rotate", "--fraction", "inf"], 2),
    (["salts", "rotate", "--fraction", "abc"], 2),
    (["salts", "rotate", "--fraction", ""], 2),
    # opt-outs
    (["optout", "add"], 2),
    (["optout", "add", "--email", "a@example.com", "--phone", "+12345678901"], 2),
    # One identity a command: a repeated option is refused, not read as its last value.
    (
        ["optout", "add", "--email", "a@example.com", "--email", "b@example.com"],
        2,
        "Give exactly one of --email, --phone, --email-hash, --phone-hash, once",
    ),
    (["optout", "add", "--phone", "+12345678901", "--phone", "+12345678902"], 2),
    (["optout", "add", "--email-hash", "A" * 43 + "=", "--email-hash", "B" * 43 + "="], 2),
    (["optout", "add", "--email", "not-an-email"], 2),
    (["optout", "add", "--email", HUGE], 2),
    (["optout", "add", "--phone", "12345678901"], 2),
    (["optout", "add", "--phone", "+1abc"], 2),
    (["optout", "add", "--email-hash", "zz"], 2),
    (["optout", "add", "--email-hash", "AAAA"], 2),
    (["optout", "add", "--phone-hash", "0" * 63], 2),
]


@pytest.fixture(scope="module")
def bad_input_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[Cli, dict[str, str]]:
    cli = Cli(Database("sqlite", tmp_path_factory.mktemp("bad") / "data", None))
    state = seeded(cli)
    init = cli.results[0][1]
    token = json.loads(init.stdout)["admin_token"]
    keypair = ok(cli, "keypair", "create", "--site-id", str(state["site"]))
    return cli, {
        "site": str(state["site"]),
        "key": state["key"]["key_id"],
        "keytext": state["key"]["key"],
        "secret": state["key"]["secret"],
        "token": token,
        "subscription": keypair["subscription_id"],
    }


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [(case[0], case[1], case[2] if len(case) > 2 else None) for case in BAD_COMMANDS],
    ids=[" ".join(case[0])[:60] for case in BAD_COMMANDS],
)
@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_bad_input_gives_a_clean_error_and_changes_nothing(
    bad_input_db: tuple[Cli, dict[str, str]],
    argv: list[str],
    status: int,
    message: str | None,
    as_json: bool,
) -> None:
    cli, values = bad_input_db
    args = [part.format(**values) for part in argv]
    before = state_of(cli.database)
    result = cli(*args, *(["--json"] if as_json else []))
    assert result.exit_code == status, (result.stdout, result.stderr)
    assert result.stderr.startswith("Error: ")
    if message is not None:
        assert result.stderr.startswith(f"Error: {message.format(**values)}")
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stdout + result.stderr
    for secret in (values["keytext"], values["secret"], values["token"]):
        assert secret not in result.stdout + result.stderr
        assert secret.split(".")[-1] not in result.stdout + result.stderr
    if as_json:
        document = json.loads(result.stdout)
        assert set(document) == {"error"}
        assert document["error"]["message"] in result.stderr
    else:
        assert result.stdout == ""
    assert state_of(cli.database) == before


# ---------------------------------------------------------------------------- audit verify


def _audit_rows(db: Database) -> int:
    with closing(sqlite3.connect(db.sqlite_path)) as conn:
        return int(conn.execute("SELECT count(*) FROM audit_events").fetchone()[0])


# (SQL with {last} for the last seq, the first bad seq as a function of the last seq)
TAMPERING: list[tuple[str, Callable[[int], int]]] = [
    ("UPDATE audit_events SET actor = 'cli:mallory' WHERE seq = 3", lambda _last: 3),
    ("UPDATE audit_events SET after = replace(after, 'GENERATOR', 'SHARER') WHERE seq = {last}",
     lambda last: last),
    ("DELETE FROM audit_events WHERE seq = 3", lambda _last: 3),
    ("DELETE FROM audit_events WHERE seq = {last}", lambda last: last),
    ("DELETE FROM audit_events WHERE seq >= {last} - 1", lambda last: last - 1),
]  # fmt: skip


@pytest.mark.parametrize(
    ("tamper", "bad_seq"),
    TAMPERING,
    ids=["edited actor", "edited after", "deleted row", "deleted last row", "deleted last two"],
)
def test_audit_verify_detects_tampering(
    sqlite_cli: Cli, tamper: str, bad_seq: Callable[[int], int]
) -> None:
    key_id = seeded(sqlite_cli)["key"]["key_id"]
    ok(sqlite_cli, "key", "set-roles", key_id, "--roles", "GENERATOR,MAPPER")
    intact = ok(sqlite_cli, "audit", "verify")
    events = ok(sqlite_cli, "audit", "list", "--limit", "1000")
    last = events[-1]
    assert last["action"] == "key.set_roles"
    assert [e["seq"] for e in events] == list(range(1, last["seq"] + 1))
    assert intact == {
        "ok": True, "checked": last["seq"], "first_bad_seq": None, "reason": None,
        "head_seq": last["seq"], "head_hash": last["hash"],
    }  # fmt: skip
    rows = _audit_rows(sqlite_cli.database)
    with closing(sqlite3.connect(sqlite_cli.database.sqlite_path)) as conn, conn:
        changed = conn.execute(tamper.format(last=last["seq"])).rowcount
    assert changed >= 1
    assert _audit_rows(sqlite_cli.database) in (rows, rows - changed)
    expected = bad_seq(last["seq"])

    result = sqlite_cli("audit", "verify", "--json")
    assert result.exit_code == 1
    verdict = json.loads(result.stdout)
    assert (verdict["ok"], verdict["first_bad_seq"]) == (False, expected)
    assert verdict["head_seq"] == expected - 1
    assert verdict["head_hash"] == events[expected - 2]["hash"]
    assert f"broken at seq {expected}" in result.stderr
    human = sqlite_cli("audit", "verify")
    assert human.exit_code == 1
    assert "BROKEN" in human.stdout
    # The head is printed so an operator can keep a copy outside the database.
    assert verdict["head_hash"] in human.stdout


def test_a_broken_chain_is_one_error_line_from_the_installed_command(sqlite_cli: Cli) -> None:
    # Run as a process of its own: no test logging handler stands in for Python's last-resort
    # one, which printed the service's WARNING as a bare line before the error line.
    seeded(sqlite_cli)
    with closing(sqlite3.connect(sqlite_cli.database.sqlite_path)) as conn, conn:
        conn.execute("UPDATE audit_events SET actor = 'evil' WHERE seq = 2")
    result = run_installed(sqlite_cli.database.data_dir, "audit", "verify", "--json")
    assert result.returncode == 1
    assert json.loads(result.stdout)["first_bad_seq"] == 2
    assert result.stderr.splitlines() == ["Error: the audit chain is broken at seq 2"]


def test_a_deleted_tail_stays_reported_after_later_changes(sqlite_cli: Cli) -> None:
    key_id = seeded(sqlite_cli)["key"]["key_id"]
    ok(sqlite_cli, "key", "disable", key_id)
    last = ok(sqlite_cli, "audit", "list", "--limit", "1000")[-1]["seq"]
    with closing(sqlite3.connect(sqlite_cli.database.sqlite_path)) as conn, conn:
        conn.execute("DELETE FROM audit_events WHERE seq = ?", (last,))
    ok(sqlite_cli, "key", "enable", key_id)
    seqs = [e["seq"] for e in ok(sqlite_cli, "audit", "list", "--limit", "1000")]
    assert seqs[-2:] == [last - 1, last + 1]
    result = sqlite_cli("audit", "verify", "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["reason"] == f"expected seq {last}, found {last + 1}"


# ------------------------------------------------------------------ the installed program


def test_the_installed_entry_point(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    init = run_installed(data_dir, "init", "--json")
    assert init.returncode == 0, init.stderr
    assert json.loads(init.stdout)["admin_token"].startswith("UID2-A-L-0-")
    created = run_installed(data_dir, "participant", "create", "--name", "P", "--type", "publisher",
                   "--roles", "GENERATOR", "--json")  # fmt: skip
    site = json.loads(created.stdout)["site_id"]
    key = run_installed(data_dir, "key", "create", "--site-id", str(site), "--name", "k",
               "--roles", "GENERATOR", "--json")  # fmt: skip
    issued = json.loads(key.stdout)
    assert issued["site_id"] == site
    assert issued["roles"] == ["GENERATOR"]
    listed = run_installed(data_dir, "key", "list", "--json")
    assert issued["key"] not in listed.stdout
    assert issued["secret"] not in listed.stdout
    assert json.loads(listed.stdout)[0]["key_id"] == issued["key_id"]


def test_the_installed_entry_point_fails_cleanly(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    assert run_installed(data_dir, "init").returncode == 0
    bad_role = run_installed(data_dir, "participant", "create", "--name", "P", "--type", "dsp",
                    "--roles", "ROOT")  # fmt: skip
    assert bad_role.returncode == 2
    assert bad_role.stdout == ""
    assert bad_role.stderr == (
        "Error: Unknown role at roles[0]; use GENERATOR, MAPPER, ID_READER, SHARER, OPTOUT\n"
    )
    unknown = run_installed(data_dir, "key", "show", UNKNOWN_KEY, "--json")
    assert unknown.returncode == 1
    assert json.loads(unknown.stdout)["error"]["code"] == "not_found"
    usage = run_installed(data_dir, "key", "rotate")
    assert usage.returncode == 2
    assert "Traceback" not in usage.stderr
    broken_db = run_installed(
        tmp_path / "elsewhere", "--database-url", "mysql://x/y", "key", "list"
    )
    assert broken_db.returncode == 1
    assert "Traceback" not in broken_db.stderr


def test_a_bare_group_shows_its_help(sqlite_cli: Cli) -> None:
    result = sqlite_cli("key")
    assert result.exit_code == 2
    assert "rotate-secret" in result.stderr
    assert result.stdout == ""
    as_json = sqlite_cli("--json", "key")  # the help on stderr, still one document on stdout
    assert as_json.exit_code == 2
    assert "rotate-secret" in as_json.stderr
    assert json.loads(as_json.stdout) == {"error": {"code": "usage", "message": "Missing command."}}


def test_an_unexpected_failure_is_one_line_without_a_traceback(
    sqlite_cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    seeded(sqlite_cli)

    def explode(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("uid2_operator.cli.runtime.open_services", explode)
    result = sqlite_cli("key", "list", "--json")
    assert result.exit_code == 1
    assert result.stderr == "Error: internal error (RuntimeError)\n"
    assert json.loads(result.stdout)["error"]["code"] == "internal_error"


def test_an_operating_system_error_is_named_by_what_the_system_says_not_its_text(
    sqlite_cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    seeded(sqlite_cli)

    def out_of_descriptors(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.EMFILE, "Too many open files", "/data/UID2-C-L-3-abcDEF.secret")

    monkeypatch.setattr("uid2_operator.cli.runtime.open_services", out_of_descriptors)
    result = sqlite_cli("key", "list", "--json")
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert result.exit_code == 1
    assert result.stderr == (
        "Error: internal error (OSError: Too many open files; the open-files limit (ulimit -n) "
        f"is {soft})\n"
    )
    assert json.loads(result.stdout)["error"]["code"] == "internal_error"


def test_called_without_standalone_mode_returns_the_status(sqlite_cli: Cli) -> None:
    args = [*sqlite_cli.database.cli_args(), "init", "--json"]
    assert main.main(args, standalone_mode=False) == 0
    assert (
        main.main([*sqlite_cli.database.cli_args(), "key", "show", "x"], standalone_mode=False) == 2
    )
