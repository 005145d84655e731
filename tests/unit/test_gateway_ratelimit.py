"""The per-key token buckets: requests counted on arrival, tokens charged after the reply."""

import pytest

from imem_gateway.ratelimit import RateLimiter


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock()


def test_requests_per_minute_refill_continuously(clock):
    limiter = RateLimiter(clock)
    assert all(limiter.admit("k", 3, 0) is None for _ in range(3))
    limit, wait = limiter.admit("k", 3, 0)
    assert limit == "requests per minute" and wait == pytest.approx(20.0)  # one request per 20 s
    clock.now += 19.9
    assert limiter.admit("k", 3, 0) is not None
    clock.now += 0.1
    assert limiter.admit("k", 3, 0) is None


def test_keys_are_limited_separately(clock):
    limiter = RateLimiter(clock)
    assert limiter.admit("a", 1, 0) is None and limiter.admit("a", 1, 0) is not None
    assert limiter.admit("b", 1, 0) is None


def test_tokens_are_charged_after_the_reply_and_block_until_refilled(clock):
    limiter = RateLimiter(clock)
    assert limiter.admit("k", 0, 600) is None
    limiter.charge("k", 600, 900)  # a reply may overshoot the budget: it is known only at the end
    limit, wait = limiter.admit("k", 0, 600)
    assert limit == "tokens per minute" and wait == pytest.approx(30.0, abs=0.2)  # 300 below zero, 10/s
    clock.now += wait
    assert limiter.admit("k", 0, 600) is None


def test_zero_means_unlimited(clock):
    limiter = RateLimiter(clock)
    limiter.charge("k", 0, 10**9)
    assert all(limiter.admit("k", 0, 0) is None for _ in range(1000))


def test_a_refused_request_costs_nothing(clock):
    limiter = RateLimiter(clock)
    limiter.admit("k", 1, 0)
    for _ in range(5):
        assert limiter.admit("k", 1, 0) is not None
    clock.now += 60
    assert limiter.admit("k", 1, 0) is None


def test_a_changed_limit_starts_a_fresh_bucket(clock):
    limiter = RateLimiter(clock)
    limiter.admit("k", 1, 0)
    assert limiter.admit("k", 2, 0) is None
