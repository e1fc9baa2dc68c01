"""Sharding end to end: real ``ehpc-image-exporter run`` processes splitting one simulated fleet.

Three processes (``--shard 0..2 --total-shards 3``) against one ``simulate`` process: together they
watch every image once, and the simulator answers exactly one GetImage per image per cycle; going to
four processes moves at most 1/4 + 5 % of the images, all to the new one; a process in automatic mode
(``POD_NAME``) watches what the explicit ordinal does. The refresh interval is an hour, so every cycle
is one the test starts (the first at start-up, the next through ``POST /-/reload``): counts are exact.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import (
    ExporterProcess,
    SimulatorProcess,
    exporter_config,
    processes,
    quick_samples,
    start_exporter,
    start_simulator,
    wait_until,
)

pytestmark = pytest.mark.process  # the test here starts real processes (make test-fast skips it)

FLEET = 300
IDS = [f"m-shard{i:015d}" for i in range(FLEET)]


def write_fleet(path: Path) -> Path:
    """Available images with no forced errors: one GetImage per image per cycle, no retries."""
    path.write_text(yaml.safe_dump({"images": [{"image_id": i, "name": f"app-{i[-4:]}"} for i in IDS]}))
    return path


def config(sim: SimulatorProcess) -> dict[str, Any]:
    """Discovery of the whole account on every shard; one cycle an hour (the test starts the others)."""
    return exporter_config(sim.url, [], interval=3600, discovery={"enabled": True, "page_size": 100})


def start_shards(
    tmp: Path, sim: SimulatorProcess, shards: Sequence[int], total: int, tag: str
) -> list[ExporterProcess]:
    exporters = [
        start_exporter(
            tmp / f"{tag}-{s}",
            config(sim),
            extra_args=["--shard", str(s), "--total-shards", str(total), "--web.enable-lifecycle"],
            wait=None,
        )
        for s in shards
    ]
    for e in exporters:
        e.wait_ready()
    return exporters


def watched(e: ExporterProcess) -> set[str]:
    """The image ids an exporter exposes (ehpc_image_up has one series per watched image)."""
    return {labels["image_id"] for _n, labels, _v in quick_samples(e.metrics_text(), ["ehpc_image_up"])}


def gauge(e: ExporterProcess, name: str) -> float:
    found = quick_samples(e.metrics_text(), [name])
    assert len(found) == 1, found
    return found[0][2]


def get_images(sim: SimulatorProcess) -> int:
    """GetImage answers the simulator has sent, whatever their code."""
    return sum(n for (action, _code, _status), n in sim.counters().items() if action == "GetImage")


def post(url: str) -> tuple[int, str]:
    """One POST with an empty body: (status, body text), errors included."""
    request = urllib.request.Request(url, data=b"", method="POST")  # noqa: S310 - a loopback test URL
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def next_cycle(exporters: Sequence[ExporterProcess]) -> None:
    """Start one more cycle on each (a reload starts the next cycle at once) and wait for all to end."""
    before = [gauge(e, "ehpc_refresh_last_success_timestamp_seconds") for e in exporters]
    for e in exporters:
        assert post(f"{e.url}/-/reload") == (200, "config reloaded\n")
    for e, was in zip(exporters, before, strict=True):

        def done(e: ExporterProcess = e, was: float = was) -> bool:
            return gauge(e, "ehpc_refresh_last_success_timestamp_seconds") > was

        wait_until(done, 30, f"the next cycle of {e.directory.name}")


def test_shards_split_one_fleet_and_grow_with_minimal_movement(tmp_path: Path) -> None:
    with processes() as procs:
        sim = start_simulator(tmp_path / "sim", write_fleet(tmp_path / "fleet.yaml"))
        procs.append(sim)

        three = start_shards(tmp_path, sim, range(3), 3, "three")
        procs += three
        sets = [watched(e) for e in three]
        assert set().union(*sets) == set(IDS)
        assert sum(len(s) for s in sets) == FLEET  # no image twice
        assert all(FLEET / 3 * 0.7 < len(s) < FLEET / 3 * 1.3 for s in sets), [len(s) for s in sets]
        assert [gauge(e, "ehpc_exporter_shard_ordinal") for e in three] == [0, 1, 2]
        assert [gauge(e, "ehpc_exporter_total_shards") for e in three] == [3, 3, 3]
        # One cycle each so far: one GetImage per image of the fleet, however it is split.
        assert get_images(sim) == FLEET
        next_cycle(three)
        assert get_images(sim) == 2 * FLEET
        assert [watched(e) for e in three] == sets  # stable from one cycle to the next

        # Automatic mode, as in a StatefulSet: the ordinal from POD_NAME, the total from the flag.
        base = get_images(sim)
        auto = start_exporter(
            tmp_path / "auto",
            config(sim),
            extra_args=["--total-shards", "3"],
            env={**os.environ, "POD_NAME": "ehpc-image-exporter-1"},
        )
        procs.append(auto)
        assert watched(auto) == sets[1]
        assert gauge(auto, "ehpc_exporter_shard_ordinal") == 1
        assert get_images(sim) - base == len(sets[1])
        auto.stop()

        # 3 -> 4: every process restarted with --total-shards 4 (a StatefulSet scaled up), one more.
        for e in three:
            e.stop()
        base = get_images(sim)
        four = start_shards(tmp_path, sim, range(4), 4, "four")
        procs += four
        after = [watched(e) for e in four]
        assert set().union(*after) == set(IDS)
        assert sum(len(s) for s in after) == FLEET
        assert get_images(sim) - base == FLEET
        owner_before = {i: s for s, ids in enumerate(sets) for i in ids}
        owner_after = {i: s for s, ids in enumerate(after) for i in ids}
        moved = {i for i in IDS if owner_before[i] != owner_after[i]}
        assert moved == after[3]  # only to the new shard: nothing moved between the old ones
        assert len(moved) / FLEET <= 1 / 4 + 0.05, len(moved)
