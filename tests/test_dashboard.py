"""The Grafana dashboard: reproducible from code, valid against Grafana's own schema, and every query
returns data from a real Prometheus scraping the demo exporter."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from grafana import build
from tests.fixtures.promstack import DemoStack, PromStackError, promql_metric_names
from tests.test_alerts import in_contract, reads_only_current_samples, state_set_reads

REPO = build.GRAFANA_DIR.parent
NODE_MODULES = REPO / "tools" / "node" / "node_modules"
SCHEMA_TYPES = (
    NODE_MODULES / "@grafana" / "schema" / "dist" / "types" / "raw" / "dashboard" / "x" / "types.gen.d.ts"
)
GENERATOR = NODE_MODULES / "ts-json-schema-generator" / "bin" / "ts-json-schema-generator"


@dataclass(frozen=True)
class GeneratedSchema:
    """The dashboard JSON schema generated from @grafana/schema, and how long generating it took."""

    schema: dict[str, Any]
    seconds: float

    def validator(self, definition: str) -> jsonschema.Draft7Validator:
        """A validator for one definition (Panel, RowPanel, Dashboard, ...)."""
        return jsonschema.Draft7Validator(
            {
                "$schema": self.schema["$schema"],
                "definitions": self.schema["definitions"],
                "$ref": f"#/definitions/{definition}",
            }
        )


@pytest.fixture(scope="session")
def dashboard_schema(tmp_path_factory: pytest.TempPathFactory) -> GeneratedSchema:
    """Generate the strict schema (additionalProperties false) once per session; about a second."""
    out = tmp_path_factory.mktemp("grafana-schema") / "dashboard.schema.json"
    started = time.monotonic()
    proc = subprocess.run(
        [
            "node",
            str(GENERATOR),
            "--path",
            str(SCHEMA_TYPES),
            "--type",
            "Dashboard",
            "--no-type-check",
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    seconds = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    return GeneratedSchema(json.loads(out.read_text()), seconds)


@pytest.fixture(scope="module")
def dash() -> dict[str, Any]:
    """The committed dashboard JSON."""
    return dict(json.loads(build.DASHBOARD_FILE.read_text()))


def all_panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows and panels nested in collapsed rows included."""
    for panel in dash["panels"]:
        yield panel
        yield from panel.get("panels", [])


def targets(dash: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(panel, target) for every query of the dashboard."""
    for panel in all_panels(dash):
        for target in panel.get("targets", []):
            yield panel, target


def variables(dash: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Template variables by name."""
    return {v["name"]: v for v in dash["templating"]["list"]}


def schema_errors(validator: jsonschema.Draft7Validator, obj: Any) -> list[str]:
    """Readable one-line errors: path and message."""
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]


# ------------------------------------------------------------------------------------ reproducible from code


def test_committed_json_equals_a_fresh_build() -> None:
    """`python -m grafana.build` is deterministic and the committed JSON is its current output."""
    assert build.render() == build.render()
    assert build.DASHBOARD_FILE.read_text() == build.render(), "run: python -m grafana.build"
    assert build.main(["--check"]) == 0


def test_check_mode_notices_a_stale_file(tmp_path: Path) -> None:
    """--check fails on a hand-edited file instead of silently accepting it."""
    edited = tmp_path / "dashboard.json"
    edited.write_text(build.render().replace("E-HPC Instant images", "Edited by hand"))
    assert build.main(["--check", "--output", str(edited)]) == 1
    assert build.main(["--output", str(edited)]) == 0
    assert build.main(["--check", "--output", str(edited)]) == 0


# ---------------------------------------------------------------------------------------------- schema


@pytest.mark.process
def test_schema_generation_is_fast(dashboard_schema: GeneratedSchema, record_property: Any) -> None:
    """Generating the schema from the TypeScript types gives the definitions the checks below need.

    How long it took is recorded (junit property ``schema_generation_seconds``), never judged: the
    generator's own 120 s timeout bounds a hang, and wall time on a busy machine says nothing about it.
    """
    record_property("schema_generation_seconds", round(dashboard_schema.seconds, 2))
    assert {"Dashboard", "Panel", "RowPanel", "VariableModel"} <= set(dashboard_schema.schema["definitions"])


