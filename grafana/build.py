"""Build the ehpc-image-exporter Grafana dashboard with grafana-foundation-sdk (pinned 0.0.21).

``python -m grafana.build`` writes grafana/ehpc-image-exporter.json; the output is deterministic, so the
committed file must equal a fresh build. ``--check`` writes nothing and exits 1 when it would differ.
The stale threshold comes from alerts/thresholds.yaml, so the dashboard and EhpcImageDataStale agree.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

with warnings.catch_warnings():
    # The SDK nudges towards the v2 (Kubernetes-style) dashboard resource; we build the classic JSON model
    # on purpose: it is what "Import dashboard" and file provisioning take, and what @grafana/schema types.
    warnings.simplefilter("ignore", DeprecationWarning)
    from grafana_foundation_sdk.builders import (
        bargauge,
        common,
        dashboard,
        prometheus,
        stat,
        statetimeline,
        table,
        timeseries,
    )
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models import common as cm
    from grafana_foundation_sdk.models import dashboard as dm
    from grafana_foundation_sdk.models import prometheus as pm

from alerts.build import load_thresholds

GRAFANA_DIR = Path(__file__).resolve().parent
DASHBOARD_FILE = GRAFANA_DIR / "ehpc-image-exporter.json"
UID = "ehpc-image-exporter"

DATASOURCE = cm.DataSourceRef(type_val="prometheus", uid="${datasource}")
# Selectors every query carries, so the variables filter every panel. `up` is Prometheus' own series of a
# scrape target and has no account or region, so it takes JOB only; everything else takes TGT at least.
JOB = 'job=~"$job"'
TGT = f'{JOB}, account=~"$account", region_id=~"$region_id"'
IMG = f'{TGT}, image_id=~"$image_id"'
REPL = f'{IMG}, replication_region=~"$replication_region"'
# Deleted images: every copy and the image itself read 0, but they have their own "Missing" count.
NOT_FOUND = f'ehpc_image_last_error_info{{{IMG}, code="ImageNotFound"}}'

# One image is account x region x image ID: the same ID in two accounts or regions is two images.
IMAGE_KEY = "account, region_id, image_id"
TARGET_KEY = "account, region_id"
IMAGE_LEGEND = "{{account}}/{{region_id}} {{image_id}}"
TARGET_LEGEND = "{{account}}/{{region_id}}"

GREEN, RED, ORANGE, BLUE = "green", "red", "orange", "blue"


def _query(
    expr: str, legend: str = "", ref: str = "A", *, table_format: bool = False
) -> prometheus.Dataquery:
    """A Prometheus target; table queries are instant, graph queries range."""
    q = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(DATASOURCE)
    q = q.format(pm.PromQueryFormat.TABLE).instant() if table_format else q.range()
    if legend:
        q = q.legend_format(legend)
    return q


def _thresholds(*steps: tuple[float | None, str]) -> dashboard.ThresholdsConfig:
    """Absolute thresholds; the first step's value is None (the base colour)."""
    return (
        dashboard.ThresholdsConfig()
        .mode(dm.ThresholdsMode.ABSOLUTE)
        .steps([dm.Threshold(value=v, color=c) for v, c in steps])
    )


def _grid(x: int, y: int, w: int, h: int) -> dm.GridPos:
    return dm.GridPos(x=x, y=y, w=w, h=h)


def _bool_mapping(true_text: str, false_text: str) -> list[dm.ValueMapping]:
    """1/0 to words and colours, for availability cells."""
    return [
        dm.ValueMap(
            options={
                "1": dm.ValueMappingResult(text=true_text, color=GREEN, index=0),
                "0": dm.ValueMappingResult(text=false_text, color=RED, index=1),
            }
        )
    ]


def _stat(
    panel_id: int, title: str, description: str, expr: str, grid: dm.GridPos, bad_above: float | None
) -> stat.Panel:
    """A single number; it turns red above ``bad_above`` (None: always neutral)."""
    steps: list[tuple[float | None, str]] = [(None, GREEN if bad_above is not None else BLUE)]
    if bad_above is not None:
        steps.append((bad_above + 1, RED))
    return (
        stat.Panel()
        .id(panel_id)
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .grid_pos(grid)
        .with_target(_query(expr, ref="A").instant())
        .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .color_mode(cm.BigValueColorMode.BACKGROUND)
        .graph_mode(cm.BigValueGraphMode.NONE)
        .text_mode(cm.BigValueTextMode.VALUE)
        .thresholds(_thresholds(*steps))
        .decimals(0)
    )


def _joined(columns: Sequence[tuple[str, str]], hidden: Sequence[str] = ()) -> list[dm.DataTransformerConfig]:
    """A table's transformations: its queries merged on their labels, ``columns`` (field, heading) shown in
    this order, ``hidden`` fields and the time left out."""
    return [
        dm.DataTransformerConfig(id_val="merge", options={}),
        dm.DataTransformerConfig(
            id_val="organize",
            options={
                "excludeByName": {"Time": True, **dict.fromkeys(hidden, True)},
                "indexByName": {field: i for i, (field, _) in enumerate(columns)},
                "renameByName": dict(columns),
            },
        ),
    ]


