"""Cardinality controls (``metrics:``): family filters, info labels, state sets, the series cap, reload."""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from ehpc_simulator import Faults
from exporter.buildinfo import BuildInfo
from exporter.config import DEFAULT_SCOPE, MetricsConfig, StatusConfig, WatchedImage
from exporter.config.load import ConfigError, load_config
from exporter.errors import ApiError
from exporter.exposition import SPECS, TABLE, MetricName, SelfMetrics, SnapshotRenderer, render_snapshot
from exporter.exposition.families import (
    CLIENT_FAMILIES,
    EXPOSED_NAMES,
    IMAGE_FAMILIES,
    INFO_LABELS,
    build_table,
    family_filter,
)
from exporter.service import ExporterService
from exporter.snapshot import ImageError, ImageState, Snapshot
from tests.exporter_support import make_image, samples, sim_config, value
from tests.fixtures.http import wait_until_async
from tests.fixtures.sim import SIM_CONTAINER_ID, SIM_VM_FAILED_ID, SIM_VM_ID, RunningSimulator
from tests.test_exposition import NOW, REGIONS, reference, tricky_snapshot

WATCHED = (SIM_VM_ID, SIM_VM_FAILED_ID, WatchedImage(SIM_CONTAINER_ID, image_type="Container"))
STATE_SETS = (MetricName.IMAGE_STATUS, MetricName.IMAGE_REPLICATION_STATUS)
_LINE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? \S+$")


def sample_lines(text: bytes) -> list[str]:
    """The sample lines of a text exposition."""
    return [line for line in text.decode().splitlines() if line and not line.startswith("#")]


def families_of(text: bytes) -> list[str]:
    """The family names a text exposition declares, in order."""
    return [line.split()[2] for line in text.decode().splitlines() if line.startswith("# TYPE ")]


def lines_of(text: bytes, name: str) -> list[str]:
    """The sample lines of one family (its name exactly, labels or not)."""
    return [line for line in sample_lines(text) if re.match(rf"^{re.escape(name)}[{{ ]", line)]


def write_config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(body)
    return path


# --------------------------------------------------------------------------------------------------------
# Config: every entry must match something; bad values are one line naming where they are.


NO_FAMILY = "matches no metric family"
GLOB = "must be a metric family name or a shell-style glob"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("{include: [ehpc_image_up, ehpc_imgae_status]}",
         f"metrics.include[1]: entry 'ehpc_imgae_status' {NO_FAMILY} (did you mean 'ehpc_image_status'?)"),
        ("{exclude: ['ehpc_nothing_*']}", f"metrics.exclude[0]: entry 'ehpc_nothing_*' {NO_FAMILY}"),
        ("{exclude: ['ehpc_image_up_total']}",
         f"metrics.exclude[0]: entry 'ehpc_image_up_total' {NO_FAMILY}"),
        ("{include: ['process_cpu_seconds']}",
         f"metrics.include[0]: entry 'process_cpu_seconds' {NO_FAMILY}"
         " (did you mean 'process_cpu_seconds_total'?)"),
        ("{include: ['ehpc image']}", f"metrics.include[0]: {GLOB}"),
        ("{include: ['']}", f"metrics.include[0]: {GLOB}"),
        ("{info_labels: [name, owner]}", "metrics.info_labels[1]: "),
        ("{state_sets: current_only}", "metrics.state_sets: "),
        ("{max_series: -1}", "metrics.max_series: "),
        ("{max_series: 1.5}", "metrics.max_series: "),
        ("{include: ehpc_image_up}", "metrics.include: "),
        ("{includes: [ehpc_image_up]}", "metrics.includes: "),
    ],
)  # fmt: skip
def test_bad_metrics_config_is_one_line_naming_the_entry(tmp_path: Path, body: str, expected: str) -> None:
    """A typo in a filter is an error, not a silent "export everything"; each line names the entry."""
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, f"metrics: {body}"))
    assert len(caught.value.errors) == 1, caught.value.errors
    assert expected in caught.value.errors[0]


