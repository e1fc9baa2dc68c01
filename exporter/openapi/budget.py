"""The call budget of one API client: a QPS pacer and a concurrency cap, shared by every attempt.

The pacer's rate may adapt (:class:`AdaptiveRate`): the API's real limits are not published, so the
configured ``qps`` is a ceiling and a guess, and a ``Throttling.*`` answer says the guess was too high.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

from exporter.config import AdaptiveRateConfig


class Pacer:
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
        """The current rate; 0 means unlimited."""
        return 1.0 / self._interval if self._interval else 0.0

    def set_qps(self, qps: float) -> None:
        """Change a limited pacer's rate; the next send is one new interval after the last one."""
        if qps <= 0 or not self._interval:
            raise ValueError("only a limited pacer changes its rate, to a positive one")
        interval = 1.0 / qps
        # Re-spaced from the last claimed slot, so a cut takes effect at the very next send rather than
        # one old interval later.
        self._next += interval - self._interval
        self._interval = interval

    async def take(self) -> None:
        """Wait for this caller's send slot."""
        if not self._interval:
            return
        async with self._lock:
            loop = asyncio.get_running_loop()
            now = loop.time()
            slot = self._next if self._next > now else now
            while slot > now:
                await asyncio.sleep(slot - now)
                now = loop.time()
                # A cut while this caller slept moved its slot later (set_qps); a late wake-up keeps it.
                if self._next > slot:
                    slot = self._next
            self._next = slot + self._interval


class AdaptiveRate:
    """AIMD over the configured rate, as TCP's congestion control: a throttle cuts it, sending regrows it.

    * A ``Throttling.*`` answer multiplies the rate by ``decrease_factor``, never below ``min_qps``.
    * At most one cut per reaction window: a throttle counts only when at least ``reaction_window_seconds``
      passed since the last cut *and* its attempt was sent after that cut. The throttles of attempts
      already in flight (or sent within the same server second, for a per-second limit) report the
      excess the last cut already answered; letting each cut again would collapse the rate to the floor.
    * Each success adds ``increase_per_second * ceiling / rate``: ``increase_per_second`` of the ceiling
      per second of throttle-free sending at the current rate (TCP adds one segment per window of
      acknowledgements). Idle time adds nothing, so a rate learnt in one refresh cycle is where the next
      cycle starts, not the ceiling again.
    * Never above ``ceiling`` (the configured ``qps``), which is also where it starts: the configured
      value is the operator's best guess, and the first throttle corrects it within a second or two.
    """

    __slots__ = ("_factor", "_last_cut", "_step", "_window", "ceiling", "cuts", "floor", "rate")

    def __init__(self, ceiling: float, config: AdaptiveRateConfig) -> None:
        if ceiling <= 0:
            raise ValueError("an adaptive rate needs a positive ceiling")
        self.ceiling = ceiling
        self.rate = ceiling
        self.floor = min(config.min_qps, ceiling)
        self._factor = config.decrease_factor
        self._step = config.increase_per_second * ceiling
        self._window = config.reaction_window_seconds
        self._last_cut = float("-inf")
        self.cuts = 0  # for tests and debugging

    def on_throttle(self, sent_at: float, now: float) -> bool:
        """A throttled attempt sent at ``sent_at`` answered at ``now``; whether the rate was cut."""
        if sent_at < self._last_cut or now - self._last_cut < self._window:
            return False
        self._last_cut = now
        self.rate = max(self.floor, self.rate * self._factor)
        self.cuts += 1
        return True

    def on_success(self) -> bool:
        """An attempt was not throttled; whether the rate grew."""
        if self.rate >= self.ceiling:
            return False
        self.rate = min(self.ceiling, self.rate + self._step / self.rate)
        return True


class Budget:
    """Concurrency cap first, then a token: a held slot never lets queued tokens fire in a burst.

    With a ``parent`` (an account's budget over each of its regions' own), an attempt holds a slot and
    a token of both: the parent's after its own slot, so a region at its cap queues on itself, not on
    the account.

    A throttle adapts only this budget's own rate (``adaptive``), never the parent's: each region has
    its own endpoint and gateway, so one region's throttle says nothing about another's, and where a
    limit is really shared by the account, every region is throttled and cuts itself, so together they
    converge on it (as TCP flows share a link) while an unthrottled region keeps its pace. The
    account's ``account_qps`` is the operator's hard cap and stays fixed. With ``qps`` 0 (unlimited)
    nothing adapts: there is no ceiling to recover to, and an explicit "no budget" is kept as written
    (throttles are still retried with backoff and ``x-acs-retry-after``).
    """

    __slots__ = (
        "_adaptive",
        "_pacer",
        "_parent",
        "_sem",
        "configured_qps",
        "in_flight",
        "max_concurrency",
        "max_in_flight",
    )

    def __init__(
        self,
        qps: float,
        max_concurrency: int,
        parent: Budget | None = None,
        adaptive: AdaptiveRateConfig | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        self._pacer = Pacer(qps)
        self.configured_qps = self._pacer.qps
        self._adaptive = (
            AdaptiveRate(qps, adaptive) if adaptive is not None and adaptive.enabled and qps > 0 else None
        )
        self._parent = parent
        self._sem = asyncio.Semaphore(max_concurrency)
        self.max_concurrency = max_concurrency
        self.in_flight = 0  # attempts holding a slot right now
        self.max_in_flight = 0  # high-water mark, for tests and debugging

    @property
    def qps(self) -> float:
        """The effective rate (the adaptive one, else the configured one); 0 means unlimited."""
        return self._pacer.qps

    @property
    def adaptive(self) -> AdaptiveRate | None:
        """The adaptive rate, when this budget adapts."""
        return self._adaptive

    def effective_qps(self) -> float:
        """The effective rate, as a callable for the self-metrics; 0 means unlimited."""
        return self._pacer.qps

    def on_throttle(self, sent_at: float, now: float) -> bool:
        """Report a throttled attempt (sent and answered on the loop's clock); whether the rate was cut."""
        adaptive = self._adaptive
        if adaptive is None or not adaptive.on_throttle(sent_at, now):
            return False
        self._pacer.set_qps(adaptive.rate)
        return True

    def on_success(self) -> None:
        """Report an attempt that was not throttled."""
        adaptive = self._adaptive
        if adaptive is not None and adaptive.on_success():
            self._pacer.set_qps(adaptive.rate)

    async def acquire(self) -> None:
        """Take a concurrency slot, then wait for a send slot of the pacer."""
        await self._sem.acquire()
        parent = self._parent
        try:
            if parent is not None:
                await parent.acquire()
            try:
                await self._pacer.take()
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
