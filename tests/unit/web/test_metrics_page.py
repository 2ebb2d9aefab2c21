"""``/metrics`` rendered again only once the last rendering has aged past nine times what it
took: however often it is asked for, rendering takes at most a tenth of a worker's time, so
clients asking over and over cannot hold a worker's event loop (and every request behind it)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter

from uid2_operator.web.operator_api.metrics_page import MetricsPage


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.render_s = 0.0

    def __call__(self) -> float:
        return self.now


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


def test_a_rendering_is_reused_for_nine_times_as_long_as_it_took() -> None:
    clock = _Clock()
    registry = _SlowRegistry(clock)
    page = MetricsPage(registry, clock=clock)
    clock.render_s = 0.1
    first = page.body()
    assert registry.renderings == 1
    registry.counter.inc()
    clock.now += 0.89
    assert page.body() == first  # still fresh: the new count waits
    assert registry.renderings == 1
    clock.now += 0.02
    assert b"probe_total 1.0" in page.body()
    assert registry.renderings == 2


def test_asked_without_pause_rendering_takes_a_tenth_of_the_time() -> None:
    clock = _Clock()
    registry = _SlowRegistry(clock)
    page = MetricsPage(registry, clock=clock)
    clock.render_s = 0.1
    start = clock.now
    while clock.now - start < 100:
        page.body()
        clock.now += 0.001  # a request's own cost
    assert registry.renderings * 0.1 <= 0.1 * (clock.now - start) + 0.1


def test_a_share_of_one_renders_every_time() -> None:
    clock = _Clock()
    registry = _SlowRegistry(clock)
    page = MetricsPage(registry, clock=clock, share=1.0)
    clock.render_s = 0.1
    for _ in range(3):
        page.body()
    assert registry.renderings == 3


@pytest.mark.parametrize("share", [0.0, -0.1, 1.5])
def test_a_share_outside_its_range_is_refused(share: float) -> None:
    with pytest.raises(ValueError, match="share"):
        MetricsPage(CollectorRegistry(), share=share)
