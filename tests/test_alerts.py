"""The shipped alerting rules: generated from one thresholds file, valid, unit-tested and documented."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from alerts import build
from tests.fixtures.promstack import DemoStack, Prometheus, promql_metric_names

ALERTS = build.ALERTS_DIR
PROMTOOL_TESTS = ALERTS / "tests.yml"
RUNBOOK = ALERTS / "runbook.md"

# The metric contract of docs/product.md, plus the names interfaces.md adds, the discovery health series
# (docs/product.md, "Discovery health") and Prometheus' own `up`.
CONTRACT_METRICS = frozenset(
    {
        "ehpc_image_info",
        "ehpc_image_status",
        "ehpc_image_available",
        "ehpc_image_size_bytes",
        "ehpc_image_created_timestamp_seconds",
        "ehpc_image_replication_status",
        "ehpc_image_replication_available",
        "ehpc_image_up",
        "ehpc_image_last_success_timestamp_seconds",
        "ehpc_image_last_error_info",
        "ehpc_api_requests_total",
        "ehpc_api_errors_total",
        "ehpc_api_request_duration_seconds",
        "ehpc_refresh_duration_seconds",
        "ehpc_refresh_last_success_timestamp_seconds",
        "ehpc_watched_images",
        "ehpc_exporter_build_info",
        "ehpc_config_last_reload_successful",
        "ehpc_config_last_reload_success_timestamp_seconds",
        "ehpc_refresh_overruns_total",
        "ehpc_discovery_up",
        "ehpc_discovery_last_success_timestamp_seconds",
        "ehpc_discovered_images",
        # History, the state file and sharding (docs/product.md's additions for history and scale-out).
        "ehpc_image_status_since_timestamp_seconds",
        "ehpc_image_status_changes_total",
        "ehpc_image_replication_since_timestamp_seconds",
        "ehpc_image_replication_complete",
        "ehpc_state_last_save_timestamp_seconds",
        "ehpc_state_save_errors_total",
        "ehpc_state_loaded_images",
        "ehpc_state_load_errors_total",
        "ehpc_exporter_shard_ordinal",
        "ehpc_exporter_total_shards",
        "ehpc_api_rate_limit_qps",
        # Credential and cycle health.
        "ehpc_credentials_expiry_timestamp_seconds",
        "ehpc_credentials_refreshes_total",
        "ehpc_credentials_refresh_errors_total",
        "ehpc_refresh_cycles_total",
        "up",
    }
)
HISTOGRAMS = frozenset({"ehpc_api_request_duration_seconds", "ehpc_image_replication_duration_seconds"})
# The state-set families: with `metrics.state_sets: current` only their samples valued 1 exist.
STATE_SETS = ("ehpc_image_status", "ehpc_image_replication_status")


def in_contract(name: str) -> bool:
    """A contract name, or a histogram's _bucket/_sum/_count series."""
    if name in CONTRACT_METRICS:
        return True
    base, _, suffix = name.rpartition("_")
    return suffix in {"bucket", "sum", "count"} and base in HISTOGRAMS


