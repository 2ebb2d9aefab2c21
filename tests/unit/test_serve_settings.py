"""The serving settings: token lifetimes and timestamp windows, read from the environment."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from uid2_operator.domain.environments import Environment
from uid2_operator.serve_settings import (
    INTEG_LIFETIMES,
    KEY_RETENTION_MARGIN_S,
    PROD_LIFETIMES,
    LifetimeOverrides,
    ServeSettings,
    longest_token_lifetime_s,
    minimum_key_retention_s,
)
from uid2_operator.services.snapshot import Lifetimes
from uid2_operator.settings import SettingsError
from uid2_operator.wire.cstg import DEFAULT_CSTG_TIMESTAMP_WINDOW
from uid2_operator.wire.envelope import DEFAULT_TIMESTAMP_WINDOW, TimestampWindow

HOUR = 3_600
DAY = 86_400


def test_lifetime_defaults_per_environment() -> None:
    settings = ServeSettings.from_env({})
    prod = settings.token_lifetimes(Environment.PROD)
    assert prod == PROD_LIFETIMES
    assert (prod.identity_token_s, prod.refresh_token_s) == (3 * DAY, 30 * DAY)
    assert (prod.refresh_identity_after_s, prod.sharing_token_expiry_s) == (HOUR, 30 * DAY)
    for environment in (Environment.INTEG, Environment.LOCAL):
        short = settings.token_lifetimes(environment)
        assert short == INTEG_LIFETIMES
        assert (short.identity_token_s, short.refresh_token_s) == (HOUR, DAY)
        assert short.refresh_identity_after_s == 15 * 60


def test_lifetime_overrides_apply_over_the_environment_defaults() -> None:
    settings = ServeSettings.from_env(
        {
            "UID2_IDENTITY_TOKEN_EXPIRES_AFTER_S": "7200",
            "UID2_REFRESH_TOKEN_EXPIRES_AFTER_S": "172800",
            "UID2_REFRESH_IDENTITY_AFTER_S": " 1800 ",
            "UID2_SHARING_TOKEN_EXPIRY_S": "600",
            "UID2_MAX_BIDSTREAM_LIFETIME_S": "7200",
            "UID2_MAX_SHARING_LIFETIME_S": "900",
        }
    )
    assert settings.lifetimes == LifetimeOverrides(7200, 172800, 1800, 600, 7200, 900)
    assert settings.token_lifetimes(Environment.PROD) == Lifetimes(
        identity_token_s=7200,
        refresh_token_s=172800,
        refresh_identity_after_s=1800,
        sharing_token_expiry_s=600,
        max_bidstream_lifetime_s=7200,
        max_sharing_lifetime_s=900,
    )
    partial = ServeSettings.from_env({"UID2_IDENTITY_TOKEN_EXPIRES_AFTER_S": "1200"})
    assert partial.token_lifetimes(Environment.LOCAL).identity_token_s == 1200
    assert partial.token_lifetimes(Environment.LOCAL).refresh_token_s == DAY


@pytest.mark.parametrize(
    ("env", "environment", "message"),
    [
        ({"UID2_IDENTITY_TOKEN_EXPIRES_AFTER_S": "1200"}, Environment.PROD, "<="),
        ({"UID2_REFRESH_TOKEN_EXPIRES_AFTER_S": "60"}, Environment.LOCAL, "<="),
        ({"UID2_REFRESH_IDENTITY_AFTER_S": "7200"}, Environment.INTEG, "<="),
        ({"UID2_IDENTITY_TOKEN_EXPIRES_AFTER_S": "0"}, Environment.PROD, "from 1 to"),
        ({"UID2_SHARING_TOKEN_EXPIRY_S": "0"}, Environment.PROD, "UID2_SHARING_TOKEN_EXPIRY_S"),
        (
            {"UID2_MAX_BIDSTREAM_LIFETIME_S": "60"},
            Environment.PROD,
            "UID2_MAX_BIDSTREAM_LIFETIME_S",
        ),
        ({"UID2_MAX_SHARING_LIFETIME_S": "60"}, Environment.PROD, "UID2_MAX_SHARING_LIFETIME_S"),
        ({"UID2_REFRESH_TOKEN_EXPIRES_AFTER_S": "999999999999"}, Environment.PROD, "from 1 to"),
    ],
)
def test_inconsistent_or_non_positive_lifetimes_are_refused(
    env: dict[str, str], environment: Environment, message: str
) -> None:
    settings = ServeSettings.from_env(env)
    with pytest.raises(SettingsError, match=message):
        settings.token_lifetimes(environment)


@pytest.mark.parametrize(
    "env",
    [
        {"UID2_IDENTITY_TOKEN_EXPIRES_AFTER_S": "-5"},
        {"UID2_IDENTITY_TOKEN_EXPIRES_AFTER_S": "1.5"},
        {"UID2_REFRESH_TOKEN_EXPIRES_AFTER_S": "a day"},
        {"UID2_REQUEST_MAX_AGE_MS": "-1"},
        {"UID2_REQUEST_MAX_FUTURE_MS": "soon"},
        {"UID2_REQUEST_MAX_AGE_MS": "3600001"},
        {"UID2_CSTG_MAX_AGE_MS": "86400001"},
        {"UID2_CSTG_MAX_FUTURE_MS": "9" * 20},
    ],
)
def test_malformed_values_are_refused_by_name(env: dict[str, str]) -> None:
    (name,) = env
    pattern = f"{name}|timestamp window"
    with pytest.raises(SettingsError, match=pattern):
        ServeSettings.from_env(env)


def test_timestamp_windows_default_to_the_reference_and_can_be_set() -> None:
    default = ServeSettings.from_env({})
    assert default.request_window == DEFAULT_TIMESTAMP_WINDOW
    assert (default.request_window.max_past_ms, default.request_window.max_future_ms) == (
        119_999,
        119_000,
    )
    assert default.cstg_window == DEFAULT_CSTG_TIMESTAMP_WINDOW
    tuned = ServeSettings.from_env(
        {
            "UID2_REQUEST_MAX_AGE_MS": "30000",
            "UID2_REQUEST_MAX_FUTURE_MS": "5000",
            "UID2_CSTG_MAX_AGE_MS": "60000",
            "UID2_CSTG_MAX_FUTURE_MS": "0",
        }
    )
    assert tuned.request_window == TimestampWindow(max_past_ms=30_000, max_future_ms=5_000)
    assert tuned.cstg_window == TimestampWindow(max_past_ms=60_000, max_future_ms=0)


def test_serve_settings_have_nothing_to_hide_in_their_repr() -> None:
    shown = repr(ServeSettings.from_env({"UID2_IDENTITY_TOKEN_EXPIRES_AFTER_S": "1200"}))
    assert "identity_token_s=1200" in shown
    assert "request_window=TimestampWindow(max_past_ms=119999" in shown


# ------------------------------------------------------------------------- expired key retention


def test_the_key_retention_defaults_to_the_longest_token_lifetime_plus_a_day() -> None:
    settings = ServeSettings.from_env({})
    assert settings.expired_key_retention_s is None
    # prod: refresh tokens and sharing tokens live 30 days; integ and local: sharing tokens do.
    for environment in Environment:
        assert settings.key_retention_s(environment) == 31 * DAY
    assert minimum_key_retention_s(PROD_LIFETIMES) == 31 * DAY
    assert minimum_key_retention_s(INTEG_LIFETIMES) == 31 * DAY


@pytest.mark.parametrize(
    ("env", "longest"),
    [
        ({"UID2_SHARING_TOKEN_EXPIRY_S": "3600"}, DAY),  # integ: the refresh token is next
        ({"UID2_SHARING_TOKEN_EXPIRY_S": "3600", "UID2_MAX_SHARING_LIFETIME_S": "900000"}, 900_000),
        (
            {
                "UID2_SHARING_TOKEN_EXPIRY_S": "60",
                "UID2_IDENTITY_TOKEN_EXPIRES_AFTER_S": "3600",
                "UID2_MAX_BIDSTREAM_LIFETIME_S": "500000",
            },
            500_000,
        ),
        ({"UID2_REFRESH_TOKEN_EXPIRES_AFTER_S": str(90 * DAY)}, 90 * DAY),
    ],
)
def test_the_key_retention_follows_every_token_lifetime(env: dict[str, str], longest: int) -> None:
    settings = ServeSettings.from_env(env)
    assert settings.key_retention_s(Environment.INTEG) == longest + KEY_RETENTION_MARGIN_S
    assert KEY_RETENTION_MARGIN_S == DAY
    # what serve records in the store: the same longest lifetime, without the margin
    assert longest_token_lifetime_s(settings.token_lifetimes(Environment.INTEG)) == longest


def test_a_key_retention_below_the_minimum_is_refused_naming_the_minimum() -> None:
    settings = ServeSettings.from_env({"UID2_EXPIRED_KEY_RETENTION_S": str(31 * DAY - 1)})
    with pytest.raises(SettingsError) as refused:
        settings.key_retention_s(Environment.PROD)
    assert str(refused.value) == (
        "UID2_EXPIRED_KEY_RETENTION_S (2678399) is below the minimum of 2678400 seconds in the "
        "prod environment (the longest token lifetime plus one day): it may only raise the "
        "retention"
    )
    zero = ServeSettings.from_env({"UID2_EXPIRED_KEY_RETENTION_S": "0"})
    with pytest.raises(SettingsError, match="minimum of 2678400 seconds in the local"):
        zero.key_retention_s(Environment.LOCAL)
    # The minimum moves with the lifetimes: what was enough is not once a lifetime grows.
    longer = ServeSettings.from_env(
        {
            "UID2_EXPIRED_KEY_RETENTION_S": str(40 * DAY),
            "UID2_SHARING_TOKEN_EXPIRY_S": str(45 * DAY),
        }
    )
    with pytest.raises(SettingsError, match=f"minimum of {46 * DAY} seconds"):
        longer.key_retention_s(Environment.PROD)


def test_a_key_retention_at_or_above_the_minimum_is_kept() -> None:
    exact = ServeSettings.from_env({"UID2_EXPIRED_KEY_RETENTION_S": str(31 * DAY)})
    assert exact.key_retention_s(Environment.PROD) == 31 * DAY
    longer = ServeSettings.from_env({"UID2_EXPIRED_KEY_RETENTION_S": " 8000000 "})
    assert longer.expired_key_retention_s == 8_000_000
    assert longer.key_retention_s(Environment.INTEG) == 8_000_000


@pytest.mark.parametrize("text", ["-1", "31d", "1.5", "9" * 13])
def test_a_malformed_key_retention_is_refused_by_name(text: str) -> None:
    with pytest.raises(SettingsError, match="UID2_EXPIRED_KEY_RETENTION_S"):
        ServeSettings.from_env({"UID2_EXPIRED_KEY_RETENTION_S": text})


# ------------------------------------------------------------------------- every refusal names


def _from_env(**env: str) -> Callable[[], object]:
    return lambda: ServeSettings.from_env(env)


def _lifetimes(environment: Environment, **env: str) -> Callable[[], object]:
    return lambda: ServeSettings.from_env(env).token_lifetimes(environment)


@pytest.mark.parametrize(
    ("refuse", "variables"),
    [
        pytest.param(
            _from_env(UID2_POLL_INTERVAL_S="10", UID2_MAX_SNAPSHOT_AGE_S="5"),
            ("UID2_POLL_INTERVAL_S", "UID2_MAX_SNAPSHOT_AGE_S"),
            id="poll-interval-not-below-max-age",
        ),
        pytest.param(
            lambda: ServeSettings(poll_interval_s=0),
            ("UID2_POLL_INTERVAL_S", "UID2_MAX_SNAPSHOT_AGE_S"),
            id="poll-interval-zero",
        ),
        pytest.param(_from_env(UID2_POLL_INTERVAL_S="soon"), ("UID2_POLL_INTERVAL_S",), id="poll"),
        pytest.param(
            _from_env(UID2_MAX_SNAPSHOT_AGE_S="0"), ("UID2_MAX_SNAPSHOT_AGE_S",), id="max-age"
        ),
        pytest.param(
            _from_env(UID2_FLUSH_INTERVAL_S="nan"), ("UID2_FLUSH_INTERVAL_S",), id="flush-nan"
        ),
        pytest.param(
            lambda: ServeSettings(flush_interval_s=0), ("UID2_FLUSH_INTERVAL_S",), id="flush-zero"
        ),
        pytest.param(
            _from_env(UID2_KEY_ROTATION_INTERVAL_S="-1"),
            ("UID2_KEY_ROTATION_INTERVAL_S",),
            id="rotation-negative",
        ),
        pytest.param(
            lambda: ServeSettings(key_rotation_interval_s=0),
            ("UID2_KEY_ROTATION_INTERVAL_S",),
            id="rotation-zero",
        ),
        pytest.param(
            # Days between runs can leave a keyset without an active key (the policy renews 7
            # days ahead); the bound is a day, as `keys rotate` asks of a scheduler.
            _from_env(UID2_KEY_ROTATION_INTERVAL_S="86401"),
            ("UID2_KEY_ROTATION_INTERVAL_S", "86400"),
            id="rotation-over-a-day",
        ),
        pytest.param(
            _from_env(UID2_CLIENT_SIDE_GENERATE="yes"),
            ("UID2_CLIENT_SIDE_GENERATE",),
            id="client-side-generate",
        ),
        *(
            pytest.param(_from_env(**{variable: value}), (variable,), id=f"{variable}={value}")
            for variable, value in (
                ("UID2_REQUEST_MAX_AGE_MS", "3600001"),
                ("UID2_REQUEST_MAX_FUTURE_MS", "3600001"),
                ("UID2_CSTG_MAX_AGE_MS", "86400001"),
                ("UID2_CSTG_MAX_FUTURE_MS", "86400001"),
                ("UID2_REQUEST_MAX_AGE_MS", "-1"),
                ("UID2_REPLAY_TABLE_ENTRIES", "1"),
                ("UID2_REPLAY_TABLE_ENTRIES", "many"),
                ("UID2_TCF_VENDOR_ID", "0"),
                ("UID2_EXPIRED_KEY_RETENTION_S", "1.5"),
                ("UID2_IDENTITY_TOKEN_EXPIRES_AFTER_S", "-1"),
            )
        ),
        *(
            pytest.param(_lifetimes(Environment.PROD, **{variable: "0"}), (variable,), id=variable)
            for variable in (
                "UID2_IDENTITY_TOKEN_EXPIRES_AFTER_S",
                "UID2_REFRESH_TOKEN_EXPIRES_AFTER_S",
                "UID2_REFRESH_IDENTITY_AFTER_S",
                "UID2_SHARING_TOKEN_EXPIRY_S",
                "UID2_MAX_BIDSTREAM_LIFETIME_S",
                "UID2_MAX_SHARING_LIFETIME_S",
            )
        ),
        pytest.param(
            _lifetimes(Environment.PROD, UID2_IDENTITY_TOKEN_EXPIRES_AFTER_S="1200"),
            (
                "UID2_REFRESH_IDENTITY_AFTER_S",
                "UID2_IDENTITY_TOKEN_EXPIRES_AFTER_S",
                "UID2_REFRESH_TOKEN_EXPIRES_AFTER_S",
            ),
            id="lifetime-order",
        ),
        pytest.param(
            _lifetimes(Environment.PROD, UID2_MAX_BIDSTREAM_LIFETIME_S="60"),
            ("UID2_MAX_BIDSTREAM_LIFETIME_S", "UID2_IDENTITY_TOKEN_EXPIRES_AFTER_S"),
            id="bidstream-below-identity",
        ),
        pytest.param(
            _lifetimes(Environment.PROD, UID2_MAX_SHARING_LIFETIME_S="60"),
            ("UID2_MAX_SHARING_LIFETIME_S", "UID2_SHARING_TOKEN_EXPIRY_S"),
            id="sharing-below-expiry",
        ),
        pytest.param(
            lambda: ServeSettings.from_env({"UID2_EXPIRED_KEY_RETENTION_S": "60"}).key_retention_s(
                Environment.PROD
            ),
            ("UID2_EXPIRED_KEY_RETENTION_S",),
            id="retention-below-minimum",
        ),
    ],
)
def test_every_refusal_names_its_variables(
    refuse: Callable[[], object], variables: tuple[str, ...]
) -> None:
    with pytest.raises(SettingsError) as refused:
        refuse()
    for variable in variables:
        assert variable in str(refused.value)


# ---------------------------------------------------------------------------- HTTP connections


@pytest.mark.parametrize("text", ["1_0", "\u0663\u0660\u0660", "\uff15", "0x10", "10s"])
@pytest.mark.parametrize(
    "name", ["UID2_POLL_INTERVAL_S", "UID2_MAX_SNAPSHOT_AGE_S", "UID2_FLUSH_INTERVAL_S"]
)
def test_seconds_are_ascii_decimal_text(name: str, text: str) -> None:
    with pytest.raises(SettingsError, match=f"^{name} must be a number of seconds"):
        ServeSettings.from_env({name: text})


@pytest.mark.parametrize(
    ("text", "seconds"), [("2", 2.0), (" 2.5 ", 2.5), (".5", 0.5), ("1e1", 10.0)]
)
def test_seconds_take_decimals_and_exponents(text: str, seconds: float) -> None:
    assert ServeSettings.from_env({"UID2_FLUSH_INTERVAL_S": text}).flush_interval_s == seconds


def test_http_connection_limits_default_and_can_be_set() -> None:
    default = ServeSettings.from_env({})
    assert (default.http_head_timeout_s, default.http_body_timeout_s) == (10.0, 30.0)
    assert default.http_send_timeout_s == 30.0
    assert default.http_max_head_bytes == 65_536
    tuned = ServeSettings.from_env(
        {
            "UID2_HTTP_HEAD_TIMEOUT_S": "0.5",
            "UID2_HTTP_BODY_TIMEOUT_S": " 120 ",
            "UID2_HTTP_SEND_TIMEOUT_S": "2.5",
            "UID2_HTTP_MAX_HEAD_BYTES": "16384",
        }
    )
    assert (tuned.http_head_timeout_s, tuned.http_body_timeout_s) == (0.5, 120.0)
    assert tuned.http_send_timeout_s == 2.5
    assert tuned.http_max_head_bytes == 16_384


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("UID2_HTTP_HEAD_TIMEOUT_S", "0"),
        ("UID2_HTTP_HEAD_TIMEOUT_S", "-1"),
        ("UID2_HTTP_HEAD_TIMEOUT_S", "inf"),
        ("UID2_HTTP_HEAD_TIMEOUT_S", "3601"),
        ("UID2_HTTP_BODY_TIMEOUT_S", "nan"),
        ("UID2_HTTP_BODY_TIMEOUT_S", "a minute"),
        ("UID2_HTTP_BODY_TIMEOUT_S", "7200"),
        ("UID2_HTTP_SEND_TIMEOUT_S", "0"),
        ("UID2_HTTP_SEND_TIMEOUT_S", "inf"),
        ("UID2_HTTP_SEND_TIMEOUT_S", "soon"),
        ("UID2_HTTP_SEND_TIMEOUT_S", "3600.5"),
        ("UID2_HTTP_HEAD_TIMEOUT_S", "\uff11_\uff10"),  # float() reads it as 10
        ("UID2_HTTP_BODY_TIMEOUT_S", "1_0"),
        ("UID2_HTTP_BODY_TIMEOUT_S", "\u0663\u0660"),  # Arabic-Indic 30
        ("UID2_HTTP_MAX_HEAD_BYTES", "1023"),
        ("UID2_HTTP_MAX_HEAD_BYTES", "1048577"),
        ("UID2_HTTP_MAX_HEAD_BYTES", "64k"),
    ],
)
def test_malformed_http_connection_limits_are_refused_by_name(name: str, text: str) -> None:
    with pytest.raises(SettingsError, match=name):
        ServeSettings.from_env({name: text})