def test_every_problem_of_the_section_is_reported(tmp_path: Path) -> None:
    """Two bad entries in two lists: two lines, in file order."""
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, "metrics: {include: [a_b, ehpc_image_up], exclude: [c_d]}"))
    assert [e.split(": ")[1] for e in caught.value.errors] == ["metrics.include[0]", "metrics.exclude[0]"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    names=st.lists(st.sampled_from(EXPOSED_NAMES), min_size=1, max_size=4),
    cut=st.integers(min_value=1, max_value=12),
    data=st.data(),
)
def test_names_and_globs_that_match_load(
    tmp_path: Path, names: list[str], cut: int, data: st.DataObject
) -> None:
    """Any exposed name, and any glob made from one (a prefix and ``*``, a ``?`` for a letter), loads."""
    pattern = data.draw(st.sampled_from([names[0], names[0][:cut] + "*", "?" + names[0][1:]]))
    section = {"include": [pattern, *names], "exclude": [names[-1]]}
    path = write_config(tmp_path, json.dumps({"metrics": section}))
    metrics = load_config(path).metrics
    assert metrics.include == tuple(dict.fromkeys([pattern, *names]))
    assert metrics.exclude == (names[-1],)


def test_the_names_the_config_checks_are_the_tables_names() -> None:
    """The config judges metrics.include / exclude against exporter.names (so loading a config does not
    import the table); the table may name no family that list lacks, nor the list one the table lacks."""
    assert sorted(EXPOSED_NAMES) == sorted({*SPECS, *CLIENT_FAMILIES})
    assert len(set(EXPOSED_NAMES)) == len(EXPOSED_NAMES)


def test_full_state_sets_alone_is_the_whole_table(tmp_path: Path) -> None:
    """No section (or an empty one) is the default; ``state_sets: full`` and nothing else is the whole
    table, the exposition the default was before it became sparse (tests/golden/metrics.full.prom)."""
    assert load_config(write_config(tmp_path, "metrics: {}\n")).metrics == MetricsConfig()
    assert build_table(MetricsConfig(state_sets="full")) is TABLE
    assert build_table(MetricsConfig()) is not TABLE
    snapshot = tricky_snapshot()
    assert (
        render_snapshot(snapshot, build_table(MetricsConfig(state_sets="full"))).text
        == reference(snapshot)[0]
    )


# --------------------------------------------------------------------------------------------------------
# Each control's effect on a rendered snapshot.


def test_include_and_exclude_pick_families_exclude_winning() -> None:
    """Families matching include and no exclude are exposed, whole and unchanged; the rest are absent."""
    snapshot = tricky_snapshot()
    full = render_snapshot(snapshot).text
    metrics = MetricsConfig(
        include=("ehpc_image_*", "ehpc_watched_images"),
        exclude=("ehpc_image_replication_*",),
        state_sets="full",
    )
    text = render_snapshot(snapshot, build_table(metrics)).text
    expected = [
        n
        for n in families_of(full)
        if (n.startswith("ehpc_image_") and not n.startswith("ehpc_image_replication_"))
        or n == "ehpc_watched_images"
    ]
    assert families_of(text) == expected
    assert "ehpc_image_up" in expected
    assert "ehpc_refresh_duration_seconds" not in expected
    for name in expected:
        assert lines_of(text, name) == lines_of(full, name), name


def test_exclude_alone_keeps_everything_else() -> None:
    snapshot = tricky_snapshot()
    full = render_snapshot(snapshot).text
    text = render_snapshot(
        snapshot, build_table(MetricsConfig(exclude=("ehpc_image_status",), state_sets="full"))
    ).text
    assert families_of(text) == [n for n in families_of(full) if n != "ehpc_image_status"]
    assert sample_lines(text) == [
        line for line in sample_lines(full) if not line.startswith("ehpc_image_status{")
    ]


