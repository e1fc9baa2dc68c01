"""The exposition package: family table, series semantics, fast renderer == reference, gzip, self-metrics."""

from __future__ import annotations

import asyncio
import gzip
import re
import subprocess
import time
import zlib
from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics

from exporter.buildinfo import BuildInfo
from exporter.config import DEFAULT_SCOPE, Scope, StatusConfig, WatchedImage
from exporter.errors import ApiError
from exporter.exposition import (
    SNAPSHOT_METRICS,
    SPECS,
    TABLE,
    Family,
    FamilyTable,
    ImageInput,
    MetricName,
    MetricSpec,
    SelfMetrics,
    SnapshotRenderer,
    gzip_body,
    render_snapshot,
)
from exporter.exposition.families import Sample
from exporter.snapshot import ImageError, ImageState, Snapshot
from tests.exporter_support import make_image, samples, series_of, value
from tests.reference import SnapshotCollector

NOW = 1_700_000_000.0
REGIONS = ("cn-beijing", "cn-shanghai")


def tricky_snapshot() -> Snapshot:
    """Every kind of image the renderer distinguishes, with label values that need escaping."""
    w = WatchedImage
    states = [
        ImageState(
            w("m-ok", additional_region_ids=REGIONS),
            make_image("m-ok", regions=[("cn-beijing", "Available")]),
            NOW,
        ),
        ImageState(
            w("m-esc"),
            make_image(
                "m-esc",
                name='quote " backslash \\ newline \n end',
                version="v1\\n",
                registry_url="https://puller:hunter2@registry.example.com/ns/repo:tag",
                image_type="Container",
                os_tag="Ünïcödé 中文",
            ),
            NOW - 1.5,
        ),
        ImageState(w("m-unknown"), make_image("m-unknown", status="Frozen"), NOW),
        ImageState(w("m-empty"), make_image("m-empty", status="", size_bytes=None, created=None), NOW),
        ImageState(
            w("m-dup", additional_region_ids=("cn-beijing",)),
            make_image(
                "m-dup", regions=[("cn-beijing", "Creating"), ("cn-beijing", "Available"), ("eu-x", "")]
            ),
            NOW,
        ),
        ImageState(
            w("m-failing", additional_region_ids=REGIONS),
            make_image("m-failing", status="Creating", regions=[("cn-beijing", "Available")]),
            NOW - 600,
            ImageError("Throttling.User", 400, "rid-1", NOW - 60),
        ),
        ImageState(
            w("m-gone", additional_region_ids=REGIONS),
            make_image("m-gone", regions=[("cn-beijing", "Available")]),
            NOW - 3600,
            ImageError("ImageNotFound", 404, "rid-2", NOW - 120),
        ),
        ImageState(
            w("m-gone-never", additional_region_ids=("cn-beijing",)),
            None,
            None,
            ImageError("ImageNotFound", 404),
        ),
        ImageState(w("m-never"), None, None, ImageError("Timeout", 0)),
    ]
    return Snapshot.build(
        states, status=StatusConfig(), refreshed_at=NOW + 2, duration_seconds=2.25, sequence=7
    )


