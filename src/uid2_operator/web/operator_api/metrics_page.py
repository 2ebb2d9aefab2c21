"""The ``/metrics`` page of a worker: its registry's Prometheus text, always rendered after it
was asked for, and rendered at most once in a span of a multiple of the time the last rendering
took.

Rendering is not free: every series of every key, endpoint and status, with the other workers'
figures read from their files (``metrics_files``), takes about 100 ms for a few hundred keys in
use, on the worker's event loop, and ``/metrics`` answers anyone who can reach its port. Were
every request rendered as it came, a few clients asking over and over would hold each worker's
loop, and every API request behind it. So after a rendering the next one waits until
``1 / RENDER_SHARE - 1`` times as long as the last one took has passed, and every request that
came in meanwhile gets that one rendering: however often the page is asked for, rendering takes
at most about ``RENDER_SHARE`` of a worker's time. A scraper asking every 15 s never waits; one
asking again at once waits at most that span (under a second for the slowest rendering above).

An answer is never an earlier rendering kept for later requests. The workers of one serve
answer for each other (``metrics_files``): a rendering kept by one worker while another reports
newer figures would, answered afterwards, show counters going back, which Prometheus reads as a
reset. A rendering started after the request came in reports everything any earlier answer did.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Final

from prometheus_client import CollectorRegistry, generate_latest

RENDER_SHARE: Final = 0.1
"""The most of a worker's time rendering ``/metrics`` takes, however often it is asked for."""


class MetricsPage:
    """``await body()``: the registry's text, rendered after the call (see the module's
    docstring). ``clock`` is a monotonic clock in seconds, ``sleep`` waits that long."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        share: float = RENDER_SHARE,
    ) -> None:
        if not 0 < share <= 1:
            raise ValueError("the share of time given to rendering is above 0 and at most 1")
        self._registry = registry
        self._clock = clock
        self._sleep = sleep
        self._keep = 1 / share - 1
        self._next_at = 0.0
        self._next: asyncio.Task[bytes] | None = None

    async def body(self) -> bytes:
        if self._next is None:
            wait = self._next_at - self._clock()
            if wait <= 0:
                return self._render()
            # Not a request's own task: one request going away must not take the rendering
            # every other waiting request shares with it.
            self._next = asyncio.ensure_future(self._render_after(wait))
        return await asyncio.shield(self._next)

    async def _render_after(self, wait: float) -> bytes:
        try:
            await self._sleep(wait)
        finally:
            # From here on a request that comes in waits for a rendering of its own; this one
            # starts now, after every request that shares it came in (rendering does not yield).
            self._next = None
        return self._render()

    def _render(self) -> bytes:
        started = self._clock()
        body = generate_latest(self._registry)
        done = self._clock()
        self._next_at = done + (done - started) * self._keep
        return body