def test_the_self_part_is_filtered_too() -> None:
    """include/exclude apply to the exporter's own families and prometheus_client's process and gc ones."""
    metrics = SelfMetrics(BuildInfo("1", "2"), process_metrics=True)
    metrics.scope(DEFAULT_SCOPE).on_attempt("GetImage", 0.01, ApiError("Timeout", "x"))
    before = families_of(metrics.render(False))
    assert "process_cpu_seconds_total" in before
    assert "ehpc_api_errors_total" in before
    metrics.allow = family_filter(
        MetricsConfig(exclude=("process_*", "python_gc_*", "ehpc_exporter_build_info"))
    )
    after = families_of(metrics.render(False))
    assert after == [
        n for n in before if not n.startswith(("process_", "python_gc_")) and n != "ehpc_exporter_build_info"
    ]
    metrics.allow = family_filter(MetricsConfig(include=("ehpc_api_*",)))
    text = metrics.render(False)
    assert set(families_of(text)) == {n for n in before if n.startswith("ehpc_api_")}
    assert b"_bucket{" in text  # a histogram passes whole
    om = metrics.render(True)
    assert om.endswith(b"# EOF\n")
    assert b"process_" not in om


@given(st.lists(st.sampled_from(INFO_LABELS), unique=True).map(tuple))
def test_info_labels_keep_the_identity_and_what_is_listed(kept: tuple[str, ...]) -> None:
    """Every info sample carries the identity plus exactly the listed labels, with the same values."""
    snapshot = tricky_snapshot()
    full = samples(render_snapshot(snapshot).text)
    text = render_snapshot(snapshot, build_table(MetricsConfig(info_labels=kept, state_sets="full"))).text
    found = samples(text)
    want = {"account", "region_id", "image_id", *kept}
    full_info = {k: v for k, v in full.items() if k[0] == "ehpc_image_info"}
    projected = {
        (n, frozenset((a, b) for a, b in labels if a in want)): v for (n, labels), v in full_info.items()
    }
    assert {k: v for k, v in found.items() if k[0] == "ehpc_image_info"} == projected
    assert len(projected) == len(full_info)  # still one series per image
    # Nothing else changes.
    assert {k: v for k, v in found.items() if k[0] != "ehpc_image_info"} == {
        k: v for k, v in full.items() if k[0] != "ehpc_image_info"
    }
    assert SPECS[MetricName.IMAGE_INFO].labels[3:] == INFO_LABELS  # the table is where the names come from


def test_state_sets_current_keeps_only_the_ones() -> None:
    """``current``: the state sets' 1-valued samples, exactly those of ``full``; other families untouched
    (tricky_snapshot has no history: the since-timestamps ``current`` also cuts: test_exposition_cost)."""
    snapshot = tricky_snapshot()
    full = samples(render_snapshot(snapshot).text)
    found = samples(render_snapshot(snapshot, build_table(MetricsConfig(state_sets="current"))).text)
    assert {k: v for k, v in found.items() if k[0] in STATE_SETS} == {
        k: v for k, v in full.items() if k[0] in STATE_SETS and v == 1.0
    }
    assert {k: v for k, v in found.items() if k[0] not in STATE_SETS} == {
        k: v for k, v in full.items() if k[0] not in STATE_SETS
    }
    # A missing image (all 0) has no state-set sample at all; a healthy one has one per state set.
    assert not [k for k in found if k[0] in STATE_SETS if ("image_id", "m-gone") in k[1]]
    assert value(found, "ehpc_image_status", image_id="m-ok", status="Available") == 1.0
    assert [f.spec.name for f in IMAGE_FAMILIES if f.state_set] == list(STATE_SETS)


# --------------------------------------------------------------------------------------------------------
# Renderer == reference for any configuration (byte for byte, both formats, with a reused renderer).

