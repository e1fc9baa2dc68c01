"""The call budget's token bucket under cancellation: cancelled waiters must not cost future rate."""

from __future__ import annotations

import asyncio
import itertools

import pytest

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


async def test_an_account_budget_caps_its_regions_together() -> None:
    """Why: account_max_concurrency / account_qps bound all regions of an account at once; each region's
    own budget alone would let two regions run twice the account's cap. A cancelled waiter gives back
    both slots."""
    from exporter.openapi.budget import Budget

    account = Budget(0, 2)
    regions = [Budget(0, 10, account), Budget(0, 10, account)]
    in_flight = peak = 0

    async def call(budget: Budget) -> None:
        nonlocal in_flight, peak
        async with budget:
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0.01)
            in_flight -= 1

    await asyncio.gather(*(call(regions[i % 2]) for i in range(20)))
    assert peak == 2
    assert account.in_flight == 0
    assert account.max_in_flight == 2
    waiter = asyncio.create_task(call(regions[0]))
    async with account, account:  # the account is full: the region's caller queues on it
        await asyncio.sleep(0.01)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
    assert regions[0].in_flight == 0
    async with regions[0], regions[1]:  # both slots came back
        assert account.in_flight == 2


async def test_a_rate_change_while_takers_queue_keeps_the_schedule_sound() -> None:
    """Why: the adaptive rate changes the bucket under queued takers; a cut must slow the queue at
    once, a rise speed it up, and cancelled takers must still cost nothing."""
    bucket = TokenBucket(qps=100)
    loop = asyncio.get_running_loop()
    stamps: list[float] = []

    async def taker() -> None:
        await bucket.take()
        stamps.append(loop.time())

    start = loop.time()
    queued = [asyncio.create_task(taker()) for _ in range(4)]
    await asyncio.sleep(0)
    bucket.set_qps(20)  # 10 ms -> 50 ms while three of them sleep
    await asyncio.gather(*queued)
    assert bucket.qps == pytest.approx(20)
    # Never faster than the new interval from the first send (its own slot was at once).
    assert all(t >= start + i * 0.05 - 1e-3 for i, t in enumerate(stamps)), stamps
    waiters = [asyncio.create_task(bucket.take()) for _ in range(100)]  # 5 s of slots at 20 qps
    await asyncio.sleep(0.01)
    for w in waiters:
        w.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    bucket.set_qps(1000)
    before = loop.time()
    await bucket.take()
    assert loop.time() - before < 0.1  # within one old interval, not after the cancelled 5 s


def test_only_a_limited_bucket_changes_its_rate() -> None:
    """Why: qps 0 (unlimited) has no schedule to adapt; a zero or negative rate would stall or crash."""
    with pytest.raises(ValueError, match="limited bucket"):
        TokenBucket(qps=0).set_qps(5)
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="positive"):
            TokenBucket(qps=5).set_qps(bad)