def _row(panel_id: int, title: str, y: int) -> dashboard.Row:
    return dashboard.Row(title).id(panel_id).grid_pos(_grid(0, y, 24, 1)).collapsed(False)


def _last_success(lookback: str) -> str:
    """Each image's last success as Prometheus holds it over ``lookback``: it survives an exporter
    restart (which forgets the timestamp until the image next succeeds), as EhpcImageDataStale's does."""
    return (
        f"max by ({IMAGE_KEY}) "
        f"(max_over_time(ehpc_image_last_success_timestamp_seconds{{{IMG}}}[{lookback}]))"
    )


def _stale_images(stale_after: int, lookback: str) -> str:
    """One series per stale image (labels IMAGE_KEY): the EhpcImageDataStale conditions, the last success
    older than ``stale_after`` or failing in every sample since at least ``stale_after`` ago."""
    return (
        f"(time() - {_last_success(lookback)} > {stale_after})"
        f" or (max by ({IMAGE_KEY}) (max_over_time(ehpc_image_up{{{IMG}}}[{stale_after}s])) == 0"
        f" unless on ({IMAGE_KEY}) {_last_success(lookback)})"
    )


# Every target the exporter reports (after its first cycle), with value 0: `or`-ed to a per-target count
# so that targets with nothing to count show 0 instead of an empty cell.
_TARGETS_ZERO = f"0 * sum by ({TARGET_KEY}) (ehpc_watched_images{{{TGT}}})"


def _per_target(expr: str) -> str:
    return f"({expr}) or {_TARGETS_ZERO}"


def _targets_table(
    stale_after: int, lookback: str, refresh_max_age: int, max_error_ratio: float
) -> table.Panel:
    """One row per target (account x region): how many images it watches, how many are up, not available,
    with a replica not available, stale; its API error ratio and the age of its last refresh cycle. The
    columns turn red where the matching alert's threshold is crossed."""
    not_available = (
        f"count by ({TARGET_KEY}) (ehpc_image_available{{{IMG}}} == 0 unless ignoring (code) {NOT_FOUND})"
    )
    replication = (
        f"count by ({TARGET_KEY}) (max by ({IMAGE_KEY}) (ehpc_image_replication_available{{{REPL}}} == 0"
        f" unless ignoring (replication_region, code) {NOT_FOUND}))"
    )
    error_ratio = (
        f"sum by ({TARGET_KEY}) (rate(ehpc_api_errors_total{{{TGT}}}[$__rate_interval]))"
        f" / sum by ({TARGET_KEY}) (rate(ehpc_api_requests_total{{{TGT}}}[$__rate_interval]))"
    )
    no_errors = f"0 * sum by ({TARGET_KEY}) (rate(ehpc_api_requests_total{{{TGT}}}[$__rate_interval]))"
    columns: list[tuple[str, str, str]] = [
        # (refId, title, expression)
        ("A", "Watched", f"sum by ({TARGET_KEY}) (ehpc_watched_images{{{TGT}}})"),
        ("B", "Up", _per_target(f"count by ({TARGET_KEY}) (ehpc_image_up{{{IMG}}} == 1)")),
        ("C", "Not available", _per_target(not_available)),
        ("D", "Replication incomplete", _per_target(replication)),
        ("E", "Stale", _per_target(f"count by ({TARGET_KEY}) ({_stale_images(stale_after, lookback)})")),
        ("F", "API error ratio", f"({error_ratio}) or {no_errors}"),
        (
            "G",
            "Refresh age",
            f"max by ({TARGET_KEY}) (time() - ehpc_refresh_last_success_timestamp_seconds{{{TGT}}})",
        ),
    ]

    def red_from(value: float) -> dm.DynamicConfigValue:
        return dm.DynamicConfigValue(
            id_val="thresholds",
            value={
                "mode": "absolute",
                "steps": [{"value": None, "color": GREEN}, {"value": value, "color": RED}],
            },
        )

    background = dm.DynamicConfigValue(id_val="custom.cellOptions", value={"type": "color-background"})
    panel = (
        table.Panel()
        .id(11)
        .title("Targets")
        .description(
            "One row per account x region the exporter watches: watched images, images whose last refresh "
            "succeeded, not available, with a copy not available in some region, stale (the "
            f"EhpcImageDataStale conditions), the share of failed API calls (red above {max_error_ratio:.0%},"
            f" EhpcApiErrorsHigh) and seconds since its last completed refresh cycle (red above "
            f"{refresh_max_age} s, EhpcRefreshStalled). A target with every image failing is "
            "EhpcTargetFailing."
        )
        .datasource(DATASOURCE)
        .grid_pos(_grid(0, 6, 24, 8))
        .targets([_query(expr, ref=ref, table_format=True) for ref, _, expr in columns])
        .transformations(
            _joined(
                [
                    ("account", "Account"),
                    ("region_id", "Region"),
                    *((f"Value #{ref}", title) for ref, title, _ in columns),
                ]
            )
        )
        .filterable(True)
        .sort_by([common.TableSortByFieldState().display_name("Account")])
        .override_by_name("Up", [dm.DynamicConfigValue(id_val="decimals", value=0)])
        .override_by_name("Watched", [dm.DynamicConfigValue(id_val="decimals", value=0)])
        .override_by_name(
            "API error ratio",
            [
                dm.DynamicConfigValue(id_val="unit", value="percentunit"),
                red_from(max_error_ratio),
                background,
            ],
        )
        .override_by_name(
            "Refresh age",
            [dm.DynamicConfigValue(id_val="unit", value="s"), red_from(refresh_max_age), background],
        )
    )
    for title in ("Not available", "Replication incomplete", "Stale"):
        panel = panel.override_by_name(
            title, [dm.DynamicConfigValue(id_val="decimals", value=0), red_from(1), background]
        )
    return panel


