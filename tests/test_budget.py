"""The call budget's pacer under cancellation: cancelled waiters must not cost future rate.

The schedule tests run on virtual time (tests/fixtures/virtual_time.py): the pacer sleeps on the
loop's clock, so its slots are checked exactly, with no slack for a busy machine.
"""

from __future__ import annotations

import asyncio
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.openapi.budget import Pacer
from tests.fixtures.virtual_time import VirtualTimeLoop, run_virtual

EPS = 1e-9  # float rounding of summed intervals; virtual time itself has no lateness


@settings(max_examples=50, deadline=None)
@given(qps=st.floats(1, 1000), queued=st.integers(2, 300), cancel_after=st.floats(0, 5))
def test_cancelled_waiters_do_not_push_the_schedule_ahead(
    qps: float, queued: int, cancel_after: float
) -> None:
    """Why: per-image timeouts cancel queued takers; leaked reservations once froze the exporter for good."""

    async def scenario() -> float:
        pacer = Pacer(qps=qps)
        loop = asyncio.get_running_loop()
        waiters = [asyncio.create_task(pacer.take()) for _ in range(queued)]
        await asyncio.sleep(cancel_after)
        for w in waiters:
            w.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        start = loop.time()
        await pacer.take()
        return loop.time() - start

    # A fresh taker gets a slot within one interval, not after the time the cancelled ones queued for.
    assert run_virtual(scenario()) <= 1 / qps + EPS


@settings(max_examples=50, deadline=None)
@given(
    qps=st.floats(5, 500),
    n=st.integers(2, 60),
    stall_slot=st.integers(1, 59),
    stall_fraction=st.floats(0.01, 0.99),
)
def test_rate_is_exact_and_never_runs_ahead_of_schedule(
    qps: float, n: int, stall_slot: int, stall_fraction: float
) -> None:
    """Why: a server allowing L sends per second (burst L) must never throttle a budget of L.

    The i-th send goes out at start + i/qps exactly: no tick rounding, no drift. A loop blocked past a
    sleeper's slot (by less than one interval) makes that send late, and only that one: the next slot
    comes from the previous slot, not from the late wake-up, so lateness never adds up to a slower rate.
    """
    interval = 1 / qps
    stall_slot = min(stall_slot, n - 1)
    stall = stall_fraction * interval

    async def scenario() -> tuple[float, list[float]]:
        pacer = Pacer(qps=qps)
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualTimeLoop)
        stamps: list[float] = []

        async def taker() -> None:
            await pacer.take()
            stamps.append(loop.time())

        start = loop.time()
        # Just before a slot is due, the loop is blocked for `stall` (as by a long callback).
        loop.call_at(start + stall_slot * interval - stall / 2, loop.stall, stall)
        await asyncio.gather(*(taker() for _ in range(n)))
        return start, stamps

    start, stamps = run_virtual(scenario())
    late = start + stall_slot * interval + stall / 2
    for i, stamp in enumerate(stamps):
        expected = late if i == stall_slot else start + i * interval
        assert stamp == pytest.approx(expected, abs=EPS), (i, stamps)
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


def test_a_rate_change_while_takers_queue_keeps_the_schedule_sound() -> None:
    """Why: the adaptive rate changes the pacer under queued takers; a cut must slow the queue at
    once, a rise speed it up, and cancelled takers must still cost nothing."""

    async def scenario() -> tuple[float, list[float], float]:
        pacer = Pacer(qps=100)
        loop = asyncio.get_running_loop()
        stamps: list[float] = []

        async def taker() -> None:
            await pacer.take()
            stamps.append(loop.time())

        start = loop.time()
        queued = [asyncio.create_task(taker()) for _ in range(4)]
        await asyncio.sleep(0)
        pacer.set_qps(20)  # 10 ms -> 50 ms while three of them sleep
        await asyncio.gather(*queued)
        assert pacer.qps == pytest.approx(20)
        waiters = [asyncio.create_task(pacer.take()) for _ in range(100)]  # 5 s of slots at 20 qps
        await asyncio.sleep(0.01)
        for w in waiters:
            w.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        pacer.set_qps(1000)
        before = loop.time()
        await pacer.take()
        return start, stamps, loop.time() - before

    start, stamps, wait = run_virtual(scenario())
    # The first send went at once, the three queued ones on the new 50 ms schedule from it.
    assert stamps == pytest.approx([start + i * 0.05 for i in range(4)], abs=EPS)
    # After the rise, within one new interval: not after the cancelled 5 s, nor one old interval.
    assert wait <= 1 / 1000 + EPS


def test_only_a_limited_bucket_changes_its_rate() -> None:
    """Why: qps 0 (unlimited) has no schedule to adapt; a zero or negative rate would stall or crash."""
    with pytest.raises(ValueError, match="limited pacer"):
        Pacer(qps=0).set_qps(5)
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="positive"):
            Pacer(qps=5).set_qps(bad)
