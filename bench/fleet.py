"""Measurement 5: a fleet of (account, region) targets refreshes in the time of its slowest one.

Six targets (3 accounts x 2 regions, a static AccessKey per account), each with its own simulated
latency and QPS limit, and the exporter's `api.qps` of each region set to that limit: one target's
bound is max(N/qps, N x latency/concurrency) + one latency, and since every target has its own client,
budget and refresh loop running in parallel, the fleet's bound is the slowest target's, not the sum.
`ExporterService(config).refresh_once()` refreshes all six; it is timed against that bound.

Side by side in the same run, against the same estate process: **the same fleet as one target**,
every image of the six (6 x N) in one account and one region, at the slowest target's latency and a
QPS equal to the sum of the six (the same total API rate, through one client), timed against its own
bound. The estate runs in a child process (`bench.estateserver`) so it does not share our core.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import (
    Result,
    Settings,
    at_most,
    info,
    start_announcing_json,
    stop_process,
    temp_dir,
    unavailable,
)
from bench.estateserver import REPLICA_REGIONS, account_images
from exporter.config import (
    ApiConfig,
    Config,
    CredentialsConfig,
    RefreshConfig,
    RetryConfig,
    WatchedImage,
    WebConfig,
)
from exporter.config.model import TargetConfig

JITTER_RATIO = 0.2  # uniform ±20 % of each target's latency (the mean stays the latency)
FLEET_CONCURRENCY = 50  # per region; qps x (latency + jitter) <= 10 in flight, so QPS binds
SOLO_REGION = "cn-wulanchabu"
SOLO_ACCOUNT = "acct-solo"
TARGET_RATIO = 1.10


@dataclass(frozen=True)
class Target:
    """One (account, region) of the fleet: its simulated latency and QPS limit (= the exporter's qps)."""

    account: str
    region: str
    latency_ms: float
    qps: float


# 40..120 ms, 60..150/s; the slowest by bound is acct-c/cn-hangzhou (N/60), not the one with the most
# latency alone. The QPS limits sum to 600/s.
TARGETS = (
    Target("acct-a", "cn-hangzhou", 40, 150),
    Target("acct-a", "cn-shanghai", 60, 120),
    Target("acct-b", "cn-hangzhou", 80, 100),
    Target("acct-b", "cn-shanghai", 100, 80),
    Target("acct-c", "cn-hangzhou", 120, 60),
    Target("acct-c", "cn-shanghai", 90, 90),
)
ACCOUNTS = tuple(dict.fromkeys(t.account for t in TARGETS))
FLEET_REGIONS = tuple(dict.fromkeys(t.region for t in TARGETS))


def solo_target() -> Target:
    """The same fleet as one target: the slowest latency, the sum of the QPS limits."""
    return Target(SOLO_ACCOUNT, SOLO_REGION, max(t.latency_ms for t in TARGETS), sum(t.qps for t in TARGETS))


def solo_concurrency() -> int:
    """Enough for the summed rate: 600/s x 144 ms ≈ 86 in flight, under half of 200."""
    return 200


def bound(t: Target, n: int, concurrency: int) -> float:
    """One target's lower bound: max(N/qps, N x latency/concurrency) + one latency, seconds."""
    latency = t.latency_ms / 1000
    return max(n / t.qps, n * latency / concurrency) + latency


def key_of(account: str) -> tuple[str, str]:
    """The static AccessKey (id, secret) of an account (bench values, not secrets)."""
    return f"BENCH-AK-{account}", f"bench-secret-{account}"


def seed_of(account: str) -> int:
    """The image seed of an account."""
    return 1000 + [*ACCOUNTS, SOLO_ACCOUNT].index(account)


def estate_spec(n: int) -> dict[str, Any]:
    """The estate: the fleet's accounts with N images each, and the solo account with 6 x N."""
    accounts: list[dict[str, Any]] = []
    solo = solo_target()
    for k, account in enumerate([*ACCOUNTS, SOLO_ACCOUNT]):
        key_id, secret = key_of(account)
        targets = [solo] if account == SOLO_ACCOUNT else [t for t in TARGETS if t.account == account]
        accounts.append(
            {
                "name": account,
                "id": f"{100000000000000 + k:015d}",
                "key_id": key_id,
                "secret": secret,
                "images": n * len(TARGETS) if account == SOLO_ACCOUNT else n,
                "seed": seed_of(account),
                "regions": {
                    t.region: {
                        "latency_ms": t.latency_ms,
                        "jitter_ms": t.latency_ms * JITTER_RATIO,
                        "qps_limit": t.qps,
                        "seed": 7 + k,
                    }
                    for t in targets
                },
            }
        )
    return {"regions": [*FLEET_REGIONS, SOLO_REGION], "accounts": accounts}


def target_config(
    account: str, images: int, apis: Sequence[tuple[Target, str, int]], refresh: RefreshConfig
) -> TargetConfig:
    """One account: its static key, one ApiConfig per (target, endpoint, concurrency), its images."""
    key_id, secret = key_of(account)
    watched = tuple(
        WatchedImage(
            i.image_id,
            "Container" if i.image_type == "Container" else "VM",
            None,
            additional_region_ids=REPLICA_REGIONS,
        )
        for i in account_images(images, seed_of(account))
    )
    regions = tuple(
        ApiConfig(
            region_id=t.region,
            endpoint=url,
            protocol="http",
            max_concurrency=concurrency,
            qps=t.qps,
            timeout_seconds=30.0,
            retry=RetryConfig(max_attempts=1),
        )
        for t, url, concurrency in apis
    )
    return TargetConfig(
        account=account,
        credentials=CredentialsConfig(type="access_key", access_key_id=key_id, access_key_secret=secret),
        regions=regions,
        refresh=refresh,
        images=watched,
    )


def configs(n: int, region_urls: dict[str, str]) -> tuple[Config, Config]:
    """(the six-target fleet, the same fleet as one target)."""
    refresh = RefreshConfig(interval_seconds=3600.0, jitter_ratio=0.0, image_timeout_seconds=120.0)
    web = WebConfig(listen_address="127.0.0.1:0")
    fleet = tuple(
        target_config(
            account,
            n,
            [(t, region_urls[t.region], FLEET_CONCURRENCY) for t in TARGETS if t.account == account],
            refresh,
        )
        for account in ACCOUNTS
    )
    solo = solo_target()
    one = target_config(
        SOLO_ACCOUNT, n * len(TARGETS), [(solo, region_urls[SOLO_REGION], solo_concurrency())], refresh
    )
    return Config(targets=fleet, refresh=refresh, web=web), Config(targets=(one,), refresh=refresh, web=web)


@dataclass
class EstateProcess:
    """The estate child process and an admin session to its per-account counters."""

    proc: asyncio.subprocess.Process
    region_urls: dict[str, str]
    session: aiohttp.ClientSession

    async def reset(self, scopes: Sequence[tuple[str, str]]) -> None:
        """Zero the counters of these (account, region)."""
        for account, region in scopes:
            url = f"{self.region_urls[region]}/_sim/counters/reset"
            async with self.session.post(url, params={"account": account}) as resp:
                resp.raise_for_status()

    async def counters(self, account: str, region: str) -> dict[tuple[str, str], int]:
        """Answers one (account, region) sent, by (action, code)."""
        url = f"{self.region_urls[region]}/_sim/counters"
        async with self.session.get(url, params={"account": account}) as resp:
            resp.raise_for_status()
            body = await resp.json()
        out: dict[tuple[str, str], int] = {}
        for row in body["responses"]:
            key = (str(row["action"]), str(row["code"]))
            out[key] = out.get(key, 0) + int(row["count"])
        return out


@asynccontextmanager
async def estate_process(spec: dict[str, Any], directory: Path) -> AsyncIterator[EstateProcess]:
    """Start `python -m bench.estateserver` on the spec and yield its endpoints and admin session."""
    path = directory / "estate.json"
    path.write_text(json.dumps(spec))
    proc, announced = await start_announcing_json(
        [sys.executable, "-m", "bench.estateserver", "--spec", str(path)]
    )
    try:
        region_urls = {str(k): str(v) for k, v in announced["region_urls"].items()}
        async with aiohttp.ClientSession() as session:
            yield EstateProcess(proc, region_urls, session)
    finally:
        await stop_process(proc)


async def timed_refresh(
    estate: EstateProcess, service: Any, scopes: Sequence[tuple[str, str]], images: int
) -> tuple[float, int]:
    """(seconds one refresh_once took, Throttling answers); checks each scope answered `images` Success."""
    await estate.reset(scopes)
    start = time.perf_counter()
    await service.refresh_once()
    elapsed = time.perf_counter() - start
    throttled = 0
    for account, region in scopes:
        counters = await estate.counters(account, region)
        ok = counters.get(("GetImage", "Success"), 0)
        if ok < images:
            raise RuntimeError(f"{account}/{region}: only {ok}/{images} GetImage succeeded: {counters}")
        throttled += sum(n for (_, code), n in counters.items() if code.startswith("Throttling"))
    return elapsed, throttled


async def measure(settings: Settings) -> list[Result]:
    """Both refreshes, interleaved per repeat, and their ratios."""
    from exporter.service import ExporterService

    n = 200 if settings.quick else 1000
    fleet_bounds = {t: bound(t, n, FLEET_CONCURRENCY) for t in TARGETS}
    slowest = max(fleet_bounds, key=lambda t: fleet_bounds[t])
    slowest_bound, sum_bounds = fleet_bounds[slowest], sum(fleet_bounds.values())
    solo = solo_target()
    solo_n = n * len(TARGETS)
    solo_bound = bound(solo, solo_n, solo_concurrency())
    fleet_scopes = [(t.account, t.region) for t in TARGETS]
    with temp_dir() as directory:
        async with estate_process(estate_spec(n), directory) as estate:
            fleet_config, solo_config = configs(n, estate.region_urls)
            fleet_service = ExporterService(fleet_config, process_metrics=False)
            solo_service = ExporterService(solo_config, process_metrics=False)
            fleet_times: list[float] = []
            solo_times: list[float] = []
            throttles: list[float] = []
            try:
                for _ in range(settings.repeats):
                    elapsed, throttled = await timed_refresh(estate, fleet_service, fleet_scopes, n)
                    fleet_times.append(elapsed)
                    solo_elapsed, solo_throttled = await timed_refresh(
                        estate, solo_service, [(solo.account, solo.region)], solo_n
                    )
                    solo_times.append(solo_elapsed)
                    throttles.append(float(throttled + solo_throttled))
            finally:
                await fleet_service.stop()
                await solo_service.stop()
    fleet_med, solo_med = statistics.median(fleet_times), statistics.median(solo_times)
    shape = ", ".join(f"{t.account}/{t.region} {t.latency_ms:g}ms {t.qps:g}/s" for t in TARGETS)
    return [
        at_most(
            f"fleet_refresh_vs_slowest_bound_6x{n}",
            [t / slowest_bound for t in fleet_times],
            TARGET_RATIO,
            "ratio",
            f"refresh {fleet_med:.2f}s vs slowest target's bound {slowest_bound:.2f}s = "
            f"{n}/{slowest.qps:g}qps + {slowest.latency_ms:g}ms ({slowest.account}/{slowest.region}); "
            f"6 targets: {shape}; concurrency {FLEET_CONCURRENCY} each",
        ),
        info(
            f"fleet_refresh_vs_sum_of_bounds_6x{n}",
            [t / sum_bounds for t in fleet_times],
            "ratio",
            f"refresh {fleet_med:.2f}s vs the six bounds summed {sum_bounds:.2f}s "
            f"(what one target after another would take)",
        ),
        at_most(
            f"fleet_as_one_target_vs_bound_{solo_n}",
            [t / solo_bound for t in solo_times],
            TARGET_RATIO,
            "ratio",
            f"refresh {solo_med:.2f}s vs bound {solo_bound:.2f}s = {solo_n}/{solo.qps:g}qps + "
            f"{solo.latency_ms:g}ms: all {solo_n} images in one account and region, the slowest latency, "
            f"the six QPS summed, concurrency {solo_concurrency()}",
        ),
        info(
            f"fleet_vs_one_target_time_6x{n}",
            [f / s for f, s in zip(fleet_times, solo_times, strict=True)],
            "x",
            f"fleet refresh ÷ one-target refresh, same run "
            f"(bounds {slowest_bound:.2f}s vs {solo_bound:.2f}s)",
        ),
        at_most(
            f"fleet_throttling_errors_6x{n}",
            throttles,
            0,
            "count",
            "Throttling.* answers per repeat, both refreshes (exporter qps = each simulator's limit)",
        ),
    ]


async def run(settings: Settings) -> list[Result]:
    """The fleet suite; a failure is reported as unmeasured rows, not raised."""
    try:
        return await measure(settings)
    except Exception as exc:
        n = 200 if settings.quick else 1000
        return [
            unavailable(f"fleet_refresh_vs_slowest_bound_6x{n}", "ratio", f"<= {TARGET_RATIO:g}", repr(exc))
        ]
