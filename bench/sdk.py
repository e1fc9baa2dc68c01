"""Measurement 2: client CPU per GetImage, ours against the official async SDK, over HTTPS.

Both clients call the same simulator (a child process, latency 0 so client CPU dominates) over TLS
with a throwaway trustme CA that each client is told to trust: ours through `ApiConfig.ca_file`, the
SDK through tea-openapi `Config(ca=...)`, which darabonba passes to `ssl.load_verify_locations`.
Verification stays on for both. Both run here at the same concurrency (asyncio.gather under a
semaphore), alternating, and are timed with `time.process_time()` (this process's CPU) and wall time.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench.common import (
    REGIONS,
    Result,
    Settings,
    SimProcess,
    Tls,
    at_least,
    image_id,
    info,
    make_tls,
    save_profile,
    simulator_process,
    temp_dir,
    unavailable,
)

CONCURRENCY = 50
WARMUP_CALLS = 50

Call = Callable[[str], Awaitable[object]]


async def fan_out(call: Call, calls: int, fleet: int) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) for `calls` GetImage calls at CONCURRENCY in flight."""
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one(i: int) -> None:
        async with sem:
            await call(image_id(i % fleet))

    wall0, cpu0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(one(i) for i in range(calls)))
    return time.perf_counter() - wall0, time.process_time() - cpu0


async def checked(sim: SimProcess, call: Call, calls: int, fleet: int) -> tuple[float, float]:
    """fan_out, then make sure the simulator answered every call with Success."""
    await sim.reset_counters()
    wall, cpu = await fan_out(call, calls, fleet)
    counters = await sim.counters()
    ok = counters.get(("GetImage", "Success"), 0)
    if ok != calls:
        raise RuntimeError(f"{ok}/{calls} GetImage succeeded: {counters}")
    return wall, cpu


def sdk_caller(sim: SimProcess, tls: Tls | None) -> Call:
    """GetImage through alibabacloud-ehpcinstant20230701's async client, trusting only our CA."""
    from alibabacloud_ehpcinstant20230701 import models as ehpc_models
    from alibabacloud_ehpcinstant20230701.client import Client
    from alibabacloud_tea_openapi import utils_models as open_api_models

    from ehpc_simulator import DEMO_ACCESS_KEY_ID, DEMO_ACCESS_KEY_SECRET

    config = open_api_models.Config(
        access_key_id=DEMO_ACCESS_KEY_ID,
        access_key_secret=DEMO_ACCESS_KEY_SECRET,
        region_id="cn-hangzhou",
        endpoint=sim.url.split("://", 1)[1],
        protocol="HTTPS" if tls else "HTTP",
        ca=tls.ca_file if tls else None,
    )
    client = Client(config)
    regions = list(REGIONS)

    async def call(image: str) -> object:
        req = ehpc_models.GetImageRequest(image_id=image, image_type="VM", additional_region_ids=regions)
        resp = await client.get_image_async(req)  # exactly what a user of the SDK writes
        if resp.body.image is None or not resp.body.image.status:
            raise RuntimeError(f"SDK answer for {image} has no image")
        return resp

    return call