def test_every_panel_validates_against_grafana_schema(
    dash: dict[str, Any], dashboard_schema: GeneratedSchema
) -> None:
    """Each panel against #/definitions/Panel (RowPanel for rows), with unknown keys forbidden."""
    panel_v, row_v = dashboard_schema.validator("Panel"), dashboard_schema.validator("RowPanel")
    errors = {
        f"{p.get('id')} {p.get('title')}": errs
        for p in all_panels(dash)
        if (errs := schema_errors(row_v if p["type"] == "row" else panel_v, p))
    }
    assert errors == {}


@pytest.mark.process
def test_dashboard_without_panels_validates(dash: dict[str, Any], dashboard_schema: GeneratedSchema) -> None:
    """Top-level keys, templating variables, links and time settings against #/definitions/Dashboard."""
    rest = {k: v for k, v in dash.items() if k != "panels"}
    assert schema_errors(dashboard_schema.validator("Dashboard"), rest) == []


def test_schema_check_catches_broken_panels(dash: dict[str, Any], dashboard_schema: GeneratedSchema) -> None:
    """The validation has teeth: a misspelt key, a wrong type and a missing type are all reported."""
    panel = next(p for p in all_panels(dash) if p["type"] == "timeseries")
    validator = dashboard_schema.validator("Panel")
    broken = json.loads(json.dumps(panel))
    broken["gridPos"]["w"] = "wide"
    broken["fieldconfig"] = broken.pop("fieldConfig")
    errors = schema_errors(validator, broken)
    assert any(e.startswith("gridPos/w:") for e in errors), errors
    assert any("'fieldconfig' was unexpected" in e for e in errors), errors
    del broken["type"]
    assert any("'type' is a required property" in e for e in schema_errors(validator, broken))


def test_sdk_round_trip_drops_nothing(dash: dict[str, Any]) -> None:
    """Dashboard.from_json silently drops keys it does not know, so a lossless round trip means no typos."""
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models.dashboard import Dashboard

    register_default_plugins()
    out = json.loads(json.dumps(Dashboard.from_json(dash), cls=JSONEncoder))
    lost: list[str] = []

    def compare(a: Any, b: Any, path: str) -> None:
        if isinstance(a, dict):
            if not isinstance(b, dict):
                lost.append(f"{path}: became {type(b).__name__}")
                return
            for key, value in a.items():
                if key not in b:
                    lost.append(f"{path}/{key}: dropped")
                else:
                    compare(value, b[key], f"{path}/{key}")
        elif isinstance(a, list):
            if not isinstance(b, list) or len(a) != len(b):
                lost.append(f"{path}: list changed")
                return
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                compare(x, y, f"{path}/{i}")
        elif a != b:
            lost.append(f"{path}: {a!r} -> {b!r}")

    compare(dash, out, "")
    assert lost == []


# ------------------------------------------------------------------------------------------ layout, wiring


def test_panel_ids_unique_and_layout_sane(dash: dict[str, Any]) -> None:
    """Unique ids; every panel inside the 24-column grid; no two panels overlap."""
    panels = list(all_panels(dash))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), ids
    cells: dict[tuple[int, int], int] = {}
    for p in panels:
        g = p["gridPos"]
        assert min(g["w"], g["h"]) > 0, p["title"]
        assert min(g["x"], g["y"]) >= 0, p["title"]
        assert g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps panel {cells[(x, y)]}"
                cells[(x, y)] = p["id"]
    assert all(p.get("title") for p in panels)


def test_queries_use_the_datasource_variable(dash: dict[str, Any]) -> None:
    """Panels, targets and query variables all point at ${datasource}, so the dashboard imports anywhere."""
    ref = {"type": "prometheus", "uid": "${datasource}"}
    for panel in all_panels(dash):
        if panel["type"] != "row":
            assert panel["datasource"] == ref, panel["title"]
            assert panel["targets"], panel["title"]
    for panel, target in targets(dash):
        assert target["datasource"] == ref, panel["title"]
        assert target["expr"].strip(), panel["title"]
    assert len({t["refId"] for p in all_panels(dash) for t in p.get("targets", [])}) >= 1
    ds = variables(dash)["datasource"]
    assert (ds["type"], ds["query"]) == ("datasource", "prometheus")
    for var in variables(dash).values():
        if var["type"] == "query":
            assert var["datasource"] == ref, var["name"]


