"""The circuit breaker, driven by an injected clock."""

from __future__ import annotations

import pytest

from tandem.gateway.breaker import CLOSED, OPEN, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_the_threshold_of_consecutive_failures() -> None:
    clock = Clock()
    breaker = CircuitBreaker(3, 1.0, clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
    breaker.record_success()  # a success in between resets the count
    for _ in range(2):
        breaker.record_failure()
    assert breaker.state == CLOSED and breaker.allow()
    breaker.record_failure()
    assert breaker.state == OPEN and breaker.opened == 1
    assert not breaker.allow()


def test_one_probe_per_window_and_a_success_closes() -> None:
    clock = Clock()
    breaker = CircuitBreaker(1, 1.0, clock)
    breaker.record_failure()
    clock.now += 0.999
    assert not breaker.allow()
    clock.now += 0.002
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # everyone else waits for its verdict
    breaker.record_success()
    assert breaker.state == CLOSED and breaker.allow() and breaker.allow()


def test_a_failed_probe_rearms_a_full_window() -> None:
    clock = Clock()
    breaker = CircuitBreaker(1, 1.0, clock)
    breaker.record_failure()
    clock.now += 1.0
    assert breaker.allow()
    clock.now += 0.5
    breaker.record_failure()
    clock.now += 0.9
    assert not breaker.allow()
    clock.now += 0.1
    assert breaker.allow()
    assert breaker.opened == 1  # still the same outage


def test_a_lost_probe_does_not_wedge_the_breaker() -> None:
    clock = Clock()
    breaker = CircuitBreaker(1, 1.0, clock)
    breaker.record_failure()
    clock.now += 1.0
    assert breaker.allow()  # this probe is cancelled and never reports
    clock.now += 1.0
    assert breaker.allow()


def test_rejects_nonsense_settings() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(0, 1.0)
    with pytest.raises(ValueError):
        CircuitBreaker(1, 0.0)
