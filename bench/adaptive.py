"""Measurement 6: the adaptive rate finds a hidden API limit by itself.

The simulator (a child process) enforces a QPS limit L that the exporter is not told: `api.qps` is
3 x L, as when an operator's guess is three times too high. One target of N images is refreshed
through `ExporterService.refresh_once()` (the real client, budget, retries), with `api.adaptive_rate`
on and, side by side in the same run against the same simulator, off (the fixed budget of before).

Per mode: the refresh time over the bound N / L, and the share of GetImage answers that were
`Throttling.*`. The first refresh of a service starts at the configured 3 x L and has to find L (its
row is informational); the targets are on the refreshes after it, which start from the rate the last
one learnt, the way a running exporter refreshes. Medians of `repeats` refreshes.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

from bench.common import (
    REGIONS,
    Result,
    Settings,
    SimProcess,
    at_most,
    image_id,
    info,
    simulator_process,
    unavailable,
)
from exporter.config import (
    AdaptiveRateConfig,
    ApiConfig,
    Config,
    CredentialsConfig,
    RefreshConfig,
    WatchedImage,
    WebConfig,
)

LATENCY_MS = 20.0
JITTER_MS = 5.0
CONCURRENCY = 50
OVERSHOOT = 3.0  # api.qps = OVERSHOOT x the hidden limit
TIME_TARGET = 1.15
THROTTLE_TARGET = 0.02


@dataclass(frozen=True)
class Scenario:
    """N images behind a hidden limit of `limit` calls per second."""

    images: int
    limit: float


def scenarios(settings: Settings) -> list[Scenario]:
    """The scenarios of this mode: ~8 s refreshes when quick, ~30 s otherwise."""
    if settings.quick:
        return [Scenario(160, 20.0)]
    return [Scenario(600, 20.0), Scenario(1500, 50.0)]


def bench_config(sim_url: str, scenario: Scenario, adaptive: bool) -> Config:
    """One target of the scenario's images, `api.qps` at OVERSHOOT x the hidden limit."""
    from ehpc_simulator import DEMO_ACCESS_KEY_ID, DEMO_ACCESS_KEY_SECRET

    return Config(
        api=ApiConfig(
            endpoint=sim_url,
            protocol="http",
            max_concurrency=CONCURRENCY,
            qps=scenario.limit * OVERSHOOT,
            timeout_seconds=30.0,
            adaptive_rate=AdaptiveRateConfig(enabled=adaptive),
        ),
        credentials=CredentialsConfig(
            type="access_key", access_key_id=DEMO_ACCESS_KEY_ID, access_key_secret=DEMO_ACCESS_KEY_SECRET
        ),
        images=tuple(
            WatchedImage(image_id(i), "VM", None, additional_region_ids=REGIONS)
            for i in range(scenario.images)
        ),
        refresh=RefreshConfig(interval_seconds=3600.0, jitter_ratio=0.0, image_timeout_seconds=120.0),
        web=WebConfig(listen_address="127.0.0.1:0"),
    )


@dataclass(frozen=True)
class Refresh:
    """What one refresh cost: its time over N / L, the throttled share, images that failed, the rate."""

    ratio: float
    throttled_share: float
    failed: int
    qps_after: float


async def measure(sim: SimProcess, scenario: Scenario, adaptive: bool, repeats: int) -> list[Refresh]:
    """The first refresh of a fresh service, then `repeats` more; the service keeps its client."""
    from exporter.service import ExporterService

    service = ExporterService(bench_config(sim.url, scenario, adaptive), process_metrics=False)
    bound = scenario.images / scenario.limit
    out: list[Refresh] = []
    try:
        for _ in range(1 + repeats):
            await sim.reset_counters()
            start = time.perf_counter()
            await service.refresh_once()
            elapsed = time.perf_counter() - start
            counters = await sim.counters()
            answers = sum(n for (action, _), n in counters.items() if action == "GetImage")
            throttled = sum(
                n
                for (action, code), n in counters.items()
                if action == "GetImage" and code.startswith("Throttling")
            )
            ok = counters.get(("GetImage", "Success"), 0)
            gauge = service.metrics.scope(service.config.scope).rate_limit
            qps = gauge() if gauge is not None else float("nan")
            out.append(Refresh(elapsed / bound, throttled / max(1, answers), scenario.images - ok, qps))
    finally:
        await service.stop()
    return out


def _detail(runs: list[Refresh]) -> str:
    failed = [r.failed for r in runs]
    qps = statistics.median(r.qps_after for r in runs)
    shares = ", ".join(f"{r.throttled_share:.1%}" for r in runs)
    return f"throttled {shares}; failed images {failed}; effective qps after {qps:.1f}"


async def run_scenario(settings: Settings, scenario: Scenario) -> list[Result]:
    """Adaptive and fixed against the same simulator, one after the other."""
    n, limit = scenario.images, scenario.limit
    tag = f"{n}_limit{limit:g}_qps{limit * OVERSHOOT:g}"
    results: list[Result] = []
    async with simulator_process(
        n, latency_ms=LATENCY_MS, jitter_ms=JITTER_MS, qps_limit=limit, seed=1
    ) as sim:
        for adaptive in (True, False):
            mode = "adaptive" if adaptive else "fixed"
            runs = await measure(sim, scenario, adaptive, settings.repeats)
            first, rest = runs[0], runs[1:]
            results.append(
                info(f"{mode}_first_refresh_vs_limit_bound_{tag}", [first.ratio], "ratio", _detail([first]))
            )
            ratios = [r.ratio for r in rest]
            shares = [r.throttled_share * 100 for r in rest]
            detail = f"bound N/L = {n / limit:.1f}s; " + _detail(rest)
            if adaptive:
                results.append(
                    at_most(f"{mode}_refresh_vs_limit_bound_{tag}", ratios, TIME_TARGET, "ratio", detail)
                )
                results.append(
                    at_most(f"{mode}_throttled_share_{tag}", shares, THROTTLE_TARGET * 100, "%", detail)
                )
            else:
                results.append(info(f"{mode}_refresh_vs_limit_bound_{tag}", ratios, "ratio", detail))
                results.append(info(f"{mode}_throttled_share_{tag}", shares, "%", detail))
    return results


async def run(settings: Settings) -> list[Result]:
    """Every scenario of this mode."""
    results: list[Result] = []
    for scenario in scenarios(settings):
        try:
            results += await run_scenario(settings, scenario)
        except Exception as exc:  # report and go on: one failed scenario must not hide the others
            name = f"adaptive_refresh_vs_limit_bound_{scenario.images}"
            results.append(unavailable(name, "ratio", f"<= {TIME_TARGET:g}", repr(exc)))
    return results