def reference(snapshot: Snapshot, table: FamilyTable = TABLE) -> tuple[bytes, bytes]:
    """generate_latest in both formats over the reference collector of ``table``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot, table))
    return generate_latest(registry), generate_openmetrics(registry)  # type: ignore[no-untyped-call]  # untyped upstream


def test_fast_renderer_is_byte_identical_to_prometheus_client() -> None:
    """The hand-written renderer equals generate_latest over the reference collector, escaping included."""
    snapshot = tricky_snapshot()
    text, om = reference(snapshot)
    rendered = render_snapshot(snapshot)
    assert rendered.text == text
    assert rendered.openmetrics + b"# EOF\n" == om
    # Quote and backslash are escaped; the newline never gets that far (the output gate drops controls).
    assert b'name="quote \\" backslash \\\\ newline  end"' in rendered.text


async def test_render_async_equals_render_and_yields() -> None:
    """The sliced render on the event loop gives the same parts, and lets other tasks run meanwhile."""
    snapshot = tricky_snapshot()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    rendered = await SnapshotRenderer().render_async(snapshot, slice_seconds=0)
    task.cancel()
    assert rendered.parts(False) == render_snapshot(snapshot).parts(False)
    assert rendered.text == reference(snapshot)[0]
    assert ticks >= 5  # it yielded between pieces of work


def test_renderer_cache_follows_changes() -> None:
    """A reused renderer re-renders changed images and drops removed ones."""
    renderer = SnapshotRenderer()
    first = tricky_snapshot()
    renderer.render(first)
    states = {k.image_id: v for k, v in first.images.items() if k.image_id != "m-unknown"}
    states["m-ok"] = replace(
        states["m-ok"], image=make_image("m-ok", status="Deprecated"), last_success=NOW + 60
    )
    states["m-never"] = replace(states["m-never"], error=ImageError("NotAuthorized", 407))
    second = Snapshot.build(
        states.values(), status=first.status, refreshed_at=NOW + 62, duration_seconds=1, sequence=8
    )
    assert renderer.render(second).text == reference(second)[0]
    changed_status = replace(second, status=StatusConfig(vocabulary=("Available", "Frozen")))
    assert renderer.render(changed_status).text == reference(changed_status)[0]


@pytest.mark.parametrize("batch", [4, 7, 256])
def test_reused_renderer_equals_reference_through_random_changes(
    monkeypatch: pytest.MonkeyPatch, batch: int
) -> None:
    """Why: unchanged images are sliced from the previous parts and unchanged batches shared whole;
    any offset slip would corrupt the exposition silently. Small batches exercise both paths."""
    import random

    import exporter.exposition.render as render_module

    monkeypatch.setattr(render_module, "PART_IMAGES", batch)
    rng = random.Random(batch)
    statuses = ("Available", "Creating", "CreateFailed", "Frozen", "")

    def state(i: int, status: str, at: float) -> ImageState:
        image_id = f"m-{i:04d}"
        regions = [(r, rng.choice(statuses)) for r in REGIONS[: i % 3]]
        error = ImageError("Throttling.User", 400, None, at) if status == "" and i % 2 else None
        return ImageState(
            WatchedImage(image_id, additional_region_ids=REGIONS[: i % 3]),
            # Facts that change without the verdict changing (version, size) must re-render too.
            make_image(
                image_id,
                status=status or "Available",
                regions=regions,
                version=rng.choice(("v1", "v2")),
                size_bytes=rng.choice((1024, 2048)),
            ),
            at,
            error,
        )

    live = {i: state(i, "Available", NOW) for i in range(40)}
    renderer = SnapshotRenderer()
    status_config = StatusConfig()
    for cycle in range(12):
        at = NOW + 60 * cycle
        for i in rng.sample(sorted(live), k=3):  # a few images change
            live[i] = state(i, rng.choice(statuses), at)
        if cycle % 3 == 1:  # one leaves, one arrives: every later position shifts
            del live[rng.choice(sorted(live))]
            live[100 + cycle] = state(100 + cycle, "Creating", at)
        if cycle == 7:
            status_config = StatusConfig(vocabulary=("Available", "Creating", "Frozen"))
        snapshot = Snapshot.build(
            live.values(), status=status_config, refreshed_at=at, duration_seconds=1.0, sequence=cycle
        )
        rendered = renderer.render(snapshot)
        text, om = reference(snapshot)
        assert rendered.text == text, f"cycle {cycle}"
        assert rendered.openmetrics + b"# EOF\n" == om, f"cycle {cycle}"


def _throwaway_table() -> FamilyTable:
    """The exporter's table plus a per-image counter and a snapshot-wide gauge that exist only here."""

    def per_image(image: ImageInput) -> list[Sample]:
        if image.facts is None:
            return []
        # Label names out of order, values needing escapes: the renderer must sort and escape them.
        return [(("z", image.view.image_id, 'a "b" \\ c'), float(len(image.view.replicas)) + 0.5)]

    def global_(snapshot: Snapshot) -> list[Sample]:
        return [(("x",), float(snapshot.sequence))]

    image_family = Family(
        MetricSpec(
            "ehpc_test_throwaway_total",
            "counter",
            'Help with "quotes" and a \\ backslash.',
            ("zeta", "image_id", "alpha"),
        ),
        per_image,
    )
    snapshot_family = Family(MetricSpec("ehpc_test_global", "gauge", "A global.", ("kind",)), global_)
    return FamilyTable((*TABLE.images, image_family), (*TABLE.snapshot, snapshot_family))


