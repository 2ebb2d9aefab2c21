"""One data directory over a shared database, driven through the command line (``CliRunner``):
what the contract tests that run two instances on one store share."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from uid2_operator.cli import main

ENV: dict[str, str | None] = {
    "UID2_SALT_BUCKETS": "1024",
    # Settings the surrounding shell may carry; every run starts without them.
    "UID2_ENVIRONMENT": None,
    "UID2_KEYRING": None,
    "UID2_KEYRING_FILE": None,
    "UID2_DATABASE_URL": None,
}


@dataclass(frozen=True)
class DataDir:
    """One data directory over the shared database, driven through the command line."""

    path: Path
    url: str

    @property
    def keyring_path(self) -> Path:
        return self.path / "keyring.json"

    def run(self, *args: str, status: int = 0) -> Result:
        full = ["--data-dir", str(self.path), "--database-url", self.url, *args]
        result = CliRunner().invoke(main, full, env=ENV, catch_exceptions=False)
        assert result.exit_code == status, (args, result.stdout, result.stderr)
        assert "Traceback" not in result.output
        return result

    def ok(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json").stdout)
