"""The server-side QPS limit: a token bucket that allows a request at once or refuses it (never waits).

The simulator's own, not the exporter's ``exporter.ratelimit``: the simulator shares no code with the
client it referees (see the package docstring).
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
