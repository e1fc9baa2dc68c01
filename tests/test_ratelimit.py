"""The allow-or-refuse token bucket shared by the web-config rate limit and the simulator's QPS limit."""

from __future__ import annotations

from exporter.ratelimit import TokenBucket


def test_starts_full_then_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=2.0, capacity=3.0, now=0.0)
    assert [bucket.allow(0.0) for _ in range(4)] == [True, True, True, False]  # the burst, then empty
    assert not bucket.allow(0.4)  # 0.8 token
    assert bucket.allow(0.5)  # one token after 1/rate
    assert [bucket.allow(100.0) for _ in range(4)] == [True, True, True, False]  # never above capacity