def _history_panels(
    replication_window: str, replication_max: int, max_changes: int, flap_window: str
) -> list[Any]:
    """Replication times per replication region, how long each image has been in its status, status
    changes; every query takes the account and region variables."""
    repl = f'{TGT}, replication_region=~"$replication_region"'
    by = f"{TARGET_KEY}, replication_region, le"

    def quantile(q: float, window: str) -> str:
        return (
            f"histogram_quantile({q:g}, sum by ({by}) "
            f"(increase(ehpc_image_replication_duration_seconds_bucket{{{repl}}}[{window}])))"
        )

    quantiles = ((0.5, "A"), (0.9, "B"), (0.99, "C"))
    repl_table = (
        table.Panel()
        .id(51)
        .title("Replication time per region")
        .description(
            "Quantiles of the observed replication times (ehpc_image_replication_duration_seconds: from a "
            "copy first seen not available to available) per account, region and replication region over "
            "the dashboard's time range, and how many copies completed in it. Empty quantiles: no copy "
            "completed in the range."
        )
        .datasource(DATASOURCE)
        .grid_pos(_grid(0, 68, 12, 8))
        .targets(
            [
                *(_query(quantile(q, "$__range"), ref=ref, table_format=True) for q, ref in quantiles),
                _query(
                    f"sum by ({TARGET_KEY}, replication_region) "
                    f"(increase(ehpc_image_replication_duration_seconds_count{{{repl}}}[$__range]))",
                    ref="D",
                    table_format=True,
                ),
            ]
        )
        .transformations(
            _joined(
                [
                    ("account", "Account"),
                    ("region_id", "Region"),
                    ("replication_region", "Replication region"),
                    ("Value #A", "p50"),
                    ("Value #B", "p90"),
                    ("Value #C", "p99"),
                    ("Value #D", "Copies"),
                ]
            )
        )
        .filterable(True)
        .unit("s")
        .override_by_name(
            "Copies",
            [
                dm.DynamicConfigValue(id_val="unit", value="short"),
                dm.DynamicConfigValue(id_val="decimals", value=0),
            ],
        )
    )
    repl_series = (
        _timeseries(
            52,
            "Replication time (alert window)",
            f"p50/p90/p99 of the replication times completed within the last {replication_window} per "
            f"replication region (the EhpcImageReplicationSlow quantity; the line is its default threshold, "
            "regions listed in alerts/thresholds.yaml have their own).",
            "s",
        )
        .grid_pos(_grid(12, 68, 12, 8))
        .targets(
            [
                _query(
                    quantile(q, replication_window),
                    f"p{round(q * 100)} " + TARGET_LEGEND + " -> {{replication_region}}",
                    ref=ref,
                )
                for q, ref in quantiles
            ]
        )
        .thresholds(_thresholds((None, GREEN), (replication_max, RED)))
        .thresholds_style(common.GraphThresholdsStyleConfig().mode(cm.GraphThresholdsStyleMode.LINE))
    )
    since = f"max by ({IMAGE_KEY}) (ehpc_image_status_since_timestamp_seconds{{{IMG}}})"
    since_table = (
        table.Panel()
        .id(53)
        .title("Status since")
        .description(
            "Each image's current status, since when it holds (ehpc_image_status_since_timestamp_seconds, "
            "kept across restarts by the state file) and for how long. The status is the state-set sample "
            "valued 1, which exists with metrics.state_sets full and current alike."
        )
        .datasource(DATASOURCE)
        .grid_pos(_grid(0, 76, 12, 9))
        .targets(
            [
                _query(
                    f"max by ({IMAGE_KEY}, status) (ehpc_image_status{{{IMG}}} == 1)",
                    ref="A",
                    table_format=True,
                ),
                _query(f"{since} * 1000", ref="B", table_format=True),
                _query(f"time() - {since}", ref="C", table_format=True),
            ]
        )
        .transformations(
            _joined(
                [
                    ("account", "Account"),
                    ("region_id", "Region"),
                    ("image_id", "Image ID"),
                    ("status", "Status"),
                    ("Value #B", "Since"),
                    ("Value #C", "For"),
                ],
                hidden=["Value #A"],
            )
        )
        .filterable(True)
        .sort_by([common.TableSortByFieldState().display_name("For")])
        .override_by_name("Since", [dm.DynamicConfigValue(id_val="unit", value="dateTimeAsIso")])
        .override_by_name("For", [dm.DynamicConfigValue(id_val="unit", value="s")])
    )
    changes = (
        _timeseries(
            54,
            "Status changes",
            f"Status changes of each image within the last {flap_window} (ehpc_image_status_changes_total, "
            f"the largest count of any exporter process); above {max_changes} it is EhpcImageFlapping. "
            "Steady images stay at 0.",
            "short",
        )
        .grid_pos(_grid(12, 76, 12, 9))
        .with_target(
            _query(
                f"max by ({IMAGE_KEY}) (increase(ehpc_image_status_changes_total{{{IMG}}}[{flap_window}]))",
                IMAGE_LEGEND,
            )
        )
        .thresholds(_thresholds((None, GREEN), (max_changes, RED)))
        .thresholds_style(common.GraphThresholdsStyleConfig().mode(cm.GraphThresholdsStyleMode.LINE))
    )
    return [_row(50, "History", 67), repl_table, repl_series, since_table, changes]


