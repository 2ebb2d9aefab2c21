"""Configuration, read in one place, once.

``Settings.from_env`` lists every environment variable the service reads, with its cast and
default. The object is frozen and passed down explicitly; nothing imports a global settings
instance. Every relaxation of a security default is an explicit setting, never an ambient switch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from uid2_operator.domain.environments import Environment
from uid2_operator.errors import UID2Error
from uid2_operator.wire.scope import IdentityScope


class SettingsError(UID2Error):
    code = "settings_invalid"
    message = "Invalid settings"


DB_FILE = "uid2.db"
KEYRING_FILE = "keyring.json"


@dataclass(frozen=True, slots=True)
class Settings:
    data_dir: Path
    database_url: str | None = None
    environment: Environment = Environment.LOCAL
    identity_scope: IdentityScope = IdentityScope.UID2
    keyring_json: str | None = None  # the keyring itself (UID2_KEYRING); wins over the file
    keyring_file: Path | None = None  # UID2_KEYRING_FILE; default <data_dir>/keyring.json

    @property
    def store_url(self) -> str:
        """The database URL: PostgreSQL when configured, else the embedded SQLite file."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / DB_FILE).resolve()}"

    @property
    def keyring_path(self) -> Path:
        return self.keyring_file or self.data_dir / KEYRING_FILE

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        data_dir: str | None = None,
        database_url: str | None = None,
        environment: str | None = None,
    ) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``); explicit arguments win.

        Variables: UID2_DATA_DIR, UID2_DATABASE_URL, UID2_ENVIRONMENT (local|integ|prod),
        UID2_IDENTITY_SCOPE (uid2|euid), UID2_KEYRING, UID2_KEYRING_FILE.
        """
        env = os.environ if environ is None else environ
        env_name = environment or env.get("UID2_ENVIRONMENT", "local")
        try:
            deployment = Environment(env_name.lower())
        except ValueError:
            raise SettingsError(
                f"UID2_ENVIRONMENT must be one of local, integ, prod (got {env_name!r})"
            ) from None
        scope_name = env.get("UID2_IDENTITY_SCOPE", "uid2").upper()
        if scope_name not in IdentityScope.__members__:
            raise SettingsError(f"UID2_IDENTITY_SCOPE must be uid2 or euid (got {scope_name!r})")
        keyring_file = env.get("UID2_KEYRING_FILE")
        return cls(
            data_dir=Path(data_dir or env.get("UID2_DATA_DIR", "./data")),
            database_url=database_url or env.get("UID2_DATABASE_URL") or None,
            environment=deployment,
            identity_scope=IdentityScope[scope_name],
            keyring_json=env.get("UID2_KEYRING") or None,
            keyring_file=Path(keyring_file) if keyring_file else None,
        )
