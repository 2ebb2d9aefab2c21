"""The knobs of a running operator (``uid2-operator serve``), read once from the environment.

Kept apart from ``settings.Settings`` (what every command needs: where the data is, which
environment) because only the serving processes read these. Every variable, its unit and its
default are listed in ``ServeSettings.from_env``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Final

from uid2_operator.domain.environments import Environment
from uid2_operator.domain.keysets import KEY_RETENTION_MARGIN_S
from uid2_operator.services.replay_table import DEFAULT_SLOTS, MAX_SLOTS
from uid2_operator.services.snapshot import Lifetimes
from uid2_operator.settings import DECIMAL_TEXT, SettingsError
from uid2_operator.wire.cstg import DEFAULT_CSTG_TIMESTAMP_WINDOW
from uid2_operator.wire.envelope import DEFAULT_TIMESTAMP_WINDOW, TimestampWindow
from uid2_operator.wire.tcf import DEFAULT_VENDOR_ID, MAX_VENDOR_ID

DEFAULT_POLL_INTERVAL_S = 1.0
DEFAULT_MAX_SNAPSHOT_AGE_S = 300.0
DEFAULT_FLUSH_INTERVAL_S = 5.0
DEFAULT_KEY_ROTATION_INTERVAL_S = 3600.0
MAX_KEY_ROTATION_INTERVAL_S: Final = 86_400.0
"""At most daily, as ``keys rotate`` asks of a scheduler: far inside the key policy's longest
safe gap between two runs (``KeyPolicy.run_interval_s``, by default 7 days less the activation
lead), so a keyset's newest key never expires before its successor is active."""
MAX_POLL_INTERVAL_S: Final = 3600.0
"""An hour: the longest a worker may take to see a change (a revoked key) while the store is up."""
MAX_SNAPSHOT_AGE_S: Final = 86_400.0
"""A day: the longest a worker may answer from a snapshot it cannot confirm (a revoked key is
accepted meanwhile)."""
MAX_FLUSH_INTERVAL_S: Final = 3600.0
"""An hour: the longest usage counters and logout opt-outs may wait for their write."""
DEFAULT_HTTP_HEAD_TIMEOUT_S = 10.0
DEFAULT_HTTP_BODY_TIMEOUT_S = 30.0
DEFAULT_HTTP_SEND_TIMEOUT_S = 30.0
DEFAULT_HTTP_MAX_HEAD_BYTES = 64 * 1024
MIN_HTTP_MAX_HEAD_BYTES: Final = 1024
MAX_HTTP_MAX_HEAD_BYTES: Final = 1 << 20
MAX_HTTP_TIMEOUT_S: Final = 3600.0

# Token lifetimes per deployment environment (operator-api §5.8): the reference's production
# values in prod (identity 3 days, refresh 30 days, refresh after 1 hour, sharing tokens 30 days);
# shorter ones in integ and local (1 hour, 24 hours, 15 minutes), so that an integration sees
# refreshes and expiries within a working session. Each can be overridden (see ``from_env``).
PROD_LIFETIMES = Lifetimes()
INTEG_LIFETIMES = Lifetimes(
    identity_token_s=3_600, refresh_token_s=86_400, refresh_identity_after_s=900
)
DEFAULT_LIFETIMES = {
    Environment.PROD: PROD_LIFETIMES,
    Environment.INTEG: INTEG_LIFETIMES,
    Environment.LOCAL: INTEG_LIFETIMES,
}
MAX_LIFETIME_S = 10 * 366 * 86_400
# The v2 envelope window sizes the replay cache (a nonce is remembered while a request carrying it
# can still pass), so it is capped at an hour; client-side requests come from end-user clocks.
MAX_REQUEST_WINDOW_MS = 3_600_000
MAX_CSTG_WINDOW_MS = 86_400_000
MIN_REPLAY_TABLE_ENTRIES: Final = 1_024
_REQUEST_WINDOW_VARIABLES: Final = ("UID2_REQUEST_MAX_AGE_MS", "UID2_REQUEST_MAX_FUTURE_MS")
_CSTG_WINDOW_VARIABLES: Final = ("UID2_CSTG_MAX_AGE_MS", "UID2_CSTG_MAX_FUTURE_MS")
_LIFETIME_VARIABLES = (
    ("identity_token_s", "UID2_IDENTITY_TOKEN_EXPIRES_AFTER_S"),
    ("refresh_token_s", "UID2_REFRESH_TOKEN_EXPIRES_AFTER_S"),
    ("refresh_identity_after_s", "UID2_REFRESH_IDENTITY_AFTER_S"),
    ("sharing_token_expiry_s", "UID2_SHARING_TOKEN_EXPIRY_S"),
    ("max_bidstream_lifetime_s", "UID2_MAX_BIDSTREAM_LIFETIME_S"),
    ("max_sharing_lifetime_s", "UID2_MAX_SHARING_LIFETIME_S"),
)