_GLOBS = (
    "ehpc_image_*",
    "ehpc_*",
    "*_timestamp_seconds",
    "ehpc_image_replication_*",
    "ehpc_discover?d_images",
)
_NAMES = tuple(spec.name for spec in TABLE.specs)
_PATTERNS = st.sampled_from((*_NAMES, *_GLOBS, "ehpc_[iw]*"))
METRICS_CONFIGS = st.builds(
    MetricsConfig,
    include=st.lists(_PATTERNS, max_size=3).map(tuple),
    exclude=st.lists(_PATTERNS, max_size=2).map(tuple),
    info_labels=st.none() | st.lists(st.sampled_from(INFO_LABELS), unique=True).map(tuple),
    state_sets=st.sampled_from(("full", "current")),
    max_series=st.sampled_from((0, 0, 1, 20, 45, 60, 100, 10_000)),
)


def changed_snapshot(snapshot: Snapshot) -> Snapshot:
    """``snapshot`` one cycle later: an image gone, one changed, one new, every last success moved on."""
    states = [s for s in snapshot.images.values() if s.watched.image_id != "m-unknown"]
    states = [replace(s, last_success=NOW + 60) if s.last_success is not None else s for s in states]
    states[0] = replace(states[0], image=make_image(states[0].watched.image_id, status="Creating"))
    states.append(
        ImageState(WatchedImage("m-aaa", additional_region_ids=REGIONS), make_image("m-aaa"), NOW + 60)
    )
    states.append(ImageState(WatchedImage("m-zzz"), None, None, ImageError("Timeout", 0)))
    return Snapshot.build(
        states, status=StatusConfig(), refreshed_at=NOW + 62, duration_seconds=1.0, sequence=8
    )


@settings(max_examples=80, deadline=None)
@given(metrics=METRICS_CONFIGS)
def test_renderer_equals_reference_for_any_metrics_config(metrics: MetricsConfig) -> None:
    """Why: the derived families and the cap live in the table, which both paths read; any drift between
    the fast renderer and prometheus_client would corrupt scrapes silently."""
    table = build_table(metrics)
    renderer = SnapshotRenderer(table)
    for snapshot in (tricky_snapshot(), changed_snapshot(tricky_snapshot()), tricky_snapshot()):
        rendered = renderer.render(snapshot)
        text, om = reference(snapshot, table)
        assert rendered.text == text
        assert rendered.openmetrics + b"# EOF\n" == om
        assert rendered.series == len(sample_lines(text))


# --------------------------------------------------------------------------------------------------------
# The series cap.


def per_image_lines(snapshot: Snapshot, text: bytes) -> list[list[str]]:
    """Each image's sample lines in the uncapped exposition ``text``, in key order."""
    out = []
    for key in snapshot.images:
        ident = (f'account="{key.account}"', f'image_id="{key.image_id}"', f'region_id="{key.region_id}"')
        out.append([line for line in sample_lines(text) if all(part in line for part in ident)])
    return out


@settings(max_examples=60, deadline=None)
@given(cap=st.integers(min_value=1, max_value=200), batch=st.sampled_from((1, 2, 3, 256)))
def test_the_cap_keeps_whole_images_in_key_order(cap: int, batch: int) -> None:
    """Exact counts: images are taken in key order while their series fit; the rest are left out whole."""
    import exporter.exposition.render as render_module

    original = render_module.PART_IMAGES
    render_module.PART_IMAGES = batch  # small batches put the cut on and off batch boundaries
    try:
        snapshot = tricky_snapshot()
        full = render_snapshot(snapshot).text
        images = per_image_lines(snapshot, full)
        wide = len(sample_lines(full)) - sum(map(len, images))
        assert wide > 0
        kept, used = 0, wide
        while kept < len(images) and used + len(images[kept]) <= cap:
            used += len(images[kept])
            kept += 1
        table = build_table(MetricsConfig(max_series=cap, state_sets="full"))
        renderer = SnapshotRenderer(table)
        for snapshot_now in (snapshot, changed_snapshot(snapshot), snapshot):
            rendered = renderer.render(snapshot_now)
            assert rendered.text == reference(snapshot_now, table)[0]
        rendered = renderer.render(snapshot)
        assert (rendered.series, rendered.dropped_images) == (used, len(images) - kept)
        assert rendered.series <= cap or kept == 0
        text = rendered.text
        assert sample_lines(text) == [
            line
            for line in sample_lines(full)
            if line in {x for image in images[:kept] for x in image}
            or not any(line in image for image in images)
        ]
        assert per_image_lines(snapshot, text) == images[:kept] + [[]] * (len(images) - kept)
        assert render_snapshot(snapshot, table).text == text  # deterministic: a fresh renderer agrees
    finally:
        render_module.PART_IMAGES = original


