"""Golden files: the whole /metrics answer, text and OpenMetrics, byte for byte, for a fixed fleet.

Two of each: the default (``metrics.state_sets: current``, ``metrics.prom``) and the whole table
(``state_sets: full``, ``metrics.full.prom``), which is byte for byte the default exposition of the
versions before the sparse default: the richer form is one config line away and unchanged.

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
import re
import subprocess
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.utils import floatToGoString

from ehpc_simulator import SimImage
from exporter.buildinfo import BuildInfo
from exporter.clock import LoopClock
from exporter.config import Config, MetricsConfig, WatchedImage
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
# The golden files of each mode (metrics.state_sets), text and OpenMetrics.
FILES = {
    "current": ("metrics.prom", "metrics.openmetrics.prom"),
    "full": ("metrics.full.prom", "metrics.full.openmetrics.prom"),
}


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


@pytest.fixture(params=sorted(FILES))
async def expositions(
    simulator: RunningSimulator, request: pytest.FixtureRequest
) -> AsyncIterator[dict[str, bytes]]:
    """The text and OpenMetrics answers of /metrics after the scenario's second refresh, in one mode (the
    default config, or it with ``metrics.state_sets: full``), by golden file name."""
    config = sim_config(simulator, golden_fleet(simulator), interval=3600)
    if request.param != MetricsConfig().state_sets:
        config = replace(config, metrics=MetricsConfig(state_sets=request.param))
    svc = ExporterService(
        config,
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
            accepts = ("text/plain", "application/openmetrics-text")
            for name, accept in zip(FILES[request.param], accepts, strict=True):
                async with http.get(svc.url + "/metrics", headers={"Accept": accept}) as resp:
                    out[name] = await resp.read()
        yield out
    finally:
        await svc.stop()


def test_exposition_matches_golden(expositions: dict[str, bytes]) -> None:
    """The whole answer equals the reviewed golden file byte for byte (UPDATE_GOLDEN=1 rewrites it)."""
    for name, body in expositions.items():
        path = GOLDEN / name
        if os.environ.get("UPDATE_GOLDEN") == "1":
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(body)
        assert path.exists(), f"{path} missing: run UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_golden.py"
        assert body == path.read_bytes(), f"{name} differs from the golden file"


# Where the default form leaves out samples of the whole table, and says so in its help text.
STATE_SETS = ("ehpc_image_status", "ehpc_image_replication_status")
SPARSE_SINCE = "ehpc_image_replication_since_timestamp_seconds"
_SAMPLE = re.compile(r"^([a-z_]+)\{(.*)\} (\S+)$")


def _copy_key(labels: str) -> tuple[str, ...]:
    """The (account, region, image, replication region) a sample's label text names."""
    found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels))
    return tuple(found[k] for k in ("account", "region_id", "image_id", "replication_region"))


def without_sparse(full: str) -> str:
    """The whole-table exposition ``full`` cut as ``state_sets: current`` documents it: no state-set sample
    valued 0, no since-timestamp of a copy ``ehpc_image_replication_available`` calls available (help
    lines aside)."""
    lines = full.splitlines(keepends=True)
    available = {
        _copy_key(m.group(2))
        for line in lines
        if (m := _SAMPLE.match(line.rstrip("\n"))) and m.group(1) == "ehpc_image_replication_available"
        if float(m.group(3)) == 1.0
    }
    out = []
    for line in lines:
        m = _SAMPLE.match(line.rstrip("\n"))
        if m and m.group(1) in STATE_SETS and float(m.group(3)) == 0.0:
            continue
        if m and m.group(1) == SPARSE_SINCE and _copy_key(m.group(2)) in available:
            continue
        out.append(line)
    # The series gauge counts what is left.
    series = re.compile(r"^(ehpc_exposition_series) (\S+)$", re.MULTILINE)
    left = "".join(out)
    count = float(series.search(left).group(2)) - (len(lines) - len(out))  # type: ignore[union-attr]
    return series.sub(rf"\1 {floatToGoString(count)}", left)  # type: ignore[no-untyped-call]  # untyped upstream


@pytest.mark.parametrize("pair", sorted(zip(FILES["current"], FILES["full"], strict=True)))
def test_the_default_golden_is_the_full_one_without_its_dense_samples(pair: tuple[str, str]) -> None:
    """The two committed golden files differ exactly by what the default leaves out (and three help
    texts that say so): the richer form loses nothing else, and the default invents nothing."""
    current, full = ((GOLDEN / name).read_text() for name in pair)
    help_lines = re.compile(rf"^# HELP (?:{'|'.join((*STATE_SETS, SPARSE_SINCE))}) .*\n", re.MULTILINE)
    assert help_lines.sub("", current) == help_lines.sub("", without_sparse(full))
    assert len(help_lines.findall(current)) == 3
    assert set(help_lines.findall(current)).isdisjoint(help_lines.findall(full))
    dropped = full.count("\n") - current.count("\n")
    assert dropped > 0
    # The scenario holds every case: a missing image's all-0 state set, a copy the answer lacks, available
    # copies with a since-timestamp, and one not available (its since-timestamp stays).
    assert re.search(r'ehpc_image_status\{[^}]*image_id="m-golden-gone".*\} 0.0', full)
    assert not re.search(r'ehpc_image_status\{[^}]*image_id="m-golden-gone"', current)
    assert re.search(rf'{SPARSE_SINCE}\{{[^}}]*replication_region="cn-shanghai"', current)
    assert not re.search(rf'{SPARSE_SINCE}\{{[^}}]*image_id="m-simct000000000000001"', current)
    assert re.search(rf'{SPARSE_SINCE}\{{[^}}]*image_id="m-simct000000000000001"', full)


@pytest.mark.process
def test_golden_files_are_valid() -> None:
    """The committed golden texts pass promtool; the OpenMetrics ones pass the strict parser."""
    for text_name, om_name in FILES.values():
        text = (GOLDEN / text_name).read_bytes()
        proc = subprocess.run(
            ["promtool", "check", "metrics"], input=text, capture_output=True, timeout=30, check=False
        )
        assert proc.returncode == 0, proc.stderr.decode()
        assert b"golden-secret" not in text
        om = (GOLDEN / om_name).read_text()
        assert {f.name for f in parse_openmetrics(om)} >= {"ehpc_image_up", "ehpc_api_errors"}  # type: ignore[no-untyped-call]  # untyped upstream
