"""Load: wrk on /metrics of a 10,000-image exporter while it refreshes back to back.

The simulator and the exporter run as subprocesses. The refresh interval (2 s) is shorter than one
cycle over 10,000 images (about 7-10 s here), so the exporter refreshes continuously, rendering a new
snapshot in a worker thread while wrk scrapes. Two runs: with ``Accept-Encoding: gzip`` (what
Prometheus sends; about 2.4 MB per answer) and without (the 26 MB text exposition).

Pass criterion: zero errors of any kind (non-2xx, connect, read, write, and wrk's 2 s timeout), and the
refresh cycle that ran under the load completes (scrapes slow it down; they must not wedge it). Latency
(p50, p99) and throughput are measured against budgets (``BUDGETS``), and a budget not held fails the
test: the report says whether each held, the terminal summary gives the numbers.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from ehpc_simulator import generate_fleet
from tests.harness import (
    ExporterProcess,
    exporter_config,
    processes,
    quick_samples,
    start_exporter,
    start_simulator,
    wait_until,
)
from tests.reliability import Reliability

pytestmark = pytest.mark.slow

FLEET_SIZE = 10_000
REGIONS = ["cn-beijing", "cn-shanghai"]
REPORT_LUA = """
done = function(s, lat, req)
  io.write(string.format('{"requests":%d,"errors_status":%d,"errors_connect":%d,"errors_timeout":%d,'
    .. '"errors_read":%d,"errors_write":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,"rps":%.1f}\\n',
    s.requests, s.errors.status, s.errors.connect, s.errors.timeout, s.errors.read, s.errors.write,
    lat:percentile(50), lat:percentile(99), lat.max, s.requests / (s.duration / 1e6)))
end
"""
RUNS: tuple[tuple[str, list[str], str], ...] = (
    ("gzip, as Prometheus asks", ["-t2", "-c8", "-d10s", "-H", "Accept-Encoding: gzip"], "gzip"),
    ("uncompressed text", ["-t2", "-c8", "-d5s"], "text"),
)
# (p50 ms, p99 ms, minimum req/s) per run. Budgets, not bench figures: one not held fails the test.
# Measured on this 2-core machine while other test suites ran on it (2026-12-01): gzip p50 34 ms, p99
# 228 ms, 188 req/s; text p50 204 ms, p99 488 ms, 36 req/s. The bounds leave 3-9x of that for a busier
# machine; p99 stays under wrk's 2 s timeout, which would otherwise make it hold by construction (a
# slower request is a timeout error, and errors fail the test anyway).
BUDGETS = {"gzip": (250.0, 1000.0, 20.0), "text": (1000.0, 1500.0, 5.0)}
ERROR_KEYS = ("errors_status", "errors_connect", "errors_timeout", "errors_read", "errors_write")


def wrk(url: str, args: list[str], script: Path) -> dict[str, Any]:
    """Run wrk with the JSON-printing done() hook; its last line, parsed."""
    wrk_bin = shutil.which("wrk")
    assert wrk_bin is not None, "wrk is not installed (make system-deps)"
    proc = subprocess.run(
        [wrk_bin, *args, "--timeout", "2s", "-s", str(script), url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def refreshes(exporter: ExporterProcess) -> tuple[float, float]:
    """(last refresh end, overruns so far) from /metrics."""
    text = exporter.metrics_text()
    found = {
        name: value
        for name, _labels, value in quick_samples(
            text, ("ehpc_refresh_last_success_timestamp_seconds", "ehpc_refresh_overruns_total")
        )
    }
    return found.get("ehpc_refresh_last_success_timestamp_seconds", 0), found.get(
        "ehpc_refresh_overruns_total", 0
    )


def test_wrk_during_refreshes(tmp_path: Path, reliability: Reliability) -> None:
    """Zero errors under wrk while 10,000 images refresh back to back; latency recorded."""
    images = generate_fleet(FLEET_SIZE, REGIONS, seed=5)
    fleet = tmp_path / "fleet.json"
    fleet.write_text(json.dumps({"images": [asdict(i) for i in images]}))
    script = tmp_path / "report.lua"
    script.write_text(REPORT_LUA)
    watched = [{"id": i.image_id, "type": i.image_type, "additional_regions": REGIONS} for i in images]
    with processes() as procs:
        sim = start_simulator(tmp_path / "sim", fleet)
        procs.append(sim)
        doc = exporter_config(
            sim.url, watched, interval=2, api={"max_concurrency": 50, "timeout_seconds": 10}
        )
        # Bound only; the first cycle over 10,000 images may take longer than start_exporter's 30 s.
        exporter = start_exporter(tmp_path / "exporter", doc, wait="healthy")
        procs.append(exporter)
        exporter.wait_ready(within=60)
        before, overruns_before = refreshes(exporter)
        results = {label: wrk(f"{exporter.url}/metrics", args, script) for label, args, _key in RUNS}
        # The refresher never stops (each cycle overruns the 2 s interval), so a cycle was running during
        # the runs; under that load it may still be running now: it must complete, not be wedged.
        after, overruns_after = wait_until(
            lambda: (r := refreshes(exporter))[0] > before and r[1] > overruns_before and r,
            60,
            "a refresh cycle completing after the wrk runs",
            interval=0.5,
        )
        exporter.check_alive()
        rc = exporter.stop()
        log = exporter.output()

    missed: list[str] = []  # budgets not held, asserted once every case is recorded
    for label, args, key in RUNS:
        r = results[label]
        errors = {k: r[k] for k in ERROR_KEYS if r[k]}
        p50, p99, rps = BUDGETS[key]
        for name, value, unit, budget, higher in (
            (f"{key}: p50 latency", r["p50_us"] / 1000, "ms", p50, False),
            (f"{key}: p99 latency", r["p99_us"] / 1000, "ms", p99, False),
            (f"{key}: requests per second", r["rps"], "req/s", rps, True),
        ):
            if not reliability.measure(
                "load", name, value, unit, budget=budget, higher_is_better=higher, fail=False
            ):
                missed.append(
                    f"{name} = {value:.6g} {unit} (budget {'at least' if higher else 'under'} {budget:g})"
                )
        reliability.check(
            "load",
            f"wrk {' '.join(a for a in args if a.startswith('-') and a != '-H')} on /metrics ({label}),"
            f" {FLEET_SIZE:,} images refreshing",
            "no non-2xx, connect, read, write or timeout (2 s) errors",
            "no errors" if not errors and r["requests"] > 0 else f"{errors or 'no requests'}",
            not errors and r["requests"] > 0,
        )
    reliability.check(
        "load",
        "refreshes during the wrk runs",
        "cycles run back to back through the runs (each overruns the 2 s interval) and complete",
        ("a cycle completed" if after > before else "NO cycle completed")
        + ("; overruns counted" if overruns_after > overruns_before else "; no overrun counted")
        + f"; exit {rc}; "
        + ("a TRACEBACK" if "Traceback" in log else "no traceback"),
        after > before and overruns_after > overruns_before and rc == 0 and "Traceback" not in log,
    )
    assert not missed, f"load budgets not held: {missed}"
