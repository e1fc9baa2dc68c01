"""Time for the components that schedule: the event loop's clock in production, a fake one in tests.

The refresher measures cycles and waits between them only through a :class:`Clock`, so its schedule is
tested by advancing a fake clock (tests/fixtures/clock.py) rather than by sleeping with slack for a
busy machine.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

__all__ = ["Clock", "LoopClock"]


class Clock(Protocol):
    """Monotonic time and a sleep that an event can cut short."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""
        ...

    async def sleep(self, seconds: float, wake: asyncio.Event | None = None) -> None:
        """Return after ``seconds``, or as soon as ``wake`` is set."""
        ...


class LoopClock:
    """The running event loop's clock."""

    def monotonic(self) -> float:
        """The loop's time."""
        return asyncio.get_running_loop().time()

    async def sleep(self, seconds: float, wake: asyncio.Event | None = None) -> None:
        """``asyncio.sleep``, or a wait on ``wake`` bounded by ``seconds``."""
        if wake is None:
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout=max(0.0, seconds))