KEY_RETENTION_VARIABLE: Final = "UID2_EXPIRED_KEY_RETENTION_S"
MAX_KEY_RETENTION_S: Final = 2 * MAX_LIFETIME_S
"""Twenty years (and a few days): above any minimum retention (the longest lifetime, at most
``MAX_LIFETIME_S``, plus a day)."""


def longest_token_lifetime_s(lifetimes: Lifetimes) -> int:
    """The longest lifetime any token gets with ``lifetimes`` (seconds): identity, refresh,
    sharing token expiry, the maximum bidstream and sharing lifetimes. ``serve`` records it in
    the store at start-up (``MaterialService.record_token_lifetime``)."""
    return max(
        value
        for value in (
            lifetimes.identity_token_s,
            lifetimes.refresh_token_s,
            lifetimes.sharing_token_expiry_s,
            lifetimes.max_bidstream_lifetime_s,
            lifetimes.max_sharing_lifetime_s,
        )
        if value is not None
    )


def minimum_key_retention_s(lifetimes: Lifetimes) -> int:
    """How long after its expiry a key may still be needed, plus the margin (seconds).

    A token is decrypted with the keys it was sealed with until its own expiry, and it may have
    been sealed just before one of them expired; so a key is kept for the longest lifetime any
    token gets (``longest_token_lifetime_s``) past its expiry, and ``KEY_RETENTION_MARGIN_S``
    more. Every purge also honours the longest lifetime a serve recorded in the store
    (``domain.keysets.purge_retention_s``).
    """
    return longest_token_lifetime_s(lifetimes) + KEY_RETENTION_MARGIN_S


RUNTIME_DIR_VARIABLE: Final = "UID2_RUNTIME_DIR"
"""Set by ``uid2-operator serve`` for its workers, not by operators: the private directory (mode
0700) that the workers of one serve share, removed when it stops."""


@dataclass(frozen=True, slots=True)
class LifetimeOverrides:
    """Token lifetimes set explicitly (seconds); None keeps the environment's default."""

    identity_token_s: int | None = None
    refresh_token_s: int | None = None
    refresh_identity_after_s: int | None = None
    sharing_token_expiry_s: int | None = None
    max_bidstream_lifetime_s: int | None = None
    max_sharing_lifetime_s: int | None = None

    def apply(self, environment: Environment) -> Lifetimes:
        """The environment's defaults with these overrides, checked as a whole.

        Refused (SettingsError): a value that is not positive, a refresh token that expires before
        its identity token, an identity token that expires before it is due for refresh, and a
        maximum bidstream (sharing) lifetime shorter than the tokens it must admit.
        """
        given = {name: getattr(self, name) for name, _ in _LIFETIME_VARIABLES}
        for name, variable in _LIFETIME_VARIABLES:
            value = given[name]
            if value is not None and (isinstance(value, bool) or not 0 < value <= MAX_LIFETIME_S):
                raise SettingsError(f"{variable} must be from 1 to {MAX_LIFETIME_S} seconds")
        base = DEFAULT_LIFETIMES[environment]
        value = {name: getattr(base, name) for name, _ in _LIFETIME_VARIABLES}
        value.update((name, v) for name, v in given.items() if v is not None)
        if not (
            value["refresh_identity_after_s"]
            <= value["identity_token_s"]
            <= value["refresh_token_s"]
        ):
            raise SettingsError(
                "Token lifetimes must satisfy UID2_REFRESH_IDENTITY_AFTER_S "
                f"({value['refresh_identity_after_s']}) <= UID2_IDENTITY_TOKEN_EXPIRES_AFTER_S "
                f"({value['identity_token_s']}) <= UID2_REFRESH_TOKEN_EXPIRES_AFTER_S "
                f"({value['refresh_token_s']})"
            )
        bidstream = value["max_bidstream_lifetime_s"]
        if bidstream is not None and bidstream < value["identity_token_s"]:
            raise SettingsError(
                f"UID2_MAX_BIDSTREAM_LIFETIME_S ({bidstream}) must not be shorter than the "
                "identity token lifetime, UID2_IDENTITY_TOKEN_EXPIRES_AFTER_S "
                f"({value['identity_token_s']})"
            )
        sharing = value["max_sharing_lifetime_s"]
        if sharing is not None and sharing < value["sharing_token_expiry_s"]:
            raise SettingsError(
                f"UID2_MAX_SHARING_LIFETIME_S ({sharing}) must not be shorter than "
                f"UID2_SHARING_TOKEN_EXPIRY_S ({value['sharing_token_expiry_s']})"
            )
        return replace(base, **value)


