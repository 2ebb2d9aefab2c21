"""``sharing``, ``keypair`` and ``participant set-domains|set-app-names`` on every backend, and
a search for a keypair's private key in every CLI output and every stored row or byte."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cli_harness import BACKENDS, Cli, Database, database_for, libpq_dsn
from cryptography.hazmat.primitives.asymmetric import ec

from uid2_operator.bootstrap import load_keyring
from uid2_operator.domain.environments import Environment
from uid2_operator.domain.keypairs import open_private_key, parse_public_key
from uid2_operator.settings import Settings
from uid2_operator.storage import open_store
from uid2_operator.wire.cstg import private_key_der, public_key_der

pytestmark = pytest.mark.functional


@pytest.fixture(params=BACKENDS)
def cli(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cli]:
    with database_for(request.param, tmp_path) as db:
        yield Cli(db)


def ok(cli: Cli, *args: str) -> Any:
    result = cli(*args, "--json")
    assert result.exit_code == 0, (args, result.stdout, result.stderr)
    return json.loads(result.stdout)


def fails(cli: Cli, *args: str) -> dict[str, Any]:
    result = cli(*args, "--json")
    assert result.exit_code == 2, (args, result.stdout, result.stderr)
    assert "Traceback" not in result.output
    document: dict[str, dict[str, Any]] = json.loads(result.stdout)
    return document["error"]


def _participant(cli: Cli, name: str, kind: str, roles: str) -> int:
    created = ok(cli, "participant", "create", "--name", name, "--type", kind, "--roles", roles)
    return int(created["site_id"])


def _settings(db: Database) -> Settings:
    return Settings.from_env({}, data_dir=str(db.data_dir), database_url=db.url)


def test_the_sharing_and_keypair_commands(cli: Cli) -> None:
    ok(cli, "init")
    a = _participant(cli, "A", "publisher", "GENERATOR,SHARER")
    b = _participant(cli, "B", "publisher", "SHARER")
    ok(cli, "keys", "rotate")  # gives the new participants their keysets
    shown = ok(cli, "sharing", "show", "--site-id", str(a))
    assert shown["mode"] == "bidders"
    listed = ok(
        cli, "sharing", "set", "--site-id", str(a), "--allow", str(b), "--allow-types", "dsp"
    )
    assert (listed["mode"], listed["sites"], listed["types"]) == ("list", [b], ["dsp"])
    assert listed["rotated_key_ids"]  # leaving "bidders" may drop a reader: keys rotated
    kept = ok(cli, "sharing", "set", "--site-id", str(a), "--owner-only", "--no-rotate")
    assert (kept["mode"], kept["rotated_key_ids"]) == ("owner_only", [])
    assert ok(cli, "sharing", "set", "--site-id", str(a), "--all-bidders")["mode"] == "bidders"
    types_only = ok(cli, "sharing", "set", "--site-id", str(a), "--allow-types", "dsp")
    assert (types_only["mode"], types_only["sites"], types_only["types"]) == ("list", [], ["dsp"])
    assert ok(cli, "sharing", "set", "--site-id", str(a), "--all-bidders")["mode"] == "bidders"
    assert fails(cli, "sharing", "set", "--site-id", str(a))["code"] == "usage"
    assert fails(cli, "sharing", "set", "--site-id", str(a), "--owner-only", "--all-bidders")
    assert (
        "No participant"
        in fails(cli, "sharing", "set", "--site-id", str(a), "--allow", "4242")["message"]
    )

    pair = ok(cli, "keypair", "create", "--site-id", str(a), "--name", "web")
    assert set(pair) >= {"subscription_id", "public_key"}
    assert pair["public_key"].startswith("UID2-X-L-")
    parse_public_key(pair["public_key"], Environment.LOCAL)
    assert [k["subscription_id"] for k in ok(cli, "keypair", "list", "--site-id", str(a))] == [
        pair["subscription_id"]
    ]
    second = ok(cli, "keypair", "create", "--site-id", str(a), "--name", "app")
    assert sorted(
        k["subscription_id"] for k in ok(cli, "keypair", "list", "--site-id", str(a))
    ) == (sorted([pair["subscription_id"], second["subscription_id"]]))
    disabled = ok(cli, "keypair", "disable", pair["subscription_id"])
    assert disabled["disabled"] is True
    assert ok(cli, "keypair", "show", pair["subscription_id"])["disabled"] is True

    domains = ok(cli, "participant", "set-domains", "--site-id", str(a), "--domains",
                 "b-example.com,A-example.co.uk")  # fmt: skip
    assert domains["domain_names"] == ["a-example.co.uk", "b-example.com"]
    apps = ok(cli, "participant", "set-app-names", "--site-id", str(a), "--app-names",
              "com.example.app,123456")  # fmt: skip
    assert apps["app_names"] == ["123456", "com.example.app"]
    again = ok(cli, "participant", "set-domains", "--site-id", str(a), "--domains", "b-example.com")
    assert (again["domain_names"], again["app_names"]) == (
        ["b-example.com"],
        ["123456", "com.example.app"],
    )
    assert (
        "registrable"
        in fails(
            cli, "participant", "set-domains", "--site-id", str(a), "--domains", "www.example.com"
        )["message"]
    )
    human = cli("keypair", "list")
    assert pair["subscription_id"] in human.stdout

    _assert_private_key_nowhere(cli, pair["subscription_id"])


def _forms(key: ec.EllipticCurvePrivateKey) -> tuple[list[str], list[bytes]]:
    der = private_key_der(key)
    scalar = key.private_numbers().private_value.to_bytes(32, "big")
    texts = [
        base64.b64encode(der).decode(),
        der.hex(),
        scalar.hex(),
        base64.b64encode(scalar).decode(),
    ]
    return texts, [der, scalar]


def _assert_private_key_nowhere(cli: Cli, subscription_id: str) -> None:
    ok(cli, "audit", "list")
    db = cli.database
    settings = _settings(db)
    store = open_store(settings.store_url)
    try:
        with store.read() as rx:
            stored = rx.keypairs.get(subscription_id)
    finally:
        store.close()
    assert stored is not None
    key = open_private_key(load_keyring(settings), stored)
    assert public_key_der(key.public_key()) == stored.public_key
    texts, raws = _forms(key)
    outputs = "\n".join(result.output for _, result in cli.results)
    assert subscription_id in outputs
    assert not [t for t in texts if t in outputs]
    if db.backend == "sqlite":
        blob = b"".join(p.read_bytes() for p in Path(db.data_dir).glob("uid2.db*"))
        assert stored.public_key in blob
        assert not [r for r in raws if r in blob]
        return
    assert db.url is not None
    dump = _postgres_rows(db)
    assert stored.public_key.hex() in dump
    assert not [r.hex() for r in raws if r.hex() in dump]
    assert not [t for t in texts if t in dump]


def _postgres_rows(db: Database) -> str:
    """Every row of every table of the test's schema, as text (bytea in hex)."""
    assert db.url is not None
    assert db.schema is not None
    rows: list[str] = []
    with psycopg.connect(libpq_dsn(db.url)) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (db.schema,),
        ).fetchall()
        for (table,) in tables:
            query = f'SELECT * FROM "{db.schema}"."{table}"'  # noqa: S608 (catalogue names)
            for row in conn.execute(query).fetchall():
                rows.append(
                    " ".join(
                        bytes(v).hex() if isinstance(v, bytes | memoryview) else str(v) for v in row
                    )
                )
    return "\n".join(rows)


