"""Measurement 4: resident memory of the exporter process after its first refresh.

The exporter runs as `ehpc-image-exporter run --config` in its own process (interval one hour, so
exactly one refresh has happened when /readyz turns 200); psutil reads its RSS. The simulator, latency
0, runs in another child process.
"""

from __future__ import annotations

import asyncio
import statistics

from bench.common import (
    Result,
    Settings,
    at_most,
    exporter_process,
    free_port,
    info,
    simulator_process,
    temp_dir,
    unavailable,
    write_exporter_config,
)

RSS_LIMIT_MB = 250.0


async def rss_after_first_refresh(images: int) -> float:
    """RSS in bytes of a fresh exporter watching `images` images, right after its first refresh."""
    import psutil

    with temp_dir() as tmp:
        async with simulator_process(images, latency_ms=0, seed=1) as sim:
            port = free_port()
            config = write_exporter_config(
                tmp, sim_url=sim.url, images=images, listen=f"127.0.0.1:{port}", interval_seconds=3600.0
            )
            async with exporter_process(config, port) as exporter:
                await asyncio.sleep(0.5)  # let the swap-in and any post-refresh freeing settle
                return float(psutil.Process(exporter.proc.pid).memory_info().rss)


async def run(settings: Settings) -> list[Result]:
    """RSS at a small and a large fleet, and the marginal bytes per image between them."""
    small, large = (200, 1000) if settings.quick else (1000, 10_000)
    try:
        rss_small = [await rss_after_first_refresh(small) for _ in range(settings.repeats)]
        rss_large = [await rss_after_first_refresh(large) for _ in range(settings.repeats)]
    except Exception as exc:  # report and go on: the other measurements still run
        return [unavailable(f"rss_{large}_images", "MB", f"<= {RSS_LIMIT_MB:g}", repr(exc))]
    per_image = [(b - a) / (large - small) for a, b in zip(rss_small, rss_large, strict=True)]
    return [
        info(f"rss_{small}_images", [r / 1e6 for r in rss_small], "MB", "after the first refresh"),
        at_most(
            f"rss_{large}_images",
            [r / 1e6 for r in rss_large],
            RSS_LIMIT_MB,
            "MB",
            "after the first refresh",
        ),
        info(
            "rss_bytes_per_image",
            per_image,
            "B",
            f"(RSS@{large} - RSS@{small}) ÷ {large - small}; RSS@{large}/{large} = "
            f"{statistics.median(rss_large) / large:.0f} B",
        ),
    ]