@dataclass(frozen=True, slots=True)
class ServeSettings:
    """``poll_interval_s``: how often each worker asks the store whether anything changed.
    ``max_snapshot_age_s``: how long a worker keeps answering API requests from a snapshot it
    could not confirm is current (the store unreachable); after that it answers 503.
    ``flush_interval_s``: how often usage counters and logout opt-outs are written to the store.
    ``key_rotation_interval_s``: how often the serving process runs the key rotation schedule
    (it must stay well under the key policy's renewal window, days by default).
    ``client_side_generate``: serve ``/v2/token/client-generate`` and ``site_data`` in key
    responses (operator-api §8). On by default in every environment (the reference ships it off
    but public operators turn it on); without keypairs every such request is refused anyway.
    ``lifetimes``: token lifetime overrides (``token_lifetimes`` merges them with the
    environment's defaults). ``request_window``: how far a v2 envelope's timestamp may lie behind
    or ahead of the operator's clock (the reference-compatible 119 999 / 119 000 ms by default; it
    also bounds how long a nonce is remembered against replay). ``cstg_window``: the same for
    ``/v2/token/client-generate`` (30 minutes either way by default). ``replay_table_entries``:
    the slots of the replay table the workers share (``services.replay_table``), 12 bytes each;
    keep it at about twice the envelopes the whole serve answers over ``request_window``'s past
    side, or the table evicts entries before they expire. ``tcf_vendor_id``: in the EUID scope,
    the IAB vendor whose consent a token generate request's TC string must grant (operator-api
    §6.1; ``wire.tcf``); the UID2 scope ignores it. ``expired_key_retention_s``: how long past
    its expiry an encryption key is kept before the key rotation schedule deletes it, as set
    (None: the minimum; ``key_retention_s`` checks it against the environment's lifetimes).
    ``http_head_timeout_s``, ``http_body_timeout_s``, ``http_send_timeout_s`` and
    ``http_max_head_bytes``: what an HTTP connection to either API may take
    (``web.http_connection``): the time to send a request head (from the connection, or from the
    head's first byte), the time to send the rest of a body once its head is in, the time to take
    what the server has buffered for it (once the buffer is full, or once the connection is closed
    with data unsent), and the size of a head.

    Nothing here is secret, so the default repr is safe to log.
    """

    poll_interval_s: float = DEFAULT_POLL_INTERVAL_S
    max_snapshot_age_s: float = DEFAULT_MAX_SNAPSHOT_AGE_S
    flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S
    key_rotation_interval_s: float = DEFAULT_KEY_ROTATION_INTERVAL_S
    client_side_generate: bool = True
    lifetimes: LifetimeOverrides = LifetimeOverrides()
    request_window: TimestampWindow = DEFAULT_TIMESTAMP_WINDOW
    cstg_window: TimestampWindow = DEFAULT_CSTG_TIMESTAMP_WINDOW
    replay_table_entries: int = DEFAULT_SLOTS
    tcf_vendor_id: int = DEFAULT_VENDOR_ID
    expired_key_retention_s: int | None = None
    http_head_timeout_s: float = DEFAULT_HTTP_HEAD_TIMEOUT_S
    http_body_timeout_s: float = DEFAULT_HTTP_BODY_TIMEOUT_S
    http_send_timeout_s: float = DEFAULT_HTTP_SEND_TIMEOUT_S
    http_max_head_bytes: int = DEFAULT_HTTP_MAX_HEAD_BYTES

    def __post_init__(self) -> None:
        """Refuse (SettingsError) inconsistent values, naming the variables that set them."""
        self._check_seconds()
        for window, (past, future), limit in (
            (self.request_window, _REQUEST_WINDOW_VARIABLES, MAX_REQUEST_WINDOW_MS),
            (self.cstg_window, _CSTG_WINDOW_VARIABLES, MAX_CSTG_WINDOW_MS),
        ):
            for variable, reach in ((past, window.max_past_ms), (future, window.max_future_ms)):
                if reach > limit:
                    raise SettingsError(f"{variable} ({reach}) may be at most {limit} ms")
        if not MIN_REPLAY_TABLE_ENTRIES <= self.replay_table_entries <= MAX_SLOTS:
            raise SettingsError(
                f"UID2_REPLAY_TABLE_ENTRIES must be from {MIN_REPLAY_TABLE_ENTRIES} to {MAX_SLOTS}"
            )
        if not 1 <= self.tcf_vendor_id <= MAX_VENDOR_ID:
            raise SettingsError(f"UID2_TCF_VENDOR_ID must be from 1 to {MAX_VENDOR_ID}")
        for variable, timeout in (
            ("UID2_HTTP_HEAD_TIMEOUT_S", self.http_head_timeout_s),
            ("UID2_HTTP_BODY_TIMEOUT_S", self.http_body_timeout_s),
            ("UID2_HTTP_SEND_TIMEOUT_S", self.http_send_timeout_s),
        ):
            if not 0 < timeout <= MAX_HTTP_TIMEOUT_S:
                raise SettingsError(
                    f"{variable} must be above 0 and at most {MAX_HTTP_TIMEOUT_S:g} seconds"
                )
        if not MIN_HTTP_MAX_HEAD_BYTES <= self.http_max_head_bytes <= MAX_HTTP_MAX_HEAD_BYTES:
            raise SettingsError(
                f"UID2_HTTP_MAX_HEAD_BYTES must be from {MIN_HTTP_MAX_HEAD_BYTES} to "
                f"{MAX_HTTP_MAX_HEAD_BYTES}"
            )

    def _check_seconds(self) -> None:
        """The intervals, the snapshot age and the key retention: each above 0 and at most its
        bound (``MAX_*``), so that no later arithmetic on it can overflow."""
        if not 0 < self.poll_interval_s < self.max_snapshot_age_s:
            raise SettingsError(
                f"UID2_POLL_INTERVAL_S ({self.poll_interval_s:g} s) must be above 0 and below "
                f"UID2_MAX_SNAPSHOT_AGE_S ({self.max_snapshot_age_s:g} s)"
            )
        for variable, interval in (
            ("UID2_FLUSH_INTERVAL_S", self.flush_interval_s),
            ("UID2_KEY_ROTATION_INTERVAL_S", self.key_rotation_interval_s),
        ):
            if not interval > 0:
                raise SettingsError(f"{variable} must be a positive number of seconds")
        for variable, seconds, limit in (
            ("UID2_POLL_INTERVAL_S", self.poll_interval_s, MAX_POLL_INTERVAL_S),
            ("UID2_MAX_SNAPSHOT_AGE_S", self.max_snapshot_age_s, MAX_SNAPSHOT_AGE_S),
            ("UID2_FLUSH_INTERVAL_S", self.flush_interval_s, MAX_FLUSH_INTERVAL_S),
        ):
            if not seconds <= limit:
                raise SettingsError(f"{variable} ({seconds:g} s) may be at most {limit:g} s")
        if self.key_rotation_interval_s > MAX_KEY_ROTATION_INTERVAL_S:
            raise SettingsError(
                f"UID2_KEY_ROTATION_INTERVAL_S ({self.key_rotation_interval_s:g} s) may be at "
                f"most {MAX_KEY_ROTATION_INTERVAL_S:g} s (a day): a longer interval can let a "
                "keyset's newest key expire before its successor is made"
            )
        retention = self.expired_key_retention_s
        if retention is not None and retention > MAX_KEY_RETENTION_S:
            raise SettingsError(
                f"{KEY_RETENTION_VARIABLE} ({retention}) may be at most {MAX_KEY_RETENTION_S} s"
            )

    def token_lifetimes(self, environment: Environment) -> Lifetimes:
        """The lifetimes tokens get in ``environment`` (see ``LifetimeOverrides.apply``)."""
        return self.lifetimes.apply(environment)

    def key_retention_s(self, environment: Environment) -> int:
        """How long past its expiry a key is kept in ``environment`` (seconds): the minimum
        (``minimum_key_retention_s`` of ``token_lifetimes``) unless UID2_EXPIRED_KEY_RETENTION_S
        raises it. A setting below the minimum is refused (SettingsError) rather than raised to
        it: keys deleted too early break tokens still in use, with no way back."""
        minimum = minimum_key_retention_s(self.token_lifetimes(environment))
        retention = self.expired_key_retention_s
        if retention is None:
            return minimum
        if retention < minimum:
            raise SettingsError(
                f"{KEY_RETENTION_VARIABLE} ({retention}) is below the minimum of {minimum} seconds "
                f"in the {environment.value} environment (the longest token lifetime plus one "
                "day): it may only raise the retention"
            )
        return retention

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServeSettings:
        """Variables (seconds, decimals allowed): UID2_POLL_INTERVAL_S (default 1, at most
        3600), UID2_MAX_SNAPSHOT_AGE_S (300, at most 86400), UID2_FLUSH_INTERVAL_S (5, at most
        3600), UID2_KEY_ROTATION_INTERVAL_S (3600, at most 86400); UID2_CLIENT_SIDE_GENERATE
        ("true" or "false", default true).

        Token lifetimes (whole seconds; default per environment, see ``DEFAULT_LIFETIMES``):
        UID2_IDENTITY_TOKEN_EXPIRES_AFTER_S, UID2_REFRESH_TOKEN_EXPIRES_AFTER_S,
        UID2_REFRESH_IDENTITY_AFTER_S, UID2_SHARING_TOKEN_EXPIRY_S (30 days),
        UID2_MAX_BIDSTREAM_LIFETIME_S (default: the identity token lifetime),
        UID2_MAX_SHARING_LIFETIME_S (default: the sharing token expiry).

        Timestamp windows (whole milliseconds): UID2_REQUEST_MAX_AGE_MS (119999),
        UID2_REQUEST_MAX_FUTURE_MS (119000), UID2_CSTG_MAX_AGE_MS (1800000),
        UID2_CSTG_MAX_FUTURE_MS (1800000).

        Replay protection: UID2_REPLAY_TABLE_ENTRIES, the slots of the table of seen envelopes
        that the workers of one serve share (whole number, 1024 to 2^27; default 2097152, 24 MiB
        in memory; read by the serving process, which creates the table).

        User consent (EUID scope only): UID2_TCF_VENDOR_ID, the IAB TCF vendor id whose consent
        to purposes 1, 2, 3, 4, 7 and 10 a ``tcf_consent_string`` must grant before
        ``/v2/token/generate`` issues tokens (whole number, 1 to 65535; default 21).

        Key purge: UID2_EXPIRED_KEY_RETENTION_S, how long past its expiry an encryption key is
        kept (whole seconds; default and minimum: the longest token lifetime plus one day, see
        ``key_retention_s``; at most 632448000, twenty years).

        HTTP connections to either API (``web.http_connection``): UID2_HTTP_HEAD_TIMEOUT_S
        (seconds, default 10, at most 3600), UID2_HTTP_BODY_TIMEOUT_S (30, at most 3600),
        UID2_HTTP_SEND_TIMEOUT_S (30, at most 3600), UID2_HTTP_MAX_HEAD_BYTES (whole number,
        1024 to 1048576; default 65536)."""
        env = os.environ if environ is None else environ
        lifetimes = LifetimeOverrides(
            **{name: _optional_whole(env, variable) for name, variable in _LIFETIME_VARIABLES}
        )
        request = DEFAULT_TIMESTAMP_WINDOW
        cstg = DEFAULT_CSTG_TIMESTAMP_WINDOW
        request_past, request_future = _REQUEST_WINDOW_VARIABLES
        cstg_past, cstg_future = _CSTG_WINDOW_VARIABLES
        return cls(
            lifetimes=lifetimes,
            request_window=TimestampWindow(
                max_past_ms=_whole(env, request_past, request.max_past_ms),
                max_future_ms=_whole(env, request_future, request.max_future_ms),
            ),
            cstg_window=TimestampWindow(
                max_past_ms=_whole(env, cstg_past, cstg.max_past_ms),
                max_future_ms=_whole(env, cstg_future, cstg.max_future_ms),
            ),
            poll_interval_s=_seconds(env, "UID2_POLL_INTERVAL_S", DEFAULT_POLL_INTERVAL_S),
            max_snapshot_age_s=_seconds(env, "UID2_MAX_SNAPSHOT_AGE_S", DEFAULT_MAX_SNAPSHOT_AGE_S),
            flush_interval_s=_seconds(env, "UID2_FLUSH_INTERVAL_S", DEFAULT_FLUSH_INTERVAL_S),
            key_rotation_interval_s=_seconds(
                env, "UID2_KEY_ROTATION_INTERVAL_S", DEFAULT_KEY_ROTATION_INTERVAL_S
            ),
            client_side_generate=_flag(env, "UID2_CLIENT_SIDE_GENERATE", default=True),
            replay_table_entries=_whole(env, "UID2_REPLAY_TABLE_ENTRIES", DEFAULT_SLOTS),
            tcf_vendor_id=_whole(env, "UID2_TCF_VENDOR_ID", DEFAULT_VENDOR_ID),
            expired_key_retention_s=_optional_whole(env, KEY_RETENTION_VARIABLE),
            http_head_timeout_s=_seconds(
                env, "UID2_HTTP_HEAD_TIMEOUT_S", DEFAULT_HTTP_HEAD_TIMEOUT_S
            ),
            http_body_timeout_s=_seconds(
                env, "UID2_HTTP_BODY_TIMEOUT_S", DEFAULT_HTTP_BODY_TIMEOUT_S
            ),
            http_send_timeout_s=_seconds(
                env, "UID2_HTTP_SEND_TIMEOUT_S", DEFAULT_HTTP_SEND_TIMEOUT_S
            ),
            http_max_head_bytes=_whole(
                env, "UID2_HTTP_MAX_HEAD_BYTES", DEFAULT_HTTP_MAX_HEAD_BYTES
            ),
        )


def _flag(env: Mapping[str, str], name: str, *, default: bool) -> bool:
    text = env.get(name, "").strip().lower()
    if not text:
        return default
    if text not in ("true", "false"):
        raise SettingsError(f"{name} must be true or false (got {text!r})")
    return text == "true"


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    text = env.get(name)
    if text is None or not text.strip():
        return default
    if DECIMAL_TEXT.fullmatch(text.strip()) is None:
        raise SettingsError(f"{name} must be a number of seconds (got {text!r})")
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise SettingsError(f"{name} must be a positive number of seconds")
    return value


def _optional_whole(env: Mapping[str, str], name: str) -> int | None:
    """A whole number (>= 0) from ``env``; None when unset or blank."""
    text = env.get(name)
    if text is None or not text.strip():
        return None
    text = text.strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 12):
        raise SettingsError(f"{name} must be a whole number (got {text!r})")
    return int(text)


def _whole(env: Mapping[str, str], name: str, default: int) -> int:
    value = _optional_whole(env, name)
    return default if value is None else value
