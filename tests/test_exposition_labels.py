"""Own labels in the exposition: on every per-image, per-(account, region) and per-account self series,
the fast renderer equal to the reference collector for any valid labels config, the series count and cap
unchanged, the default exposition untouched, and a reload that changes them re-rendered at once."""

from __future__ import annotations

import string
from dataclasses import replace

import aiohttp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, GCCollector, ProcessCollector, generate_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from ehpc_simulator import Faults
from exporter.buildinfo import BuildInfo
from exporter.config import Config, Labels, MetricsConfig, Scope, StatusConfig, TargetConfig, WatchedImage
from exporter.config.labels import MAX_VALUE_CHARS, NO_LABELS, name_problem
from exporter.errors import ApiError
from exporter.exposition import SPECS, TABLE, SelfMetrics, SnapshotRenderer, render_snapshot
from exporter.exposition.families import INFO_LABELS, build_table
from exporter.names import EXPORTER_LABELS
from exporter.redaction import register_secret
from exporter.service import ExporterService
from exporter.snapshot import Snapshot
from tests.exporter_support import samples, sim_config
from tests.fixtures.http import wait_until_async
from tests.fixtures.sim import SIM_CONTAINER_ID, SIM_VM_FAILED_ID, SIM_VM_ID, RunningSimulator
from tests.test_exposition import NOW, reference, tricky_snapshot

ACCOUNTS = ("acme", "globex", "initech")
REGION = "cn-hangzhou"
BUILD = BuildInfo("1.2.3", "abc", "3.11.7")


def all_labels(text: str) -> list[tuple[str, dict[str, str]]]:
    """(sample name, labels) of every sample of a text exposition, parsed by prometheus_client."""
    families = text_string_to_metric_families(text)
    return [(s.name, dict(s.labels)) for f in families for s in f.samples]


def snapshot_of(accounts: tuple[str, ...]) -> Snapshot:
    """tricky_snapshot's images (every kind the renderer tells apart) in each of ``accounts``."""
    base = tricky_snapshot()
    parts = [
        Snapshot.build(
            [replace(s, scope=Scope(account, REGION)) for s in base.images.values()],
            status=StatusConfig(),
            refreshed_at=NOW + 2,
            duration_seconds=2.25,
            sequence=7,
            scope=Scope(account, REGION),
        )
        for account in accounts
    ]
    scopes = [Scope(a, REGION) for a in accounts]
    return Snapshot.merge(parts, status=StatusConfig(), expected=scopes, sequence=7)


def self_part(metrics: SelfMetrics, accounts: tuple[str, ...]) -> str:
    """The self part, every per-(account, region) family with a sample for each account."""
    for account in accounts:
        scope = metrics.scope(Scope(account, REGION))
        scope.on_attempt("GetImage", 0.2, ApiError("Throttling.User", "slow down", http_status=400))
        scope.track_replication(["cn-beijing"])
        scope.record_replication("cn-beijing", 120.0)
        scope.record_ignored("GetImage", ["Image.Size"])
        scope.rate_limit = lambda: 5.0
        metrics.credentials(account).on_refresh(1_900_000_000.0)  # temporary credentials: an expiry
    return metrics.render(False).decode()


# --------------------------------------------------------------------------------------------------------
# The names no own label may take are exactly the ones the exporter sets.


def test_exporter_labels_are_every_label_the_exporter_sets() -> None:
    """The config refuses own labels named like one the exporter sets: EXPORTER_LABELS must be exactly
    those, so a label added to a family (or dropped from all) shows up here, not as a clash in a user's
    Prometheus. Read from every spec, the histograms' ``le`` and prometheus_client's collectors."""
    registry = CollectorRegistry(auto_describe=False)
    GCCollector(registry=registry)
    ProcessCollector(registry=registry)
    client = {name for _, found in all_labels(generate_latest(registry).decode()) for name in found}
    histograms = {"le"} if any(spec.type == "histogram" for spec in SPECS.values()) else set()
    found = {name for spec in SPECS.values() for name in spec.labels} | histograms | client
    assert sorted(found) == sorted(EXPORTER_LABELS)
    assert all(name_problem(name) is not None for name in found)


# --------------------------------------------------------------------------------------------------------
# Any valid labels config: the renderer equals the reference, every labelled series carries every name.

NAMES = st.sampled_from(["team", "env", "cost_centre", "tier", "Owner", "_x"]) | st.text(
    string.ascii_lowercase, min_size=1, max_size=8
).filter(lambda n: name_problem(n) is None)
# Values a file may hold, with the characters exposition escapes, Unicode, and "" (label off).
VALUES = st.sampled_from(["", "hpc", 'say "hi"', "back\\slash", "中文 Ünï", "x" * MAX_VALUE_CHARS]) | st.text(
    st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Zl", "Zp")), max_size=20
)
LABELS = st.dictionaries(NAMES, VALUES, max_size=4).map(Labels)
IMAGE_IDS = sorted(tricky_snapshot().images)