def test_a_family_added_to_the_table_alone_is_rendered_like_the_reference() -> None:
    """Why: adding a family must be one table entry. One added in this test only (a counter, so the
    TYPE line cannot be a hard-coded gauge; help text that OpenMetrics escapes differently) comes out
    of the fast renderer exactly as prometheus_client writes it, in both formats, fresh and reused."""
    table = _throwaway_table()
    snapshot = tricky_snapshot()
    renderer = SnapshotRenderer(table)
    for current in (snapshot, replace(snapshot, refreshed_at=NOW + 99, sequence=8)):
        rendered = renderer.render(current)
        text, om = reference(current, table)
        assert rendered.text == text
        assert rendered.openmetrics + b"# EOF\n" == om
    body = rendered.text.decode()
    assert "# TYPE ehpc_test_throwaway_total counter\n" in body
    assert 'ehpc_test_throwaway_total{alpha="a \\"b\\" \\\\ c",image_id="m-ok",zeta="z"} 2.5\n' in body
    assert 'ehpc_test_global{kind="x"} 8.0\n' in body
    assert "# TYPE ehpc_test_throwaway counter\n" in rendered.openmetrics.decode()


def test_the_same_image_in_two_accounts_or_regions_is_two_images() -> None:
    """Why: identity is the image's key (account, region, id), not a constant added to the table: the
    same id watched in two accounts and two regions gives every series three times, each carrying its
    own account and region_id, and both renderers agree byte for byte, fresh and reused."""
    base = tricky_snapshot()
    scopes = [Scope("acct-1", "cn-hangzhou"), Scope("acct-1", "cn-shanghai"), Scope("acct-2", "cn-hangzhou")]
    parts = [
        Snapshot.build(
            [replace(state, scope=scope) for state in base.images.values()],
            status=base.status,
            refreshed_at=NOW,
            duration_seconds=1.0,
            sequence=1,
            scope=scope,
        )
        for scope in scopes
    ]
    merged = Snapshot.merge(parts, status=base.status, expected=scopes, sequence=1)
    assert len(merged.images) == 3 * len(base.images)
    renderer = SnapshotRenderer()
    renderer.render(merged)
    second = replace(merged, refreshed_at=NOW + 99)
    rendered = renderer.render(second)  # the second render reuses the cached lines
    text, om = reference(second, TABLE)
    assert rendered.text == text
    assert rendered.openmetrics + b"# EOF\n" == om
    lines = [line for line in text.decode().splitlines() if not line.startswith("#")]
    for scope in scopes:
        mine = [
            line
            for line in lines
            if f'account="{scope.account}"' in line and f'region_id="{scope.region_id}"' in line
        ]
        assert len(mine) * 3 == len(lines)
    assert all('account="' in line and 'region_id="' in line for line in lines)


def test_only_volatile_families_read_the_last_success() -> None:
    """Why: the render cache leaves last_success out of its key; a cached family reading it would
    serve a stale timestamp without any byte-identity test noticing within one render."""
    snapshot = tricky_snapshot()
    for state in snapshot.images.values():
        image = ImageInput.of(state, snapshot)
        moved = image._replace(last_success=(image.last_success or 0.0) + 1234.5)
        for family in TABLE.images:
            if not family.volatile:
                assert list(family.samples(image)) == list(family.samples(moved)), family.spec.name
    assert [f.spec.name for f in TABLE.images if f.volatile] == [MetricName.IMAGE_LAST_SUCCESS]


def test_render_cache_hits_by_value_not_identity() -> None:
    """Equal facts and verdicts in new objects (a refresher that does not reuse them) still reuse the
    previous bytes: the unchanged batch part is the very same object, the moved timestamps are not."""

    def build(at: float) -> Snapshot:
        states = [
            ImageState(WatchedImage(f"m-{i}", additional_region_ids=REGIONS), make_image(f"m-{i}"), at)
            for i in range(5)
        ]
        return Snapshot.build(states, status=StatusConfig(), refreshed_at=at, duration_seconds=1, sequence=1)

    first, second = build(NOW), build(NOW + 60)
    assert first.find("m-1").image is not second.find("m-1").image
    assert first.view_of("m-1") is not second.view_of("m-1")
    renderer = SnapshotRenderer()
    before, after = renderer.render(first).parts(False), renderer.render(second).parts(False)
    assert len(before) == len(after)
    info = next(i for i, p in enumerate(after) if p.startswith(b"ehpc_image_info{"))
    assert after[info] is before[info]
    stamp = next(i for i, p in enumerate(after) if p.startswith(b"ehpc_image_last_success"))
    assert after[stamp] != before[stamp]
    assert b"".join(after) == reference(second)[0]