def _exporter_panels() -> list[Any]:
    """Shards and the state file, per exporter pod: process-level families without account or region
    labels, so only the job variable applies (as for `up`)."""
    per_pod = "job, instance, pod"
    shards = (
        table.Panel()
        .id(61)
        .title("Shards")
        .description(
            "One row per exporter pod: its shard ordinal and the total number of shards it was started with "
            "(0 of 1 when unsharded). Every ordinal below the total must appear (EhpcShardsMissing) and all "
            "pods of a job must agree on the total (EhpcShardingMismatch)."
        )
        .datasource(DATASOURCE)
        .grid_pos(_grid(0, 86, 12, 8))
        .targets(
            [
                _query(
                    f"max by ({per_pod}) (ehpc_exporter_shard_ordinal{{{JOB}}})", ref="A", table_format=True
                ),
                _query(
                    f"max by ({per_pod}) (ehpc_exporter_total_shards{{{JOB}}})", ref="B", table_format=True
                ),
            ]
        )
        .transformations(
            _joined(
                [
                    ("job", "Job"),
                    ("pod", "Pod"),
                    ("instance", "Instance"),
                    ("Value #A", "Shard"),
                    ("Value #B", "Total shards"),
                ]
            )
        )
        .filterable(True)
        .decimals(0)
        .sort_by([common.TableSortByFieldState().display_name("Shard")])
    )
    state = (
        table.Panel()
        .id(62)
        .title("State file")
        .description(
            "Per exporter pod with a state file: seconds since the last successful save, failed saves in "
            "the time range (red from 1: EhpcStateSaveFailing), images loaded at start-up and start-up "
            "loads that failed (EhpcStateLoadFailed). Pods without a state file have no row."
        )
        .datasource(DATASOURCE)
        .grid_pos(_grid(12, 86, 12, 8))
        .targets(
            [
                _query(
                    f"max by ({per_pod}) (time() - ehpc_state_last_save_timestamp_seconds{{{JOB}}})",
                    ref="A",
                    table_format=True,
                ),
                _query(
                    f"max by ({per_pod}) (increase(ehpc_state_save_errors_total{{{JOB}}}[$__range]))",
                    ref="B",
                    table_format=True,
                ),
                _query(f"max by ({per_pod}) (ehpc_state_loaded_images{{{JOB}}})", ref="C", table_format=True),
                _query(
                    f"sum by ({per_pod}) (ehpc_state_load_errors_total{{{JOB}}})", ref="D", table_format=True
                ),
            ]
        )
        .transformations(
            _joined(
                [
                    ("job", "Job"),
                    ("pod", "Pod"),
                    ("instance", "Instance"),
                    ("Value #A", "Last save age"),
                    ("Value #B", "Failed saves"),
                    ("Value #C", "Loaded images"),
                    ("Value #D", "Failed loads"),
                ]
            )
        )
        .filterable(True)
        .override_by_name("Last save age", [dm.DynamicConfigValue(id_val="unit", value="s")])
    )
    for title in ("Failed saves", "Failed loads"):
        state = state.override_by_name(
            title,
            [
                dm.DynamicConfigValue(id_val="decimals", value=0),
                dm.DynamicConfigValue(
                    id_val="thresholds",
                    value={
                        "mode": "absolute",
                        "steps": [{"value": None, "color": GREEN}, {"value": 1, "color": RED}],
                    },
                ),
                dm.DynamicConfigValue(id_val="custom.cellOptions", value={"type": "color-background"}),
            ],
        )
    return [_row(60, "Exporter: shards and state file", 85), shards, state]


