"""Measurement: cold start versus warm start from the state file, and what a save costs.

A fleet bound by its QPS budget (10,000 images at 20 QPS: 500 s for one full refresh) serves nothing on
a cold start until that refresh ends. With ``state.path`` it serves the saved snapshot as soon as the
file is read. Both are timed from process start to a ``/metrics`` holding every image, side by side
against the same simulator, with the fleet found by discovery (how a fleet that size is configured).
The same warm start with the 10,000 ids listed in the config file is shown too: reading that list is
about a second of YAML on its own, whatever the state does. The state file is made first by an exporter
without a QPS limit (its RSS after that first refresh and save is the "history and state on" row).

The save cost is measured in this process on the same fleet: CPU (all threads) and bytes written
(``/proc/self/io`` wchar, which counts tmpfs too) for the first save, for a typical cycle (only the
last-success times moved) and for one where 1 % of the images changed status.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import time
from pathlib import Path

import aiohttp

from bench.common import (
    REGIONS,
    Result,
    Settings,
    at_most,
    free_port,
    info,
    simulator_process,
    spawn_exporter,
    stop_process,
    temp_dir,
    unavailable,
    write_exporter_config,
)

QPS = 20.0
WARM_LIMIT_SECONDS = 3.0
RSS_LIMIT_MB = 250.0


async def _count(session: aiohttp.ClientSession, url: str, marker: bytes) -> int:
    with contextlib.suppress(aiohttp.ClientError, OSError):
        async with session.get(url) as resp:
            if resp.status == 200:
                return (await resp.read()).count(marker)
    return -1


async def time_to_full_metrics(config: Path, port: int, images: int, within: float) -> tuple[float, float]:
    """Seconds from process start until /metrics has every image's ``up`` sample, and the RSS then (MB)."""
    import psutil

    started = time.perf_counter()
    proc = await spawn_exporter(config, append=True)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        async with aiohttp.ClientSession() as session:
            while time.perf_counter() - started < within:
                if proc.returncode is not None:
                    raise RuntimeError(f"exporter exited rc={proc.returncode}")
                if await _count(session, url, b"\nehpc_image_up{") >= images:
                    elapsed = time.perf_counter() - started
                    return elapsed, psutil.Process(proc.pid).memory_info().rss / 1e6
                await asyncio.sleep(0.02)
        raise RuntimeError(f"no full /metrics within {within:.0f} s")
    finally:
        await stop_process(proc, grace=30)


async def make_state(config: Path, port: int) -> float:
    """Run an unthrottled exporter until its first refresh is saved; its RSS then (MB)."""
    import psutil

    proc = await spawn_exporter(config, append=True)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        async with aiohttp.ClientSession() as session:
            deadline = time.perf_counter() + 600
            while time.perf_counter() < deadline:
                if proc.returncode is not None:
                    raise RuntimeError(f"exporter exited rc={proc.returncode}")
                if await _count(session, url, b"\nehpc_state_last_save_timestamp_seconds ") > 0:
                    await asyncio.sleep(0.5)
                    return float(psutil.Process(proc.pid).memory_info().rss) / 1e6
                await asyncio.sleep(0.2)
        raise RuntimeError("no save within 600 s")
    finally:
        await stop_process(proc, grace=30)


def _wchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


