"""The self part: API counters and latency, the error-code cap, ignored values, reloads, build info."""

from __future__ import annotations

import pytest

from exporter.buildinfo import BuildInfo
from exporter.config import DEFAULT_SCOPE
from exporter.errors import KNOWN_CODES, OVERFLOW_CODE, ApiError
from exporter.exposition import SelfMetrics
from exporter.exposition.selfmetrics import StateMetrics
from exporter.exposition.selfspecs import SELF_SPECS
from exporter.redaction import register_secret
from tests.exporter_support import samples, value


def test_self_metrics_start_at_zero_for_every_known_code() -> None:
    """Each known code of both actions is exposed at 0 with its usual HTTP status ("0" for local codes),
    for every (account, region) from when it is first watched."""
    metrics = SelfMetrics(BuildInfo("1.2.3", "3.11.0"), process_metrics=False)
    assert value(samples(metrics.render(False)), "ehpc_api_requests_total", action="GetImage") is None
    metrics.scope(DEFAULT_SCOPE)
    found = samples(metrics.render(False))
    for action in ("GetImage", "ListImages"):
        assert value(found, "ehpc_api_requests_total", action=action) == 0
        for code, status in KNOWN_CODES.items():
            assert (
                value(found, "ehpc_api_errors_total", action=action, code=code, http_status=str(status)) == 0
            )
    assert value(found, "ehpc_api_errors_total", action="GetImage", code="Timeout", http_status="0") == 0
    assert (
        value(found, "ehpc_exporter_build_info", version="1.2.3", revision="unknown", python_version="3.11.0")
        == 1
    )
    assert value(found, "ehpc_refresh_overruns_total") == 0
    assert value(found, "ehpc_config_last_reload_successful") is None


def test_self_metrics_count_attempts() -> None:
    """on_attempt counts requests, errors by code/status (local codes at "0") and latency buckets."""
    metrics = SelfMetrics(BuildInfo("1", "3"), process_metrics=False)
    metrics.scope(DEFAULT_SCOPE).on_attempt("GetImage", 0.003, None)
    metrics.scope(DEFAULT_SCOPE).on_attempt(
        "GetImage", 0.2, ApiError("ServiceUnavailable", "x", http_status=503)
    )
    metrics.scope(DEFAULT_SCOPE).on_attempt(
        "GetImage", 0.2, ApiError("InvalidResponse", "x", http_status=200)
    )
    metrics.scope(DEFAULT_SCOPE).on_attempt(
        "ListImages", 40.0, ApiError("Throttling.User", "x", http_status=429)
    )
    metrics.scope(DEFAULT_SCOPE).on_attempt("DescribeX", 0.01, None)
    metrics.scope(DEFAULT_SCOPE).record_overrun()
    metrics.record_reload(False, 5.0)
    metrics.record_reload(True, 7.0)
    metrics.record_reload(False, 9.0)
    found = samples(metrics.render(False))
    assert value(found, "ehpc_api_requests_total", action="GetImage") == 3
    assert value(found, "ehpc_api_requests_total", action="DescribeX") == 1
    assert (
        value(found, "ehpc_api_errors_total", action="GetImage", code="ServiceUnavailable", http_status="503")
        == 1
    )
    assert (
        value(found, "ehpc_api_errors_total", action="GetImage", code="InvalidResponse", http_status="0") == 1
    )
    assert (
        value(found, "ehpc_api_errors_total", action="ListImages", code="Throttling.User", http_status="429")
        == 1
    )
    assert (
        value(found, "ehpc_api_errors_total", action="ListImages", code="Throttling.User", http_status="400")
        == 0
    )
    bucket = "ehpc_api_request_duration_seconds_bucket"
    assert value(found, bucket, action="GetImage", le="0.005") == 1
    assert value(found, bucket, action="GetImage", le="0.25") == 3
    assert value(found, bucket, action="ListImages", le="30.0") == 0
    assert value(found, bucket, action="ListImages", le="+Inf") == 1
    assert value(found, "ehpc_api_request_duration_seconds_sum", action="GetImage") == pytest.approx(0.403)
    assert value(found, "ehpc_refresh_overruns_total") == 1
    assert value(found, "ehpc_config_last_reload_successful") == 0
    assert value(found, "ehpc_config_last_reload_success_timestamp_seconds") == 7.0
    assert metrics.scope(DEFAULT_SCOPE).errors()["GetImage", "ServiceUnavailable", "503"] == 1