def test_no_cap_counts_every_series() -> None:
    snapshot = tricky_snapshot()
    rendered = render_snapshot(snapshot)
    assert rendered.series == len(sample_lines(rendered.text))
    assert rendered.dropped_images == 0
    big = render_snapshot(snapshot, build_table(MetricsConfig(max_series=rendered.series, state_sets="full")))
    assert big.text == rendered.text
    assert big.dropped_images == 0
    one_less = render_snapshot(
        snapshot, build_table(MetricsConfig(max_series=rendered.series - 1, state_sets="full"))
    )
    assert one_less.dropped_images == 1  # the last image in key order, whole


@pytest.mark.process
def test_promtool_accepts_every_control_at_once() -> None:
    """`promtool check metrics` on a capped, projected, current-only exposition with its self part."""
    metrics = SelfMetrics(BuildInfo("1", "3"), process_metrics=True)
    config = MetricsConfig(exclude=("process_*",), info_labels=("name",), state_sets="current", max_series=60)
    metrics.allow = family_filter(config)
    rendered = render_snapshot(tricky_snapshot(), build_table(config))
    metrics.exposition_series, metrics.exposition_dropped_images = rendered.series, rendered.dropped_images
    assert rendered.dropped_images > 0
    body = rendered.text + metrics.render(False)
    proc = subprocess.run(
        ["promtool", "check", "metrics"], input=body, capture_output=True, timeout=30, check=False
    )
    assert proc.returncode == 0, proc.stderr.decode() + proc.stdout.decode()
    assert proc.stderr.strip() == b""
    assert all(_LINE_RE.match(line) for line in sample_lines(body))


# --------------------------------------------------------------------------------------------------------
# In a running service: the cap's metrics and log lines, and a reload switching modes at once.


async def scrape_text(http: aiohttp.ClientSession, svc: ExporterService) -> bytes:
    async with http.get(svc.url + "/metrics") as resp:
        assert resp.status == 200
        return await resp.read()


def snapshot_lines(text: bytes) -> list[str]:
    """The sample lines of the snapshot part of a whole /metrics answer."""
    names = {s.name for s in TABLE.specs}
    return [line for line in sample_lines(text) if re.split(r"[{ ]", line, maxsplit=1)[0] in names]


async def test_cap_metrics_and_log_lines_in_a_running_service(simulator: RunningSimulator) -> None:
    """The cap bites: the gauges say how much, one warning says so; lifting it by reload: one info line."""
    cfg = sim_config(simulator, WATCHED)
    svc = ExporterService(replace(cfg, metrics=MetricsConfig(max_series=20)), process_metrics=False)
    async with aiohttp.ClientSession() as http:
        with capture_logs() as logs:
            await svc.start()
            try:
                await wait_until_async(lambda: svc.ready)
                await wait_until_async(lambda: svc.rendered.dropped_images > 0, what="the cap to bite")
                await svc.refresh_once()  # another publish, dropping as many
                text = await scrape_text(http, svc)
                found = samples(text)
                assert value(found, "ehpc_exposition_series") == len(snapshot_lines(text)) <= 20
                dropped = value(found, "ehpc_exposition_dropped_images")
                assert dropped == svc.rendered.dropped_images
                assert 0 < dropped < 3
                warned = [e for e in logs if e["event"] == "series_cap_reached"]
                assert len(warned) == 1  # once: later publishes dropping as many say nothing
                assert warned[0]["log_level"] == "warning"
                assert warned[0]["dropped_images"] == dropped
                assert warned[0]["max_series"] == 20
                sequence = svc.snapshot.sequence
                await svc.reload(cfg)  # metrics: back to the default, no cap
                await wait_until_async(lambda: svc.snapshot.sequence > sequence, within=3)
                found = samples(await scrape_text(http, svc))
                assert value(found, "ehpc_exposition_dropped_images") == 0
                released = [e for e in logs if e["event"] == "series_cap_released"]
                assert len(released) == 1
                assert released[0]["log_level"] == "info"
            finally:
                await svc.stop()


