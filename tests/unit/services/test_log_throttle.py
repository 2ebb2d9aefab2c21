"""A repeated log line is due at most once per key per interval, with the lines held back
counted, and the keys remembered are bounded."""

from __future__ import annotations

from uid2_operator.services.log_throttle import LogThrottle


def test_a_line_is_due_once_an_interval_and_reports_what_was_held_back() -> None:
    throttle: LogThrottle[str] = LogThrottle(interval_ms=1_000, max_entries=10)
    assert throttle.due("a", 0) == 0
    assert throttle.due("a", 999) is None
    assert throttle.due("a", 500) is None
    assert throttle.due("b", 999) == 0  # keys apart
    assert throttle.due("a", 1_000) == 2
    assert throttle.due("a", 1_001) is None


def test_the_keys_remembered_are_bounded() -> None:
    throttle: LogThrottle[int] = LogThrottle(interval_ms=1_000, max_entries=3)
    for key in range(3):
        assert throttle.due(key, 0) == 0
    assert throttle.due(3, 10) == 0  # full, none ended: all forgotten, then 3 remembered
    assert throttle.due(0, 20) == 0  # 0 was forgotten, so its line is due again
    assert throttle.due(3, 30) is None
    for key in (5, 6):
        assert throttle.due(key, 40) == 0
    assert throttle.due(7, 2_000) == 0  # full again: the ended ones go, the others too
    assert throttle.due(7, 2_001) is None
