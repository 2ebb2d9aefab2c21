"""Two inits at once on one new database, each creating a keyring of its own: the one that loses
the race is refused saying so, naming the keyring file it made (nothing in this database is
sealed under it; it is left, since another init, of another database sharing the file, may
have sealed under it meanwhile), and what the refusal says to do works."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cli_harness import Cli, Database

from uid2_operator.cli import database

pytestmark = pytest.mark.functional

ENTRY_POINT = Path(sys.executable).with_name("uid2-operator")


def test_the_init_that_loses_the_race_leaves_no_keyring(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    first_dir, second_dir = tmp_path / "a", tmp_path / "b"
    second = Cli(Database("sqlite", second_dir, url))
    real = database.keyring_for_init

    def racing(settings: object, *args: object) -> database.InitKeyring:
        made = real(settings, *args)  # type: ignore[arg-type]
        # Between this run's look at the empty database and its first seal, the other init
        # sets the database up with a keyring of its own.
        env = {k: v for k, v in os.environ.items() if not k.startswith("UID2_")}
        other = subprocess.run(  # noqa: S603 (our own entry point, fixed arguments)
            [str(ENTRY_POINT), "--data-dir", str(first_dir), "--database-url", url, "init"],
            capture_output=True, env=env, timeout=120, check=False, text=True,
        )  # fmt: skip
        assert other.returncode == 0, other.stderr
        return made

    monkeypatch.setattr(database, "keyring_for_init", racing)
    refused = second("--json", "init")
    monkeypatch.setattr(database, "keyring_for_init", real)
    assert refused.exit_code == 1, refused.output
    assert json.loads(refused.stdout)["error"] == {
        "code": "keyring_invalid",
        "message": "Another init set up this database at the same time, with a keyring of its "
        f"own: copy that data directory's keyring file over {second_dir / 'keyring.json'} "
        "(made by this run, never used by this database), then run init again",
    }
    assert (second_dir / "keyring.json").read_bytes() != (first_dir / "keyring.json").read_bytes()
    assert not (second_dir / "environment").exists()

    shutil.copy2(first_dir / "keyring.json", second_dir / "keyring.json")
    again = second("--json", "init")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["keyring_created"] is False