@pytest.mark.parametrize(
    "allow",
    ["\u00b2", "--5", "5,--5", "\u0663", "5,\uff15", "+5", "1_000", "5.0", "9" * 13],
)
def test_allow_refuses_every_value_that_is_not_a_site_id_as_input(cli: Cli, allow: str) -> None:
    """Text ``int()`` would refuse or read differently (superscript, Arabic-Indic or full-width
    digits, a second minus sign) is bad input (exit 2), named as such, never an internal
    error; and nothing changes."""
    ok(cli, "init")
    a = _participant(cli, "A", "publisher", "SHARER")
    before = ok(cli, "sharing", "set", "--site-id", str(a), "--owner-only")
    error = fails(cli, "sharing", "set", "--site-id", str(a), f"--allow={allow}")
    assert error["code"] == "invalid_input"
    assert "--allow takes site ids" in error["message"]
    assert ok(cli, "sharing", "show", "--site-id", str(a))["mode"] == before["mode"]


def test_show_answers_for_a_participant_added_since_the_upkeep(cli: Cli) -> None:
    """No keyset yet: the choice its keyset will be created with, and no keyset id; asking
    creates nothing."""
    ok(cli, "init")
    fresh = _participant(cli, "Fresh", "publisher", "GENERATOR,SHARER")
    store = open_store(_settings(cli.database).store_url)
    try:
        seq = store.change_seq()
        shown = ok(cli, "sharing", "show", "--site-id", str(fresh))
        assert store.change_seq() == seq
        with store.read() as rx:
            assert all(k.site_id != fresh for k in rx.keysets.list_all())
    finally:
        store.close()
    assert shown == {
        "site_id": fresh,
        "keyset_id": None,
        "mode": "bidders",
        "sites": [],
        "types": [],
        "changed": False,
        "rotated_key_ids": [],
    }
    human = cli("sharing", "show", "--site-id", str(fresh))
    assert human.exit_code == 0, human.output
    assert [line.split() for line in human.stdout.splitlines()][:3] == [
        ["site", "id", str(fresh)],
        ["keyset", "id", "-"],
        ["sharing", "bidders"],
    ]
    ok(cli, "keys", "rotate")  # the upkeep gives it its keyset, with that choice
    after = ok(cli, "sharing", "show", "--site-id", str(fresh))
    assert isinstance(after["keyset_id"], int)
    assert {k: v for k, v in after.items() if k != "keyset_id"} == {
        k: v for k, v in shown.items() if k != "keyset_id"
    }
    assert "No participant" in fails_with(cli, 1, "sharing", "show", "--site-id", "4242")


def fails_with(cli: Cli, status: int, *args: str) -> str:
    result = cli(*args, "--json")
    assert result.exit_code == status, (args, result.stdout, result.stderr)
    message: str = json.loads(result.stdout)["error"]["message"]
    return message