async def run_pair(
    settings: Settings,
    sim: SimProcess,
    tls: Tls | None,
    ours: Call,
    ours_calls: int,
    sdk_calls: int,
    suffix: str,
) -> list[Result]:
    """Alternate ours and the SDK for each repeat and compare them (suffix "_http": plain HTTP)."""
    theirs = sdk_caller(sim, tls)
    fleet = 1000
    await fan_out(ours, WARMUP_CALLS, fleet)  # open the pool, fill caches: the steady state is measured
    await fan_out(theirs, WARMUP_CALLS, fleet)
    ours_wall: list[float] = []
    ours_cpu: list[float] = []
    sdk_wall: list[float] = []
    sdk_cpu: list[float] = []
    for _ in range(settings.repeats):
        w, c = await checked(sim, ours, ours_calls, fleet)
        ours_wall.append(w * 1000 / ours_calls)
        ours_cpu.append(c * 1000 / ours_calls)
        w, c = await checked(sim, theirs, sdk_calls, fleet)
        sdk_wall.append(w * 1000 / sdk_calls)
        sdk_cpu.append(c * 1000 / sdk_calls)
    if settings.profile:
        await profile_calls(f"sdk-ours{suffix}", ours, ours_calls, fleet)
        await profile_calls(f"sdk-theirs{suffix}", theirs, sdk_calls, fleet)
    cpu_ratios = [s / o for s, o in zip(sdk_cpu, ours_cpu, strict=True)]
    wall_ratios = [s / o for s, o in zip(sdk_wall, ours_wall, strict=True)]
    how = f"concurrency {CONCURRENCY}, {'HTTPS, CA verified' if tls else 'plain HTTP'}"
    cpu = "client process CPU (process_time)"
    speed = (
        f"ours {1000 / statistics.median(ours_cpu):.0f} vs SDK {1000 / statistics.median(sdk_cpu):.0f} "
        "GetImage per CPU-second"
    )
    out = [
        info(f"getimage_wall_per_1000_ours{suffix}", ours_wall, "s", f"{ours_calls} calls/repeat, {how}"),
        info(f"getimage_cpu_per_1000_ours{suffix}", ours_cpu, "s", cpu),
        info(f"getimage_wall_per_1000_sdk{suffix}", sdk_wall, "s", f"{sdk_calls} calls/repeat, {how}"),
        info(f"getimage_cpu_per_1000_sdk{suffix}", sdk_cpu, "s", cpu),
        info(f"getimage_wall_speedup_vs_sdk{suffix}", wall_ratios, "x", "SDK wall ÷ ours, same run"),
    ]
    if tls is None:  # context only: the target is about the HTTPS path both would use for real
        out.append(info(f"getimage_per_cpu_second_vs_sdk{suffix}", cpu_ratios, "x", speed))
    else:
        out.append(at_least("getimage_per_cpu_second_vs_sdk", cpu_ratios, 10, "x", speed))
    return out


async def profile_calls(name: str, call: Call, calls: int, fleet: int) -> None:
    """One extra fan-out under pyinstrument, written to bench/profiles/."""
    from pyinstrument import Profiler

    profiler = Profiler(async_mode="enabled")
    profiler.start()
    await fan_out(call, calls, fleet)
    profiler.stop()
    save_profile(profiler, name)


def our_client(sim: SimProcess, tls: Tls | None) -> Any:
    """Our EhpcClient on the simulator (trusting only the throwaway CA over HTTPS), budget off."""
    from ehpc_simulator import DEMO_ACCESS_KEY_ID, DEMO_ACCESS_KEY_SECRET
    from exporter.config import ApiConfig, CredentialsConfig
    from exporter.credentials import build_credential_source
    from exporter.openapi.client import EhpcClient

    api = ApiConfig(
        endpoint=sim.url,
        protocol="https" if tls else "http",
        ca_file=tls.ca_file if tls else None,
        max_concurrency=CONCURRENCY,
        qps=0,
        timeout_seconds=30.0,
    )
    creds = build_credential_source(
        CredentialsConfig(
            type="access_key", access_key_id=DEMO_ACCESS_KEY_ID, access_key_secret=DEMO_ACCESS_KEY_SECRET
        )
    )
    return EhpcClient(api, creds)


async def run(settings: Settings) -> list[Result]:
    """Measure ours and the SDK against one HTTPS simulator, then (for context) one plain-HTTP simulator."""
    ours_calls, sdk_calls = (200, 50) if settings.quick else (3000, 500)
    results: list[Result] = []
    try:
        with temp_dir() as tmp:
            tls = make_tls(tmp)
            async with (
                simulator_process(1000, tls=tls, latency_ms=0, seed=1) as sim,
                our_client(sim, tls) as client,
            ):
                results += await run_pair(settings, sim, tls, caller(client), ours_calls, sdk_calls, "")
    except Exception as exc:  # report and go on: the other measurements still run
        results.append(unavailable("getimage_per_cpu_second_vs_sdk", "x", ">= 10", repr(exc)))
    try:
        async with simulator_process(1000, latency_ms=0, seed=1) as sim, our_client(sim, None) as client:
            results += await run_pair(settings, sim, None, caller(client), ours_calls, sdk_calls, "_http")
    except Exception as exc:
        results.append(unavailable("getimage_per_cpu_second_vs_sdk_http", "x", None, repr(exc)))
    return results


def caller(client: Any) -> Call:
    """GetImage of one image through our client, with the fleet's replication regions."""

    async def ours(image: str) -> object:
        img: object = await client.get_image(image, image_type="VM", additional_region_ids=REGIONS)
        return img

    return ours
