"""Golden files: the whole /metrics answer, text and OpenMetrics, byte for byte, for a fixed fleet.

The scenario runs the real stack (simulator -> client -> refresher -> renderer -> aiohttp) through two
refreshes: the first sees the fleet healthy, then one image starts failing (Throttling.User) and one is
deleted (ImageNotFound), and the second refresh is what the golden files hold. What would vary is pinned:

- wall clock: a constant (every timestamp sample is 1700000000);
- cycle duration: a fake monotonic clock advancing 1.25 s per reading (each cycle lasts 1.25 s);
- API latency: the client's observer is wrapped to report 0.042 s for every attempt (histogram stable);
- build info: fixed version/python_version; process and GC collectors are off;
- retries: one attempt per call, so the request and error counters are exact.

Regenerate after an intended change with ``UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_golden.py``
(or ``make golden``) and review the diff like code.
"""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics

from ehpc_simulator import SimImage
from exporter.buildinfo import BuildInfo
from exporter.clock import LoopClock
from exporter.config import Config, WatchedImage
from exporter.errors import ApiError
from exporter.openapi.client import ApiObserver, EhpcClient
from exporter.service import Account, ExporterService, default_client
from tests.exporter_support import sim_config
from tests.fixtures.http import wait_until_async
from tests.fixtures.sim import SIM_CONTAINER_ID, SIM_VM_FAILED_ID, SIM_VM_ID, RunningSimulator

GOLDEN = Path(__file__).parent / "golden"
FIXED_NOW = 1_700_000_000.0
FIXED_LATENCY = 0.042
REGIONS = ("cn-beijing", "cn-shanghai")


class FixedLatency:
    """Passes every attempt on with a constant duration, so the latency histogram is reproducible."""

    def __init__(self, inner: ApiObserver) -> None:
        self.inner = inner

    def on_attempt(self, action: str, duration_seconds: float, error: ApiError | None) -> None:
        """Forward with the fixed duration."""
        self.inner.on_attempt(action, FIXED_LATENCY, error)

    def on_failure(self, action: str, error: ApiError) -> None:
        """Forward as it is."""
        self.inner.on_failure(action, error)


class TickingClock(LoopClock):
    """Monotonic readings 1.25 s apart (so every cycle lasts 1.25 s); sleeps are the loop's."""

    def __init__(self) -> None:
        self._ticks = itertools.count(0.0, 1.25)

    def monotonic(self) -> float:
        """The next reading."""
        return next(self._ticks)


def fixed_latency_client(config: Config, observer: ApiObserver, account: Account) -> EhpcClient:
    return default_client(config, FixedLatency(observer), account)


def golden_fleet(running: RunningSimulator) -> tuple[WatchedImage, ...]:
    """Add the odd cases to the fixture fleet and return the watched list."""
    sim = running.sim
    sim.images["m-golden-frozen"] = SimImage("m-golden-frozen", name="frozen", status="Frozen", size_gib=1.5)
    sim.images["m-golden-blank"] = SimImage("m-golden-blank", name='odd "name" \\ here', status="")
    sim.images["m-golden-gone"] = SimImage(
        "m-golden-gone", name="soon-deleted", regions={"cn-beijing": "Available"}
    )
    container = sim.images[SIM_CONTAINER_ID]
    container.registry_url = "https://puller:golden-secret@registry.example.com/ehpc/nginx:latest"
    return (
        WatchedImage(SIM_VM_ID, additional_region_ids=REGIONS),
        WatchedImage(SIM_VM_FAILED_ID, additional_region_ids=("cn-beijing",)),
        WatchedImage(SIM_CONTAINER_ID, image_type="Container", additional_region_ids=("cn-beijing",)),
        WatchedImage("m-golden-frozen"),
        WatchedImage("m-golden-blank"),
        WatchedImage("m-golden-gone", additional_region_ids=("cn-beijing",)),
        WatchedImage("m-golden-never"),  # never existed: missing from the start
    )


@pytest.fixture
async def expositions(simulator: RunningSimulator) -> AsyncIterator[dict[str, bytes]]:
    """The text and OpenMetrics answers of /metrics after the scenario's second refresh."""
    svc = ExporterService(
        sim_config(simulator, golden_fleet(simulator), interval=3600),
        build_info=BuildInfo(version="0.0.0-golden", python_version="3.11.0"),
        process_metrics=False,
        client_factory=fixed_latency_client,
        wall_clock=lambda: FIXED_NOW,
        clock=TickingClock(),
    )
    await svc.start()
    try:
        await wait_until_async(lambda: svc.ready)
        simulator.sim.images[SIM_VM_ID].error = "Throttling.User"
        del simulator.sim.images["m-golden-gone"]
        await svc.refresh_once()
        out: dict[str, bytes] = {}
        async with aiohttp.ClientSession(headers={"Accept-Encoding": "identity"}) as http:
            for name, accept in (
                ("metrics.prom", "text/plain"),
                ("metrics.openmetrics.prom", "application/openmetrics-text"),
            ):
                async with http.get(svc.url + "/metrics", headers={"Accept": accept}) as resp:
                    out[name] = await resp.read()
        yield out
    finally:
        await svc.stop()


@pytest.mark.parametrize("name", ["metrics.prom", "metrics.openmetrics.prom"])
def test_exposition_matches_golden(expositions: dict[str, bytes], name: str) -> None:
    """The whole answer equals the reviewed golden file byte for byte (UPDATE_GOLDEN=1 rewrites it)."""
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(expositions[name])
    assert path.exists(), f"{path} missing: run UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_golden.py"
    assert expositions[name] == path.read_bytes(), f"{name} differs from the golden file"


@pytest.mark.process
def test_golden_files_are_valid() -> None:
    """The committed golden text passes promtool; the OpenMetrics one passes the strict parser."""
    text = (GOLDEN / "metrics.prom").read_bytes()
    proc = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, timeout=30, check=False
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"golden-secret" not in text
    om = (GOLDEN / "metrics.openmetrics.prom").read_text()
    assert {f.name for f in parse_openmetrics(om)} >= {"ehpc_image_up", "ehpc_api_errors"}  # type: ignore[no-untyped-call]  # untyped upstream
