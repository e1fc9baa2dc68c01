"""exporter.history against an oracle that reads the whole sequence of answers at once."""

from __future__ import annotations

import itertools
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from ehpc_simulator import Simulator
from ehpc_simulator.scripts import AppliedStep, ScriptStep
from exporter.config import MetricsConfig, WatchedImage
from exporter.history import ImageHistory, ReplicaHistory, observe
from exporter.service import ExporterService
from tests.exporter_support import samples, sim_config, value
from tests.fixtures.clock import FakeWall
from tests.fixtures.sim import (
    SIM_ACCESS_KEY_SECRET,
    SIM_CONTAINER_ID,
    SIM_VM_ID,
    RunningSimulator,
    sim_images,
)

HEALTHY = ("Available",)
REGIONS = ("cn-beijing", "cn-shanghai")
STATUSES = st.sampled_from(["Available", "Creating", "Waiting", "Failed", ""])
# One answer: the image status and, per region, the copy's status or no copy (None).
ANSWER = st.tuples(STATUSES, st.tuples(*(st.one_of(st.none(), STATUSES) for _ in REGIONS)))


def _replay(
    answers: list[tuple[str, tuple[str | None, ...]]], times: list[float]
) -> tuple[ImageHistory, list[tuple[str, float]]]:
    history: ImageHistory | None = None
    done: list[tuple[str, float]] = []
    for (status, copies), at in zip(answers, times, strict=True):
        present = {r: c for r, c in zip(REGIONS, copies, strict=True) if c is not None}
        history, finished = observe(history, status, present, REGIONS, HEALTHY, at)
        done += finished
    assert history is not None
    return history, done


def _oracle_since(values: list[object], times: list[float]) -> float:
    """The time of the first answer of the last run of equal values."""
    i = len(values) - 1
    while i > 0 and values[i - 1] == values[i]:
        i -= 1
    return times[i]


def _oracle_durations(copies: list[str | None], times: list[float]) -> list[float]:
    """Each stretch not available followed by available: from its first answer to the available one."""
    out, start = [], None
    for copy, at in zip(copies, times, strict=True):
        if copy in HEALTHY:
            if start is not None:
                out.append(at - start)
            start = None
        elif start is None:
            start = at
    return out


@settings(max_examples=300)
@given(
    answers=st.lists(ANSWER, min_size=1, max_size=30),
    gaps=st.lists(st.integers(min_value=1, max_value=7200), min_size=30, max_size=30),
)
def test_history_matches_the_whole_sequence(
    answers: list[tuple[str, tuple[str | None, ...]]], gaps: list[int]
) -> None:
    """Since-timestamps, change counts and replication times equal what the sequence of answers says."""
    times = [1_700_000_000.0 + sum(gaps[: i + 1]) for i in range(len(answers))]
    history, done = _replay(answers, times)
    statuses = [a[0] for a in answers]
    assert history.status == statuses[-1]
    assert history.since == _oracle_since(list(statuses), times)
    assert history.changes == sum(1 for a, b in itertools.pairwise(statuses) if a != b)
    assert [r.region_id for r in history.replicas] == sorted(REGIONS)
    for i, region in enumerate(REGIONS):
        copies = [a[1][i] for a in answers]
        replica = next(r for r in history.replicas if r.region_id == region)
        assert replica.status == copies[-1]
        assert replica.since == _oracle_since(list(copies), times)
        assert sorted(s for r, s in done if r == region) == sorted(_oracle_durations(copies, times))
        waiting = copies[-1] not in HEALTHY
        assert (replica.pending_since is not None) == waiting


def test_an_unchanged_answer_returns_the_same_object() -> None:
    """Nothing changed: the very history object comes back (the render cache and the state file rely on
    equality, this makes it end at once)."""
    first, _ = observe(None, "Available", {"cn-beijing": "Creating"}, ["cn-beijing"], HEALTHY, 10.0)
    again, done = observe(first, "Available", {"cn-beijing": "Creating"}, ["cn-beijing"], HEALTHY, 70.0)
    assert again is first
    assert done == ()


def test_a_region_asked_for_later_starts_its_own_history() -> None:
    """A region added to the request starts at its first answer; one no longer asked for is dropped."""
    first, _ = observe(None, "Available", {"cn-beijing": "Available"}, ["cn-beijing"], HEALTHY, 10.0)
    later, done = observe(first, "Available", {"cn-shanghai": "Creating"}, ["cn-shanghai"], HEALTHY, 70.0)
    assert later.replicas == (ReplicaHistory("cn-shanghai", "Creating", 70.0, 70.0),)
    assert done == ()
    assert later.since == 10.0