def test_the_snapshot_renderer_refuses_what_it_cannot_write() -> None:
    """A histogram (suffixed samples), a counter without _total or a repeated label name fails at once."""
    bad = (
        MetricSpec("ehpc_test_seconds", "histogram", "h"),
        MetricSpec("ehpc_test_calls", "counter", "c"),
        MetricSpec("ehpc_test_twice", "gauge", "g", ("image_id", "image_id")),
    )
    for spec in bad:
        table = FamilyTable((*TABLE.images, Family(spec, lambda _: ())), TABLE.snapshot)
        with pytest.raises(ValueError, match=spec.name):
            SnapshotRenderer(table)


def test_series_semantics() -> None:
    """Failing keeps last data (up 0), missing zeroes the state sets, unknown/empty statuses get labels."""
    found = samples(render_snapshot(tricky_snapshot()).text)
    # healthy image
    assert value(found, "ehpc_image_up", image_id="m-ok") == 1
    assert value(found, "ehpc_image_available", image_id="m-ok") == 1
    assert value(found, "ehpc_image_status", image_id="m-ok", status="Available") == 1
    assert value(found, "ehpc_image_status", image_id="m-ok", status="Creating") == 0
    assert value(found, "ehpc_image_size_bytes", image_id="m-ok") == 40 * 1024**3
    assert value(found, "ehpc_image_created_timestamp_seconds", image_id="m-ok") == 1704164645
    # an asked-for region without a copy: state set all 0, not available
    rep = {"image_id": "m-ok", "replication_region": "cn-shanghai"}
    assert value(found, "ehpc_image_replication_available", **rep) == 0
    assert value(found, "ehpc_image_replication_status", **rep, status="Available") == 0
    assert (
        value(found, "ehpc_image_replication_available", image_id="m-ok", replication_region="cn-beijing")
        == 1
    )
    # failing: last good status kept, up 0, error code shown
    assert value(found, "ehpc_image_up", image_id="m-failing") == 0
    assert value(found, "ehpc_image_status", image_id="m-failing", status="Creating") == 1
    assert value(found, "ehpc_image_last_error_info", image_id="m-failing", code="Throttling.User") == 1
    assert value(found, "ehpc_image_last_success_timestamp_seconds", image_id="m-failing") == NOW - 600
    assert value(found, "ehpc_image_last_error_info", image_id="m-ok", code="Throttling.User") is None
    # missing: info kept, every state 0, not available, replicas not available
    assert value(found, "ehpc_image_available", image_id="m-gone") == 0
    assert all(
        v == 0
        for (n, labels), v in found.items()
        if n == "ehpc_image_status" and ("image_id", "m-gone") in labels
    )
    assert (
        value(found, "ehpc_image_replication_available", image_id="m-gone", replication_region="cn-beijing")
        == 0
    )
    assert value(found, "ehpc_image_last_error_info", image_id="m-gone", code="ImageNotFound") == 1
    assert any(n == "ehpc_image_info" for n, _ in series_of(found, "m-gone"))
    # missing and never seen: available 0 and the asked-for region 0, no info
    assert value(found, "ehpc_image_available", image_id="m-gone-never") == 0
    assert not any(n == "ehpc_image_info" for n, _ in series_of(found, "m-gone-never"))
    assert (
        value(
            found,
            "ehpc_image_replication_available",
            image_id="m-gone-never",
            replication_region="cn-beijing",
        )
        == 0
    )
    # never answered (not missing): only up and the error
    assert sorted(n for n, _ in series_of(found, "m-never")) == [
        "ehpc_image_last_error_info",
        "ehpc_image_up",
    ]
    # unknown status gets its own label next to the vocabulary; empty status is "Unknown"
    assert value(found, "ehpc_image_status", image_id="m-unknown", status="Frozen") == 1
    assert value(found, "ehpc_image_available", image_id="m-unknown") == 0
    assert value(found, "ehpc_image_status", image_id="m-empty", status="Unknown") == 1
    assert value(found, "ehpc_image_size_bytes", image_id="m-empty") is None
    # only the requested region has series, once, even from facts the ingestion gate would not produce
    dup = [k for k in found if k[0] == "ehpc_image_replication_available" and ("image_id", "m-dup") in k[1]]
    assert len(dup) == 1
    # refresh gauges
    assert value(found, "ehpc_watched_images") == 9
    assert value(found, "ehpc_refresh_duration_seconds") == 2.25
    assert value(found, "ehpc_refresh_last_success_timestamp_seconds") == NOW + 2


