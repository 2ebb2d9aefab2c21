"""Configuration, read in one place, once.

``Settings.from_env`` lists every environment variable the service reads, with its cast and
default. The object is frozen and passed down explicitly; nothing imports a global settings
instance. Every relaxation of a security default is an explicit setting, never an ambient switch.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Final

from uid2_operator.domain.environments import Environment
from uid2_operator.domain.salts import LOCAL_BUCKET_COUNT
from uid2_operator.errors import UID2Error
from uid2_operator.wire.raw_uid import PRODUCTION_BUCKET_COUNT
from uid2_operator.wire.scope import IdentityScope


class SettingsError(UID2Error):
    code = "settings_invalid"
    message = "Invalid settings"


DB_FILE = "uid2.db"
KEYRING_FILE = "keyring.json"
# Written by ``init --environment``: later commands on the same data directory default to it, so a
# directory initialised for integ cannot mint local keys by accident.
ENVIRONMENT_FILE = "environment"
DEFAULT_ROTATION_AGE_DAYS = 365
MAX_ROTATION_AGE_DAYS = 36500  # a hundred years: "never due", in effect
# Salt buckets: the reference's 2^20 in integ and prod; 2^16 in local (quick to create, the same
# code paths). A power of two, so the 20 bits a bucket index is taken from spread evenly over the
# buckets; at most 2^20, the bits there are. Fixed once the salt table exists.
MAX_SALT_BUCKETS = PRODUCTION_BUCKET_COUNT
MAX_SALT_BUCKETS_DIGITS = 8  # the longest UID2_SALT_BUCKETS text read (leading zeros included)
DEFAULT_SALT_BUCKETS = {
    Environment.LOCAL: LOCAL_BUCKET_COUNT,
    Environment.INTEG: MAX_SALT_BUCKETS,
    Environment.PROD: MAX_SALT_BUCKETS,
}


class EnvironmentSource(StrEnum):
    """Where ``Settings.environment`` comes from. ``init`` on a data directory whose environment
    was only defaulted adopts the one its database records; from anywhere else, a mismatch with
    the database is refused."""

    GIVEN = "given"  # an explicit argument: ``init --environment``, or settings built in code
    VARIABLE = "variable"  # UID2_ENVIRONMENT
    DATA_DIRECTORY = "data directory"  # the data directory's ``environment`` file
    DEFAULT = "default"  # none of those: local
    DATABASE = "database"  # adopted by ``init`` from the database (``bootstrap``), not read here


@dataclass(frozen=True, slots=True)
class Settings:
    """``database_url`` (it may carry a password) and ``keyring_json`` (every key-encryption key)
    are left out of the repr, so a logged or printed settings object discloses neither."""

    data_dir: Path
    database_url: str | None = field(default=None, repr=False)
    environment: Environment = Environment.LOCAL
    environment_source: EnvironmentSource = EnvironmentSource.GIVEN
    identity_scope: IdentityScope = IdentityScope.UID2
    identity_v3: bool = False  # UID2_IDENTITY_V3: raw UIDs of 33 bytes (v3) instead of 32 (v2)
    # the keyring itself (UID2_KEYRING); never given with UID2_KEYRING_FILE
    keyring_json: str | None = field(default=None, repr=False)
    keyring_file: Path | None = None  # UID2_KEYRING_FILE; default <data_dir>/keyring.json
    rotation_age_days: int = DEFAULT_ROTATION_AGE_DAYS  # keys older than this are due for rotation
    salt_buckets: int | None = None  # UID2_SALT_BUCKETS; None: the environment's default

    def __post_init__(self) -> None:
        if self.salt_buckets is not None:
            _check_salt_buckets(self.salt_buckets)

    @property
    def salt_bucket_count(self) -> int:
        """The salt bucket count a new salt table gets (see ``DEFAULT_SALT_BUCKETS``)."""
        if self.salt_buckets is not None:
            return self.salt_buckets
        return DEFAULT_SALT_BUCKETS[self.environment]

    @property
    def store_url(self) -> str:
        """The database URL: PostgreSQL when configured, else the embedded SQLite file."""
        if self.database_url:
            return self.database_url
        # Percent-encoded: a '?', '#' or '%' in the data directory's path would otherwise be read
        # as the URL's query, fragment or an escape, and the database would live elsewhere.
        return f"sqlite:///{urllib.parse.quote(str((self.data_dir / DB_FILE).resolve()))}"

    @property
    def keyring_path(self) -> Path:
        return self.keyring_file or self.data_dir / KEYRING_FILE

    @property
    def environment_path(self) -> Path:
        return self.data_dir / ENVIRONMENT_FILE

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
        UID2_IDENTITY_SCOPE (uid2|euid), UID2_IDENTITY_V3 (true|false, default false: v2 raw
        UIDs), UID2_KEYRING, UID2_KEYRING_FILE,
        UID2_KEY_ROTATION_AGE_DAYS (default 365), UID2_SALT_BUCKETS (a power of two up to 2^20;
        default 2^16 in local, 2^20 in integ and prod; fixed once the salt table exists).
        Without UID2_ENVIRONMENT, the environment the data directory was initialised for (its
        ``environment`` file) applies, else ``local``; ``environment_source`` says which.
        """
        env = os.environ if environ is None else environ
        root = Path(data_dir or env.get("UID2_DATA_DIR", "./data"))
        source, env_name = _environment_name(environment, env, root)
        try:
            deployment = Environment(env_name.lower())
        except ValueError:
            what = "--environment" if source is EnvironmentSource.GIVEN else "UID2_ENVIRONMENT"
            raise SettingsError(
                f"{what} must be one of local, integ, prod (got {env_name!r})"
            ) from None
        scope_text = env.get("UID2_IDENTITY_SCOPE", "uid2")
        scope_name = scope_text.upper()  # ASCII only: a dotless i upper-cases to I
        if not scope_text.isascii() or scope_name not in IdentityScope.__members__:
            raise SettingsError(f"UID2_IDENTITY_SCOPE must be uid2 or euid (got {scope_text!r})")
        identity_v3 = env.get("UID2_IDENTITY_V3", "false").strip().lower()
        if identity_v3 not in ("true", "false"):
            raise SettingsError(f"UID2_IDENTITY_V3 must be true or false (got {identity_v3!r})")
        keyring_file = env.get("UID2_KEYRING_FILE")
        if keyring_file and env.get("UID2_KEYRING"):
            # One would be ignored: a stale UID2_KEYRING left in a unit file would keep serve
            # from following the file through a key-encryption key rotation, unsaid.
            raise SettingsError(
                "UID2_KEYRING and UID2_KEYRING_FILE are both set: give the keyring one way, "
                "unset the other"
            )
        age_text = env.get("UID2_KEY_ROTATION_AGE_DAYS", str(DEFAULT_ROTATION_AGE_DAYS))
        # int() refuses a text of over 4300 digits: what is measured is what is read, without
        # its leading zeros (read as before)
        significant = age_text.lstrip("0") or "0"
        if (
            not (age_text.isascii() and age_text.isdigit())
            or len(significant) > len(str(MAX_ROTATION_AGE_DAYS))
            or not 1 <= int(significant) <= MAX_ROTATION_AGE_DAYS
        ):
            raise SettingsError(
                "UID2_KEY_ROTATION_AGE_DAYS must be a whole number of days from 1 to "
                f"{MAX_ROTATION_AGE_DAYS}"
            )
        buckets_text = env.get("UID2_SALT_BUCKETS", "").strip()
        if buckets_text and not (buckets_text.isascii() and buckets_text.isdigit()):
            raise SettingsError(f"UID2_SALT_BUCKETS must be a whole number (got {buckets_text!r})")
        if len(buckets_text) > MAX_SALT_BUCKETS_DIGITS:
            raise SettingsError(
                f"UID2_SALT_BUCKETS must be a power of two from 1 to {MAX_SALT_BUCKETS}, in at "
                f"most {MAX_SALT_BUCKETS_DIGITS} digits (got {buckets_text!r})"
            )
        return cls(
            data_dir=root,
            database_url=database_url or env.get("UID2_DATABASE_URL") or None,
            environment=deployment,
            environment_source=source,
            identity_scope=IdentityScope[scope_name],
            identity_v3=identity_v3 == "true",
            keyring_json=env.get("UID2_KEYRING") or None,
            keyring_file=Path(keyring_file) if keyring_file else None,
            rotation_age_days=int(age_text),
            salt_buckets=int(buckets_text) if buckets_text else None,
        )


