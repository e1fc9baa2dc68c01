"""What the exporter remembers of an image from one cycle to the next: since when its status and the status
of each requested copy have held, how often the status changed, and since when a copy has been waiting.

Everything here is observed, at the wall time of the answer that showed it: the API gives no history (an
image has a creation time, its copies have none). So a since-timestamp is the first answer that showed
the current status, which is the exporter's own first look at the image when the status has not changed
since the exporter started watching it; the state file (:mod:`exporter.state`) carries the history across
restarts, so only the very first start, or a lost file, resets it. Only successful answers are observed:
a failed GetImage (``ImageNotFound`` included) changes nothing here, so a flapping network does not read as
a flapping image.

A replication time is measured from the first answer that showed a requested copy not available (any
status outside ``status.replication_healthy``, or no copy at all) to the first that showed it available;
a copy already available when first seen yields none. Its precision is one refresh interval.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import NamedTuple

from exporter.config import copy_available

__all__ = ["ImageHistory", "ReplicaHistory", "observe"]


class ReplicaHistory(NamedTuple):
    """One requested region of an image: its copy's status, since when, and since when it waits."""

    region_id: str
    status: str | None  # the copy's status in the last answer; None: the answer had no copy there
    since: float  # wall time the current status (or the absence of a copy) was first observed
    pending_since: float | None  # first seen not available in the current streak; None while available


class ImageHistory(NamedTuple):
    """An image's observed history: its status since when, how many changes, its requested copies."""

    status: str  # the status of the last successful answer
    since: float  # wall time that status was first observed
    changes: int  # observed status changes (the first observation is not a change)
    replicas: tuple[ReplicaHistory, ...] = ()  # the requested regions, sorted by region id


def observe(
    previous: ImageHistory | None,
    status: str,
    copies: Mapping[str, str],
    requested: Sequence[str],
    healthy: Collection[str],
    at: float,
) -> tuple[ImageHistory, tuple[tuple[str, float], ...]]:
    """The history after a successful answer at wall time ``at``, and the replications it completed.

    ``copies`` maps region id to the copy's status in the answer, ``requested`` are the regions asked
    for and ``healthy`` the statuses a copy counts as available in. The completed replications are
    ``(region id, seconds)`` pairs. An unchanged history is returned as the very object passed in, so
    the by-value comparisons downstream (verdict reuse, render cache, the state file) end at once.
    """
    old = {r.region_id: r for r in previous.replicas} if previous is not None else {}
    replicas: list[ReplicaHistory] = []
    done: list[tuple[str, float]] = []
    for region in sorted(set(requested)):
        copy = copies.get(region)
        available = copy_available(copy, healthy)
        before = old.get(region)
        if before is None:
            replicas.append(ReplicaHistory(region, copy, at, None if available else at))
            continue
        since = before.since if before.status == copy else at
        pending = before.pending_since
        if available:
            if pending is not None:
                done.append((region, max(0.0, at - pending)))
            pending = None
        elif pending is None:
            pending = at
        fresh = ReplicaHistory(region, copy, since, pending)
        replicas.append(before if fresh == before else fresh)
    if previous is None:
        return ImageHistory(status, at, 0, tuple(replicas)), ()
    changed = previous.status != status
    history = ImageHistory(
        status,
        at if changed else previous.since,
        previous.changes + 1 if changed else previous.changes,
        tuple(replicas),
    )
    return (previous if history == previous else history), tuple(done)