def test_no_refresh_samples_before_the_first_cycle() -> None:
    """The empty start-up snapshot has every family header but no refresh-gauge sample."""
    text = render_snapshot(Snapshot()).text.decode()
    assert not [line for line in text.splitlines() if not line.startswith("#")]
    assert text.count("# TYPE ") == len(SNAPSHOT_METRICS)


def test_no_credential_in_labels() -> None:
    """Registry userinfo never reaches a label, even in facts that bypassed the ingestion gate (which
    strips it): the output gate masks it whole. No label is called ``region``."""
    text = render_snapshot(tricky_snapshot()).text.decode()
    assert "hunter2" not in text
    assert "puller" not in text
    assert 'registry_url="https://[REDACTED]@registry.example.com/ns/repo:tag"' in text
    assert not re.search(r"[{,]region=", text)
    assert all("region" not in spec.labels for spec in SPECS.values())


def test_contract_names_and_types() -> None:
    """Every name of the product contract exists with its type (renaming one breaks dashboards)."""
    contract = {
        "ehpc_image_info": "gauge",
        "ehpc_image_status": "gauge",
        "ehpc_image_available": "gauge",
        "ehpc_image_size_bytes": "gauge",
        "ehpc_image_created_timestamp_seconds": "gauge",
        "ehpc_image_replication_status": "gauge",
        "ehpc_image_replication_available": "gauge",
        "ehpc_image_up": "gauge",
        "ehpc_image_last_success_timestamp_seconds": "gauge",
        "ehpc_image_last_error_info": "gauge",
        "ehpc_api_requests_total": "counter",
        "ehpc_api_errors_total": "counter",
        "ehpc_api_request_duration_seconds": "histogram",
        "ehpc_api_ignored_values_total": "counter",
        "ehpc_discovery_up": "gauge",
        "ehpc_discovery_last_success_timestamp_seconds": "gauge",
        "ehpc_discovered_images": "gauge",
        "ehpc_refresh_duration_seconds": "gauge",
        "ehpc_refresh_last_success_timestamp_seconds": "gauge",
        "ehpc_watched_images": "gauge",
        "ehpc_exporter_build_info": "gauge",
        "ehpc_config_last_reload_successful": "gauge",
        "ehpc_config_last_reload_success_timestamp_seconds": "gauge",
        "ehpc_refresh_overruns_total": "counter",
        "ehpc_image_status_since_timestamp_seconds": "gauge",
        "ehpc_image_status_changes_total": "counter",
        "ehpc_image_replication_since_timestamp_seconds": "gauge",
        "ehpc_image_replication_duration_seconds": "histogram",
        "ehpc_image_replication_complete": "gauge",
        "ehpc_state_last_save_timestamp_seconds": "gauge",
        "ehpc_state_save_errors_total": "counter",
        "ehpc_state_load_errors_total": "counter",
        "ehpc_state_loaded_images": "gauge",
        "ehpc_exporter_shard_ordinal": "gauge",
        "ehpc_exporter_total_shards": "gauge",
        "ehpc_api_rate_limit_qps": "gauge",
        "ehpc_exposition_series": "gauge",
        "ehpc_exposition_dropped_images": "gauge",
        "ehpc_refresh_cycles_total": "counter",
        "ehpc_credentials_expiry_timestamp_seconds": "gauge",
        "ehpc_credentials_refreshes_total": "counter",
        "ehpc_credentials_refresh_errors_total": "counter",
    }
    assert {n.value: SPECS[n].type for n in MetricName} == contract
    assert set(SPECS[MetricName.IMAGE_INFO].labels) == {
        "account",
        "region_id",
        "image_id",
        "name",
        "version",
        "image_type",
        "app_id",
        "os_tag",
        "platform",
        "architecture",
        "registry_url",
    }
    # Every family carries the identity labels but those about the process itself (one state file) and
    # those about an account's credentials.
    unscoped = {
        MetricName.BUILD_INFO,
        MetricName.CONFIG_RELOAD_SUCCESSFUL,
        MetricName.CONFIG_RELOAD_TIMESTAMP,
        MetricName.STATE_LAST_SAVE,
        MetricName.STATE_SAVE_ERRORS,
        MetricName.STATE_LOAD_ERRORS,
        MetricName.STATE_LOADED_IMAGES,
        MetricName.SHARD_ORDINAL,
        MetricName.TOTAL_SHARDS,
        MetricName.EXPOSITION_SERIES,
        MetricName.EXPOSITION_DROPPED_IMAGES,
    }
    # An account's credentials serve all its regions (one source per account): account only.
    per_account = {
        MetricName.CREDENTIALS_EXPIRY,
        MetricName.CREDENTIALS_REFRESHES,
        MetricName.CREDENTIALS_REFRESH_ERRORS,
    }
    for family in per_account:
        assert SPECS[family].labels == ("account",), family
    for name, spec in SPECS.items():
        scoped = name not in unscoped | per_account
        assert ({"account", "region_id"} <= set(spec.labels)) == scoped, name


