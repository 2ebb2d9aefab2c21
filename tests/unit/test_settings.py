"""Settings are read once from an explicit mapping, with loud errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from uid2_operator.clock import FixedClock, SystemClock, system_random
from uid2_operator.domain.environments import Environment
from uid2_operator.settings import Settings, SettingsError
from uid2_operator.wire.scope import IdentityScope


def test_defaults_use_embedded_sqlite_under_the_data_dir(tmp_path: Path) -> None:
    settings = Settings.from_env({}, data_dir=str(tmp_path))
    assert settings.environment is Environment.LOCAL
    assert settings.identity_scope is IdentityScope.UID2
    assert settings.store_url == f"sqlite:///{(tmp_path / 'uid2.db').resolve()}"
    assert settings.keyring_path == tmp_path / "keyring.json"


def test_environment_variables_are_read() -> None:
    settings = Settings.from_env(
        {
            "UID2_DATA_DIR": "/srv/uid2",
            "UID2_DATABASE_URL": "postgresql://db/uid2",
            "UID2_ENVIRONMENT": "PROD",
            "UID2_IDENTITY_SCOPE": "euid",
            "UID2_KEYRING_FILE": "/etc/uid2/keyring.json",
        }
    )
    assert settings.data_dir == Path("/srv/uid2")
    assert settings.store_url == "postgresql://db/uid2"
    assert settings.environment is Environment.PROD
    assert settings.identity_scope is IdentityScope.EUID
    assert settings.keyring_path == Path("/etc/uid2/keyring.json")


def test_explicit_arguments_win_over_the_environment() -> None:
    settings = Settings.from_env(
        {"UID2_ENVIRONMENT": "prod", "UID2_DATA_DIR": "/a"}, data_dir="/b", environment="integ"
    )
    assert settings.environment is Environment.INTEG
    assert settings.data_dir == Path("/b")


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"UID2_ENVIRONMENT": "staging"}, "UID2_ENVIRONMENT"),
        ({"UID2_IDENTITY_SCOPE": "other"}, "UID2_IDENTITY_SCOPE"),
        ({"UID2_IDENTITY_SCOPE": "x"}, r"uid2 or euid \(got 'x'\)$"),  # as given, not upper-cased
        ({"UID2_IDENTITY_SCOPE": "eu\u0131d"}, "UID2_IDENTITY_SCOPE"),  # dotless i: upper() is I
        (
            {"UID2_KEYRING": "{}", "UID2_KEYRING_FILE": "/etc/uid2/keyring.json"},
            "^UID2_KEYRING and UID2_KEYRING_FILE are both set",
        ),
        ({"UID2_IDENTITY_V3": "yes"}, "UID2_IDENTITY_V3 must be true or false"),
        ({"UID2_IDENTITY_V3": "1"}, "UID2_IDENTITY_V3 must be true or false"),
    ],
)
def test_bad_values_name_the_variable(environ: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(environ)


def test_identity_v3_is_off_unless_set() -> None:
    assert Settings.from_env({}).identity_v3 is False
    assert Settings.from_env({"UID2_IDENTITY_V3": "false"}).identity_v3 is False
    assert Settings.from_env({"UID2_IDENTITY_V3": "True"}).identity_v3 is True


def test_clocks_and_random() -> None:
    clock = FixedClock(at_ms=1_000)
    clock.advance(500)
    assert clock.now_ms() == 1_500
    assert SystemClock().now_ms() > 1_700_000_000_000
    assert len(system_random(12)) == 12
    assert system_random(16) != system_random(16)


def test_secrets_stay_out_of_the_repr() -> None:
    keyring = '{"keys": {"1": "c2VjcmV0LWtleS1lbmNyeXB0aW9uLWtleQ=="}, "pepper": "cGVwcGVy"}'
    settings = Settings.from_env(
        {
            "UID2_DATABASE_URL": "postgresql://uid2:hunter2-db-password@db/uid2",
            "UID2_KEYRING": keyring,
        },
        data_dir="/srv/uid2",
    )
    assert settings.keyring_json == keyring
    assert settings.database_url is not None
    for shown in (repr(settings), str(settings), f"{settings}"):
        assert "hunter2-db-password" not in shown
        assert "c2VjcmV0LWtleS1lbmNyeXB0aW9uLWtleQ" not in shown
        assert "pepper" not in shown
        assert "data_dir=PosixPath('/srv/uid2')" in shown


@pytest.mark.parametrize(
    ("environment", "expected"),
    [("local", 1 << 16), ("integ", 1 << 20), ("prod", 1 << 20)],
)
def test_salt_buckets_default_per_environment(environment: str, expected: int) -> None:
    settings = Settings.from_env({"UID2_ENVIRONMENT": environment}, data_dir="/d")
    assert settings.salt_buckets is None
    assert settings.salt_bucket_count == expected


@pytest.mark.parametrize("value", ["1", "1024", "1048576", " 4096 "])
def test_salt_buckets_accept_powers_of_two_up_to_two_to_the_twenty(value: str) -> None:
    settings = Settings.from_env({"UID2_SALT_BUCKETS": value, "UID2_ENVIRONMENT": "prod"})
    assert settings.salt_bucket_count == int(value)


@pytest.mark.parametrize(
    "value", ["0", "1000", "2097152", "-1024", "1e3", "many", "1" * 40, "\uff11\uff10\uff12\uff14"]
)
def test_salt_buckets_refuse_anything_else(value: str) -> None:
    with pytest.raises(SettingsError, match="UID2_SALT_BUCKETS"):
        Settings.from_env({"UID2_SALT_BUCKETS": value})


def test_salt_buckets_are_checked_when_built_directly() -> None:
    with pytest.raises(SettingsError, match="power of two"):
        Settings(data_dir=Path("/d"), salt_buckets=3)


@pytest.mark.parametrize(
    ("content", "reason"),
    [(None, "Is a directory"), (b"\xff\xfe", "it is not UTF-8 text")],
)
def test_an_unreadable_environment_file_is_refused_with_its_reason_last(
    tmp_path: Path, content: bytes | None, reason: str
) -> None:
    # The reason ends the message (a long message is cut in its middle when shown), the path
    # said once before it.
    data_dir = tmp_path / ("d" * 120)
    data_dir.mkdir()
    if content is None:
        (data_dir / "environment").mkdir()  # an OSError whoever runs it (root reads anything)
    else:
        (data_dir / "environment").write_bytes(content)
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({}, data_dir=str(data_dir))
    assert refused.value.detail == f"Cannot read {data_dir / 'environment'}: {reason}"