def test_error_codes_beyond_the_cap_share_the_overflow_code() -> None:
    """A server inventing codes adds at most max_error_codes series; the catalogue always keeps its own."""
    metrics = SelfMetrics(BuildInfo("1", "3"), process_metrics=False, max_error_codes=3)
    before = len(metrics.scope(DEFAULT_SCOPE).errors())
    for i in range(100):
        metrics.scope(DEFAULT_SCOPE).on_attempt(
            "GetImage", 0.01, ApiError(f"Invented.Code{i}", "m", http_status=400)
        )
    metrics.scope(DEFAULT_SCOPE).on_attempt(
        "GetImage", 0.01, ApiError("Throttling.User", "m", http_status=400)
    )
    errors = metrics.scope(DEFAULT_SCOPE).errors()
    assert len(errors) == before + 3  # three new codes; the overflow series was there from the start
    assert errors[("GetImage", OVERFLOW_CODE, "0")] == 97
    assert errors[("GetImage", "Throttling.User", "400")] == 1
    assert sum(v for (_, c, _), v in errors.items() if c.startswith("Invented")) == 3


def test_error_code_labels_pass_the_output_gate_and_never_duplicate() -> None:
    """Two codes that the output gate maps to one label value are one series, added up."""
    secret_a, secret_b = "Gate.SecretCodeA0123456789", "Gate.SecretCodeB0123456789"
    register_secret(secret_a)
    register_secret(secret_b)
    metrics = SelfMetrics(BuildInfo("1", "3"), process_metrics=False)
    metrics.scope(DEFAULT_SCOPE).on_attempt("GetImage", 0.01, ApiError(secret_a, "m", http_status=400))
    metrics.scope(DEFAULT_SCOPE).on_attempt("GetImage", 0.01, ApiError(secret_b, "m", http_status=400))
    text = metrics.render(False).decode()
    assert secret_a not in text
    assert secret_b not in text
    assert (
        'ehpc_api_errors_total{account="default",action="GetImage",code="[REDACTED]",http_status="400",'
        'region_id="cn-hangzhou"} 2.0' in text
    )


def test_ignored_values_are_counted_by_field() -> None:
    """Each known field starts at 0 and counts every answer that left it out."""
    metrics = SelfMetrics(BuildInfo("1", "3"), process_metrics=False)
    metrics.scope(DEFAULT_SCOPE)
    text = metrics.render(False).decode()
    assert (
        'ehpc_api_ignored_values_total{account="default",action="GetImage",field="Image.Size",'
        'region_id="cn-hangzhou"} 0.0' in text
    )
    metrics.scope(DEFAULT_SCOPE).record_ignored("GetImage", ("Image.Size", "Image.AdditionalRegionsInfo"))
    metrics.scope(DEFAULT_SCOPE).record_ignored("GetImage", ("Image.Size",))
    text = metrics.render(False).decode()
    found = samples(text)
    assert value(found, "ehpc_api_ignored_values_total", action="GetImage", field="Image.Size") == 2
    field = "Image.AdditionalRegionsInfo"
    assert value(found, "ehpc_api_ignored_values_total", action="GetImage", field=field) == 1


def test_self_part_is_the_table_s_self_families_in_order() -> None:
    """Why: the self part's names, types and help come from the family table, not from the code that
    counts; a family renamed or retyped in one place only would show here."""
    metrics = SelfMetrics(BuildInfo("1", "3"), process_metrics=False)
    metrics.state = StateMetrics()  # the state families are there while a state file is configured
    text = metrics.render(False).decode()
    types = [line.split(" ", 3)[2:] for line in text.splitlines() if line.startswith("# TYPE ")]
    helps = [line.split(" ", 3)[3] for line in text.splitlines() if line.startswith("# HELP ")]
    assert types == [[spec.name, spec.type] for spec in SELF_SPECS]
    assert helps == [spec.help for spec in SELF_SPECS]
    metrics.state = None
    assert "ehpc_state_" not in metrics.render(False).decode()