@st.composite
def labelled_configs(draw: st.DrawFn) -> Config:
    """Targets (each one account) with labels of their own and on some of their images; some images of
    the snapshot are not listed (as if discovered); some metrics: sections."""
    targets = []
    for account in ACCOUNTS:
        listed = draw(st.lists(st.sampled_from([k.image_id for k in IMAGE_IDS]), unique=True, max_size=5))
        images = tuple(WatchedImage(i, labels=draw(LABELS)) for i in listed)
        targets.append(TargetConfig(account, labels=draw(LABELS), images=images))
    metrics = MetricsConfig(
        info_labels=draw(st.none() | st.lists(st.sampled_from(INFO_LABELS), unique=True).map(tuple)),
        state_sets=draw(st.sampled_from(["full", "current"])),
        exclude=draw(st.sampled_from([(), ("ehpc_image_status",), ("ehpc_watched_images",)])),
    )
    return Config(targets=tuple(targets), metrics=metrics)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=labelled_configs())
def test_any_labels_config_renders_equal_to_the_reference_and_parses(config: Config) -> None:
    """Both formats byte-identical to prometheus_client over the same table; the text parses; every
    sample of a family with an account carries every own label name, with its image's values (its own
    over its target's) or its account's; the other families carry none."""
    snapshot = snapshot_of(ACCOUNTS)
    labels = config.own_labels()
    table = build_table(config.metrics, labels=labels)
    rendered = render_snapshot(snapshot, table)
    text, om = reference(snapshot, table)
    assert rendered.text == text
    assert rendered.openmetrics + b"# EOF\n" == om
    list(parse_openmetrics(om.decode()))  # type: ignore[no-untyped-call]  # untyped upstream; parses or raises
    names = set(labels.names)
    expected_images = {
        (t.account, i.image_id): {**t.labels, **i.labels} for t in config.targets for i in t.images
    }
    for name, found in all_labels(text.decode()):
        if "account" not in found:
            assert not names & found.keys(), name
            continue
        assert names <= found.keys(), (name, found)
        account = found["account"]
        target = next(t for t in config.targets if t.account == account)
        want = expected_images.get((account, found.get("image_id", "")), dict(target.labels))
        assert {n: found[n] for n in names} == {n: want.get(n, "") for n in names}


