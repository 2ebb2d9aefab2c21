"""How often a repeated log line may be written: at most once per key per interval, the lines
held back in between counted, and a bounded number of keys remembered (a flood of distinct keys
cannot grow it without limit)."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class LogThrottle(Generic[K]):
    """Per key, whether its line is due (see the module docstring).

    At most ``max_entries`` keys are remembered; past that, those whose interval ended are
    dropped, and if none has ended, all.
    """

    __slots__ = ("_interval_ms", "_max_entries", "_seen")

    def __init__(self, interval_ms: int, max_entries: int) -> None:
        self._interval_ms = interval_ms
        self._max_entries = max_entries
        self._seen: dict[K, list[int]] = {}  # key -> [when last written, held back since]

    def due(self, key: K, now_ms: int) -> int | None:
        """None while ``key``'s last line is younger than the interval (this one is counted as
        held back); else how many were held back since that line, and ``now_ms`` becomes the
        key's last line."""
        entry = self._seen.get(key)
        if entry is not None and now_ms - entry[0] < self._interval_ms:
            entry[1] += 1
            return None
        if entry is None and len(self._seen) >= self._max_entries:
            live = {k: v for k, v in self._seen.items() if now_ms - v[0] < self._interval_ms}
            self._seen = live if len(live) < self._max_entries else {}
        self._seen[key] = [now_ms, 0]
        return 0 if entry is None else entry[1]


def held_back(count: int) -> str:
    """The tail of a throttled line: how many lines like it were held back since the last one
    (``LogThrottle.due``'s count); nothing when none was."""
    return f" ({count} more since the last line)" if count else ""
