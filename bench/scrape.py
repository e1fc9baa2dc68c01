"""Measurement 3: /metrics latency and throughput at scale while refreshes run, and stock generate_latest.

Three processes: the simulator (child, 100 ms ± 20 ms latency so a 10,000-image refresh lasts about
20 s at concurrency 50), the exporter (child, `ehpc-image-exporter run --config`, interval 1 s, so a
refresh is always in flight), and the scrapers (wrk, a C load generator, so the scraping side costs as
little CPU as possible on this 2-core machine; aiohttp in this process if wrk is missing).
prometheus_client's `generate_latest` is timed in this process over a registry of plain Gauges holding
exactly the samples (names and label sets) the exporter served.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import (
    ExporterProcess,
    Result,
    Settings,
    SimProcess,
    at_least,
    at_most,
    exporter_process,
    floor_process,
    free_port,
    info,
    percentile,
    profiler_output,
    simulator_process,
    temp_dir,
    unavailable,
    write_exporter_config,
)

LATENCY_MS = 100.0
JITTER_MS = 20.0
P99_LIMIT_MS = 50.0

WRK_REPORT = """
done = function(s, lat, req)
  io.write(string.format('{"requests":%d,"errors_status":%d,"errors_connect":%d,"errors_read":%d,'
    .. '"errors_timeout":%d,"p50_us":%d,"p99_us":%d,"bytes":%d}\\n',
    s.requests, s.errors.status, s.errors.connect, s.errors.read, s.errors.timeout,
    lat:percentile(50), lat:percentile(99), s.bytes))