@settings(max_examples=30, deadline=None)
@given(config=labelled_configs())
def test_self_metrics_per_account_carry_the_accounts_labels(config: Config) -> None:
    """Every self family with an account label carries every own name with its target's values; the
    others (build info, reload, sharding, state) carry none."""
    labels = config.own_labels()
    metrics = SelfMetrics(BUILD, process_metrics=False)
    metrics.labels = labels
    text = self_part(metrics, ACCOUNTS)
    names = set(labels.names)
    with_account = set()
    for name, found in all_labels(text):
        if "account" not in found:
            assert not names & found.keys(), name
            continue
        with_account.add(name.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum"))
        target = next(t for t in config.targets if t.account == found["account"])
        assert {n: found[n] for n in names} == {n: target.labels.get(n, "") for n in names}
    # Each family with the identity labels in the table had samples to judge.
    scoped = {spec.name.removesuffix("_total") for spec in SPECS.values() if "account" in spec.labels}
    scoped -= {spec.name.removesuffix("_total") for spec in TABLE.specs}
    assert {n.removesuffix("_total") for n in with_account} == scoped


def test_a_config_without_labels_changes_nothing() -> None:
    """No labels: the table is the default one (the golden files hold its bytes) and the self part is
    the same bytes as with no labels at all."""
    plain = Config(targets=tuple(TargetConfig(a, images=(WatchedImage("m-ok"),)) for a in ACCOUNTS))
    assert plain.own_labels() == NO_LABELS
    assert build_table(MetricsConfig(state_sets="full"), labels=plain.own_labels()) is TABLE
    assert build_table(MetricsConfig(state_sets="current"), labels=plain.own_labels()).labels is NO_LABELS
    with_none, without = SelfMetrics(BUILD, process_metrics=False), SelfMetrics(BUILD, process_metrics=False)
    with_none.labels = plain.own_labels()
    assert self_part(with_none, ACCOUNTS) == self_part(without, ACCOUNTS)


def test_series_count_and_cap_do_not_change_with_labels() -> None:
    """Own labels add label pairs, never series: the count is the same, and a cap leaves out the same
    images with labels as without (what ehpc_exposition_series and max_series count)."""
    snapshot = snapshot_of(ACCOUNTS)
    config = Config(
        targets=tuple(
            TargetConfig(
                a,
                labels=Labels({"team": f"t-{a}", "env": "prod"}),
                images=(WatchedImage("m-ok", labels=Labels({"env": ""})),),
            )
            for a in ACCOUNTS
        )
    )
    labels = config.own_labels()
    plain, labelled = (
        render_snapshot(snapshot),
        render_snapshot(snapshot, build_table(MetricsConfig(state_sets="full"), labels=labels)),
    )
    assert labelled.series == plain.series == len(all_labels(plain.text.decode()))
    for cap in (plain.series // 3, plain.series // 2, plain.series - 1):
        capped = MetricsConfig(max_series=cap, state_sets="full")
        a, b = (
            render_snapshot(snapshot, build_table(capped)),
            render_snapshot(snapshot, build_table(capped, labels=labels)),
        )
        assert (a.series, a.dropped_images) == (b.series, b.dropped_images)
        assert b.dropped_images > 0
        assert b.text == reference(snapshot, build_table(capped, labels=labels))[0]


def test_a_reused_renderer_keeps_unchanged_images_and_masks_a_late_secret() -> None:
    """The per-image cache works with labels (an unchanged batch is the same part object), and a secret
    registered later that a value holds is masked at the next render: the value is read through the
    output gate, so the image's input changed and it is rendered again."""
    config = Config(labels=Labels({"team": "squad-late0123456789"}), images=(WatchedImage("m-ok"),))
    table = build_table(MetricsConfig(), labels=config.own_labels())
    renderer = SnapshotRenderer(table)
    snapshot = tricky_snapshot()
    first = renderer.render(snapshot)
    second = renderer.render(snapshot)
    assert second.text == first.text == reference(snapshot, table)[0]
    shared = [a is b for a, b in zip(first.parts(False), second.parts(False), strict=True)]
    assert sum(shared) >= len(TABLE.images)  # every image family's batch reused, not rebuilt
    register_secret("late0123456789")
    third = renderer.render(snapshot)
    assert b"late0123456789" not in third.text
    assert b'team="squad-[REDACTED]"' in third.text
    assert third.text == reference(snapshot, table)[0]


# --------------------------------------------------------------------------------------------------------
# In a running service: /metrics and the board follow a reload that changes only labels, at once.


async def test_reload_that_changes_only_labels_re_renders_at_once(simulator: RunningSimulator) -> None:
    """A reload that changes only ``labels`` re-renders now, with a new table: the image series, the
    per-(account, region) gauges and the self-metrics carry the new values. The refresh the reload
    starts is held by the simulator, so the new exposition can only be the re-render."""
    watched = (WatchedImage(SIM_VM_ID, labels=Labels({"tier": "gold"})), SIM_VM_FAILED_ID, SIM_CONTAINER_ID)
    base = sim_config(simulator, watched, api_timeout=3600, labels=Labels({"team": "hpc"}))
    cfg = replace(base, refresh=replace(base.refresh, image_timeout_seconds=3600))
    svc = ExporterService(cfg, process_metrics=False)
    await svc.start()
    try:
        async with aiohttp.ClientSession() as http:
            await wait_until_async(lambda: svc.ready)

            async def scrape() -> list[tuple[str, dict[str, str]]]:
                async with http.get(svc.url + "/metrics") as resp:
                    return all_labels(await resp.text())

            def teams(found: list[tuple[str, dict[str, str]]], family: str) -> set[tuple[str, str, str]]:
                return {
                    (s.get("image_id", ""), s.get("team", "-"), s.get("tier", "-"))
                    for n, s in found
                    if n == family
                }

            before = await scrape()
            assert teams(before, "ehpc_image_up") == {
                (SIM_VM_ID, "hpc", "gold"),
                (SIM_VM_FAILED_ID, "hpc", ""),
                (SIM_CONTAINER_ID, "hpc", ""),
            }
            assert teams(before, "ehpc_watched_images") == {("", "hpc", "")}
            assert teams(before, "ehpc_api_requests_total") == {("", "hpc", "")}
            sequence, refreshed_at = svc.snapshot.sequence, svc.snapshot.refreshed_at
            simulator.sim.faults = Faults(timeout_rate=1.0, timeout_seconds=3600)
            changed = replace(
                cfg, labels=Labels({"team": "db"}), images=(WatchedImage(SIM_VM_ID), *cfg.images[1:])
            )
            await svc.reload(changed)
            await wait_until_async(lambda: svc.snapshot.sequence > sequence, within=60, what="the re-render")
            assert svc.snapshot.refreshed_at == refreshed_at  # no cycle ended: it was the re-render
            after = await scrape()
            assert {s.get("tier", "-") for _, s in after} == {"-"}  # no image has a tier: the name is gone
            assert teams(after, "ehpc_image_up") == {
                (SIM_VM_ID, "db", "-"),
                (SIM_VM_FAILED_ID, "db", "-"),
                (SIM_CONTAINER_ID, "db", "-"),
            }
            assert teams(after, "ehpc_watched_images") == {("", "db", "-")}
            assert teams(after, "ehpc_api_requests_total") == {("", "db", "-")}
            assert samples(await (await http.get(svc.url + "/metrics")).read())  # still parses whole
    finally:
        await svc.stop()