# ------------------------------------------------------------- against the simulator, on a controlled clock

START = 1_700_000_000.0
POLL = 60.0  # the exporter's cycles are every minute; every scripted change falls on one


def _truth(
    applied: list[AppliedStep], image_id: str, region: str | None
) -> list[tuple[float, str | None, str | None]]:
    """(due time, before, after) of the applied steps of one image's status or one of its copies."""
    return [
        (a.due.due_at, a.previous, a.due.step.value)
        for a in applied
        if a.due.step.image_id == image_id and a.due.step.region == region and a.due.step.field != "error"
    ]


async def test_history_equals_what_the_simulator_did() -> None:
    """A scripted day of changes (an update, a re-replication, a flapping image), polled every minute on a
    controlled clock: since-timestamps, change counts and replication times equal the simulator's own
    record of what it applied and when."""
    wall = FakeWall(START)
    sim = Simulator(
        images=sim_images(), access_keys={"ak": SIM_ACCESS_KEY_SECRET}, clock=wall, signing_clock=time.time
    )
    steps = [
        ScriptStep(300, SIM_VM_ID, status="Creating"),  # an update...
        ScriptStep(600, SIM_VM_ID, status="Available"),  # ...done
        ScriptStep(120, SIM_VM_ID, region="cn-beijing", status="Creating"),  # re-replication...
        ScriptStep(900, SIM_VM_ID, region="cn-beijing", status="Available"),  # ...13 minutes later
        *(
            ScriptStep(1200 + 60 * i, SIM_CONTAINER_ID, status="UnAvailable" if i % 2 == 0 else "Available")
            for i in range(5)
        ),
    ]
    async with sim.serve() as url:
        running = RunningSimulator(sim, url, "ak", SIM_ACCESS_KEY_SECRET)
        sim.images[SIM_VM_ID].regions["cn-beijing"] = "Available"
        watched = [
            WatchedImage(SIM_VM_ID, additional_region_ids=("cn-beijing",)),
            WatchedImage(SIM_CONTAINER_ID, "Container"),
        ]
        # state_sets: full: the since-timestamp of the copy once available (the default shows it only
        # while a copy is not available).
        config = sim_config(running, watched, metrics=MetricsConfig(state_sets="full"))
        service = ExporterService(config, wall_clock=wall, process_metrics=False)
        sim.schedule(steps, start=START)
        while wall.now <= START + 2400:
            await service.refresh_once()
            wall.now += POLL
        found = samples(service.rendered.text.decode() + service.render_self(False).decode())
    applied = sim.applied_steps
    assert len(applied) == len(steps)

    status = _truth(applied, SIM_VM_ID, None)
    assert value(found, "ehpc_image_status_since_timestamp_seconds", image_id=SIM_VM_ID) == status[-1][0]
    assert value(found, "ehpc_image_status_changes_total", image_id=SIM_VM_ID) == sum(
        b != a for _, b, a in status
    )
    flaps = _truth(applied, SIM_CONTAINER_ID, None)
    assert value(found, "ehpc_image_status_changes_total", image_id=SIM_CONTAINER_ID) == len(flaps) == 5
    assert (
        value(found, "ehpc_image_status_since_timestamp_seconds", image_id=SIM_CONTAINER_ID) == flaps[-1][0]
    )

    copy = _truth(applied, SIM_VM_ID, "cn-beijing")
    (started, _, _), (finished, _, done) = copy
    assert done == "Available"
    since = value(
        found,
        "ehpc_image_replication_since_timestamp_seconds",
        image_id=SIM_VM_ID,
        replication_region="cn-beijing",
    )
    assert since == finished
    labels = {"replication_region": "cn-beijing"}
    assert value(found, "ehpc_image_replication_duration_seconds_count", **labels) == 1
    assert value(found, "ehpc_image_replication_duration_seconds_sum", **labels) == finished - started == 780
    assert value(found, "ehpc_image_replication_duration_seconds_bucket", le="600.0", **labels) == 0
    assert value(found, "ehpc_image_replication_duration_seconds_bucket", le="900.0", **labels) == 1
    assert value(found, "ehpc_image_replication_complete", image_id=SIM_VM_ID) == 1
