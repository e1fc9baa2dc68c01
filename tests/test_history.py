"""exporter.history against an oracle that reads the whole sequence of answers at once."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.history import ImageHistory, ReplicaHistory, observe

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
