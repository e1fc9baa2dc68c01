"""The call budget's token bucket under cancellation: cancelled waiters must not cost future rate."""

from __future__ import annotations

import asyncio
import itertools

from exporter.openapi.budget import TokenBucket


async def test_cancelled_waiters_do_not_push_the_schedule_ahead() -> None:
    """Why: per-image timeouts cancel queued takers; leaked reservations once froze the exporter for good."""
    bucket = TokenBucket(qps=50)  # one slot every 20 ms
    loop = asyncio.get_running_loop()
    # 200 takers queue up (4 s of slots) and are all cancelled after 50 ms.
    waiters = [asyncio.create_task(bucket.take()) for _ in range(200)]
    await asyncio.sleep(0.05)
    for w in waiters:
        w.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    # A fresh taker must get a slot within one interval, not after the 4 s the cancelled ones queued for.
    start = loop.time()
    await bucket.take()
    assert loop.time() - start < 0.1


async def test_rate_is_exact_and_never_runs_ahead_of_schedule() -> None:
    """Why: a server allowing L sends per second (burst L) must never throttle a budget of L.

    The i-th send never goes out before start + i/qps (a late wake-up may shorten the next gap, which
    only catches up with the schedule), and lateness does not accumulate into a slower rate.
    """
    bucket = TokenBucket(qps=100)
    loop = asyncio.get_running_loop()
    stamps: list[float] = []

    async def taker() -> None:
        await bucket.take()
        stamps.append(loop.time())

    start = loop.time()
    await asyncio.gather(*(taker() for _ in range(50)))
    for i, stamp in enumerate(stamps):
        assert stamp >= start + i * 0.01 - 1e-6
    assert stamps[-1] - start <= 0.49 * 1.2  # 49 intervals, little drift
    assert all(b >= a for a, b in itertools.pairwise(stamps))
