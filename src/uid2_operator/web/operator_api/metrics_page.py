"""The ``/metrics`` page of a worker: its registry's Prometheus text, rendered again only when the
last rendering has aged past a multiple of the time it took.

Rendering is not free: every series of every key, endpoint and status, with the other workers'
figures read from their files (``metrics_files``), takes about 100 ms for a few hundred keys in
use, on the worker's event loop, and ``/metrics`` answers anyone who can reach its port. Were
every request rendered afresh, a few clients asking over and over would hold each worker's loop,
and every API request behind it. A rendering is kept for ``1 / RENDER_SHARE - 1`` times as long as
it took, so however often the page is asked for, rendering takes at most about ``RENDER_SHARE``
of a worker's time; a scraper, asking every 15 s or so, always gets a fresh one, and a small
registry is rendered again after a few milliseconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

from prometheus_client import CollectorRegistry, generate_latest

RENDER_SHARE: Final = 0.1
"""The most of a worker's time rendering ``/metrics`` takes, however often it is asked for."""


class MetricsPage:
    """``body()``: the registry's text, from the last rendering while it is fresh (see the
    module's docstring). ``clock`` is a monotonic clock in seconds."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        clock: Callable[[], float] = time.perf_counter,
        share: float = RENDER_SHARE,
    ) -> None:
        if not 0 < share <= 1:
            raise ValueError("the share of time given to rendering is above 0 and at most 1")
        self._registry = registry
        self._clock = clock
        self._keep = 1 / share - 1
        self._body: bytes | None = None
        self._fresh_until = 0.0

    def body(self) -> bytes:
        started = self._clock()
        if self._body is not None and started < self._fresh_until:
            return self._body
        body = generate_latest(self._registry)
        done = self._clock()
        self._body, self._fresh_until = body, done + (done - started) * self._keep
        return body
