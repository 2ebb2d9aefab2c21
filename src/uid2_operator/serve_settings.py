"""The knobs of a running operator (``uid2-operator serve``), read once from the environment.

Kept apart from ``settings.Settings`` (what every command needs: where the data is, which
environment) because only the serving processes read these. Every variable, its unit and its
default are listed in ``ServeSettings.from_env``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

from uid2_operator.settings import SettingsError

DEFAULT_POLL_INTERVAL_S = 1.0
DEFAULT_MAX_SNAPSHOT_AGE_S = 300.0
DEFAULT_FLUSH_INTERVAL_S = 5.0
DEFAULT_KEY_ROTATION_INTERVAL_S = 3600.0


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
    """

    poll_interval_s: float = DEFAULT_POLL_INTERVAL_S
    max_snapshot_age_s: float = DEFAULT_MAX_SNAPSHOT_AGE_S
    flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S
    key_rotation_interval_s: float = DEFAULT_KEY_ROTATION_INTERVAL_S
    client_side_generate: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.poll_interval_s < self.max_snapshot_age_s:
            raise SettingsError("Need 0 < poll interval < maximum snapshot age")
        if self.flush_interval_s <= 0 or self.key_rotation_interval_s <= 0:
            raise SettingsError("Flush and key rotation intervals must be positive")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServeSettings:
        """Variables (seconds, decimals allowed): UID2_POLL_INTERVAL_S (default 1),
        UID2_MAX_SNAPSHOT_AGE_S (300), UID2_FLUSH_INTERVAL_S (5), UID2_KEY_ROTATION_INTERVAL_S
        (3600); UID2_CLIENT_SIDE_GENERATE ("true" or "false", default true)."""
        env = os.environ if environ is None else environ
        return cls(
            poll_interval_s=_seconds(env, "UID2_POLL_INTERVAL_S", DEFAULT_POLL_INTERVAL_S),
            max_snapshot_age_s=_seconds(env, "UID2_MAX_SNAPSHOT_AGE_S", DEFAULT_MAX_SNAPSHOT_AGE_S),
            flush_interval_s=_seconds(env, "UID2_FLUSH_INTERVAL_S", DEFAULT_FLUSH_INTERVAL_S),
            key_rotation_interval_s=_seconds(
                env, "UID2_KEY_ROTATION_INTERVAL_S", DEFAULT_KEY_ROTATION_INTERVAL_S
            ),
            client_side_generate=_flag(env, "UID2_CLIENT_SIDE_GENERATE", default=True),
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
    try:
        value = float(text)
    except ValueError:
        raise SettingsError(f"{name} must be a number of seconds (got {text!r})") from None
    if not math.isfinite(value) or value <= 0:
        raise SettingsError(f"{name} must be a positive number of seconds")
    return value