FILTER_VARIABLES = ("job", "account", "region_id", "image_id", "replication_region")


def test_variables_are_label_values_queries(dash: dict[str, Any]) -> None:
    """job, account, region_id, image_id and replication_region come from label_values over contract
    metrics; the targets (account, region) from the per-target refresh gauge, region_id narrowed by the
    chosen accounts."""
    vars_ = variables(dash)
    assert {"datasource", *FILTER_VARIABLES} <= set(vars_)
    assert vars_["account"]["query"].startswith("label_values(ehpc_watched_images{")
    assert vars_["region_id"]["query"].startswith("label_values(ehpc_watched_images{")
    assert 'account=~"$account"' in vars_["region_id"]["query"]
    for name in FILTER_VARIABLES:
        m = re.fullmatch(r"label_values\((.+), (\w+)\)", vars_[name]["query"])
        assert m, vars_[name]["query"]
        assert m.group(2) == name, vars_[name]["query"]
        assert vars_[name]["multi"]
        assert vars_[name]["includeAll"]


# Process-level families: one sample per exporter pod, no account or region labels (Prometheus adds job,
# instance, pod). Like `up`, they take the job variable only.
EXPORTER_LEVEL = frozenset(
    {
        "ehpc_exporter_shard_ordinal",
        "ehpc_exporter_total_shards",
        "ehpc_state_last_save_timestamp_seconds",
        "ehpc_state_save_errors_total",
        "ehpc_state_loaded_images",
        "ehpc_state_load_errors_total",
    }
)


# An account's credentials serve all its regions: account but no region label; job and account filter.
ACCOUNT_LEVEL = frozenset(
    {
        "ehpc_credentials_expiry_timestamp_seconds",
        "ehpc_credentials_refreshes_total",
        "ehpc_credentials_refresh_errors_total",
    }
)


def test_every_query_filters_by_account_and_region(dash: dict[str, Any]) -> None:
    """Every selector of an exporter metric carries the account and region_id variables (Prometheus' own
    `up` and the process-level shard and state families have no identity labels, and take the job
    variable), so choosing an account or region narrows every panel that can be narrowed."""
    unfiltered: list[str] = []
    for panel, target in targets(dash):
        for selector in re.findall(r"\b(ehpc_\w+)\{([^}]*)\}", target["expr"]):
            name, matchers = selector
            if name in EXPORTER_LEVEL:
                if 'job=~"$job"' not in matchers:
                    unfiltered.append(f"{panel['title']} [{target['refId']}]: {name}{{{matchers}}}")
                continue
            if name in ACCOUNT_LEVEL:
                if 'job=~"$job"' not in matchers or 'account=~"$account"' not in matchers:
                    unfiltered.append(f"{panel['title']} [{target['refId']}]: {name}{{{matchers}}}")
                continue
            if 'account=~"$account"' not in matchers or 'region_id=~"$region_id"' not in matchers:
                unfiltered.append(f"{panel['title']} [{target['refId']}]: {name}{{{matchers}}}")
        assert re.search(r"\bup\{", target["expr"]) or "ehpc_" in target["expr"], panel["title"]
    assert unfiltered == []


def test_per_image_aggregations_keep_the_identity_labels(dash: dict[str, Any]) -> None:
    """Wherever a query aggregates by image it aggregates by account and region too (the same image ID in
    two accounts is two rows), and per-image legends name the account and region."""
    for panel, target in targets(dash):
        for grouping in re.findall(r"by \(([^)]*)\)", target["expr"]):
            labels = {label.strip() for label in grouping.split(",")}
            if "image_id" in labels:
                assert {"account", "region_id"} <= labels, f"{panel['title']}: by ({grouping})"
        legend = target.get("legendFormat", "")
        if "{{image_id}}" in legend:
            assert "{{account}}" in legend, panel["title"]
            assert "{{region_id}}" in legend, panel["title"]