async def test_reload_switches_state_sets_and_filters_at_once(simulator: RunningSimulator) -> None:
    """A reload that changes only ``metrics:`` re-renders now (no refresh needed: the interval is 60 s).

    The refresh the reload starts is held by the simulator until the test ends (and every timeout of
    the exporter is an hour), so the new snapshot can only be the re-render: no time budget decides it.
    """
    base = sim_config(simulator, WATCHED, api_timeout=3600)
    cfg = replace(
        base,
        refresh=replace(base.refresh, image_timeout_seconds=3600),
        metrics=MetricsConfig(state_sets="full"),
    )
    svc = ExporterService(cfg, process_metrics=False)
    await svc.start()
    try:
        async with aiohttp.ClientSession() as http:
            await wait_until_async(lambda: svc.ready)
            full = samples(await scrape_text(http, svc))
            zeros = [k for k, v in full.items() if k[0] in STATE_SETS and v == 0.0]
            assert zeros
            current = replace(cfg, metrics=MetricsConfig(state_sets="current", exclude=("ehpc_api_*",)))
            sequence, refreshed_at = svc.snapshot.sequence, svc.snapshot.refreshed_at
            # The refresh a reload starts never ends now: the switch must not wait for it.
            simulator.sim.faults = Faults(timeout_rate=1.0, timeout_seconds=3600)
            await svc.reload(current)
            await wait_until_async(lambda: svc.snapshot.sequence > sequence, within=60, what="the re-render")
            assert svc.snapshot.refreshed_at == refreshed_at  # no cycle ended: it was the re-render
            found = samples(await scrape_text(http, svc))
            assert {k: v for k, v in found.items() if k[0] in STATE_SETS} == {
                k: v for k, v in full.items() if k[0] in STATE_SETS and v == 1.0
            }
            assert not [k for k in found if k[0].startswith("ehpc_api_")]
            assert value(found, "ehpc_config_last_reload_successful") == 1
            sequence = svc.snapshot.sequence
            await svc.reload(cfg)
            await wait_until_async(lambda: svc.snapshot.sequence > sequence, within=60, what="the re-render")
            assert svc.snapshot.refreshed_at == refreshed_at
            back = samples(await scrape_text(http, svc))
            assert all(back.get(k) == 0.0 for k in zeros)
            assert [k for k in back if k[0].startswith("ehpc_api_")]
    finally:
        await svc.stop()


def test_the_runbook_names_every_alert_a_filter_can_blind() -> None:
    """Every family a shipped alert's expression reads, and that alert, are named in the runbook section
    on cardinality, so adding an alert without saying what excluding its input does is caught here."""
    import yaml

    from alerts import build

    section = (
        (build.REPO_ROOT / "alerts" / "runbook.md")
        .read_text()
        .split("## Cardinality controls and the alerts\n", 1)[1]
    )
    doc = yaml.safe_load(build.RULES_FILE.read_text())
    for rule in (r for group in doc["groups"] for r in group["rules"] if "alert" in r):
        families = set(re.findall(r"ehpc_[a-z_]+", rule["expr"]))
        for family in families:
            assert f"`{family}`" in section, family
        if families:
            assert rule["alert"] in section, rule["alert"]