def _credential_panels(min_remaining: int) -> list[Any]:
    """Credential and cycle health: time left of each account's temporary credentials (one source per
    account, so account but no region label), failed renewals, and refresh cycles by result."""
    acct = f'{JOB}, account=~"$account"'
    left = (
        _timeseries(
            71,
            "Credential time left",
            "Seconds until each account's temporary credentials expire (assumed role, RRSA/OIDC, ECS RAM "
            "role, credentials URI), per exporter; a renewal moves it up again. Long-term AccessKeys have no "
            f"line. Below {min_remaining} s with failed renewals: EhpcCredentialsExpiring.",
            "s",
        )
        .grid_pos(_grid(0, 95, 8, 8))
        .with_target(
            _query(
                f"min by (account, instance) (ehpc_credentials_expiry_timestamp_seconds{{{acct}}} - time())",
                "{{account}} ({{instance}})",
            )
        )
        .thresholds(_thresholds((None, RED), (min_remaining, GREEN)))
        .thresholds_style(common.GraphThresholdsStyleConfig().mode(cm.GraphThresholdsStyleMode.LINE))
    )
    failures = (
        _timeseries(
            72,
            "Credential renewals failed",
            "Failed fetches of each account's credentials per interval (the STS, the OIDC token file, the "
            "credentials URI or ECS metadata failing); the credential held is used while it is valid.",
            "short",
        )
        .grid_pos(_grid(8, 95, 8, 8))
        .with_target(
            _query(
                "sum by (account) "
                f"(increase(ehpc_credentials_refresh_errors_total{{{acct}}}[$__rate_interval]))",
                "{{account}}",
            )
        )
    )
    cycles = (
        _timeseries(
            73,
            "Refresh cycles by result",
            "Refresh cycles per interval by result: success (every image answered), partial (some image or "
            "discovery failed), failure (no image answered, or the cycle crashed).",
            "short",
        )
        .grid_pos(_grid(16, 95, 8, 8))
        .with_target(
            _query(
                f"sum by ({TARGET_KEY}, result) "
                f"(increase(ehpc_refresh_cycles_total{{{TGT}}}[$__rate_interval]))",
                TARGET_LEGEND + " {{result}}",
            )
        )
    )
    return [_row(70, "Credentials and refresh cycles", 94), left, failures, cycles]