end
"""

_SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class ScrapeRun:
    """One load run: latency percentiles in seconds, and how many scrapes it took."""

    p50: float
    p99: float
    requests: int


def parse_exposition(text: str) -> dict[str, tuple[tuple[str, ...], list[tuple[tuple[str, ...], float]]]]:
    """Sample name -> (label names, [(label values, value)]), from text format 0.0.4."""
    out: dict[str, tuple[tuple[str, ...], list[tuple[tuple[str, ...], float]]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE_RE.match(line)
        if m is None:
            raise ValueError(f"unparsable sample line: {line[:120]}")
        name, labels, value = m.group(1), m.group(2) or "", m.group(3)
        pairs = _LABEL_RE.findall(labels)
        names = tuple(k for k, _ in pairs)
        values = tuple(v.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\") for _, v in pairs)
        entry = out.setdefault(name, (names, []))
        if entry[0] != names:
            # The same sample name with other label names (never in a valid exposition): keep it apart.
            entry = out.setdefault(f"{name}__{'_'.join(names)}", (names, []))
        entry[1].append((values, float(value)))
    return out


def time_generate_latest(text: str, repeats: int) -> tuple[list[float], int]:
    """(seconds per generate_latest call, samples it wrote) over plain Gauges equal to `text`."""
    from prometheus_client import CollectorRegistry, Gauge, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    for name, (label_names, samples) in parse_exposition(text).items():
        gauge = Gauge(name, f"{name} (benchmark copy)", label_names, registry=registry)
        for values, value in samples:
            (gauge.labels(*values) if label_names else gauge).set(value)
    times = []
    body = b""
    for _ in range(repeats):
        start = time.perf_counter()
        body = generate_latest(registry)
        times.append(time.perf_counter() - start)
    written = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    return times, written


def count_samples(text: str) -> int:
    """Sample lines of an exposition."""
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


async def wrk_run(
    url: str, scrapers: int, seconds: float, headers: dict[str, str], script: Path
) -> ScrapeRun:
    """`scrapers` connections scraping back to back for `seconds`, measured by wrk."""
    cmd = [
        "wrk",
        "-t1",
        f"-c{scrapers}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "30s",
        "-s",
        str(script),
    ]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    proc = await asyncio.create_subprocess_exec(
        *cmd, url, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed rc={proc.returncode}: {err.decode(errors='replace')[-500:]}")
    report = json.loads(out.decode().strip().splitlines()[-1])
    bad = sum(report[k] for k in ("errors_status", "errors_connect", "errors_read", "errors_timeout"))
    if bad or report["requests"] == 0:
        raise RuntimeError(f"wrk saw errors: {report}")
    return ScrapeRun(report["p50_us"] / 1e6, report["p99_us"] / 1e6, int(report["requests"]))


async def aiohttp_run(url: str, scrapers: int, seconds: float, headers: dict[str, str]) -> ScrapeRun:
    """The same load from this process with aiohttp (used only when wrk is not installed)."""
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession(auto_decompress=False) as session:

        async def scraper() -> None:
            while time.monotonic() < deadline:
                start = time.perf_counter()
                async with session.get(url, headers=headers) as resp:
                    await resp.read()
                    resp.raise_for_status()
                latencies.append(time.perf_counter() - start)

        await asyncio.gather(*(scraper() for _ in range(scrapers)))
    return ScrapeRun(percentile(latencies, 50), percentile(latencies, 99), len(latencies))


async def scrape_run(
    url: str, scrapers: int, seconds: float, headers: dict[str, str], script: Path
) -> ScrapeRun:
    """One load run with wrk, or with aiohttp from this process when wrk is not installed."""
    if shutil.which("wrk"):
        return await wrk_run(url, scrapers, seconds, headers, script)
    return await aiohttp_run(url, scrapers, seconds, headers)


async def getimage_calls(sim: SimProcess) -> int:
    """GetImage answers the simulator has sent so far."""
    return sum(n for (action, _), n in (await sim.counters()).items() if action == "GetImage")


@dataclass
class Phase:
    """Repeated load runs of one scraper setup."""

    runs: list[ScrapeRun]
    fewest_calls: int  # fewest GetImage answers the simulator sent during one run (0: no refresh ran)
    cpu_per_scrape: list[float]  # exporter CPU seconds per scrape, per run, refresh CPU subtracted
    scrapes_per_second: list[float] = field(default_factory=list)  # answers per wall second, per run


def cpu_seconds(proc: Any) -> float:
    """User + system CPU seconds of a psutil.Process."""
    t = proc.cpu_times()
    return float(t.user + t.system)


async def refresh_cpu_rate(sim: SimProcess, proc: Any, seconds: float) -> float:
    """The exporter's CPU seconds per second with no scraper (its refresh work), to subtract later."""
    start_cpu, start = cpu_seconds(proc), time.monotonic()
    await asyncio.sleep(seconds)
    return (cpu_seconds(proc) - start_cpu) / (time.monotonic() - start)


async def load_phase(
    sim: SimProcess,
    exporter: ExporterProcess,
    scrapers: int,
    seconds: float,
    repeats: int,
    headers: dict[str, str],
    script: Path,
    idle_rate: float,
) -> Phase:
    """Repeated load runs, with the refresh check and the exporter's CPU per scrape."""
    import psutil

    proc = psutil.Process(exporter.proc.pid)
    url = f"{exporter.url}/metrics"
    phase = Phase([], -1, [])
    for _ in range(repeats):
        before = await getimage_calls(sim)
        cpu0, t0 = cpu_seconds(proc), time.monotonic()
        run = await scrape_run(url, scrapers, seconds, headers, script)
        wall = time.monotonic() - t0
        cpu = cpu_seconds(proc) - cpu0 - idle_rate * wall
        phase.runs.append(run)
        phase.scrapes_per_second.append(run.requests / wall)
        phase.cpu_per_scrape.append(max(cpu, 0.0) / run.requests)
        calls = await getimage_calls(sim) - before
        phase.fewest_calls = calls if phase.fewest_calls < 0 else min(phase.fewest_calls, calls)
    return phase


@dataclass
class Mode:
    """One exporter configuration measured: what it served, its load phases and the floor for its bytes."""

    text: str
    phases: dict[str, Phase]
    floor_runs: list[ScrapeRun]
    rss: int
    idle_rate: float  # the exporter's CPU seconds per second with no scraper (its refresh work)


