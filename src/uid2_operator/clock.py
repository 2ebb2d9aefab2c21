"""The real clock and the real random source, for the composition root to hand down.

``wire/`` and ``domain/`` never read time or entropy themselves; they take ``now`` values and a
``RandomBytes`` callable from their caller. This module is where the real ones come from, and where
tests find deterministic stand-ins.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

RandomBytes = Callable[[int], bytes]


class Clock(Protocol):
    def now_ms(self) -> int:
        """Milliseconds since the Unix epoch, UTC."""
        ...

    def monotonic_ms(self) -> int:
        """Milliseconds on a clock that never goes back and is not stepped with the time of day
        (an NTP correction, an operator setting the date): for how long, never for when."""
        ...


class SystemClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def monotonic_ms(self) -> int:
        return time.monotonic_ns() // 1_000_000


@dataclass
class FixedClock:
    """A clock that only moves when told to (tests, replays).

    ``advance`` moves the time of day and the monotonic clock together, as time passing does;
    setting ``at_ms`` moves the time of day alone, as stepping the system's clock does."""

    at_ms: int = 1_700_000_000_000
    elapsed_ms: int = 0
    """The monotonic clock's reading."""

    def now_ms(self) -> int:
        return self.at_ms

    def monotonic_ms(self) -> int:
        return self.elapsed_ms

    def advance(self, ms: int) -> None:
        self.at_ms += ms
        self.elapsed_ms += ms


def system_random(n: int) -> bytes:
    """Cryptographically secure random bytes from the operating system."""
    return os.urandom(n)