def panels(
    stale_after: int, lookback: str = "1h", refresh_max_age: int = 300, max_error_ratio: float = 0.2
) -> list[dashboard.Row | Any]:
    """Every panel and row, top to bottom, with explicit ids and positions."""
    out: list[Any] = []

    # ------------------------------------------------------------------ fleet health
    out.append(_row(1, "Fleet health", 0))
    stats = [
        (
            "Exporters up",
            "Scrape targets of the exporter that answered the last scrape.",
            f"sum(up{{{JOB}}}) or vector(0)",
            None,
        ),
        (
            "Watched images",
            "Images in the watched set (static list plus discovery), summed over the selected accounts, "
            "regions and exporter shards.",
            f"sum(ehpc_watched_images{{{TGT}}}) or vector(0)",
            None,
        ),
        (
            "Available",
            "Images whose status is in the healthy set.",
            f"count(ehpc_image_available{{{IMG}}} == 1) or vector(0)",
            None,
        ),
        (
            "Unavailable",
            "Images whose status is outside the healthy set (deleted images count as Missing instead).",
            f"count(ehpc_image_available{{{IMG}}} == 0 unless ignoring (code) {NOT_FOUND}) or vector(0)",
            0,
        ),
        (
            "Missing",
            "Images for which GetImage answers ImageNotFound.",
            f"count({NOT_FOUND} == 1) or vector(0)",
            0,
        ),
        (
            "Stale",
            f"Images without a successful refresh for more than {stale_after} s, across exporter restarts, "
            "and images failing since they were first watched (the EhpcImageDataStale conditions).",
            f"count({_stale_images(stale_after, lookback)}) or vector(0)",
            0,
        ),
        (
            "Failing refresh",
            "Images whose last GetImage failed (see the image table for the error code).",
            f"count(ehpc_image_up{{{IMG}}} == 0) or vector(0)",
            0,
        ),
        (
            "Replicas not available",
            "Image copies in additional regions that are not usable (deleted images not counted).",
            f"count(ehpc_image_replication_available{{{REPL}}} == 0"
            f" unless ignoring (replication_region, code) {NOT_FOUND}) or vector(0)",
            0,
        ),
    ]
    for i, (title, description, expr, bad_above) in enumerate(stats):
        out.append(_stat(2 + i, title, description, expr, _grid(3 * i, 1, 3, 4), bad_above))

    # ------------------------------------------------------------------ targets
    out.append(_row(10, "Targets (account x region)", 5))
    out.append(_targets_table(stale_after, lookback, refresh_max_age, max_error_ratio))

    # ------------------------------------------------------------------ images
    out.append(_row(20, "Images", 14))
    image_table = (
        table.Panel()
        .id(21)
        .title("Images")
        .description(
            "One row per image (account x region x image ID): its static facts (ehpc_image_info), current "
            "status, availability, "
            "size, creation time, time since the last successful refresh and the last error code."
        )
        .datasource(DATASOURCE)
        .grid_pos(_grid(0, 15, 24, 9))
        .targets(
            [
                _query(
                    f"max by ({IMAGE_KEY}, name, version, image_type, os_tag, platform, architecture, "
                    f"app_id, registry_url) (ehpc_image_info{{{IMG}}})",
                    ref="A",
                    table_format=True,
                ),
                _query(
                    f"max by ({IMAGE_KEY}, status) (ehpc_image_status{{{IMG}}} == 1)",
                    ref="B",
                    table_format=True,
                ),
                _query(f"max by ({IMAGE_KEY}) (ehpc_image_available{{{IMG}}})", ref="C", table_format=True),
                _query(f"max by ({IMAGE_KEY}) (ehpc_image_size_bytes{{{IMG}}})", ref="D", table_format=True),
                _query(
                    f"max by ({IMAGE_KEY}) (ehpc_image_created_timestamp_seconds{{{IMG}}}) * 1000",
                    ref="E",
                    table_format=True,
                ),
                _query(
                    f"time() - {_last_success(lookback)}",
                    ref="F",
                    table_format=True,
                ),
                _query(
                    f"max by ({IMAGE_KEY}, code) (ehpc_image_last_error_info{{{IMG}}})",
                    ref="G",
                    table_format=True,
                ),
            ]
        )
        .transformations(
            _joined(
                [
                    ("account", "Account"),
                    ("region_id", "Region"),
                    ("image_id", "Image ID"),
                    ("name", "Name"),
                    ("version", "Version"),
                    ("status", "Status"),
                    ("Value #C", "Available"),
                    ("Value #D", "Size"),
                    ("Value #E", "Created"),
                    ("Value #F", "Data age"),
                    ("code", "Last error"),
                    ("image_type", "Type"),
                    ("os_tag", "OS"),
                    ("platform", "Platform"),
                    ("architecture", "Arch"),
                    ("app_id", "App ID"),
                    ("registry_url", "Registry"),
                ],
                hidden=["Value #A", "Value #B", "Value #G"],
            )
        )
        .filterable(True)
        .sort_by([common.TableSortByFieldState().display_name("Account")])
        .override_by_name(
            "Available",
            [
                dm.DynamicConfigValue(id_val="mappings", value=_bool_mapping("yes", "NO")),
                dm.DynamicConfigValue(
                    id_val="custom.cellOptions", value={"type": "color-background", "mode": "basic"}
                ),
            ],
        )
        .override_by_name("Size", [dm.DynamicConfigValue(id_val="unit", value="bytes")])
        .override_by_name("Created", [dm.DynamicConfigValue(id_val="unit", value="dateTimeAsIso")])
        .override_by_name(
            "Data age",
            [
                dm.DynamicConfigValue(id_val="unit", value="s"),
                dm.DynamicConfigValue(
                    id_val="thresholds",
                    value={
                        "mode": "absolute",
                        "steps": [{"value": None, "color": GREEN}, {"value": stale_after, "color": RED}],
                    },
                ),
                dm.DynamicConfigValue(id_val="custom.cellOptions", value={"type": "color-text"}),
            ],
        )
    )
    out.append(image_table)

    out.append(
        table.Panel()
        .id(22)
        .title("Replication matrix")
        .description(
            "Image (account/region/image ID) x additional region: whether that region's copy is usable "
            "(ehpc_image_replication_available)."
        )
        .datasource(DATASOURCE)
        .grid_pos(_grid(0, 24, 12, 9))
        .with_target(
            _query(
                # One row per image: the matrix takes one row field, so the three identity labels are joined.
                "label_join(max by (account, region_id, image_id, replication_region) "
                f"(ehpc_image_replication_available{{{REPL}}}),"
                ' "image", "/", "account", "region_id", "image_id")',
                table_format=True,
            )
        )
        .with_transformation(
            dm.DataTransformerConfig(
                id_val="groupingToMatrix",
                options={"columnField": "replication_region", "rowField": "image", "valueField": "Value"},
            )
        )
        .mappings(_bool_mapping("Available", "Not available"))
        .cell_options(cm.TableColoredBackgroundCellOptions())
        .no_value("-")
    )

    out.append(
        bargauge.Panel()
        .id(23)
        .title("Image size")
        .description("ehpc_image_size_bytes per image (the API's Size, GiB, in bytes).")
        .datasource(DATASOURCE)
        .grid_pos(_grid(12, 24, 12, 9))
        .with_target(_query(f"max by ({IMAGE_KEY}) (ehpc_image_size_bytes{{{IMG}}})", IMAGE_LEGEND).instant())
        .unit("bytes")
        .min(0)
        .orientation(cm.VizOrientation.HORIZONTAL)
        .display_mode(cm.BarGaugeDisplayMode.BASIC)
        .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .thresholds(_thresholds((None, BLUE)))
    )

    out.append(
        statetimeline.Panel()
        .id(24)
        .title("Image availability over time")
        .description("ehpc_image_available per image: when each image was (not) in the healthy set.")
        .datasource(DATASOURCE)
        .grid_pos(_grid(0, 33, 12, 8))
        .with_target(_query(f"max by ({IMAGE_KEY}) (ehpc_image_available{{{IMG}}})", IMAGE_LEGEND))
        .mappings(_bool_mapping("available", "not available"))
        .thresholds(_thresholds((None, RED), (1, GREEN)))
        .show_value(cm.VisibilityMode.NEVER)
        .merge_values(True)
    )

    out.append(
        statetimeline.Panel()
        .id(25)
        .title("Replication over time")
        .description("ehpc_image_replication_available per image and region.")
        .datasource(DATASOURCE)
        .grid_pos(_grid(12, 33, 12, 8))
        .with_target(
            _query(
                f"max by ({IMAGE_KEY}, replication_region) (ehpc_image_replication_available{{{REPL}}})",
                IMAGE_LEGEND + " @ {{replication_region}}",
            )
        )
        .mappings(_bool_mapping("available", "not available"))
        .thresholds(_thresholds((None, RED), (1, GREEN)))
        .show_value(cm.VisibilityMode.NEVER)
        .merge_values(True)
    )

    # ------------------------------------------------------------------ cloud API
    out.append(_row(30, "Cloud API", 41))
    out.append(
        _timeseries(
            31, "API requests", "API calls per second by action; every retry attempt counts.", "reqps"
        )
        .grid_pos(_grid(0, 42, 8, 8))
        .with_target(
            _query(
                f"sum by ({TARGET_KEY}, action) (rate(ehpc_api_requests_total{{{TGT}}}[$__rate_interval]))",
                TARGET_LEGEND + " {{action}}",
            )
        )
    )
    out.append(
        _timeseries(
            32,
            "API errors by code",
            "Failed calls per second by action and API error code; Timeout, ConnectionError, "
            "InvalidResponse and CredentialError are failures without an API answer.",
            "reqps",
        )
        .grid_pos(_grid(8, 42, 8, 8))
        .with_target(
            _query(
                f"sum by ({TARGET_KEY}, action, code) "
                f"(rate(ehpc_api_errors_total{{{TGT}}}[$__rate_interval])) > 0",
                TARGET_LEGEND + " {{action}} {{code}}",
            )
        )
    )
    out.append(
        _timeseries(
            33,
            "API latency",
            "Quantiles of ehpc_api_request_duration_seconds per region endpoint and action (one HTTP "
            "attempt each; the accounts of one region share its endpoint).",
            "s",
        )
        .grid_pos(_grid(16, 42, 8, 8))
        .targets(
            [
                _query(
                    f"histogram_quantile({q}, sum by (le, region_id, action) "
                    f"(rate(ehpc_api_request_duration_seconds_bucket{{{TGT}}}[$__rate_interval])))",
                    f"p{round(q * 100)} {{{{region_id}}}} {{{{action}}}}",
                    ref=ref,
                )
                for q, ref in ((0.5, "A"), (0.9, "B"), (0.99, "C"))
            ]
        )
    )
    out.append(
        bargauge.Panel()
        .id(34)
        .title("Errors by code in the time range")
        .description("Failed calls per account, region and API error code over the dashboard's time range.")
        .datasource(DATASOURCE)
        .grid_pos(_grid(0, 50, 8, 8))
        .with_target(
            _query(
                f"sort_desc(sum by ({TARGET_KEY}, code) "
                f"(increase(ehpc_api_errors_total{{{TGT}}}[$__range])) > 0)",
                TARGET_LEGEND + " {{code}}",
            ).instant()
        )
        .unit("short")
        .decimals(0)
        .min(0)
        .orientation(cm.VizOrientation.HORIZONTAL)
        .display_mode(cm.BarGaugeDisplayMode.BASIC)
        .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .thresholds(_thresholds((None, ORANGE)))
    )
    out.append(
        _timeseries(
            35,
            "Error ratio",
            "Share of calls that failed, per account, region and action (the EhpcApiErrorsHigh quantity).",
            "percentunit",
        )
        .grid_pos(_grid(8, 50, 8, 8))
        .with_target(
            _query(
                f"sum by ({TARGET_KEY}, action) (rate(ehpc_api_errors_total{{{TGT}}}[$__rate_interval]))"
                f" / sum by ({TARGET_KEY}, action) "
                f"(rate(ehpc_api_requests_total{{{TGT}}}[$__rate_interval]))",
                TARGET_LEGEND + " {{action}}",
            )
        )
    )
    out.append(
        _timeseries(
            36,
            "Throttled calls",
            "Calls answered Throttling.* per second (the EhpcApiThrottled quantity).",
            "reqps",
        )
        .grid_pos(_grid(16, 50, 8, 8))
        .with_target(
            _query(
                f"sum by ({TARGET_KEY}, action, code) "
                f'(rate(ehpc_api_errors_total{{{TGT}, code=~"Throttling.*"}}[$__rate_interval]))',
                TARGET_LEGEND + " {{action}} {{code}}",
            )
        )
    )

    # ------------------------------------------------------------------ refresh
    out.append(_row(40, "Refresh", 58))
    out.append(
        _timeseries(
            41,
            "Refresh duration",
            "Duration of the last refresh cycle, per account, region and exporter.",
            "s",
        )
        .grid_pos(_grid(0, 59, 8, 8))
        .with_target(
            _query(
                f"max by ({TARGET_KEY}, instance) (ehpc_refresh_duration_seconds{{{TGT}}})",
                TARGET_LEGEND + " ({{instance}})",
            )
        )
    )
    out.append(
        _timeseries(
            42,
            "Data age per image",
            f"Seconds since the last successful GetImage of each image; above {stale_after} s it is stale.",
            "s",
        )
        .grid_pos(_grid(8, 59, 8, 8))
        .with_target(
            _query(
                f"time() - {_last_success(lookback)}",
                IMAGE_LEGEND,
            )
        )
        .thresholds(_thresholds((None, GREEN), (stale_after, RED)))
        .thresholds_style(common.GraphThresholdsStyleConfig().mode(cm.GraphThresholdsStyleMode.LINE))
    )
    out.append(
        _timeseries(
            43,
            "Time since last refresh cycle",
            "Seconds since the end of the last refresh cycle that completed, per account, region and "
            "exporter.",
            "s",
        )
        .grid_pos(_grid(16, 59, 8, 8))
        .with_target(
            _query(
                f"max by ({TARGET_KEY}, instance) "
                f"(time() - ehpc_refresh_last_success_timestamp_seconds{{{TGT}}})",
                TARGET_LEGEND + " ({{instance}})",
            )
        )
    )
    return out