def load_rules(path: Path = build.RULES_FILE) -> list[dict[str, Any]]:
    """Every rule of a rules file."""
    doc = yaml.safe_load(path.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run promtool; stdout and stderr together in .stdout."""
    return subprocess.run(
        ["promtool", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
    )


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


@pytest.mark.process
def test_generated_rules_match_thresholds_and_chart_copy() -> None:
    """Regenerating changes nothing; the chart's copy is the same rules with the placeholder of the
    carried labels where the shipped file has carry_labels (none by default: then it is the only
    difference, besides the header line saying so)."""
    expected = build.render(build.load_thresholds())
    assert build.RULES_FILE.read_text() == expected, "run: python -m alerts.build"
    chart = build.CHART_RULES_FILE.read_text()
    assert chart == build.render(build.load_thresholds(), chart=True)
    assert build.load_thresholds().carry_labels == ()
    shipped = chart.replace(build.CHART_HEADER, "").replace(build.CHART_CARRY, "")
    assert shipped == build.RULES_FILE.read_text()
    assert chart.count(build.CHART_CARRY) == 7  # every `by` of an image or target aggregation
    proc = subprocess.run(
        [sys.executable, "-m", "alerts.build", "--check"],
        capture_output=True,
        text=True,
        cwd=build.REPO_ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.process
def test_promtool_check_rules() -> None:
    """promtool accepts the shipped rules, and finds every alert."""
    proc = promtool("check", "rules", build.RULES_FILE)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(load_rules())} rules found" in proc.stdout


@pytest.mark.process
def test_promtool_unit_tests_pass() -> None:
    """The hand-written promtool cases pass against the generated rules file (not a copy)."""
    tests = yaml.safe_load(PROMTOOL_TESTS.read_text())
    assert [(ALERTS / f).resolve() for f in tests["rule_files"]] == [build.RULES_FILE]
    proc = promtool("test", "rules", PROMTOOL_TESTS, cwd=Path("/"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    """Each alert is proven to fire and proven to stay quiet, and no case tests an alert that is gone."""
    tests = yaml.safe_load(PROMTOOL_TESTS.read_text())["tests"]
    cases = [case for group in tests for case in group.get("alert_rule_test", [])]
    names = {rule["alert"] for rule in load_rules()}
    firing = {c["alertname"] for c in cases if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    assert names - firing == set(), "alerts without a firing case"
    assert names - quiet == set(), "alerts without a quiet case"
    assert (firing | quiet) - names == set(), "cases for alerts that do not exist"


def test_required_alerts_exist() -> None:
    """The alerts the product promises are all shipped."""
    names = {rule["alert"] for rule in load_rules()}
    assert names >= {
        "EhpcImageNotAvailable",
        "EhpcImageReplicationIncomplete",
        "EhpcImageMissing",
        "EhpcImageDataStale",
        "EhpcApiThrottled",
        "EhpcApiAuthErrors",
        "EhpcApiErrorsHigh",
        "EhpcExporterDown",
        "EhpcConfigReloadFailed",
        "EhpcDiscoveryFailed",
        "EhpcRefreshStalled",
        "EhpcTargetFailing",
        "EhpcImageReplicationSlow",
        "EhpcImageFlapping",
        "EhpcStateSaveFailing",
        "EhpcStateLoadFailed",
        "EhpcShardsMissing",
        "EhpcShardingMismatch",
        "EhpcCredentialsExpiring",
    }


def state_set_reads(text: str) -> list[str]:
    """Every selection of a state-set family in ``text`` with what follows it: ``name{...} == 1`` is the
    only form that reads the same in both state-set modes."""
    pattern = r"\b(" + "|".join(STATE_SETS) + r")(?!\w)(\{[^}]*\})?(\s*[=!<>]=?\s*[\d.]+)?"
    return [m.group(0) for m in re.finditer(pattern, text)]


def reads_only_current_samples(text: str) -> bool:
    """True when every state-set selection in ``text`` is followed by ``== 1``."""
    return all(re.search(r"==\s*1$", read) for read in state_set_reads(text))


def test_state_set_reads_work_in_both_modes() -> None:
    """Every rule reads the state sets only through their samples valued 1 (`== 1`), so it means the same
    with `metrics.state_sets: current`, where the samples valued 0 do not exist; the check itself tells a
    `== 0` read (or a bare one) from a `== 1` one."""
    reads = 0
    for rule in load_rules():
        for text in (rule["expr"], *rule["annotations"].values()):
            assert reads_only_current_samples(text), (rule["alert"], state_set_reads(text))
            reads += len(state_set_reads(text))
    assert reads >= 3  # the status lookups of NotAvailable, ReplicationIncomplete and Flapping
    for bad in (
        'ehpc_image_status{status="Available"} == 0',
        "max by (image_id) (ehpc_image_replication_status)",
        'absent(ehpc_image_status{status="Available"})',
        "ehpc_image_status != 1",
    ):
        assert not reads_only_current_samples(bad), bad
    assert reads_only_current_samples(
        'ehpc_image_status{image_id="x"} == 1 and ehpc_image_status_changes_total'
    )


def test_current_mode_cases_cover_the_alerts_that_read_state_sets() -> None:
    """Each alert that looks at a state set has a promtool case over `current`-mode input series (only
    the samples valued 1, a staleness marker when a status is left) that fires."""
    tests = yaml.safe_load(PROMTOOL_TESTS.read_text())["tests"]
    current = [case for case in tests if case["name"].endswith("current state sets")]
    for case in current:
        for series in case["input_series"]:
            if re.match(r"(" + "|".join(STATE_SETS) + r")\{", series["series"]):
                assert " 0" not in f" {series['values']}", series  # no 0-valued state-set sample
    readers = {
        rule["alert"]
        for rule in load_rules()
        if any(state_set_reads(text) for text in (rule["expr"], *rule["annotations"].values()))
    }
    covered = {t["alertname"] for case in current for t in case["alert_rule_test"] if t.get("exp_alerts")}
    assert readers - covered == set()


@pytest.mark.process
def test_data_stale_keeps_firing_through_restart_gaps() -> None:
    """EhpcImageDataStale carries `keep_firing_for` from the thresholds (Prometheus >= 2.42, the packaged
    version), and the chart's copy carries it too; the gap cases of alerts/tests.yml exercise it."""
    stale = load_thresholds_alert("EhpcImageDataStale")
    assert stale["keep_firing_for"] == build.load_thresholds().alerts.EhpcImageDataStale.keep_firing_for
    chart = {rule["alert"]: rule for rule in load_rules(build.CHART_RULES_FILE)}
    assert chart["EhpcImageDataStale"]["keep_firing_for"] == stale["keep_firing_for"]
    version = promtool("--version").stdout
    major, minor = map(int, re.search(r"version (\d+)\.(\d+)", version).groups())  # type: ignore[union-attr]
    assert (major, minor) >= (2, 42), version
    names = {case["name"] for case in yaml.safe_load(PROMTOOL_TESTS.read_text())["tests"]}
    assert {"data stale across a short restart, state file", "data stale across a long gap"} <= names


def load_thresholds_alert(name: str) -> dict[str, Any]:
    """One rule of the shipped rules file by alert name."""
    return next(rule for rule in load_rules() if rule["alert"] == name)


@pytest.mark.process
def test_replication_slow_compares_each_region_with_one_threshold(tmp_path: Path) -> None:
    """Per-region overrides: each override value gets its own branch selecting exactly its regions, the
    default branch excludes them all; with no override there is one branch and no region matcher. Checked
    over several override sets, each built and accepted by promtool."""
    cases: list[dict[str, int]] = [{}, {"us-east-1": 3600}, {"a-1": 10, "b-2": 10, "c-3": 20}]
    for overrides in cases:
        override = tmp_path / "override.yaml"
        override.write_text(
            yaml.safe_dump({"alerts": {"EhpcImageReplicationSlow": {"region_max_seconds": overrides}}})
        )
        thresholds = build.load_thresholds(override)
        # Override files merge mappings: start from no shipped regions so the set is exactly `overrides`.
        thresholds = thresholds.model_copy(
            update={
                "alerts": thresholds.alerts.model_copy(
                    update={
                        "EhpcImageReplicationSlow": thresholds.alerts.EhpcImageReplicationSlow.model_copy(
                            update={"region_max_seconds": overrides}
                        )
                    }
                )
            }
        )
        rules = {r["alert"]: r for g in build.build_rules(thresholds)["groups"] for r in g["rules"]}
        branches = rules["EhpcImageReplicationSlow"]["expr"].split("\nor\n")
        assert len(branches) == 1 + len(set(overrides.values())), branches
        default = branches[0]
        assert default.endswith(f"> {thresholds.alerts.EhpcImageReplicationSlow.max_seconds}")
        if overrides:
            assert f'replication_region!~"{"|".join(sorted(overrides))}"' in default
        else:
            assert "replication_region!~" not in default
        for value in sorted(set(overrides.values())):
            regions = "|".join(sorted(r for r, v in overrides.items() if v == value))
            assert any(b.endswith(f"> {value}") and f'replication_region=~"{regions}"' in b for b in branches)
        out = tmp_path / "rules.yml"
        out.write_text(build.render(thresholds))
        assert promtool("check", "rules", out).returncode == 0


def test_alerts_are_labelled_and_link_to_existing_runbook_sections() -> None:
    """Severity, summary, description and a runbook_url whose anchor is a runbook heading with all parts."""
    runbook = RUNBOOK.read_text()
    sections: dict[str, str] = {}
    for match in re.finditer(r"^## ([^\n]+)\n(.*?)(?=^## |\Z)", runbook, flags=re.M | re.S):
        sections[github_anchor(match.group(1))] = match.group(2)
    base = build.load_thresholds().runbook_url
    for rule in load_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        annotations = rule["annotations"]
        assert annotations["summary"].strip(), name
        assert annotations["description"].strip(), name
        url, _, anchor = annotations["runbook_url"].partition("#")
        assert url == base, name
        assert anchor in sections, f"{name}: runbook has no heading for #{anchor}"
        for part in ("Meaning", "Impact", "Diagnosis", "Fix"):
            assert f"### {part}\n" in sections[anchor], f"runbook section {name} lacks {part}"


def test_runbook_table_proves_every_row_with_real_cases() -> None:
    """The runbook's coverage table: every row names alerts that exist and cases that exist (promtool
    cases of alerts/tests.yml in italics, end-to-end scenarios of tests/test_e2e_paging.py as *e2e*);
    every alert has a row and every promtool case is cited, so the table cannot drift from the tests."""
    section = RUNBOOK.read_text().split("## What pages, and how fast\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| Way")]
    assert len(rows) >= 10
    cases = {case["name"] for case in yaml.safe_load(PROMTOOL_TESTS.read_text())["tests"]}
    e2e_source = (build.REPO_ROOT / "tests" / "test_e2e_paging.py").read_text()
    alerts = {rule["alert"] for rule in load_rules()}
    cited_alerts: set[str] = set()
    cited_cases: set[str] = set()
    for row in rows:
        cells = [cell.strip() for cell in row.strip("| ").split(" | ")]
        assert len(cells) == 5, row
        named = set(re.findall(r"Ehpc[A-Za-z]+", cells[1]))
        assert named, row
        assert named <= alerts, row
        cited_alerts |= named
        proofs = re.findall(r"(e2e )?\*([^*]+)\*", cells[4])
        promtool_cases = {name for e2e, name in proofs if not e2e}
        assert promtool_cases, f"row without a promtool case: {row}"
        assert promtool_cases <= cases, f"no such promtool case: {promtool_cases - cases}"
        cited_cases |= promtool_cases
        for e2e, name in proofs:
            if e2e:
                assert f'"{name}"' in e2e_source, f"no such e2e scenario: {name}"
    assert alerts - cited_alerts == set(), "alerts without a row"
    assert cases - cited_cases == set(), "promtool cases the table does not cite"


