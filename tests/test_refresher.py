"""The refresh loop against the real simulator: watched set, failures, missing images, schedule, counters."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import pytest
from structlog.testing import capture_logs

from ehpc_simulator import Faults, SimImage, generate_fleet
from exporter.config import (
    DEFAULT_SCOPE,
    Config,
    DiscoveryConfig,
    RefreshConfig,
    ShardingConfig,
    WatchedImage,
)
from exporter.exposition import SelfMetrics, render_snapshot
from exporter.openapi.client import EhpcClient
from exporter.refresher import Refresher
from exporter.service import default_client, new_account
from exporter.snapshot import Snapshot
from exporter.view import Health
from tests.exporter_support import samples, series_of, sim_config, value
from tests.fixtures.clock import FakeClock
from tests.fixtures.http import wait_until_async
from tests.fixtures.sim import SIM_CONTAINER_ID, SIM_VM_FAILED_ID, SIM_VM_ID, RunningSimulator

ALL = (SIM_VM_ID, SIM_VM_FAILED_ID, WatchedImage(SIM_CONTAINER_ID, image_type="Container"))
ALL_IDS = {SIM_VM_ID, SIM_VM_FAILED_ID, SIM_CONTAINER_ID}
MakeRefresher = Callable[..., Refresher]


@pytest.fixture
def metrics() -> SelfMetrics:
    """Self-metrics shared by the refresher and its client, as in the service."""
    return SelfMetrics(process_metrics=False)


@pytest.fixture
async def make_refresher(metrics: SelfMetrics) -> AsyncIterator[MakeRefresher]:
    """``make(config, **kwargs)``: a Refresher with a real client counting into ``metrics``."""
    clients: list[EhpcClient] = []

    def make(config: Config, **kwargs: object) -> Refresher:
        client = default_client(config, metrics.scope(config.scope), new_account(config))
        clients.append(client)
        return Refresher(config, client, metrics=metrics, **kwargs)  # type: ignore[arg-type]

    yield make
    for client in clients:
        await client.close()


def exposed(snapshot: Snapshot) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return samples(render_snapshot(snapshot).text)


async def test_first_refresh_reads_every_watched_image(
    simulator: RunningSimulator, make_refresher: MakeRefresher
) -> None:
    """Every watched image is fetched with its asked-for regions; the snapshot is sorted and complete."""
    cfg = sim_config(
        simulator,
        [
            WatchedImage(SIM_VM_ID, additional_region_ids=("cn-beijing", "cn-shanghai")),
            SIM_VM_FAILED_ID,
            WatchedImage(SIM_CONTAINER_ID, image_type="Container"),
        ],
    )
    refresher = make_refresher(cfg)
    assert not refresher.snapshot.completed
    with capture_logs() as logs:
        snap = await refresher.refresh_once()
    assert snap.completed
    assert [k.image_id for k in snap.images] == sorted(ALL_IDS)
    assert all(s.up for s in snap.images.values())
    # SIM_VM_ID's cn-shanghai copy is still Creating, SIM_VM_FAILED_ID is CreateFailed: the one
    # verdict per image, counted.
    assert snap.health_counts() == {
        Health.MISSING: 0,
        Health.FAILING: 0,
        Health.UNHEALTHY: 1,
        Health.REPLICATING: 1,
        Health.HEALTHY: 1,
    }
    vm = snap.find(SIM_VM_ID).image
    assert vm is not None
    assert vm.name == "gromacs"
    assert {r.region_id: r.status for r in vm.additional_regions} == {
        "cn-beijing": "Available",
        "cn-shanghai": "Creating",
    }
    done = [e for e in logs if e["event"] == "refresh_done"]
    assert len(done) == 1
    assert (done[0]["healthy"], done[0]["replicating"], done[0]["unhealthy"], done[0]["failing"]) == (
        1,
        1,
        1,
        0,
    )
    assert done[0]["duration_seconds"] >= 0


async def test_failing_image_keeps_last_data_with_up_0(
    simulator: RunningSimulator, make_refresher: MakeRefresher
) -> None:
    """A failed GetImage keeps the last good status, up 0 and last_error_info{code}; recovery clears it."""
    refresher = make_refresher(sim_config(simulator, ALL))
    first = await refresher.refresh_once()
    simulator.sim.images[SIM_VM_ID].error = "ServiceUnavailable"
    simulator.sim.images[SIM_VM_ID].status = "Deprecated"  # must not show: the call fails
    with capture_logs() as logs:
        second = await refresher.refresh_once()
    state = second.find(SIM_VM_ID)
    assert not state.up
    assert state.error is not None
    assert state.error.code == "ServiceUnavailable"
    assert state.image is first.find(SIM_VM_ID).image
    assert state.last_success == first.find(SIM_VM_ID).last_success
    found = exposed(second)
    assert value(found, "ehpc_image_up", image_id=SIM_VM_ID) == 0
    assert value(found, "ehpc_image_last_error_info", image_id=SIM_VM_ID, code="ServiceUnavailable") == 1
    assert value(found, "ehpc_image_status", image_id=SIM_VM_ID, status="Available") == 1
    assert value(found, "ehpc_image_available", image_id=SIM_VM_ID) == 1
    warnings = [e for e in logs if e["event"] == "image_refresh_failed"]
    assert len(warnings) == 1
    assert warnings[0]["image_id"] == SIM_VM_ID
    assert warnings[0]["code"] == "ServiceUnavailable"
    assert warnings[0]["request_id"]
    assert warnings[0]["log_level"] == "warning"
    done = next(e for e in logs if e["event"] == "refresh_done")
    assert (done["failing"], done["unhealthy"], done["missing"]) == (1, 1, 0)

    simulator.sim.images[SIM_VM_ID].error = None
    third = await refresher.refresh_once()
    found = exposed(third)
    assert value(found, "ehpc_image_up", image_id=SIM_VM_ID) == 1
    assert value(found, "ehpc_image_status", image_id=SIM_VM_ID, status="Deprecated") == 1
    assert not [k for k in found if k[0] == "ehpc_image_last_error_info"]


async def test_image_not_found_is_missing_until_it_comes_back(
    simulator: RunningSimulator, make_refresher: MakeRefresher
) -> None:
    """ImageNotFound: up 0, code ImageNotFound, state set all 0, available 0; normal again when it returns."""
    refresher = make_refresher(
        sim_config(simulator, [WatchedImage(SIM_VM_ID, additional_region_ids=("cn-beijing",))])
    )
    await refresher.refresh_once()
    image = simulator.sim.images.pop(SIM_VM_ID)
    snap = await refresher.refresh_once()
    assert snap.find(SIM_VM_ID).missing
    assert snap.health_counts()[Health.MISSING] == 1
    assert snap.view_of(SIM_VM_ID).health is Health.MISSING
    found = exposed(snap)
    assert value(found, "ehpc_image_up", image_id=SIM_VM_ID) == 0
    assert value(found, "ehpc_image_last_error_info", image_id=SIM_VM_ID, code="ImageNotFound") == 1
    assert value(found, "ehpc_image_available", image_id=SIM_VM_ID) == 0
    assert value(found, "ehpc_image_status", image_id=SIM_VM_ID, status="Available") == 0
    assert (
        value(found, "ehpc_image_replication_available", image_id=SIM_VM_ID, replication_region="cn-beijing")
        == 0
    )
    assert value(found, "ehpc_image_size_bytes", image_id=SIM_VM_ID) == 40 * 1024**3  # context kept

    simulator.sim.images[SIM_VM_ID] = image
    found = exposed(await refresher.refresh_once())
    assert value(found, "ehpc_image_up", image_id=SIM_VM_ID) == 1
    assert value(found, "ehpc_image_available", image_id=SIM_VM_ID) == 1
    assert (
        value(found, "ehpc_image_replication_available", image_id=SIM_VM_ID, replication_region="cn-beijing")
        == 1
    )


async def test_malformed_answer_is_invalid_response_and_keeps_data(
    simulator: RunningSimulator, make_refresher: MakeRefresher, metrics: SelfMetrics
) -> None:
    """A 200 that is not JSON counts as InvalidResponse; the last good data stays, marked up 0."""
    refresher = make_refresher(sim_config(simulator, [SIM_VM_ID]))
    first = await refresher.refresh_once()
    simulator.sim.faults = Faults(malformed_rate=1.0)
    snap = await refresher.refresh_once()
    state = snap.find(SIM_VM_ID)
    assert state.error is not None
    assert state.error.code == "InvalidResponse"
    assert state.image is first.find(SIM_VM_ID).image
    assert metrics.scope(DEFAULT_SCOPE).errors()["GetImage", "InvalidResponse", "0"] == 1


async def test_image_leaving_the_config_disappears(
    simulator: RunningSimulator, make_refresher: MakeRefresher
) -> None:
    """After a reconfigure without an image, the next refresh has no series of it at all."""
    cfg = sim_config(simulator, ALL)
    refresher = make_refresher(cfg)
    found = exposed(await refresher.refresh_once())
    assert series_of(found, SIM_VM_FAILED_ID)
    refresher.reconfigure(replace(cfg, images=tuple(i for i in cfg.images if i.image_id != SIM_VM_FAILED_ID)))
    found = exposed(await refresher.refresh_once())
    assert not series_of(found, SIM_VM_FAILED_ID)
    assert series_of(found, SIM_VM_ID)
    assert value(found, "ehpc_watched_images") == 2


async def test_discovery_watches_filters_and_forgets(
    simulator: RunningSimulator, make_refresher: MakeRefresher, metrics: SelfMetrics
) -> None:
    """Discovery adds matching images, static entries win, deleted images leave, failures keep the old set."""
    static = WatchedImage(SIM_VM_ID, additional_region_ids=("cn-beijing",))
    cfg = sim_config(
        simulator,
        [static],
        discovery=DiscoveryConfig(
            enabled=True, name_regex="^(gromacs|lammps|nginx)$", additional_region_ids=("cn-shanghai",)
        ),
    )
    simulator.sim.images["m-other"] = SimImage("m-other", name="openfoam")
    refresher = make_refresher(cfg)
    snap = await refresher.refresh_once()
    assert {k.image_id for k in snap.images} == ALL_IDS  # m-other does not match the name regex
    assert snap.discovery is not None
    assert (snap.discovery.up, snap.discovery.discovered, snap.discovery.error_code) == (True, 3, None)
    first_success = snap.discovery.last_success
    found = exposed(snap)
    assert value(found, "ehpc_discovery_up") == 1
    assert value(found, "ehpc_discovered_images") == 3
    assert value(found, "ehpc_discovery_last_success_timestamp_seconds") == first_success
    assert snap.find(SIM_VM_ID).watched == static
    assert snap.find(SIM_CONTAINER_ID).watched.image_type == "Container"
    assert snap.find(SIM_CONTAINER_ID).watched.additional_region_ids == ("cn-shanghai",)

    del simulator.sim.images[SIM_VM_FAILED_ID]
    simulator.sim.reindex()
    snap = await refresher.refresh_once()
    assert {k.image_id for k in snap.images} == {SIM_VM_ID, SIM_CONTAINER_ID}
    assert not series_of(exposed(snap), SIM_VM_FAILED_ID)

    # PageSize 500 is refused (InvalidParams): the previously discovered set is kept.
    refresher.reconfigure(replace(cfg, discovery=replace(cfg.discovery, page_size=500)))
    with capture_logs() as logs:
        snap = await refresher.refresh_once()
    assert {k.image_id for k in snap.images} == {SIM_VM_ID, SIM_CONTAINER_ID}
    assert snap.find(SIM_CONTAINER_ID).up
    assert metrics.scope(DEFAULT_SCOPE).errors()["ListImages", "InvalidParams", "400"] == 1
    assert any(e["event"] == "discovery_failed" and e["code"] == "InvalidParams" for e in logs)
    # ...and the failure is visible: discovery_up 0, the kept set counted, the last success unchanged.
    assert snap.discovery_failed
    found = exposed(snap)
    assert value(found, "ehpc_discovery_up") == 0
    assert value(found, "ehpc_discovered_images") == 2
    assert snap.discovery is not None
    assert value(found, "ehpc_discovery_last_success_timestamp_seconds") == snap.discovery.last_success
    assert snap.discovery.last_success is not None
    assert snap.discovery.last_success >= (first_success or 0)
    assert next(e for e in logs if e["event"] == "refresh_done")["discovery_up"] is False

    refresher.reconfigure(replace(cfg, discovery=DiscoveryConfig(enabled=False)))
    snap = await refresher.refresh_once()
    assert {k.image_id for k in snap.images} == {SIM_VM_ID}
    assert snap.discovery is None  # off: no discovery series at all
    assert not [k for k in exposed(snap) if k[0].startswith("ehpc_discover")]


async def test_discovery_failing_from_the_start_is_visible(
    simulator: RunningSimulator, make_refresher: MakeRefresher
) -> None:
    """A discovery that never succeeded: up 0, nothing discovered, no last-success series."""
    cfg = sim_config(simulator, [SIM_VM_ID], discovery=DiscoveryConfig(enabled=True, page_size=500))
    snap = await make_refresher(cfg).refresh_once()
    assert snap.discovery is not None
    assert (snap.discovery.up, snap.discovery.discovered) == (False, 0)
    assert snap.discovery.error_code == "InvalidParams"
    found = exposed(snap)
    assert value(found, "ehpc_discovery_up") == 0
    assert value(found, "ehpc_discovered_images") == 0
    assert value(found, "ehpc_discovery_last_success_timestamp_seconds") is None


async def test_sharding_splits_the_watched_set(
    simulator: RunningSimulator, make_refresher: MakeRefresher
) -> None:
    """Two replicas with shards=2 watch disjoint sets whose union is everything."""
    seen: list[set[str]] = []
    for shard in (0, 1):
        cfg = sim_config(simulator, ALL, sharding=ShardingConfig(shards=2, shard=shard))
        snap = await make_refresher(cfg).refresh_once()
        seen.append({k.image_id for k in snap.images})
    assert seen[0] | seen[1] == ALL_IDS
    assert not seen[0] & seen[1]


async def test_api_error_counters_equal_the_simulators(
    simulator: RunningSimulator, make_refresher: MakeRefresher, metrics: SelfMetrics
) -> None:
    """With a mix of injected faults and retries, ehpc_api_errors_total matches what the simulator sent."""
    fleet = generate_fleet(30, ["cn-beijing", "cn-shanghai"], seed=3)
    for image in fleet:
        simulator.sim.images[image.image_id] = image
    simulator.sim.reindex()
    simulator.sim.faults = Faults(
        error_rates={
            "ServiceUnavailable": 0.08,
            "Throttling.User": 0.08,
            "InternalError": 0.04,
            "NotAuthorized": 0.03,
        },
        timeout_rate=0.03,
        # Stalls far past the client's timeout, and a timeout far past what a busy machine adds to a
        # loopback answer: only the stalled answers time out, so the two counts can be compared exactly.
        timeout_seconds=120,
        reset_rate=0.04,
        malformed_rate=0.04,
        seed=11,
    )
    simulator.sim.reset_counters()
    cfg = sim_config(
        simulator,
        ALL,
        max_attempts=3,
        api_timeout=5,
        discovery=DiscoveryConfig(enabled=True, page_size=10),
    )
    refresher = make_refresher(cfg)
    for _ in range(3):
        await refresher.refresh_once()

    sent = simulator.sim.counters()
    exported: dict[tuple[str, str], int] = {}
    for (action, code, _status), n in metrics.scope(DEFAULT_SCOPE).errors().items():
        exported[action, code] = exported.get((action, code), 0) + n
    codes_sent = {k for k in sent if k[1] != "Success"}
    assert {k for k, n in exported.items() if n} == codes_sent
    for key in codes_sent:
        assert exported[key] == sent[key], key
    for action, n in metrics.scope(DEFAULT_SCOPE).requests().items():
        assert n == sum(c for (a, _), c in sent.items() if a == action), action
    assert {code for _, code in codes_sent} >= {
        "ServiceUnavailable",
        "Timeout",
        "ConnectionError",
        "InvalidResponse",
    }


async def test_per_image_timeout_covers_retries(
    simulator: RunningSimulator, make_refresher: MakeRefresher
) -> None:
    """refresh.image_timeout_seconds bounds one image, retries included; the image reports Timeout."""
    # Every answer takes an hour and each attempt may wait for it (api timeout 2 h): only the image's own
    # deadline can end the cycle. The outer bound only stops a hang; it is 300 times the deadline.
    simulator.sim.faults = Faults(latency_ms=3_600_000)
    cfg = sim_config(
        simulator,
        ALL,
        api_timeout=7200,
        refresh=RefreshConfig(interval_seconds=60, image_timeout_seconds=0.2),
    )
    async with asyncio.timeout(60):
        snap = await make_refresher(cfg).refresh_once()
    assert {s.error.code for s in snap.images.values() if s.error} == {"Timeout"}
    assert snap.health_counts()[Health.FAILING] == 3


def sleeping_until(clock: FakeClock, deadline: float) -> Callable[[], bool]:
    """Whether the only sleeper on ``clock`` wakes at ``deadline``."""
    return lambda: clock.deadlines == [pytest.approx(deadline)]


async def _cycles(snapshots: list[Snapshot], count: int) -> None:
    """Wait (in real time: a cycle's HTTP calls are real) until ``count`` cycles have published."""
    await wait_until_async(lambda: len(snapshots) >= count)


async def test_overruns_are_counted_and_cycles_never_overlap(
    simulator: RunningSimulator, make_refresher: MakeRefresher, metrics: SelfMetrics, fake_clock: FakeClock
) -> None:
    """A cycle that outlasts the interval is an overrun: counted, and the next one starts at once,
    without sleeping and never overlapping the one before."""
    snapshots: list[Snapshot] = []
    active = 0

    async def publish(snapshot: Snapshot) -> None:
        nonlocal active
        active += 1
        assert active == 1  # never two cycles at once
        await fake_clock.advance(15)  # this cycle "took" 15 s of a 10 s interval
        snapshots.append(snapshot)
        active -= 1

    cfg = sim_config(simulator, ALL, refresh=RefreshConfig(interval_seconds=10, jitter_ratio=0.0))
    refresher = make_refresher(cfg, publish=publish, clock=fake_clock)
    with capture_logs() as logs:
        task = asyncio.create_task(refresher.run())
        await _cycles(snapshots, 3)
        task.cancel()
        await asyncio.wait([task])
    assert metrics.scope(DEFAULT_SCOPE).overruns >= 2
    assert any(e["event"] == "refresh_overrun" and e["interval_seconds"] == 10 for e in logs)
    assert fake_clock.deadlines == []  # it never slept: each next cycle started right away


async def test_schedule_is_the_jittered_interval_on_the_clock(
    simulator: RunningSimulator, make_refresher: MakeRefresher, fake_clock: FakeClock
) -> None:
    """Cycles start interval*(1+jitter) after the previous start, jitter drawn from the injected rng:
    exactly, on a fake clock, with no slack for a busy machine."""
    starts: list[float] = []
    snapshots: list[Snapshot] = []

    async def publish(snapshot: Snapshot) -> None:
        starts.append(fake_clock.now - (snapshot.duration_seconds or 0))
        snapshots.append(snapshot)

    interval, ratio = 60.0, 0.5
    cfg = sim_config(
        simulator, [SIM_VM_ID], refresh=RefreshConfig(interval_seconds=interval, jitter_ratio=ratio)
    )
    refresher = make_refresher(cfg, publish=publish, rng=random.Random(5), clock=fake_clock)
    expected_rng = random.Random(5)
    task = asyncio.create_task(refresher.run())
    try:
        await _cycles(snapshots, 1)
        assert starts == [1000.0]  # the first cycle starts at once
        for n in range(1, 6):
            gap = interval * (1 + expected_rng.uniform(-ratio, ratio))
            await wait_until_async(sleeping_until(fake_clock, starts[-1] + gap))
            await fake_clock.advance(gap - 0.001)  # just before: nothing happens
            assert len(snapshots) == n
            await fake_clock.advance(0.001)
            await _cycles(snapshots, n + 1)
            assert starts[-1] == pytest.approx(starts[-2] + gap)
    finally:
        task.cancel()
        await asyncio.wait([task])
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(interval * (1 - ratio) <= g <= interval * (1 + ratio) for g in gaps)
    assert max(gaps) - min(gaps) > 1  # jittered, not a fixed period


async def test_reconfigure_wakes_the_loop(simulator: RunningSimulator, make_refresher: MakeRefresher) -> None:
    """A reload does not wait for the (long) interval: the next cycle starts at once with the new set."""
    cfg = sim_config(simulator, [SIM_VM_ID], interval=60)
    refresher = make_refresher(cfg)
    task = asyncio.create_task(refresher.run())
    try:
        await wait_until_async(lambda: refresher.snapshot.completed)
        refresher.reconfigure(replace(cfg, images=(WatchedImage(SIM_CONTAINER_ID, image_type="Container"),)))
        await wait_until_async(
            lambda: {k.image_id for k in refresher.snapshot.images} == {SIM_CONTAINER_ID}, within=3
        )
    finally:
        task.cancel()
        await asyncio.wait([task])