def test_targets_overview(dash: dict[str, Any]) -> None:
    """The per-account x region table: one row per target with every column the brief names, each query
    by (account, region_id), thresholds from the matching alerts."""
    from alerts.build import load_thresholds

    alerts = load_thresholds().alerts
    panel = next(p for p in all_panels(dash) if p["title"] == "Targets")
    assert panel["type"] == "table"
    for target in panel["targets"]:
        assert "by (account, region_id)" in target["expr"], target["expr"]
        assert target["format"] == "table", target["refId"]
        assert target["instant"], target["refId"]
    renames = next(t for t in panel["transformations"] if t["id"] == "organize")["options"]["renameByName"]
    assert set(renames.values()) == {
        "Account",
        "Region",
        "Watched",
        "Up",
        "Not available",
        "Replication incomplete",
        "Stale",
        "API error ratio",
        "Refresh age",
    }
    overrides = {o["matcher"]["options"]: o["properties"] for o in panel["fieldConfig"]["overrides"]}

    def red_from(column: str) -> float:
        steps = next(p["value"]["steps"] for p in overrides[column] if p["id"] == "thresholds")
        return float(steps[1]["value"])

    assert red_from("Refresh age") == alerts.EhpcRefreshStalled.max_age_seconds
    assert red_from("API error ratio") == alerts.EhpcApiErrorsHigh.max_ratio
    stale = next(t["expr"] for t in panel["targets"] if t["refId"] == "E")
    assert f"> {alerts.EhpcImageDataStale.max_age_seconds})" in stale


def test_required_panels_and_units(dash: dict[str, Any]) -> None:
    """The panels the product needs exist, with the units that make their numbers readable."""
    by_title = {p["title"]: p for p in all_panels(dash)}
    exprs = {p["title"]: " ".join(t["expr"] for t in p.get("targets", [])) for p in by_title.values()}
    for title in ("Available", "Unavailable", "Missing", "Stale"):
        assert by_title[title]["type"] == "stat"
    assert "ehpc_image_info" in exprs["Images"]
    assert "ehpc_image_status" in exprs["Images"]
    assert "ehpc_image_replication_available" in exprs["Replication matrix"]
    assert by_title["Image size"]["fieldConfig"]["defaults"]["unit"] == "bytes"
    assert "histogram_quantile" in exprs["API latency"]
    assert by_title["API latency"]["fieldConfig"]["defaults"]["unit"] == "s"
    assert "by (account, region_id, action, code)" in exprs["API errors by code"]
    # Ages from the samples Prometheus holds over the alert's lookback, so a restart does not reset them.
    assert (
        "time() - max by (account, region_id, image_id) "
        "(max_over_time(ehpc_image_last_success_timestamp_seconds" in exprs["Data age per image"]
    )
    assert "ehpc_refresh_duration_seconds" in exprs["Refresh duration"]