def _check_salt_buckets(count: int) -> None:
    if isinstance(count, bool) or not 1 <= count <= MAX_SALT_BUCKETS or count & (count - 1):
        raise SettingsError(
            f"UID2_SALT_BUCKETS must be a power of two from 1 to {MAX_SALT_BUCKETS} (got {count})"
        )


_SHOWN_RECORD: Final = 20
DECIMAL_TEXT: Final = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
"""A number as settings and command-line options take it: ASCII digits, a point, an exponent
(``float()`` also reads other scripts' digits and underscores: ``1_0`` as 10)."""


def _environment_name(
    given: str | None, env: Mapping[str, str], data_dir: Path
) -> tuple[EnvironmentSource, str]:
    if given:
        return EnvironmentSource.GIVEN, given
    if variable := env.get("UID2_ENVIRONMENT"):
        return EnvironmentSource.VARIABLE, variable
    if recorded := recorded_environment(data_dir):
        return EnvironmentSource.DATA_DIRECTORY, recorded
    return EnvironmentSource.DEFAULT, Environment.LOCAL.value


def recorded_environment(data_dir: Path) -> str | None:
    """What the data directory's ``environment`` file records, read as ``UID2_ENVIRONMENT`` is
    (in any case); None for no file, or an empty one (as an interrupted write of an earlier
    version left it). A file naming no environment is refused naming the file: it may have been
    edited by hand, as a refusal's advice says to."""
    path = data_dir / ENVIRONMENT_FILE
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise SettingsError(f"Cannot read {path}: it is not UTF-8 text") from None
    except OSError as exc:  # the reason alone: a long path repeated after it would be cut
        raise SettingsError(f"Cannot read {path}: {exc.strerror or exc}") from None
    if not text:
        return None
    try:
        return Environment(text.lower()).value
    except ValueError:
        shown = text if len(text) <= _SHOWN_RECORD else text[:_SHOWN_RECORD] + "..."
        raise SettingsError(
            f"{path.absolute()} records {shown!r}, which is no environment: it must hold one of "
            "local, integ, prod"
        ) from None