def test_rules_use_only_contract_metrics() -> None:
    """Every metric the rules select (expressions and annotation queries) is in the metric contract."""
    used: set[str] = set()
    for rule in load_rules():
        used |= promql_metric_names(rule["expr"])
        for text in rule["annotations"].values():
            for query in re.findall(r'printf "((?:[^"\\]|\\.)*)"', text):
                used |= promql_metric_names(query)
    assert {n for n in used if not in_contract(n)} == set()
    # The lexer really found names (an empty set would pass the check above vacuously).
    assert {"ehpc_image_available", "ehpc_api_errors_total", "up", "ehpc_image_status"} <= used


def test_promql_metric_names_lexer() -> None:
    """The name lexer skips functions, keywords, strings, matchers, ranges, grouping labels and variables."""
    expr = (
        "histogram_quantile(0.9, sum by (le, action) "
        '(rate(ehpc_api_request_duration_seconds_bucket{job="$job", code=~"a|b"}[$__rate_interval])))'
        " / on(image_id) group_left(name) ehpc_image_info"
        " or vector(0) unless absent(up{job=`x`}) > bool 1e3"
    )
    assert promql_metric_names(expr) == {"ehpc_api_request_duration_seconds_bucket", "ehpc_image_info", "up"}


@pytest.mark.process
def test_thresholds_override_changes_only_the_output(tmp_path: Path) -> None:
    """A partial override yields valid rules with short `for:` and leaves the shipped files alone."""
    shipped = build.RULES_FILE.read_text()
    override = tmp_path / "override.yaml"
    alerts: dict[str, dict[str, Any]] = {rule["alert"]: {"for": "0s"} for rule in load_rules()}
    alerts["EhpcImageDataStale"]["max_age_seconds"] = 5
    override.write_text(yaml.safe_dump({"exporter_selector": 'job="e2e"', "alerts": alerts}))
    out = tmp_path / "rules.yml"
    proc = subprocess.run(
        [sys.executable, "-m", "alerts.build", "--thresholds", str(override), "--output", str(out)],
        capture_output=True,
        text=True,
        cwd=build.REPO_ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    rules = {rule["alert"]: rule for rule in load_rules(out)}
    assert {rule["for"] for rule in rules.values()} == {"0s"}
    assert rules["EhpcExporterDown"]["expr"] == 'up{job="e2e"} == 0 or absent(up{job="e2e"})'
    assert "> 5\n" in rules["EhpcImageDataStale"]["expr"]
    assert "ehpc_image_up[5s]" in rules["EhpcImageDataStale"]["expr"]
    # Settings not overridden keep their shipped values.
    assert rules["EhpcApiThrottled"]["labels"]["severity"] == "warning"
    assert promtool("check", "rules", out).returncode == 0
    assert build.RULES_FILE.read_text() == shipped


@pytest.mark.process
def test_image_alerts_follow_the_image_labels(tmp_path: Path) -> None:
    """The staleness and target alerts aggregate and match on `image_labels` / `target_labels` only, never
    on instance or pod, so a restart or rollout does not change their identity. The shipped labels
    include the identity labels (the same image ID in two accounts or regions is two images); changing
    `image_labels` reaches every clause and still yields valid rules."""
    rules = {rule["alert"]: rule for rule in load_rules()}
    shipped = rules["EhpcImageDataStale"]["expr"]
    assert "(image_id)" not in shipped
    assert shipped.count("(account, region_id, image_id)") == shipped.count("by (") + shipped.count("on (")
    assert not re.search(r"\b(instance|pod|job)\b", shipped)
    target = rules["EhpcTargetFailing"]["expr"]
    assert target.count("by (account, region_id)") == 2
    assert "on (account, region_id, image_id)" in target
    assert not re.search(r"\b(instance|pod|job)\b", target)
    # The annotation lookups select the alerting image by all its identity labels.
    description = rules["EhpcImageNotAvailable"]["annotations"]["description"]
    assert "{account=%q, region_id=%q, image_id=%q}" in description
    override = tmp_path / "override.yaml"
    override.write_text(yaml.safe_dump({"image_labels": ["region_id", "image_id"]}))
    out = tmp_path / "rules.yml"
    assert build.main(["--thresholds", str(override), "--output", str(out)]) == 0
    expr = {rule["alert"]: rule for rule in load_rules(out)}["EhpcImageDataStale"]["expr"]
    assert "account" not in expr
    assert expr.count("(region_id, image_id)") == expr.count("by (") + expr.count("on (")
    assert promtool("check", "rules", out).returncode == 0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"alerts": {"EhpcApiThrottled": {"for": "soon"}}}, "alerts.EhpcApiThrottled.for"),
        ({"alerts": {"EhpcApiErrorsHigh": {"max_ratio": 1.5}}}, "alerts.EhpcApiErrorsHigh.max_ratio"),
        ({"alerts": {"EhpcImageMissing": {"severity": "page"}}}, "alerts.EhpcImageMissing.severity"),
        ({"alerts": {"EhpcImageMissing": {"fro": "5m"}}}, "alerts.EhpcImageMissing.fro"),
        ({"image_labels": ["image-id"]}, "image_labels.0"),
        ({"image_labels": []}, "image_labels"),
        ({"target_labels": []}, "target_labels"),
        ({"alerts": {"EhpcTargetFailing": {"window": "five"}}}, "alerts.EhpcTargetFailing.window"),
        ({"alerts": {"EhpcImageDataStale": {"lookback": "an hour"}}}, "alerts.EhpcImageDataStale.lookback"),
        (
            {"alerts": {"EhpcImageDataStale": {"keep_firing_for": "long"}}},
            "alerts.EhpcImageDataStale.keep_firing_for",
        ),
        (
            {"alerts": {"EhpcImageReplicationSlow": {"region_max_seconds": {"us east": 3600}}}},
            "alerts.EhpcImageReplicationSlow.region_max_seconds.us east",
        ),
        (
            {"alerts": {"EhpcImageReplicationSlow": {"quantile": 1.5}}},
            "alerts.EhpcImageReplicationSlow.quantile",
        ),
        ({"alerts": {"EhpcImageFlapping": {"max_changes": 0}}}, "alerts.EhpcImageFlapping.max_changes"),
        ({"deployment_labels": []}, "deployment_labels"),
        ({"carry_labels": ["account"]}, "carry_labels"),
        ({"carry_labels": ["image_id"]}, "carry_labels"),
        ({"carry_labels": ["instance"]}, "carry_labels"),
        ({"carry_labels": ["pod"]}, "carry_labels"),
        ({"carry_labels": ["__name__"]}, "carry_labels"),
        ({"carry_labels": ["team", "team"]}, "carry_labels"),
        ({"carry_labels": ["team-x"]}, "carry_labels.0"),
        ({"carry_labels": "team"}, "carry_labels"),
    ],
)
def test_invalid_thresholds_are_rejected_with_their_location(
    tmp_path: Path, override: dict[str, Any], message: str
) -> None:
    """A typo in the thresholds file fails the build and names the setting, rather than shipping nonsense."""
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(override))
    out = tmp_path / "rules.yml"
    assert build.main(["--thresholds", str(path), "--output", str(out)]) == 2
    assert not out.exists()
    with pytest.raises(ValueError, match=re.escape(message)):
        build.load_thresholds(path)