def test_history_and_scale_out_panels(dash: dict[str, Any]) -> None:
    """Replication-time quantiles per replication region (p50/p90/p99 from the histogram, summed over
    shards and processes), the status-since table, status changes with the flapping threshold, shards
    per pod, and the state file; thresholds come from the matching alerts."""
    from alerts.build import load_thresholds

    alerts = load_thresholds().alerts
    by_title = {p["title"]: p for p in all_panels(dash)}
    for title in ("Replication time per region", "Replication time (alert window)"):
        exprs = [t["expr"] for t in by_title[title]["targets"]]
        quantiles = [e for e in exprs if e.startswith("histogram_quantile(")]
        assert [e.split(",")[0] for e in quantiles] == [
            f"histogram_quantile({q}" for q in ("0.5", "0.9", "0.99")
        ]
        for expr in quantiles:
            assert "sum by (account, region_id, replication_region, le) (increase(" in expr, expr
            assert "ehpc_image_replication_duration_seconds_bucket{" in expr
            assert not re.search(r"\b(instance|pod)\b", expr), expr
    window = by_title["Replication time (alert window)"]["targets"][0]["expr"]
    assert f"[{alerts.EhpcImageReplicationSlow.window}]" in window
    steps = by_title["Replication time (alert window)"]["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps[1]["value"] == alerts.EhpcImageReplicationSlow.max_seconds
    since = by_title["Status since"]
    assert since["type"] == "table"
    renames = next(t for t in since["transformations"] if t["id"] == "organize")["options"]["renameByName"]
    assert {"Status", "Since", "For"} <= set(renames.values())
    since_exprs = " ".join(t["expr"] for t in since["targets"])
    assert (
        "time() - max by (account, region_id, image_id) (ehpc_image_status_since_timestamp_seconds"
        in since_exprs
    )
    flapping = by_title["Status changes"]
    assert f"[{alerts.EhpcImageFlapping.window}]" in flapping["targets"][0]["expr"]
    flap_steps = flapping["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert flap_steps[1]["value"] == alerts.EhpcImageFlapping.max_changes
    shards = " ".join(t["expr"] for t in by_title["Shards"]["targets"])
    assert {"ehpc_exporter_shard_ordinal", "ehpc_exporter_total_shards"} <= promql_metric_names(shards)
    assert "by (job, instance, pod)" in shards
    state = " ".join(t["expr"] for t in by_title["State file"]["targets"])
    assert "time() - ehpc_state_last_save_timestamp_seconds" in state
    assert "ehpc_state_save_errors_total" in state


def test_state_set_reads_work_in_both_modes(dash: dict[str, Any]) -> None:
    """Every panel reads the state sets only through their samples valued 1, so it shows the same with
    `metrics.state_sets: current` (where the 0-valued samples are omitted) as with `full`."""
    reads = [
        (panel["title"], read) for panel, target in targets(dash) for read in state_set_reads(target["expr"])
    ]
    assert {title for title, _ in reads} >= {"Images", "Status since"}
    assert [r for r in reads if not reads_only_current_samples(r[1])] == []


def test_dashboard_uses_only_contract_metrics(dash: dict[str, Any]) -> None:
    """Every metric a query or variable names is in the metric contract; the main ones are all shown."""
    used: set[str] = set()
    for _, target in targets(dash):
        used |= promql_metric_names(target["expr"])
    for var in variables(dash).values():
        if var["type"] == "query":
            used |= promql_metric_names(re.sub(r"^label_values\((.*), \w+\)$", r"\1", var["query"]))
    assert {n for n in used if not in_contract(n)} == set()
    assert used >= {
        "ehpc_image_info",
        "ehpc_image_status",
        "ehpc_image_available",
        "ehpc_image_size_bytes",
        "ehpc_image_replication_available",
        "ehpc_image_last_success_timestamp_seconds",
        "ehpc_image_last_error_info",
        "ehpc_api_requests_total",
        "ehpc_api_errors_total",
        "ehpc_api_request_duration_seconds_bucket",
        "ehpc_refresh_duration_seconds",
        "ehpc_watched_images",
    }


def test_stale_threshold_matches_the_alert(dash: dict[str, Any]) -> None:
    """The dashboard's notion of stale is the EhpcImageDataStale threshold from alerts/thresholds.yaml."""
    from alerts.build import load_thresholds

    alert = load_thresholds().alerts.EhpcImageDataStale
    stale = next(p for p in all_panels(dash) if p["title"] == "Stale")
    expr = stale["targets"][0]["expr"]
    assert f"> {alert.max_age_seconds})" in expr
    assert f"[{alert.lookback}]" in expr  # across exporter restarts, as the alert
    assert "max_over_time(ehpc_image_up" in expr  # and images that never succeeded, as the alert


# ------------------------------------------------------------------------------- against real Prometheus

RATE_INTERVAL = "1m"  # what $__rate_interval / $__range become: the demo has ~10 s of data, all inside it
# Families the demo does not expose: it runs without a state file, and the shard gauges are being added
# to the exporter by the sharding work. A query over one of them must still be valid PromQL; once the
# demo scrapes the family, its queries must return data like every other.
NOT_IN_DEMO = frozenset(
    {
        "ehpc_state_last_save_timestamp_seconds",
        "ehpc_state_save_errors_total",
        "ehpc_state_loaded_images",
        "ehpc_state_load_errors_total",
        "ehpc_exporter_shard_ordinal",
        "ehpc_exporter_total_shards",
    }
)


def promql_regex_escape(value: str) -> str:
    """Escape regex metacharacters for a PromQL string literal, as Grafana's Prometheus data source does
    (the backslash itself doubled, because the string literal consumes one)."""
    return re.sub(r"([\\.+*?^$()\[\]{}|])", r"\\\\\1", value)


def substitute(expr: str, values: dict[str, list[str]]) -> str:
    """Replace Grafana variables as Grafana would for "All" selections of the given label values."""
    out = expr
    for name, vals in values.items():
        regex = "(" + "|".join(promql_regex_escape(v) for v in vals) + ")" if vals else ".*"
        out = out.replace(f"${{{name}}}", regex).replace(f"${name}", regex)
    for macro in ("$__rate_interval", "$__interval", "$__range"):
        out = out.replace(macro, RATE_INTERVAL)
    assert "$" not in out, out
    return out


@pytest.mark.process
@pytest.mark.xdist_group("demo-stack")  # one worker starts the shared demo stack
def test_every_query_returns_data_from_real_prometheus(dash: dict[str, Any], demo_stack: DemoStack) -> None:
    """Prometheus scrapes `ehpc-image-exporter demo`; every variable has values and every panel query,
    with the variables substituted, returns a non-empty result. Each metric a query names must exist too,
    so `or vector(0)` cannot hide a misspelt name."""
    prom = demo_stack.prometheus
    deadline = time.monotonic() + 30
    # Series appear after Prometheus' 5 s discovery delay; rate() needs two scrapes after that.
    prom.wait_for("ehpc_image_info", within=30)
    prom.wait_for("rate(ehpc_api_requests_total[1m]) > 0", within=30)

    vars_ = variables(dash)
    values: dict[str, list[str]] = {"job": [demo_stack.job]}
    for name in FILTER_VARIABLES:
        selector = re.fullmatch(r"label_values\((.+), \w+\)", vars_[name]["query"])
        assert selector
        match = substitute(selector.group(1), values)
        found = prom.label_values(name, [match])
        assert found, f"variable {name}: no values for {match}"
        values[name] = found
    assert values["job"] == [demo_stack.job]

    empty: list[str] = []
    absent_ok: list[str] = []
    for panel, target in targets(dash):
        expr = substitute(target["expr"], values)
        missing = {metric for metric in promql_metric_names(expr) if not prom.query(f"group({metric})")}
        for metric in sorted(missing - NOT_IN_DEMO):
            empty.append(f"{panel['title']} [{target['refId']}]: metric {metric} not scraped")
        if missing & NOT_IN_DEMO:
            try:
                prom.query(expr)
            except PromStackError as exc:
                raise AssertionError(f"{panel['title']} [{target['refId']}]: {exc}") from exc
            absent_ok.append(panel["title"])
            continue
        while True:
            try:
                result = prom.query(expr)
            except PromStackError as exc:  # bad PromQL: fail at once with Prometheus' message
                raise AssertionError(f"{panel['title']} [{target['refId']}]: {exc}") from exc
            if result or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        if not result:
            empty.append(f"{panel['title']} [{target['refId']}]: {expr}")
    assert empty == []
    # Only the panels over the families the demo lacks were let off.
    assert set(absent_ok) <= {"Shards", "State file"}, absent_ok


def test_credential_and_cycle_panels(dash: dict[str, Any]) -> None:
    """Time left of each account's credentials with the EhpcCredentialsExpiring threshold as its line,
    failed renewals per account, refresh cycles by result per target."""
    from alerts.build import load_thresholds

    alert = load_thresholds().alerts.EhpcCredentialsExpiring
    by_title = {p["title"]: p for p in all_panels(dash)}
    left = by_title["Credential time left"]
    assert "ehpc_credentials_expiry_timestamp_seconds{" in left["targets"][0]["expr"]
    assert left["targets"][0]["expr"].endswith("- time())")
    assert left["fieldConfig"]["defaults"]["unit"] == "s"
    steps = left["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps[1]["value"] == alert.min_remaining_seconds
    assert (
        "ehpc_credentials_refresh_errors_total"
        in by_title["Credential renewals failed"]["targets"][0]["expr"]
    )
    cycles = by_title["Refresh cycles by result"]["targets"][0]["expr"]
    assert cycles.startswith("sum by (account, region_id, result) (increase(ehpc_refresh_cycles_total{")
