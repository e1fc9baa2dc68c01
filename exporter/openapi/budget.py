"""The call budget of one API client: a QPS token bucket and a concurrency cap, shared by every attempt."""

from __future__ import annotations

import asyncio
from types import TracebackType


class TokenBucket:
    """Spaces sends ``1/qps`` apart on a virtual schedule (GCRA with a burst of one token).

    Takers queue on a FIFO lock and a slot is claimed only once its sleep is over, so a caller cancelled
    while waiting (a per-image timeout, a reload) claims nothing: cancellations cannot push the schedule
    ahead. (An earlier design reserved future slots up front and leaked every cancelled reservation, so
    under sustained overload the schedule ran away and the exporter stopped calling the API for good.)
    The rate stays exact however late the loop wakes a sleeper, because the next slot is computed from
    the previous slot, not from the wake-up time; after an idle spell only one send goes out at once,
    so a server limit of ``qps`` is never exceeded.
    """

    __slots__ = ("_interval", "_lock", "_next")

    def __init__(self, qps: float) -> None:
        if qps < 0:
            raise ValueError("qps must be >= 0")
        self._interval = 1.0 / qps if qps > 0 else 0.0
        self._next = float("-inf")
        self._lock = asyncio.Lock()

    @property
    def qps(self) -> float:
        """The configured rate; 0 means unlimited."""
        return 1.0 / self._interval if self._interval else 0.0

    async def take(self) -> None:
        """Wait for this caller's send slot."""
        interval = self._interval
        if not interval:
            return
        async with self._lock:
            now = asyncio.get_running_loop().time()
            slot = self._next if self._next > now else now
            if slot > now:
                await asyncio.sleep(slot - now)
            self._next = slot + interval


class Budget:
    """Concurrency cap first, then a token: a held slot never lets queued tokens fire in a burst.

    With a ``parent`` (an account's budget over each of its regions' own), an attempt holds a slot and
    a token of both: the parent's after its own slot, so a region at its cap queues on itself, not on
    the account.
    """

    __slots__ = ("_bucket", "_parent", "_sem", "in_flight", "max_concurrency", "max_in_flight")

    def __init__(self, qps: float, max_concurrency: int, parent: Budget | None = None) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        self._bucket = TokenBucket(qps)
        self._parent = parent
        self._sem = asyncio.Semaphore(max_concurrency)
        self.max_concurrency = max_concurrency
        self.in_flight = 0  # attempts holding a slot right now
        self.max_in_flight = 0  # high-water mark, for tests and debugging

    @property
    def qps(self) -> float:
        """The configured rate; 0 means unlimited."""
        return self._bucket.qps

    async def acquire(self) -> None:
        """Take a concurrency slot, then wait for a send slot of the token bucket."""
        await self._sem.acquire()
        parent = self._parent
        try:
            if parent is not None:
                await parent.acquire()
            try:
                await self._bucket.take()
            except BaseException:
                if parent is not None:
                    parent.release()
                raise
        except BaseException:
            self._sem.release()
            raise
        self.in_flight += 1
        if self.in_flight > self.max_in_flight:
            self.max_in_flight = self.in_flight

    def release(self) -> None:
        """Give the concurrency slot back (and the parent's)."""
        self.in_flight -= 1
        self._sem.release()
        if self._parent is not None:
            self._parent.release()

    async def __aenter__(self) -> Budget:
        await self.acquire()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
