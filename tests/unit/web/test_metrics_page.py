"""``/metrics`` always rendered after it was asked for, and at most once in nine times the span
the last rendering took: however often it is asked for, rendering takes at most a tenth of a
worker's time, so clients asking over and over cannot hold a worker's event loop (and every
request behind it); and no answer is a rendering kept from before, which, with the workers
answering for each other, could show a counter going back."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry, Counter

from uid2_operator.web.operator_api.metrics_page import MetricsPage


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.render_s = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        await asyncio.sleep(0)
        self.now += seconds


class _SlowRegistry(CollectorRegistry):
    """A registry whose rendering takes ``clock.render_s`` on the clock, counting renderings."""

    def __init__(self, clock: _Clock) -> None:
        super().__init__(auto_describe=False)
        self.clock = clock
        self.renderings = 0
        self.counter = Counter("probe", "A probe", registry=self)

    def collect(self):  # type: ignore[no-untyped-def]
        self.renderings += 1
        self.clock.now += self.clock.render_s
        return super().collect()


def _page(share: float = 0.1) -> tuple[_Clock, _SlowRegistry, MetricsPage]:
    clock = _Clock()
    clock.render_s = 0.1
    registry = _SlowRegistry(clock)
    return clock, registry, MetricsPage(registry, clock=clock, sleep=clock.sleep, share=share)


def test_asked_again_soon_it_waits_for_a_rendering_made_after_it_was_asked() -> None:
    clock, registry, page = _page()

    async def scenario() -> None:
        assert b"probe_total 0.0" in await page.body()
        assert clock.slept == []
        registry.counter.inc()
        clock.now += 0.5
        # the first rendering took 0.1 s: the next starts 0.9 s after it ended, and reports
        # the count made after the first
        assert b"probe_total 1.0" in await page.body()
        assert clock.slept == [pytest.approx(0.4)]
        assert registry.renderings == 2
        clock.now += 0.95
        assert b"probe_total 1.0" in await page.body()
        assert clock.slept == [pytest.approx(0.4)]  # past the span: rendered at once

    asyncio.run(scenario())


def test_requests_that_come_in_while_one_waits_share_its_rendering() -> None:
    clock, registry, page = _page()

    async def scenario() -> None:
        await page.body()
        registry.counter.inc(2)
        bodies = await asyncio.gather(*(page.body() for _ in range(5)))
        assert registry.renderings == 2
        assert len(clock.slept) == 1
        assert all(b"probe_total 2.0" in body for body in bodies)

    asyncio.run(scenario())


def test_a_waiting_request_that_goes_away_does_not_take_the_others_rendering() -> None:
    _clock, registry, page = _page()

    async def scenario() -> None:
        await page.body()
        leaving = asyncio.ensure_future(page.body())
        staying = asyncio.ensure_future(page.body())
        await asyncio.sleep(0)
        leaving.cancel()
        assert b"probe_total" in await staying
        assert leaving.cancelled()
        assert registry.renderings == 2

    asyncio.run(scenario())


def test_asked_without_pause_rendering_takes_a_tenth_of_the_time() -> None:
    clock, registry, page = _page()

    async def scenario() -> None:
        start = clock.now
        while clock.now - start < 100:
            await page.body()
            clock.now += 0.001  # a request's own cost

    asyncio.run(scenario())
    assert registry.renderings * 0.1 <= 0.1 * (clock.now - 100.0) + 0.1
    assert registry.renderings > 90  # and the page was rendered again all along


def test_a_share_of_one_renders_every_time_without_waiting() -> None:
    clock, registry, page = _page(share=1.0)

    async def scenario() -> None:
        for _ in range(3):
            await page.body()

    asyncio.run(scenario())
    assert registry.renderings == 3
    assert clock.slept == []


@pytest.mark.parametrize("share", [0.0, -0.1, 1.5])
def test_a_share_outside_its_range_is_refused(share: float) -> None:
    with pytest.raises(ValueError, match="share"):
        MetricsPage(CollectorRegistry(), share=share)
