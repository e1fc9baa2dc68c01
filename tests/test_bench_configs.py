"""Every config file the benchmarks write loads: a bench whose config the exporter refuses measures
nothing and says only ``n/a`` (``bench/limits.py`` did, when secrets shorter than 16 characters became a
config error). In-process: the bench's own writers, the exporter's own loader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import limits
from bench.common import write_exporter_config
from exporter.config.load import load_config


def test_the_limits_bench_config_loads_at_its_largest_shape(tmp_path: Path) -> None:
    """The largest shape the limits bench runs (every cap at once) is a valid config."""
    shape = limits.largest()
    urls = {r: f"http://127.0.0.1:{20000 + i}" for i, r in enumerate(limits.region_ids(shape))}
    path = tmp_path / "exporter.yaml"
    path.write_text(json.dumps(limits.exporter_doc(shape, urls, "127.0.0.1:9999")))
    config = load_config(str(path))
    assert len(config.targets) == shape.targets


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"discovery": True, "metrics": {"state_sets": "full"}},
        {"ca_file": None, "state_path": "state.db", "qps": 50.0},
    ],
    ids=["plain", "discovery-full", "state"],
)
def test_the_simulator_bench_config_loads(tmp_path: Path, extra: dict[str, object]) -> None:
    """What the scrape, memory, series and warm-start benches write, in each of their variants."""
    if "state_path" in extra:
        extra = {**extra, "state_path": tmp_path / str(extra["state_path"])}
    path = write_exporter_config(
        tmp_path,
        sim_url="http://127.0.0.1:20000",
        images=50,
        listen="127.0.0.1:9999",
        interval_seconds=10,
        **extra,  # type: ignore[arg-type]
    )
    config = load_config(str(path))
    # Discovery finds the same images by ListImages instead of listing them.
    assert (len(config.images), config.discovery.enabled) == (
        (0, True) if extra.get("discovery") else (50, False)
    )
