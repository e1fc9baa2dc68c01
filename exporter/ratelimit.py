"""A token bucket that answers at once: allow this request, or refuse it (never waits).

Used where a request over the limit is refused rather than delayed: the web-config ``rate_limit``
(exporter-toolkit's semantics). The API client's own budget is a different thing, a pacer that makes
callers wait their turn (``exporter.openapi.budget``).
"""

from __future__ import annotations

__all__ = ["TokenBucket"]


class TokenBucket:
    """``rate`` tokens a second, at most ``capacity`` saved up; it starts full."""

    __slots__ = ("capacity", "rate", "stamp", "tokens")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.stamp = now

    def allow(self, now: float) -> bool:
        """Take one token if there is one (refilled up to ``now``)."""
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False