# The two state-set modes compared side by side (metrics.state_sets), each in its own exporter process.
MODES = ("full", "current")


def with_metrics(config: Path, metrics: dict[str, Any]) -> Path:
    """The exporter config at ``config`` with a ``metrics:`` section (JSON is YAML)."""
    doc = json.loads(config.read_text())
    doc["metrics"] = metrics
    config.write_text(json.dumps(doc))
    return config


async def measure_mode(
    settings: Settings,
    sim: SimProcess,
    tmp: Path,
    images: int,
    state_sets: str,
    phase_setups: tuple[tuple[str, int, dict[str, str]], ...],
    seconds: float,
    script: Path,
) -> Mode:
    """Start an exporter with ``metrics.state_sets``, run the load phases, then the floor for its bytes."""
    import psutil

    port = free_port()
    config = write_exporter_config(
        tmp, sim_url=sim.url, images=images, listen=f"127.0.0.1:{port}", interval_seconds=1.0
    )
    with_metrics(config, {"state_sets": state_sets})
    profile = profiler_output(f"scrape-exporter-{state_sets}", ".pyisession") if settings.profile else None
    async with exporter_process(config, port, profile_to=profile) as exporter:
        async with aiohttp.ClientSession() as session, session.get(f"{exporter.url}/metrics") as resp:
            resp.raise_for_status()
            text = await resp.text()
        proc = psutil.Process(exporter.proc.pid)
        idle_rate = await refresh_cpu_rate(sim, proc, 2.0 if settings.quick else 5.0)
        phases: dict[str, Phase] = {}
        for label, scrapers, headers in phase_setups:
            phases[label] = await load_phase(
                sim, exporter, scrapers, seconds, settings.repeats, headers, script, idle_rate
            )
        rss = proc.memory_info().rss
    # The same number of bytes from a bare aiohttp handler, with nothing else running: the floor.
    async with floor_process(len(text.encode())) as floor_url:
        plain = {"Accept": "text/plain;version=0.0.4"}
        floor_runs = [
            await scrape_run(f"{floor_url}/metrics", 4, seconds / 2, plain, script)
            for _ in range(settings.repeats)
        ]
    return Mode(text, phases, floor_runs, rss, idle_rate)


def phase_results(label: str, phase: Phase, idle_detail: str, suffix: str = "") -> list[Result]:
    """The p50 / p99 / CPU rows of one load phase (``suffix`` names a mode other than the default)."""
    runs = phase.runs
    running = "refresh running" if phase.fewest_calls > 0 else "NO refresh ran during a run"
    n = sum(r.requests for r in runs)
    detail = f"{n} scrapes over {len(runs)} runs, {running} (≥{phase.fewest_calls} GetImage/run)"
    p50 = [r.p50 * 1000 for r in runs]
    p99 = [r.p99 * 1000 for r in runs]
    out = [info(f"metrics_p50_{label}_scrapers{suffix}", p50, "ms", detail)]
    if label.startswith("4"):
        out.append(at_most(f"metrics_p99_{label}_scrapers{suffix}", p99, P99_LIMIT_MS, "ms", detail))
    else:
        out.append(info(f"metrics_p99_{label}_scrapers{suffix}", p99, "ms", detail))
    out.append(info(f"metrics_scrapes_per_second_{label}{suffix}", phase.scrapes_per_second, "req/s", detail))
    out.append(
        info(
            f"metrics_exporter_cpu_per_scrape_{label}{suffix}",
            [c * 1000 for c in phase.cpu_per_scrape],
            "ms",
            f"exporter CPU per scrape (psutil), minus its refresh CPU ({idle_detail})",
        )
    )
    return out