@pytest.mark.process
def test_rules_load_and_evaluate_in_real_prometheus(tmp_path: Path, prometheus_factory: Any) -> None:
    """Prometheus loads the generated rules, evaluates all of them without error, and with `for: 0s`
    EhpcExporterDown fires at once when no exporter target exists (the absent() branch)."""
    override = tmp_path / "override.yaml"
    override.write_text(yaml.safe_dump({"alerts": {"EhpcExporterDown": {"for": "0s"}}}))
    rules = tmp_path / "rules.yml"
    assert build.main(["--thresholds", str(override), "--output", str(rules)]) == 0
    prom: Prometheus = prometheus_factory(rule_files=[rules])
    alert = prom.wait_for_alert("EhpcExporterDown", within=15)
    assert alert["labels"] == {"alertname": "EhpcExporterDown", "severity": "critical"}
    assert alert["annotations"]["summary"] == "ehpc-image-exporter is down"
    groups = prom.rule_groups()
    evaluated = [rule for group in groups for rule in group["rules"]]
    assert {rule["name"] for rule in evaluated} == {rule["alert"] for rule in load_rules()}
    assert [(rule["name"], rule["lastError"]) for rule in evaluated if rule["health"] != "ok"] == []


@pytest.mark.process
@pytest.mark.xdist_group("demo-stack")  # one worker starts the shared demo stack
def test_rules_fire_on_the_demo_exporters_real_series(demo_stack: DemoStack) -> None:
    """The shipped expressions (at `for: 0s`) against what the exporter really exposes: the demo's deleted
    image pages as missing; breaking three healthy images in the simulator fires NotAvailable (with the
    status looked up by the annotation's query), ReplicationIncomplete and AuthErrors for exactly those;
    the exporter-level alerts stay quiet."""
    from exporter.demo import MISSING_IMAGE_ID

    prom, demo = demo_stack.prometheus, demo_stack.demo
    healthy_expr = "ehpc_image_available == 1 and ehpc_image_up == 1"
    healthy = prom.wait_for(healthy_expr, within=30, predicate=lambda r: len(r) >= 3)
    sim_ids = {image["image_id"] for image in demo.sim("GET", "/_sim/images")["images"]}
    broken, lagging, denied = sorted(
        s["metric"]["image_id"] for s in healthy if s["metric"]["image_id"] in sim_ids
    )[:3]
    region = sorted(demo.sim("GET", f"/_sim/images/{lagging}")["regions"])[0]
    try:
        demo.sim("PATCH", f"/_sim/images/{broken}", {"status": "CreateFailed"})
        demo.sim("PUT", f"/_sim/images/{lagging}/regions/{region}", {"status": "CreateFailed"})
        demo.sim("PATCH", f"/_sim/images/{denied}", {"error": "NotAuthorized"})

        missing = prom.wait_for_alert("EhpcImageMissing", image_id=MISSING_IMAGE_ID)
        assert missing["labels"]["job"] == demo_stack.job
        down = prom.wait_for_alert("EhpcImageNotAvailable", image_id=broken)
        assert "(current status: CreateFailed)" in down["annotations"]["description"]
        repl = prom.wait_for_alert(
            "EhpcImageReplicationIncomplete", image_id=lagging, replication_region=region
        )
        assert "(replication status: CreateFailed)" in repl["annotations"]["description"]
        auth = prom.wait_for_alert("EhpcApiAuthErrors", code="NotAuthorized", action="GetImage")
        assert auth["labels"]["severity"] == "critical"

        firing = [a["labels"] for a in prom.alerts() if a["state"] == "firing"]
        not_available = {a["image_id"] for a in firing if a["alertname"] == "EhpcImageNotAvailable"}
        # Failing images (the denied one, the demo's EcsError one) and the deleted one: other alerts.
        assert denied not in not_available
        assert MISSING_IMAGE_ID not in not_available
        replication = {a["image_id"] for a in firing if a["alertname"] == "EhpcImageReplicationIncomplete"}
        assert MISSING_IMAGE_ID not in replication
        quiet = {
            "EhpcExporterDown",
            "EhpcConfigReloadFailed",
            "EhpcRefreshStalled",
            "EhpcDiscoveryFailed",
            "EhpcTargetFailing",  # one denied image of many is not a failing target
        }
        assert [a for a in firing if a["alertname"] in quiet] == []
    finally:
        demo.sim("PATCH", f"/_sim/images/{broken}", {"status": "Available"})
        demo.sim("PUT", f"/_sim/images/{lagging}/regions/{region}", {"status": "Available"})
        demo.sim("PATCH", f"/_sim/images/{denied}", {"error": None})


