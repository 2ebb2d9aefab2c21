"""No plaintext credential anywhere it must not be.

Every operation runs through the CLI (and the lookup through the services) with all logging
captured at DEBUG, SQL statements and their parameters included. Then every plaintext API key
(and its random tail), admin token and client secret (base64 text, the 32 raw bytes, and their
hex) is searched for in: the database (the SQLite file with its -wal/-shm files, or a pg_dump of
the test schema plus every row read back), the captured logs, every list/show/audit output and
every error message. Only the one-time outputs of create and rotate may carry them, and each only
its own.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cli_harness import POSTGRES_URL, Cli, Database, libpq_dsn
from click.testing import Result

from uid2_operator.bootstrap import open_services
from uid2_operator.errors import CredentialError
from uid2_operator.settings import Settings
from uid2_operator.wire.encoding import b64decode


class Secrets:
    """Every credential disclosed during the run, as every form it could leak in."""

    def __init__(self) -> None:
        self.texts: list[str] = []  # what was disclosed, as shown
        self.needles: dict[bytes, str] = {}  # searched-for bytes -> what they are

    def add_credential(self, text: str) -> None:
        self.texts.append(text)
        self.needles[text.encode()] = f"credential {text[:20]}..."
        self.needles[text.split(".", 1)[1].encode()] = f"tail of {text[:20]}..."

    def add_secret(self, text: str) -> None:
        raw = b64decode(text)
        assert len(raw) == 32
        self.texts.append(text)
        self.needles[text.encode()] = "client secret (base64)"
        self.needles[raw] = "client secret (raw bytes)"
        self.needles[raw.hex().encode()] = "client secret (hex)"
        self.needles[raw.hex().upper().encode()] = "client secret (HEX)"

    def found_in(self, haystack: bytes, allowed: frozenset[str] = frozenset()) -> list[str]:
        skip = {n for t in allowed for n in self._forms(t)}
        return [
            what
            for needle, what in self.needles.items()
            if needle not in skip and needle in haystack
        ]

    def _forms(self, text: str) -> set[bytes]:
        forms = {text.encode()}
        if "." in text:
            forms.add(text.split(".", 1)[1].encode())
        else:
            raw = b64decode(text)
            forms |= {raw, raw.hex().encode(), raw.hex().upper().encode()}
        return forms


def _disclosed(document: dict[str, Any]) -> frozenset[str]:
    return frozenset(
        str(document[field])
        for field in ("key", "secret", "token", "admin_token")
        if field in document
    )


def _database_bytes(db: Database, tmp_path: Path) -> dict[str, bytes]:
    if db.backend == "sqlite":
        return {
            path.name: path.read_bytes()
            for path in db.data_dir.iterdir()
            if path.name.startswith("uid2.db")
        }
    assert db.schema is not None
    found: dict[str, bytes] = {}
    pg_dump = shutil.which("pg_dump")
    if pg_dump is not None:
        dump = subprocess.run(  # noqa: S603 (fixed arguments)
            [pg_dump, f"--dbname={libpq_dsn(POSTGRES_URL)}", f"--schema={db.schema}", "--no-owner"],
            capture_output=True,
            check=True,
            timeout=120,
        )
        found["pg_dump"] = dump.stdout
        assert b"COPY" in dump.stdout  # the dump holds the data, not only the schema
    rows = bytearray()
    with psycopg.connect(libpq_dsn(POSTGRES_URL)) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (db.schema,),
        ).fetchall()
        assert len(tables) >= 7
        for (table,) in tables:
            for row in conn.execute(f'SELECT * FROM "{db.schema}"."{table}"'):  # noqa: S608
                for value in row:
                    rows += (
                        bytes(value)
                        if isinstance(value, bytes | memoryview)
                        else str(value).encode()
                    )
                    rows += b"\n"
    found["every row"] = bytes(rows)
    return found


def test_no_plaintext_credential_leaks(
    database: Database, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="sqlalchemy")  # it sets itself to WARNING otherwise
    cli = Cli(database)
    secrets = Secrets()
    one_time: dict[int, frozenset[str]] = {}  # result index -> what that output may disclose

    def disclosing(*args: str) -> dict[str, Any]:
        result = cli(*args, "--json")
        assert result.exit_code == 0, result.stderr
        document: dict[str, Any] = json.loads(result.stdout)
        one_time[len(cli.results) - 1] = _disclosed(document)
        return document

    def run(*args: str, status: int = 0) -> Result:
        result = cli(*args)
        assert result.exit_code == status, (args, result.stdout, result.stderr)
        return result

    bootstrap = disclosing("init")
    secrets.add_credential(bootstrap["admin_token"])
    created = run("participant", "create", "--name", "Pub", "--type", "publisher",
                  "--roles", "GENERATOR,MAPPER,SHARER", "--json")  # fmt: skip
    site = json.loads(created.stdout)["site_id"]
    run("participant", "create", "--name", "Other", "--type", "dsp", "--roles", "ID_READER")

    keys = []
    for name in ("web", "batch"):
        issued = disclosing("key", "create", "--site-id", str(site), "--name", name,
                            "--roles", "GENERATOR,MAPPER", "--expires-in-days", "400")  # fmt: skip
        secrets.add_credential(issued["key"])
        secrets.add_secret(issued["secret"])
        keys.append(issued)
    human = run("key", "create", "--site-id", str(site), "--name", "human", "--roles", "MAPPER")
    one_time[len(cli.results) - 1] = frozenset()  # checked below, separately
    for line in human.stdout.splitlines():
        label, _, value = line.partition("  ")
        if label in ("key", "secret"):
            value = value.strip()
            (secrets.add_credential if label == "key" else secrets.add_secret)(value)
            one_time[len(cli.results) - 1] |= {value}
    key_id = keys[0]["key_id"]

    for as_json in ([], ["--json"]):
        run("participant", "list", *as_json)
        run("participant", "show", str(site), *as_json)
        run("key", "list", *as_json)
        run("key", "list", "--site-id", str(site), *as_json)
        run("key", "show", key_id, *as_json)
        run("admin-token", "list", *as_json)
    run("participant", "disable", str(site))
    run("participant", "enable", str(site))
    run("participant", "set-roles", str(site), "--roles", "GENERATOR,MAPPER,SHARER,OPTOUT")
    run("key", "rename", key_id, "--name", "web-2")
    run("key", "set-roles", key_id, "--roles", "GENERATOR")
    run("key", "disable", key_id)
    run("key", "enable", key_id)
    rotated_secret = disclosing("key", "rotate-secret", key_id, "--grace-days", "3")
    secrets.add_secret(rotated_secret["secret"])
    successor = disclosing("key", "rotate", key_id, "--grace-days", "1")
    secrets.add_credential(successor["key"])
    secrets.add_secret(successor["secret"])
    run("key", "revoke", keys[1]["key_id"], "--reason", "leak drill")
    token = disclosing("admin-token", "create", "--name", "ci", "--roles", "MAINTAINER")
    secrets.add_credential(token["token"])
    run("admin-token", "revoke", token["token_id"])
    for as_json in ([], ["--json"]):
        run("audit", "list", "--limit", "1000", *as_json)
        run("audit", "verify", *as_json)
        run("key", "show", successor["key_id"], *as_json)

    # Credentials pasted where they do not belong: refused without being repeated.
    run("key", "show", keys[0]["key"], status=2)
    run("key", "show", keys[0]["key"], "--json", status=2)
    run("admin-token", "revoke", token["token"], status=2)
    run("key", "create", "--site-id", keys[0]["secret"], "--name", "x", "--roles", "GENERATOR",
        status=2)  # fmt: skip
    run("key", "rotate", keys[0]["key_id"], "--grace-days", keys[0]["secret"], status=2)

    # The request path and the admin API's authentication, with their refusals.
    settings = Settings.from_env({}, data_dir=str(database.data_dir), database_url=database.url)
    services = open_services(settings)
    errors: list[str] = []
    try:
        for issued in (*keys, successor):
            try:
                client = services.credentials.resolve_client(issued["key"])
                assert repr(client)
            except CredentialError as exc:
                errors.append(str(exc))
        tampered = keys[0]["key"][:-6] + "AAAAAA"
        for text in (tampered, keys[0]["key"].replace("-L-", "-P-")):
            with pytest.raises(CredentialError) as caught:
                services.credentials.resolve_client(text)
            errors.append(str(caught.value))
        assert services.admin.authenticate(bootstrap["admin_token"]).token_id
        with pytest.raises(CredentialError) as caught:
            services.admin.authenticate(token["token"])
        errors.append(str(caught.value))
    finally:
        services.close()
    assert len(errors) >= 4

    problems: list[str] = []
    for where, haystack in _database_bytes(database, tmp_path).items():
        problems += [f"{what} in {where}" for what in secrets.found_in(haystack)]
    log_text = caplog.text.encode() + b"\n".join(
        repr(record.args).encode() + record.getMessage().encode() for record in caplog.records
    )
    # Use cases and SQL statements (with their parameters) were really logged.
    assert any(r.name.startswith("sqlalchemy.engine") for r in caplog.records)
    assert any(r.name.startswith("uid2_operator.services") for r in caplog.records)
    problems += [f"{what} in the logs" for what in secrets.found_in(log_text)]
    for message in errors:
        problems += [f"{what} in error {message!r}" for what in secrets.found_in(message.encode())]
    for index, (args, result) in enumerate(cli.results):
        allowed = one_time.get(index, frozenset())
        out = result.stdout.encode()
        problems += [f"{what} in stdout of {args[2:5]}" for what in secrets.found_in(out, allowed)]
        err = result.stderr.encode()
        problems += [f"{what} in stderr of {args[2:5]}" for what in secrets.found_in(err)]
    assert problems == []
    assert len(secrets.texts) == 11
    assert len(one_time) == 7