async def run(settings: Settings) -> list[Result]:
    """Serve 10,000 images x 5 replication regions and scrape them while refreshes run, with the state
    sets in full and in current mode (one exporter after the other, against the same simulator)."""
    images = 1000 if settings.quick else 10_000
    # Full mode: 3 runs x 8 s per phase cover at least one refresh-cycle boundary (~22 s apart).
    seconds = 1.0 if settings.quick else 8.0
    plain = {"Accept": "text/plain;version=0.0.4"}
    gzip = {**plain, "Accept-Encoding": "gzip"}
    setups = {
        "full": (("1", 1, plain), ("4", 4, plain), ("4_gzip", 4, gzip)),
        "current": (("4", 4, plain),),  # the comparison that matters: uncompressed, 4 scrapers
    }
    try:
        with temp_dir() as tmp:
            script = tmp / "report.lua"
            script.write_text(WRK_REPORT)
            async with simulator_process(images, latency_ms=LATENCY_MS, jitter_ms=JITTER_MS, seed=1) as sim:
                modes = {
                    mode: await measure_mode(settings, sim, tmp, images, mode, setups[mode], seconds, script)
                    for mode in MODES
                }
            gen_times, gen_samples = time_generate_latest(modes["full"].text, settings.repeats)
    except Exception as exc:  # report and go on: the other measurements still run
        return [unavailable("metrics_p99_4_scrapers", "ms", f"<= {P99_LIMIT_MS:g}", repr(exc))]

    results: list[Result] = []
    for mode in MODES:
        text = modes[mode].text
        samples = count_samples(text)
        suffix = "" if mode == "full" else f"_{mode}"
        where = f"{images} images x 5 regions, state_sets: {mode}"
        results.append(info(f"metrics_samples{suffix}", [float(samples)], "samples", where))
        results.append(info(f"metrics_samples_per_image{suffix}", [samples / images], "samples", where))
        results.append(info(f"metrics_body_bytes{suffix}", [len(text.encode()) / 1e6], "MB", where))
    for mode in MODES:
        m = modes[mode]
        suffix = "" if mode == "full" else f"_{mode}"
        for label, phase in m.phases.items():
            results += phase_results(label, phase, f"{m.idle_rate:.2f} CPU-s/s", suffix)
        size = len(m.text.encode())
        floor = f"bare aiohttp writing a constant {size}-byte body, 4 scrapers, no refresh or simulator"
        floor_p99 = [r.p99 * 1000 for r in m.floor_runs]
        results.append(
            info(f"metrics_floor_p50_4_scrapers{suffix}", [r.p50 * 1000 for r in m.floor_runs], "ms", floor)
        )
        results.append(info(f"metrics_floor_p99_4_scrapers{suffix}", floor_p99, "ms", floor))
        ratios = [r.p99 * 1000 / statistics.median(floor_p99) for r in m.phases["4"].runs]
        ratio_detail = f"/metrics p99 (4 scrapers, uncompressed) ÷ the floor's p99 for the same {size} bytes"
        if mode == "current":
            results.append(at_most(f"metrics_p99_ratio_to_floor{suffix}", ratios, 1.1, "x", ratio_detail))
        else:
            results.append(info(f"metrics_p99_ratio_to_floor{suffix}", ratios, "x", ratio_detail))
    ours_p50 = [r.p50 for r in modes["full"].phases["1"].runs]
    gen_ms = [t * 1000 for t in gen_times]
    results.append(
        info(
            "generate_latest_stock",
            gen_ms,
            "ms",
            f"prometheus_client generate_latest, {gen_samples} samples in plain Gauges, in-process",
        )
    )
    speedups = [g / statistics.median(ours_p50) for g in gen_times]
    results.append(
        at_least(
            "metrics_speedup_vs_generate_latest",
            speedups,
            10,
            "x",
            "generate_latest (in-process) ÷ our /metrics p50 (HTTP, 1 scraper, during refresh)",
        )
    )
    for mode in MODES:
        suffix = "" if mode == "full" else f"_{mode}"
        rss = modes[mode].rss
        results.append(
            info(f"rss_exporter_after_scrapes{suffix}", [rss / 1e6], "MB", f"{images} images, after load")
        )
    return results
