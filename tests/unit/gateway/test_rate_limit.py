"""Token buckets and the per-key limiter, driven by a fake clock."""

from __future__ import annotations

import pytest

from tandem.gateway.rate_limit import RateLimiter, TokenBucket, retry_after_s


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_full_bucket_allows_a_burst_then_refuses_with_the_wait() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=2.0, burst=3, clock=clock)
    assert [bucket.try_take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.try_take() == pytest.approx(0.5)  # one token takes 1/rate seconds
    clock.now += 0.25
    assert bucket.try_take() == pytest.approx(0.25)  # a refusal takes nothing
    clock.now += 0.25
    assert bucket.try_take() == 0.0


def test_refill_is_capped_at_the_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=10.0, burst=2, clock=clock)
    clock.now += 3600
    assert bucket.tokens == 2
    assert [bucket.try_take() for _ in range(3)][-1] > 0


def test_a_clock_stepping_back_does_not_drain_the_bucket() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=1.0, burst=1, clock=clock)
    clock.now -= 50
    assert bucket.try_take() == 0.0


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 1), (1.0, 0.5)])
def test_a_bucket_needs_a_positive_rate_and_room_for_one_request(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst)


def test_the_limiter_keeps_one_bucket_per_caller_and_counts_refusals() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock)
    assert limiter.check("a", 1.0, 1) == 0.0
    assert limiter.check("a", 1.0, 1) == pytest.approx(1.0)
    assert limiter.check("b", 1.0, 1) == 0.0  # another caller has its own bucket
    assert limiter.limited == 1
    clock.now += 1.0
    assert limiter.check("a", 1.0, 1) == 0.0


def test_a_zero_rate_means_unlimited() -> None:
    limiter = RateLimiter(FakeClock())
    assert all(limiter.check("a", 0.0, 1) == 0.0 for _ in range(1000))


@pytest.mark.parametrize(("wait", "header"), [(0.01, 1), (1.0, 1), (1.2, 2), (59.5, 60)])
def test_retry_after_is_whole_seconds_rounded_up(wait: float, header: int) -> None:
    assert retry_after_s(wait) == header
