"""Measurement 1: a refresh against its lower bounds (latency/concurrency, and the QPS budget).

The simulator runs in a child process; the refresh runs here, through `ExporterService.refresh_once()`
on a config pointing at the simulator, so it takes the exporter's real path (client, budget, retries,
snapshot build).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from bench.common import (
    REGIONS,
    Result,
    Settings,
    SimProcess,
    at_most,
    image_id,
    save_profile,
    simulator_process,
    unavailable,
)
from exporter.config import ApiConfig, Config, CredentialsConfig, RefreshConfig, WatchedImage, WebConfig

LATENCY_MS = 100.0
JITTER_MS = 20.0  # uniform ±20 ms: the mean stays 100 ms
CONCURRENCY = 50


@dataclass(frozen=True)
class Fleet:
    """One refresh scenario: fleet size, and the QPS limit (None: only latency and concurrency bind)."""

    images: int
    qps: float | None = None


def scenarios(settings: Settings) -> tuple[list[Fleet], list[Fleet]]:
    """(bound-by-concurrency fleets, bound-by-QPS fleets) for this mode."""
    if settings.quick:
        return [Fleet(200), Fleet(1000)], [Fleet(200, 100.0)]
    # L x (latency + jitter) stays at or under 60 % of CONCURRENCY (200/s x 120 ms = 24 in flight,
    # 250/s x 120 ms = 30), so only the QPS budget binds, never the concurrency cap: at 400/s the
    # ~45 calls in flight plus per-call overhead brushed the cap of 50 and measured the cap instead.
    return [Fleet(1000), Fleet(10_000)], [Fleet(1000, 200.0), Fleet(10_000, 250.0)]


def bench_config(sim_url: str, images: int, qps: float) -> Config:
    """The exporter Config the refresh runs on."""
    from ehpc_simulator import DEMO_ACCESS_KEY_ID, DEMO_ACCESS_KEY_SECRET

    return Config(
        api=ApiConfig(
            endpoint=sim_url, protocol="http", max_concurrency=CONCURRENCY, qps=qps, timeout_seconds=30.0
        ),
        credentials=CredentialsConfig(
            type="access_key", access_key_id=DEMO_ACCESS_KEY_ID, access_key_secret=DEMO_ACCESS_KEY_SECRET
        ),
        images=tuple(
            WatchedImage(image_id(i), "VM", None, additional_region_ids=REGIONS) for i in range(images)
        ),
        refresh=RefreshConfig(interval_seconds=3600.0, jitter_ratio=0.0, image_timeout_seconds=120.0),
        web=WebConfig(listen_address="127.0.0.1:0"),
    )


@asynccontextmanager
async def refresher(sim_url: str, images: int, qps: float) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """Yield a function that runs one full refresh of the fleet through the exporter's service."""
    from exporter.service import ExporterService

    service = ExporterService(bench_config(sim_url, images, qps))

    async def once() -> None:
        await service.refresh_once()

    try:
        yield once
    finally:
        await service.stop()


async def timed_refresh(
    sim: SimProcess, once: Callable[[], Awaitable[None]], images: int
) -> tuple[float, int]:
    """(seconds one refresh took, Throttling answers the simulator sent); checks every image succeeded."""
    await sim.reset_counters()
    start = time.perf_counter()
    await once()
    elapsed = time.perf_counter() - start
    counters = await sim.counters()
    ok = counters.get(("GetImage", "Success"), 0)
    if ok < images:
        raise RuntimeError(f"only {ok}/{images} GetImage succeeded: {counters}")
    throttled = sum(n for (_, code), n in counters.items() if code.startswith("Throttling"))
    return elapsed, throttled


async def run_fleet(settings: Settings, fleet: Fleet) -> list[Result]:
    """Measure one scenario and compare it with its bound."""
    n = fleet.images
    latency = LATENCY_MS / 1000
    async with (
        simulator_process(n, latency_ms=LATENCY_MS, jitter_ms=JITTER_MS, qps_limit=fleet.qps, seed=1) as sim,
        refresher(sim.url, n, fleet.qps or 0.0) as once,
    ):
        times: list[float] = []
        throttles: list[float] = []
        for _ in range(settings.repeats):
            elapsed, throttled = await timed_refresh(sim, once, n)
            times.append(elapsed)
            throttles.append(float(throttled))
        if settings.profile:
            await profile_refresh(f"refresh-{n}-qps{fleet.qps or 0:g}", once)
    if fleet.qps is None:
        bound = n * latency / CONCURRENCY
        ratios = [t / bound for t in times]
        median = sorted(times)[len(times) // 2]
        detail = f"refresh {median:.2f}s vs bound {bound:.2f}s = N x {LATENCY_MS:g}ms / {CONCURRENCY}"
        return [at_most(f"refresh_vs_concurrency_bound_{n}", ratios, 1.15, "ratio", detail)]
    bound = n / fleet.qps
    ratios = [t / bound for t in times]
    detail = f"refresh {sorted(times)[len(times) // 2]:.2f}s vs bound {bound:.2f}s = N/{fleet.qps:g}qps"
    return [
        at_most(f"refresh_vs_qps_bound_{n}", ratios, 1.05, "ratio", detail),
        at_most(
            f"throttling_errors_{n}_at_{fleet.qps:g}qps",
            throttles,
            0,
            "count",
            f"Throttling.* answers per refresh, repeats {[int(t) for t in throttles]}",
        ),
    ]


async def profile_refresh(name: str, once: Callable[[], Awaitable[None]]) -> None:
    """One extra refresh under pyinstrument, written to bench/profiles/."""
    from pyinstrument import Profiler

    profiler = Profiler(async_mode="enabled")
    profiler.start()
    await once()
    profiler.stop()
    save_profile(profiler, name)


async def run(settings: Settings) -> list[Result]:
    """All refresh scenarios of this mode."""
    concurrency_fleets, qps_fleets = scenarios(settings)
    results: list[Result] = []
    for fleet in concurrency_fleets:
        try:
            results += await run_fleet(settings, fleet)
        except Exception as exc:  # report and go on: one failed scenario must not hide the others
            results.append(
                unavailable(f"refresh_vs_concurrency_bound_{fleet.images}", "ratio", "<= 1.15", repr(exc))
            )
    for fleet in qps_fleets:
        try:
            results += await run_fleet(settings, fleet)
        except Exception as exc:
            results.append(unavailable(f"refresh_vs_qps_bound_{fleet.images}", "ratio", "<= 1.05", repr(exc)))
    return results