def _timeseries(panel_id: int, title: str, description: str, unit: str) -> timeseries.Panel:
    return (
        timeseries.Panel()
        .id(panel_id)
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .min(0)
        .line_width(1)
        .fill_opacity(10)
        .legend(
            common.VizLegendOptions()
            .display_mode(cm.LegendDisplayMode.LIST)
            .placement(cm.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
        .tooltip(common.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING))
    )


def _variables() -> list[Any]:
    """Datasource, job, account, region_id, image_id and replication_region; all but the datasource are
    multi-select with All."""

    def label_values(name: str, label: str, query: str, all_value: str) -> dashboard.QueryVariable:
        return (
            dashboard.QueryVariable(name)
            .label(label)
            .datasource(DATASOURCE)
            .query(query)
            .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(dm.VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(all_value)
            .current(dm.VariableOption(selected=True, text=["All"], value=["$__all"]))
        )

    return [
        dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus"),
        label_values("job", "Job", "label_values(ehpc_watched_images, job)", ".+"),
        # The targets (account x region) from the per-target refresh gauge. All is `.*`, not `.+`, so that
        # an exporter from before the identity labels (series without them) still shows under All.
        label_values("account", "Account", 'label_values(ehpc_watched_images{job=~"$job"}, account)', ".*"),
        label_values(
            "region_id",
            "Region",
            'label_values(ehpc_watched_images{job=~"$job", account=~"$account"}, region_id)',
            ".*",
        ),
        # ehpc_image_up has every watched image, also those that never answered (no info series yet).
        label_values(
            "image_id",
            "Image",
            'label_values(ehpc_image_up{job=~"$job", account=~"$account", region_id=~"$region_id"}, '
            "image_id)",
            ".+",
        ),
        # Images without additional regions have no replication series, hence the empty match in All.
        label_values(
            "replication_region",
            "Replication region",
            'label_values(ehpc_image_replication_available{job=~"$job", account=~"$account", '
            'region_id=~"$region_id", image_id=~"$image_id"}, replication_region)',
            ".*",
        ),
    ]


def build_dashboard() -> dict[str, Any]:
    """The dashboard as a JSON-ready dict."""
    alerts = load_thresholds().alerts
    stale = alerts.EhpcImageDataStale
    stale_after, lookback = stale.max_age_seconds, stale.lookback
    builder = (
        dashboard.Dashboard("E-HPC Instant images")
        .uid(UID)
        .description(
            "Health, replication and size of Alibaba Cloud E-HPC Instant images, and the cloud API as "
            "ehpc-image-exporter sees it."
        )
        .tags(["ehpc", "alibaba-cloud", "ehpc-image-exporter"])
        .editable()
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .time("now-6h", "now")
        .refresh("1m")
        .timezone("browser")
        .variables(_variables())
        .link(
            dashboard.DashboardLink("Runbook")
            .type(dm.DashboardLinkType.LINK)
            .url(load_thresholds().runbook_url)
            .target_blank(True)
            .icon("doc")
        )
    )
    for item in panels(
        stale_after,
        lookback,
        alerts.EhpcRefreshStalled.max_age_seconds,
        alerts.EhpcApiErrorsHigh.max_ratio,
    ):
        builder = builder.with_row(item) if isinstance(item, dashboard.Row) else builder.with_panel(item)
    slow, flapping = alerts.EhpcImageReplicationSlow, alerts.EhpcImageFlapping
    for item in [
        *_history_panels(slow.window, slow.max_seconds, flapping.max_changes, flapping.window),
        *_exporter_panels(),
        *_credential_panels(alerts.EhpcCredentialsExpiring.min_remaining_seconds),
    ]:
        builder = builder.with_row(item) if isinstance(item, dashboard.Row) else builder.with_panel(item)
    raw: dict[str, Any] = json.loads(json.dumps(builder.build(), cls=JSONEncoder))
    # The SDK gives every variable the interval-only keys auto/auto_count/auto_min; the dashboard schema
    # of @grafana/schema forbids them elsewhere and Grafana ignores them, so they go.
    for variable in raw["templating"]["list"]:
        if variable["type"] != "interval":
            for key in ("auto", "auto_count", "auto_min"):
                variable.pop(key, None)
    return raw


def render() -> str:
    """The dashboard file's text: sorted keys, two-space indent, trailing newline."""
    return json.dumps(build_dashboard(), indent=2, sort_keys=True) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog="python -m grafana.build", description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, default=DASHBOARD_FILE)
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not args.output.exists() or args.output.read_text(encoding="utf-8") != text:
            print(f"{args.output} is out of date; run python -m grafana.build", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