PROMTOOL_CARRIED = ALERTS / "tests-carried.yml"


def carried_rules(tmp_path: Path, carried: list[str]) -> Path:
    """The shipped rules built with ``carry_labels: carried``, beside a copy of tests-carried.yml."""
    override = tmp_path / "override.yaml"
    override.write_text(yaml.safe_dump({"carry_labels": carried}))
    assert build.main(["--thresholds", str(override), "--output", str(tmp_path / "carried.rules.yml")]) == 0
    tests = tmp_path / PROMTOOL_CARRIED.name
    tests.write_text(PROMTOOL_CARRIED.read_text())
    return tests


@pytest.mark.process
def test_carried_labels_reach_the_alerts_of_every_aggregation(tmp_path: Path) -> None:
    """With ``carry_labels: [team]`` every aggregating alert keeps the series' team (promtool cases, one
    per aggregation); each ``by`` of the image or target labels ends with it, and only those."""
    tests = carried_rules(tmp_path, ["team"])
    proc = promtool("test", "rules", tests, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cases = yaml.safe_load(tests.read_text())["tests"]
    carried = {t["alertname"] for case in cases for t in case["alert_rule_test"]}
    assert carried >= {
        "EhpcImageDataStale",
        "EhpcTargetFailing",
        "EhpcImageReplicationSlow",
        "EhpcImageFlapping",
    }
    exprs = "\n".join(rule["expr"] for rule in load_rules(tmp_path / "carried.rules.yml"))
    clauses = re.findall(r"by \(([^)]*)\)", exprs)
    keeps = [c for c in clauses if c.startswith(("account, region_id", "region_id"))]
    assert len(keeps) == 7
    assert all(c.endswith(", team") for c in keeps), keeps
    assert not [c for c in clauses if c not in keeps and "team" in c]
    assert promtool("check", "rules", tmp_path / "carried.rules.yml").returncode == 0


@pytest.mark.process
def test_the_carried_cases_fail_without_carried_labels(tmp_path: Path) -> None:
    """Control: the same cases against the rules as shipped (nothing carried) fail, every aggregating one:
    the cases prove the carrying, not just the alerts."""
    tests = carried_rules(tmp_path, [])
    proc = promtool("test", "rules", tests, cwd=tmp_path)
    assert proc.returncode != 0
    failed = set(re.findall(r"^\s*name: ([^,\n]+),", proc.stdout + proc.stderr, re.MULTILINE))
    names = {case["name"] for case in yaml.safe_load(tests.read_text())["tests"]}
    assert failed == names - {"an alert without aggregation keeps the team anyway"}, proc.stdout
