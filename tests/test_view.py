"""One verdict per image (exporter.view): its health class from every combination of state, and every view of
it agreeing with it — the metrics, ``check`` and the refresh log read the same ImageView."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.cli.check import check_row
from exporter.config import StatusConfig, WatchedImage
from exporter.exposition import render_snapshot
from exporter.redaction import register_secret
from exporter.snapshot import ImageError, ImageState, Snapshot
from exporter.view import HEALTH_ORDER, Health, ReplicaHealth, image_view
from tests.exporter_support import make_image, samples, value

STATUS = StatusConfig()
NOW = 1_700_000_000.0


def view(status: str | None, replicas: dict[str, str], requested: tuple[str, ...], error: str | None) -> Any:
    return image_view(
        ("default", "cn-hangzhou", "m-1"),
        requested,
        status,
        list(replicas.items()),
        (error, NOW) if error else None,
        STATUS,
    )


def test_health_classes() -> None:
    """Each class, and the precedence between them (missing > failing > unhealthy > replication)."""
    both = ("cn-beijing", "cn-shanghai")
    ok = {"cn-beijing": "Available", "cn-shanghai": "Available"}
    assert view("Available", ok, both, None).health is Health.HEALTHY
    assert view("Available", {"cn-beijing": "Available"}, both, None).health is Health.REPLICATING
    assert view("Available", {**ok, "cn-shanghai": "Creating"}, both, None).health is Health.REPLICATING
    assert view("CreateFailed", {"cn-beijing": "Creating"}, both, None).health is Health.UNHEALTHY
    assert view("", ok, both, None).health is Health.UNHEALTHY  # empty status: "Unknown", not healthy
    assert view("CreateFailed", {}, both, "EcsError").health is Health.FAILING
    assert view(None, {}, both, "EcsError").health is Health.FAILING  # failing since start-up
    assert view("Available", ok, both, "ImageNotFound").health is Health.MISSING
    assert view(None, {}, (), "ImageNotFound").health is Health.MISSING


def test_replica_words_are_one_vocabulary() -> None:
    """not replicated (no copy), not available (a copy outside the healthy set), unknown (no data)."""
    v = view("Available", {"cn-beijing": "Creating"}, ("cn-beijing", "cn-shanghai"), None)
    assert [(r.region, r.status, r.health) for r in v.replicas] == [
        ("cn-beijing", "Creating", ReplicaHealth.NOT_AVAILABLE),
        ("cn-shanghai", None, ReplicaHealth.NOT_REPLICATED),
    ]
    assert v.problems == ["cn-beijing not available", "cn-shanghai not replicated"]
    never = view(None, {}, ("cn-beijing",), "Timeout")
    assert [r.health for r in never.replicas] == [ReplicaHealth.UNKNOWN]
    gone = view("Available", {"cn-beijing": "Available"}, ("cn-beijing",), "ImageNotFound")
    assert [r.health for r in gone.replicas] == [ReplicaHealth.NOT_REPLICATED]
    assert gone.problems == ["missing (ImageNotFound)"]


def test_unrequested_regions_never_appear() -> None:
    v = view("Available", {"cn-beijing": "Available", "us-west-1": "Creating"}, ("cn-beijing",), None)
    assert [r.region for r in v.replicas] == ["cn-beijing"]
    assert v.health is Health.HEALTHY


REGIONS = ("cn-beijing", "cn-shanghai")
statuses = st.sampled_from(["Available", "Creating", "CreateFailed", "UnAvailable", "", "Frozen"])


@st.composite
def states(draw: st.DrawFn, image_id: str) -> ImageState:
    """Any state an image can be in: with or without data, failing or missing or not, any regions."""
    requested = tuple(draw(st.lists(st.sampled_from(REGIONS), unique=True)))
    has_data = draw(st.booleans())
    error = draw(st.sampled_from([None, None, "EcsError", "Timeout", "ImageNotFound"]))
    if not has_data and error is None:
        error = "Timeout"  # a state with neither data nor error does not exist after a cycle
    image = None
    if has_data:
        copies = draw(st.dictionaries(st.sampled_from(REGIONS), statuses))
        image = make_image(image_id, status=draw(statuses), regions=list(copies.items()))
    return ImageState(
        WatchedImage(image_id, additional_region_ids=requested),
        image,
        NOW if has_data else None,
        ImageError(error, 400, "rid", NOW - 60) if error else None,
    )


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=6, unique=True).flatmap(
    lambda ids: st.tuples(*(states(f"m-{i}") for i in ids))
))  # fmt: skip
def test_metrics_check_and_counts_agree_with_the_verdict(drawn: tuple[ImageState, ...]) -> None:
    """Property: for any fleet, "healthy" read off /metrics, off check and off the counts is the view's."""
    snapshot = Snapshot.build(drawn, status=STATUS, refreshed_at=NOW, duration_seconds=1.0, sequence=1)
    found = samples(render_snapshot(snapshot).text)
    for key, v in snapshot.views.items():
        image_id = key.image_id
        up = value(found, "ehpc_image_up", image_id=image_id) == 1
        available = value(found, "ehpc_image_available", image_id=image_id) == 1
        replicas_ok = all(
            value(found, "ehpc_image_replication_available", image_id=image_id, replication_region=r) == 1
            for r in snapshot.find(image_id).watched.additional_region_ids
        )
        assert (up and available and replicas_ok) == v.healthy, (image_id, v)
        assert check_row(v)["ok"] == v.healthy
        assert check_row(v)["health"] == str(v.health)
    counts = snapshot.health_counts()
    assert list(counts) == list(HEALTH_ORDER)
    assert counts[Health.HEALTHY] == sum(v.healthy for v in snapshot.views.values())
    assert sum(counts.values()) == len(drawn)


def test_unchanged_images_keep_their_verdict_object() -> None:
    """A new snapshot decides again only for images whose state changed."""
    a = ImageState(WatchedImage("m-a"), make_image("m-a"), NOW)
    b = ImageState(WatchedImage("m-b"), make_image("m-b"), NOW)
    first = Snapshot.build([a, b], status=STATUS, refreshed_at=NOW, duration_seconds=1, sequence=1)
    b2 = ImageState(WatchedImage("m-b"), make_image("m-b", status="Creating"), NOW + 60)
    second = Snapshot.build(
        [ImageState(a.watched, a.image, NOW + 60), b2],
        status=STATUS,
        refreshed_at=NOW + 60,
        duration_seconds=1,
        sequence=2,
        previous=first,
    )
    assert second.view_of("m-a") is first.view_of("m-a")
    assert second.view_of("m-b").health is Health.UNHEALTHY


def test_a_secret_registered_after_a_view_is_masked_in_the_next() -> None:
    """Why: replica views are memoised and shared; one made before a secret was registered must not be
    served for an image whose region label now contains it (the memo keys on the gate's generation)."""
    region = "cn-leakyregion-0123456789abcdef"
    first = image_view(
        ("a", "cn-hangzhou", "m-1"), [region], "Available", [(region, "Available")], None, StatusConfig()
    )
    assert first.replicas[0].region == region
    register_secret(region[3:])
    again = image_view(
        ("a", "cn-hangzhou", "m-1"), [region], "Available", [(region, "Available")], None, StatusConfig()
    )
    assert region[3:] not in again.replicas[0].region