def test_openmetrics_parses_with_one_eof() -> None:
    """Snapshot part + self part is valid OpenMetrics: the strict parser accepts it (it requires one EOF)."""
    metrics = SelfMetrics(BuildInfo("1", "3"), process_metrics=True)
    metrics.scope(DEFAULT_SCOPE).on_attempt("GetImage", 0.01, ApiError("NotAuthorized", "x", http_status=407))
    body = render_snapshot(tricky_snapshot()).openmetrics + metrics.render(True)
    text = body.decode()
    assert text.count("# EOF") == 1
    assert text.endswith("# EOF\n")
    names = {f.name for f in parse_openmetrics(text)}  # type: ignore[no-untyped-call]  # untyped upstream
    assert {"ehpc_image_info", "ehpc_api_errors", "ehpc_api_request_duration_seconds"} <= names


def test_gzip_body_is_one_member_continuing_the_cached_stream() -> None:
    """The cached deflate stream plus a per-scrape tail decompress to exactly body + tail, as one member."""
    rendered = render_snapshot(tricky_snapshot())
    tail = SelfMetrics(BuildInfo("1", "3"), process_metrics=False).render(False)
    blob = b"".join(gzip_body(rendered.deflated(False), tail))
    assert gzip.decompress(blob) == rendered.text + tail
    one = zlib.decompressobj(wbits=31)  # stops at the end of the first member
    assert one.decompress(blob) == rendered.text + tail
    assert one.eof
    assert one.unused_data == b""
    assert rendered.deflated(False) is rendered.deflated(False)  # computed once
    empty = render_snapshot(Snapshot())
    assert (
        gzip.decompress(b"".join(gzip_body(empty.deflated(True), b"# EOF\n")))
        == empty.openmetrics + b"# EOF\n"
    )


@pytest.mark.process
def test_promtool_accepts_the_whole_exposition() -> None:
    """`promtool check metrics` finds no problem in a full exposition (snapshot + self + process metrics)."""
    metrics = SelfMetrics(BuildInfo("1", "3"), process_metrics=True)
    metrics.scope(DEFAULT_SCOPE).on_attempt("GetImage", 0.01, ApiError("Timeout", "x"))
    metrics.record_reload(True, NOW)
    body = render_snapshot(tricky_snapshot()).text + metrics.render(False)
    proc = subprocess.run(
        ["promtool", "check", "metrics"], input=body, capture_output=True, timeout=30, check=False
    )
    assert proc.returncode == 0, proc.stderr.decode() + proc.stdout.decode()
    assert proc.stderr.strip() == b""


def test_scrape_path_is_far_faster_than_generate_latest() -> None:
    """Serving a cached snapshot (self part + chunks) beats generate_latest over the same series >= 10x."""
    regions = ("cn-beijing", "cn-shanghai", "cn-shenzhen", "ap-southeast-1", "us-west-1")
    states = [
        ImageState(
            WatchedImage(f"m-{i:06d}", additional_region_ids=regions),
            make_image(f"m-{i:06d}", regions=[(r, "Available") for r in regions]),
            NOW,
        )
        for i in range(500)
    ]
    snapshot = Snapshot.build(states, status=StatusConfig(), refreshed_at=NOW, duration_seconds=1, sequence=1)
    rendered = render_snapshot(snapshot)
    metrics = SelfMetrics(BuildInfo("1", "3"), process_metrics=False)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))

    def per_scrape() -> int:
        return len(rendered.body(False)) + len(metrics.render(False))

    start = time.perf_counter()
    for _ in range(5):
        per_scrape()
    fast = (time.perf_counter() - start) / 5
    start = time.perf_counter()
    generate_latest(registry)
    slow = time.perf_counter() - start
    assert slow / fast >= 10, (slow, fast)
