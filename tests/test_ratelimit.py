"""NSFW_RATE_LIMIT: parsing, the token bucket, the 429 and its headers."""

from __future__ import annotations

import pytest

from nsfw_core.base.rates import Rate, parse_rate
from nsfw_core.base.settings import SettingsError, load_settings
from nsfw_core.ratelimit import RateLimited, RateLimiter


@pytest.mark.parametrize("raw,rate", [
    ("20/s", Rate(20.0, 20)), ("20/s;burst=40", Rate(20.0, 40)), (" 600 / m ; burst = 5 ", Rate(10.0, 5)),
    ("1/h", Rate(1 / 3600, 1)), ("0.5/s", Rate(0.5, 1)),
])
def test_parse(raw, rate):
    assert parse_rate(raw) == rate


@pytest.mark.parametrize("raw", ["20", "20/d", "x/s", "0/s", "20/s;burst=0", "20/s;bust=3", "-1/s"])
def test_parse_refuses(raw):
    with pytest.raises(ValueError):
        parse_rate(raw)


def test_the_setting():
    assert load_settings(environ={}).rate_limit is None
    assert load_settings(environ={"NSFW_RATE_LIMIT": "2/s;burst=3"}).rate_limit == Rate(2.0, 3)
    with pytest.raises(SettingsError, match="NSFW_RATE_LIMIT"):
        load_settings(environ={"NSFW_RATE_LIMIT": "fast"})


def test_burst_then_refill_per_client():
    now = [100.0]
    limiter = RateLimiter(Rate(2.0, 3), clock=lambda: now[0])
    assert [limiter.check("a") for _ in range(3)] == [
        {"RateLimit-Limit": "3", "RateLimit-Remaining": "2", "RateLimit-Reset": "1"},
        {"RateLimit-Limit": "3", "RateLimit-Remaining": "1", "RateLimit-Reset": "1"},
        {"RateLimit-Limit": "3", "RateLimit-Remaining": "0", "RateLimit-Reset": "2"},
    ]
    with pytest.raises(RateLimited) as caught:
        limiter.check("a")
    err = caught.value
    assert (err.status, err.code) == (429, "rate_limited")
    assert err.http_headers == {"RateLimit-Limit": "3", "RateLimit-Remaining": "0", "RateLimit-Reset": "2",
                                "Retry-After": "1"}
    assert limiter.check("b")["RateLimit-Remaining"] == "2"  # another key has its own bucket
    now[0] += 0.5  # one token back
    assert limiter.check("a")["RateLimit-Remaining"] == "0"
    with pytest.raises(RateLimited):
        limiter.check("a")


def test_a_slow_rate_says_how_long_to_wait():
    now = [0.0]
    limiter = RateLimiter(Rate(1 / 60, 1), clock=lambda: now[0])
    limiter.check("k")
    with pytest.raises(RateLimited) as caught:
        limiter.check("k")
    assert caught.value.http_headers["Retry-After"] == "60"
    now[0] += 59.5
    with pytest.raises(RateLimited) as caught:
        limiter.check("k")
    assert caught.value.http_headers["Retry-After"] == "1"