async def save_costs(images: int) -> dict[str, tuple[float, float]]:
    """CPU ms and bytes written per save: the first, a typical cycle, and one with 1 % changed."""
    from bench.simserver import bench_fleet
    from ehpc_simulator.model import render_image
    from exporter.config import Config, WatchedImage
    from exporter.exposition.selfmetrics import StateMetrics
    from exporter.history import observe
    from exporter.models import parse_get_image
    from exporter.snapshot import ImageFacts, ImageState, Snapshot
    from exporter.state import StateStore

    regions = list(REGIONS)
    fleet = bench_fleet(images, regions)

    def states(at: float, changed: int) -> list[ImageState]:
        out = []
        for i, sim in enumerate(fleet):
            body = {"RequestId": "R", "Success": True, "Image": render_image(sim, regions)}
            image = parse_get_image(body, sim.image_id, regions)
            facts = ImageFacts.from_image(image)
            status = "Creating" if i < changed else facts.status
            facts = facts._replace(status=status)
            history, _ = observe(None, status, dict(facts.additional_regions), regions, ("Available",), 1.7e9)
            watched = WatchedImage(sim.image_id, "VM", None, tuple(regions))
            out.append(ImageState(watched, facts, at, None, history=history))
        return out

    config = Config()
    out: dict[str, tuple[float, float]] = {}
    with temp_dir() as tmp:
        store = StateStore(str(tmp / "state.db"), StateMetrics())
        await store.load(config)
        base = states(1.7e9, 0)
        typical = [s.__class__(s.watched, s.image, 1.7e9 + 60, None, s.scope, s.history) for s in base]
        changed = states(1.7e9 + 120, images // 100)
        for name, batch in (("first", base), ("typical", typical), ("1pct_changed", changed)):
            snapshot = Snapshot.build(
                batch, status=config.status, refreshed_at=1.7e9, duration_seconds=1.0, sequence=1
            )
            cpu, wrote = time.process_time(), _wchar()
            await store.save(snapshot)
            out[name] = ((time.process_time() - cpu) * 1000, float(_wchar() - wrote))
        await store.close()
    return out


async def run(settings: Settings) -> list[Result]:
    """Cold versus warm time to a full /metrics at 20 QPS; save cost; RSS with history and state on."""
    images = 1000 if settings.quick else 10_000
    bound = images / QPS
    results: list[Result] = []
    try:
        with temp_dir() as tmp:
            async with simulator_process(images, latency_ms=0, seed=1) as sim:
                port = free_port()
                state = tmp / "state.db"
                listen = f"127.0.0.1:{port}"

                def config(
                    name: str,
                    qps: float,
                    state_path: Path | None,
                    discovery: bool = True,
                    metrics: dict[str, str] | None = None,
                ) -> Path:
                    (tmp / name).mkdir()
                    return write_exporter_config(
                        tmp / name,
                        sim_url=sim.url,
                        images=images,
                        listen=listen,
                        interval_seconds=3600.0,
                        qps=qps,
                        state_path=state_path,
                        discovery=discovery,
                        metrics=dict(metrics) if metrics else None,
                    )

                fast, slow = config("fast", 0, state), config("slow", QPS, state)
                listed, cold = config("listed", QPS, state, discovery=False), config("cold", QPS, None)
                # The default is state_sets: current; the other mode is the one to compare with.
                full = config("full", QPS, state, metrics={"state_sets": "full"})
                rss = await make_state(fast, port)
                warm = [await time_to_full_metrics(slow, port, images, 60) for _ in range(settings.repeats)]
                print(f"  warm: {[round(w, 2) for w, _ in warm]} s", file=sys.stderr, flush=True)
                warm_listed = [
                    await time_to_full_metrics(listed, port, images, 60) for _ in range(settings.repeats)
                ]
                warm_full = [
                    await time_to_full_metrics(full, port, images, 60) for _ in range(settings.repeats)
                ]
                cold_s, _ = await time_to_full_metrics(cold, port, images, bound * 2 + 60)
    except Exception as exc:  # report and go on: the other measurements still run
        return [unavailable("warm_start_seconds", "s", f"<= {WARM_LIMIT_SECONDS:g}", repr(exc))]
    warm_s = [w for w, _ in warm]
    results += [
        at_most(
            f"warm_start_{images}_images_s",
            warm_s,
            WARM_LIMIT_SECONDS,
            "s",
            f"process start to every image in /metrics, {QPS:g} QPS, from the state file",
        ),
        info(
            f"warm_start_{images}_listed_ids_s",
            [w for w, _ in warm_listed],
            "s",
            "the same with the ids listed in the config file instead of discovered",
        ),
        info(
            f"warm_start_{images}_images_full_s",
            [w for w, _ in warm_full],
            "s",
            "the same with metrics.state_sets: full (every state-set sample, every copy's since-timestamp)",
        ),
        info(
            f"cold_start_{images}_images_s",
            [cold_s],
            "s",
            f"discovered, without state (bound N/QPS = {bound:g} s, plus discovery's pages);"
            f" cold/warm = {cold_s / statistics.median(warm_s):.0f}x",
        ),
        at_most(
            f"rss_{images}_images_state_on_mb", [rss], RSS_LIMIT_MB, "MB", "after the first refresh and save"
        ),
        info(f"rss_{images}_images_warm_mb", [r for _, r in warm], "MB", "right after a warm start"),
    ]
    costs = await save_costs(images)
    for name, (cpu_ms, wrote) in costs.items():
        results.append(info(f"state_save_{name}_cpu_ms", [cpu_ms], "ms", f"{images} images, all threads"))
        results.append(info(f"state_save_{name}_bytes", [wrote], "B", "written (wchar)"))
    return results
