"""The Helm chart, rendered by Helm's own engine and checked by the tools a cluster would apply.

Every ci/*-values.yaml scenario (and the bare defaults) is rendered with helm-python-sdk (Helm v4's Go
engine), linted strictly, validated object by object with kubernetes-validate --strict against Kubernetes
1.30, and its Prometheus Operator objects with the ajv validators of @kubernetes-models/prometheus-operator
(tests/helm/validate-crds.mjs under Node). The exporter's own `--check-config` then accepts the ConfigMap.

`UPDATE_CHART_SCHEMA=1 pytest tests/test_helm.py` regenerates the `config` part of values.schema.json from
the exporter's settings schema after the config file format changed.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import helm_python as helm
import kubernetes_validate as kv
import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError

from exporter.config.load import config_json_schema
from tests.helm_render import (
    CHART,
    NAMESPACE,
    RELEASE,
    REPO,
    WORKLOAD_KINDS,
    Doc,
    container,
    mounts_of,
    one,
    pod_spec,
    render,
    workload,
)
from tests.test_image import WRITABLE_PATHS, built_image

SCHEMA_FILE = CHART / "values.schema.json"
RULES_FILE = CHART / "files" / "ehpc-image-exporter.rules.yml"
CRD_VALIDATOR = REPO / "tests" / "helm" / "validate-crds.mjs"
EXPORTER = Path(sys.executable).parent / "ehpc-image-exporter"
KUBE_VERSION = "1.30.0"

SCENARIOS = {p.name.removesuffix("-values.yaml"): p for p in sorted((CHART / "ci").glob("*-values.yaml"))}
MONITORING_KINDS = {"ServiceMonitor", "PrometheusRule"}
# values.schema.json `$defs` written by hand for the chart (the rest is generated from the exporter's schema).
CHART_OWNED_DEFS = ("ChartTarget",)


def scenario_values(name: str) -> dict[str, Any]:
    """The override values of one ci scenario."""
    values = yaml.safe_load(SCENARIOS[name].read_text()) or {}
    assert isinstance(values, dict)
    return values


def kinds(docs: list[Doc]) -> set[str]:
    """The kinds present."""
    return {d["kind"] for d in docs}


def state_dir(docs: list[Doc]) -> str | None:
    """The directory of the config's state.path (the chart mounts it writable), or None without state."""
    config = yaml.safe_load(one(docs, "ConfigMap")["data"]["config.yaml"]) or {}
    path = (config.get("state") or {}).get("path")
    return str(PurePosixPath(path).parent) if path else None


# ------------------------------------------------------------------------------------ chart and lint


def test_chart_metadata_tracks_the_project(chart: helm.Chart) -> None:
    """apiVersion v2; appVersion (the default image tag) is the package version."""
    meta = chart.metadata
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert meta["apiVersion"] == "v2"
    assert meta["name"] == "ehpc-image-exporter"
    assert meta["appVersion"] == project["version"]
    assert chart.schema is not None


@pytest.mark.parametrize("scenario", ["(defaults)", *SCENARIOS])
def test_helm_lint_strict_is_clean(scenario: str) -> None:
    """`helm lint --strict` for Kubernetes 1.30: no errors and no warnings (info such as 'icon' only)."""
    values = {} if scenario == "(defaults)" else scenario_values(scenario)
    report = helm.lint(CHART, values, strict=True, kube_version=f"v{KUBE_VERSION}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == [], problems
    assert report["errors"] == []


def test_every_scenario_listed() -> None:
    """The scenarios the chart promises exist (and nothing else hides in ci/)."""
    assert set(SCENARIOS) == {
        "default",
        "existing-secret",
        "created-secret",
        "rrsa",
        "rrsa-inject",
        "targets",
        "monitoring",
        "networkpolicy",
        "full",
        "autosharding",
        "state-pvc",
    }


# -------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_core_objects_validate_strictly(chart: helm.Chart, scenario: str) -> None:
    """Every core object passes kubernetes-validate --strict (unknown fields rejected) for 1.30."""
    docs = render(chart, scenario_values(scenario))
    assert {"Service", "ConfigMap", "ServiceAccount"} <= kinds(docs)
    assert len(kinds(docs) & set(WORKLOAD_KINDS)) == 1, "a Deployment or (autosharding) a StatefulSet"
    for doc in docs:
        try:
            kv.validate(doc, KUBE_VERSION, strict=True)
        except SchemaNotFoundError:
            assert doc["kind"] in MONITORING_KINDS, f"no schema for {doc['kind']}"
        except kv.ValidationError as e:
            raise AssertionError(f"{scenario}: {doc['kind']} {list(e.path)}: {e.message}") from e


def test_kubernetes_validate_catches_a_bad_object(chart: helm.Chart) -> None:
    """Control: the validator used above does reject a misspelt container field and a string replica count."""
    docs = render(chart, {})
    deployment = copy.deepcopy(one(docs, "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, KUBE_VERSION, strict=True)
    deployment = copy.deepcopy(one(docs, "Deployment"))
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, KUBE_VERSION, strict=True)


def run_crd_validator(path: Path) -> tuple[int, list[dict[str, Any]]]:
    """Validate the objects of a rendered file against the CRD schemas; (exit code, findings)."""
    proc = subprocess.run(
        ["node", str(CRD_VALIDATOR), str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


@pytest.mark.process
def test_monitoring_objects_validate_against_operator_crds(chart: helm.Chart, tmp_path: Path) -> None:
    """ServiceMonitor and PrometheusRule of every scenario pass the prometheus-operator CRD schemas."""
    manifest = tmp_path / "all.yaml"
    expected = 0
    with manifest.open("w") as f:
        for name in SCENARIOS:
            docs = render(chart, scenario_values(name))
            expected += sum(d["kind"] in MONITORING_KINDS for d in docs)
            yaml.safe_dump_all(docs, f)
            f.write("---\n")
    rc, results = run_crd_validator(manifest)
    assert [r for r in results if not r["ok"]] == []
    assert rc == 0
    assert len(results) == expected
    assert {r["kind"] for r in results} == MONITORING_KINDS


@pytest.mark.process
def test_crd_validator_rejects_bad_objects(chart: helm.Chart, tmp_path: Path) -> None:
    """Control: a numeric interval and a rule without expr fail, so a pass above means something."""
    docs = render(chart, scenario_values("monitoring"))
    sm = copy.deepcopy(one(docs, "ServiceMonitor"))
    sm["spec"]["endpoints"][0]["interval"] = 30
    rule = copy.deepcopy(one(docs, "PrometheusRule"))
    rule["spec"]["groups"] = [{"name": "g", "rules": [{"alert": "A", "for": "1m"}]}]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump_all([sm, rule]))
    rc, results = run_crd_validator(bad)
    assert rc == 1
    errors = {r["kind"]: r["error"] for r in results}
    assert "interval" in errors["ServiceMonitor"]
    assert "expr" in errors["PrometheusRule"]


# ------------------------------------------------------------------------------------------ schema


BAD_VALUES: list[tuple[str, dict[str, Any], list[str]]] = [
    ("wrong type", {"replicaCount": "two"}, ["/replicaCount", "integer"]),
    ("unknown key", {"replicas": 2}, ["replicas", "not allowed"]),
    ("unknown nested key", {"service": {"portt": 80}}, ["/service", "portt"]),
    ("bad enum", {"service": {"type": "Ingress"}}, ["/service/type", "ClusterIP"]),
    ("bad log format", {"logFormat": "xml"}, ["/logFormat"]),
    ("bad digest", {"image": {"digest": "latest"}}, ["/image/digest"]),
    ("rrsa without role ARN", {"rrsa": {"enabled": True}}, ["/rrsa", "roleArn"]),
    (
        "rrsa webhook without role",
        {"rrsa": {"enabled": True, "injectEnvironment": False}},
        ["/rrsa/roleName"],
    ),
    ("rrsa role name as ARN", {"rrsa": {"roleArn": "ehpc-reader"}}, ["/rrsa/roleArn"]),
    ("target without account", {"targets": [{"regions": [{"region_id": "cn-hangzhou"}]}]}, ["account"]),
    ("target without regions", {"targets": [{"account": "a", "regions": []}]}, ["/targets/0/regions"]),
    (
        "target: bad account",
        {"targets": [{"account": "-prod", "regions": [{"region_id": "cn-hangzhou"}]}]},
        ["/targets/0/account"],
    ),
    (
        "target: unknown key",
        {"targets": [{"account": "a", "regions": [{"region_id": "cn-hangzhou"}], "assume_role": {}}]},
        ["/targets/0", "assume_role"],
    ),
    (
        "target: duration out of range",
        {
            "targets": [
                {
                    "account": "a",
                    "regions": [{"region_id": "cn-hangzhou"}],
                    "assumeRole": {"roleArn": "acs:ram::1:role/r", "durationSeconds": 60},
                }
            ]
        },
        ["/targets/0/assumeRole/durationSeconds"],
    ),
    (
        "target: api checked by the exporter's schema",
        {"targets": [{"account": "a", "regions": [{"region_id": "cn-hangzhou"}], "api": {"qps": "x"}}]},
        ["/targets/0/api/qps"],
    ),
    ("created secret without key", {"credentials": {"create": True}}, ["/credentials/accessKeyId"]),
    ("config: wrong type", {"config": {"api": {"qps": "fast"}}}, ["/config/api/qps"]),
    ("config: unknown key", {"config": {"images": [{"idd": "m-1"}]}}, ["/config/images/0", "idd"]),
    ("config: bad enum", {"config": {"api": {"network": "lan"}}}, ["/config/api/network"]),
    ("bad duration", {"serviceMonitor": {"interval": "30"}}, ["/serviceMonitor/interval"]),
]


@pytest.mark.parametrize(("case", "values", "needles"), BAD_VALUES, ids=[c[0] for c in BAD_VALUES])
def test_values_schema_rejects_bad_values(
    chart: helm.Chart, case: str, values: dict[str, Any], needles: list[str]
) -> None:
    """values.schema.json rejects the mistake and the message names the field."""
    with pytest.raises(helm.HelmValuesError) as info:
        chart.validate_schema(chart.merge_values(values))
    for needle in needles:
        assert needle in str(info.value), f"{case}: {needle!r} not in {info.value}"


def test_values_schema_never_echoes_a_config_secret(chart: helm.Chart) -> None:
    """A literal AccessKey secret in `config` is refused without repeating it; a ${VAR} reference passes."""
    secret = "PlainTextSecretValue42"
    creds = {"type": "access_key", "access_key_id": "LTAI5tFake", "access_key_secret": secret}
    with pytest.raises(helm.HelmValuesError) as info:
        chart.validate_schema(chart.merge_values({"config": {"credentials": creds}}))
    assert "/config/credentials/access_key_secret" in str(info.value)
    assert secret not in str(info.value)
    creds["access_key_secret"] = "${AK_SECRET}"
    chart.validate_schema(chart.merge_values({"config": {"credentials": creds}}))


def test_values_schema_accepts_env_references_in_typed_fields(chart: helm.Chart) -> None:
    """`${VAR}` also works in numeric and boolean config fields: the exporter interpolates, then validates."""
    values = {
        "config": {
            "sharding": {"shards": "${SHARDS}", "shard": "${SHARD:-0}"},
            "discovery": {"enabled": "${D}"},
        }
    }
    chart.validate_schema(chart.merge_values(values))


def test_helm_lint_reports_schema_errors() -> None:
    """`helm lint` (what CI and users run) fails on the same bad values."""
    report = helm.lint(CHART, {"replicaCount": "two"}, strict=True, kube_version=f"v{KUBE_VERSION}")
    assert any("/replicaCount" in e for e in report["errors"])


TEMPLATE_GUARDS: list[tuple[dict[str, Any], str]] = [
    (
        {
            "rrsa": {"enabled": True, "injectEnvironment": False, "roleName": "r"},
            "credentials": {"existingSecret": "s"},
        },
        "mutually exclusive",
    ),
    (
        {"credentials": {"create": True, "accessKeyId": "a", "accessKeySecret": "b", "existingSecret": "s"}},
        "existingSecret",
    ),
    (
        {
            "rrsa": {"enabled": True, "injectEnvironment": False, "roleName": "r"},
            "serviceAccount": {"create": False},
        },
        "serviceAccount.create",
    ),
    ({"webConfig": {"tls": True}}, "webConfig.secretName"),
]


@pytest.mark.parametrize(("values", "needle"), TEMPLATE_GUARDS)
def test_contradictory_values_fail_the_render(chart: helm.Chart, values: dict[str, Any], needle: str) -> None:
    """Combinations the schema cannot express fail with a message naming the keys."""
    with pytest.raises(helm.HelmRenderError, match=re.escape(needle)):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


def _env_relaxed(node: Any) -> Any:
    """A pydantic JSON schema fit for Helm values: no titles/defaults, `${VAR}` allowed in typed leaves."""
    if isinstance(node, list):
        return [_env_relaxed(n) for n in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("title", "default"):
            continue
        if key == "properties":
            out[key] = {name: _env_relaxed(sub) for name, sub in value.items()}
        else:
            out[key] = _env_relaxed(value)
    if out.get("type") in ("integer", "number", "boolean"):
        return {"anyOf": [out, {"$ref": "#/$defs/EnvRef"}]}
    return out


SECRET_FIELDS = ("access_key_secret", "security_token")


def chart_config_defs() -> dict[str, Any]:
    """The `$defs` of values.schema.json: the exporter's config schema, adapted for the chart.

    Typed leaves also accept a string holding a `${VAR}` reference (the exporter interpolates strings before
    validating). Secret fields accept only an exact `${VAR}` reference, checked through a double `not` so a
    rejected value is never echoed in Helm's error message.
    """
    source = config_json_schema()
    defs = {name: _env_relaxed(sub) for name, sub in source.pop("$defs").items()}
    defs["ConfigFile"] = _env_relaxed(source)
    defs["EnvRef"] = {
        "type": "string",
        "pattern": r"\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}",
        "description": "A ${VAR} or ${VAR:-default} reference, expanded by the exporter from its env.",
    }
    exact_ref = {
        "anyOf": [{"type": "null"}, {"type": "string", "pattern": r"^\$\{[A-Za-z_][A-Za-z0-9_]*\}$"}]
    }
    for field in SECRET_FIELDS:
        defs["CredentialsConfig"]["properties"][field] = {
            "description": "Only a ${VAR} reference: secrets never go into the ConfigMap.",
            "not": {"not": exact_ref},
        }
    return dict(sorted(defs.items()))


def test_values_schema_config_matches_the_exporter_schema() -> None:
    """The chart validates `config` with the exporter's own schema (regenerate: UPDATE_CHART_SCHEMA=1).

    The chart-owned `$defs` (CHART_OWNED_DEFS: the chart's `targets` entries) are kept as they are.
    """
    schema = json.loads(SCHEMA_FILE.read_text())
    expected = chart_config_defs()
    owned = {name: schema["$defs"][name] for name in CHART_OWNED_DEFS}
    if os.environ.get("UPDATE_CHART_SCHEMA"):
        schema["$defs"] = dict(sorted({**expected, **owned}.items()))
        SCHEMA_FILE.write_text(json.dumps(schema, indent=2) + "\n")
    assert schema["properties"]["config"]["$ref"] == "#/$defs/ConfigFile"
    generated = {name: d for name, d in schema["$defs"].items() if name not in CHART_OWNED_DEFS}
    assert generated == expected, (
        "values.schema.json is stale: run UPDATE_CHART_SCHEMA=1 pytest tests/test_helm.py"
    )


def _refs(node: Any) -> set[str]:
    if isinstance(node, list):
        return set().union(*(_refs(n) for n in node)) if node else set()
    if not isinstance(node, dict):
        return set()
    found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
    return found.union(*(_refs(v) for v in node.values()))


def test_chart_owned_schema_refers_only_to_existing_defs() -> None:
    """ChartTarget reuses the exporter's ApiIn, RefreshIn, ImageIn, DiscoveryIn and EnvRef: a rename in a
    regenerated schema must fail here, not leave a dangling $ref that Helm reports at install time."""
    schema = json.loads(SCHEMA_FILE.read_text())
    for name in CHART_OWNED_DEFS:
        for ref in _refs(schema["$defs"][name]):
            assert ref.startswith("#/$defs/"), ref
            assert ref.removeprefix("#/$defs/") in schema["$defs"], f"{name}: {ref} does not exist"


def _values_key_lines() -> list[tuple[str, int, list[str]]]:
    """(dotted key, line number, comment lines right above) for every mapping key line of values.yaml."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []
    out = []
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z_][\w.-]*):(\s|$)", line)
        if not m:
            continue
        indent = len(m[1])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([k for _, k in stack] + [m[2]])
        stack.append((indent, m[2]))
        comments = []
        j = i - 1
        while j >= 0 and lines[j].strip().startswith("#"):
            comments.append(lines[j].strip())
            j -= 1
        out.append((path, i + 1, comments))
    return out


def test_values_are_documented() -> None:
    """Every value a user sets (a leaf of a schema-closed section) has a `# --` comment on it or a parent."""
    schema = json.loads(SCHEMA_FILE.read_text())

    def node_at(path: list[str]) -> dict[str, Any] | None:
        """The schema of a values path; {} below an open object or a $ref (not checked here)."""
        node: dict[str, Any] = schema
        for key in path:
            props = node.get("properties")
            if not isinstance(props, dict):
                return {}
            if key not in props:
                return None
            node = props[key]
        return node

    documented: set[str] = set()  # keys with a `# --` comment: it documents their whole subtree
    undocumented = []
    for path, lineno, comments in _values_key_lines():
        parts = path.split(".")
        if any(c.startswith("# --") for c in comments):
            documented.add(path)
        parent, node = node_at(parts[:-1]), node_at(parts)
        closed_parent = parent is not None and parent.get("additionalProperties") is False
        if closed_parent:
            assert node is not None, f"values.yaml:{lineno}: {path} is not in values.schema.json"
        is_section = node is not None and node.get("additionalProperties") is False and "properties" in node
        covered = any(".".join(parts[:n]) in documented for n in range(1, len(parts) + 1))
        if closed_parent and not is_section and not covered:
            undocumented.append(f"values.yaml:{lineno}: {path}")
    assert undocumented == []


# ------------------------------------------------------------------------------------ what renders


def test_monitoring_objects_absent_by_default_present_when_enabled(chart: helm.Chart) -> None:
    """ServiceMonitor and PrometheusRule are opt-in, each on its own flag."""
    assert not kinds(render(chart, {})) & MONITORING_KINDS
    assert kinds(render(chart, scenario_values("monitoring"))) >= MONITORING_KINDS
    assert kinds(render(chart, {"serviceMonitor": {"enabled": True}})) & MONITORING_KINDS == {
        "ServiceMonitor"
    }
    assert kinds(render(chart, {"prometheusRule": {"enabled": True}})) & MONITORING_KINDS == {
        "PrometheusRule"
    }
    for optional in ("NetworkPolicy", "PodDisruptionBudget", "Secret"):
        assert optional not in kinds(render(chart, {}))


def test_servicemonitor_scrapes_the_service_port(chart: helm.Chart) -> None:
    """The ServiceMonitor selects the Service's labels and its named port; TLS switches the scheme."""
    docs = render(chart, scenario_values("monitoring"))
    sm, svc = one(docs, "ServiceMonitor"), one(docs, "Service")
    selector = sm["spec"]["selector"]["matchLabels"]
    assert selector.items() <= svc["metadata"]["labels"].items()
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] == svc["spec"]["ports"][0]["name"] == "http"
    assert endpoint["path"] == "/metrics"
    assert endpoint["scheme"] == "http"
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    full = render(chart, scenario_values("full"))
    assert one(full, "ServiceMonitor")["spec"]["endpoints"][0]["scheme"] == "https"
    assert container(full)["livenessProbe"]["httpGet"]["scheme"] == "HTTPS"


def test_prometheusrule_embeds_the_rules_file_verbatim(chart: helm.Chart) -> None:
    """The PrometheusRule spec is exactly the chart's rules file with no label carried: the shipped rules
    (Prometheus templates untouched by Helm)."""
    rule = one(render(chart, {"prometheusRule": {"enabled": True}}), "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(RULES_FILE.read_text().replace("<carry_labels>", ""))
    assert rule["spec"] == yaml.safe_load((REPO / "alerts" / "ehpc-image-exporter.rules.yml").read_text())
    text = json.dumps(rule["spec"])
    if "{{" in RULES_FILE.read_text():
        assert "{{" in text, "Helm must not evaluate the alert annotations' Prometheus templates"


def test_secret_rendered_only_when_created(chart: helm.Chart) -> None:
    """created-secret: a Secret the pod reads; existing-secret: referenced by name and keys; else none."""
    created = scenario_values("created-secret")["credentials"]
    docs = render(chart, scenario_values("created-secret"))
    secret = one(docs, "Secret")
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert data == {"access-key-id": created["accessKeyId"], "access-key-secret": created["accessKeySecret"]}
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container(docs)["env"] if "valueFrom" in e}
    assert refs == {
        "ALIBABA_CLOUD_ACCESS_KEY_ID": {"name": secret["metadata"]["name"], "key": "access-key-id"},
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET": {"name": secret["metadata"]["name"], "key": "access-key-secret"},
    }
    assert created["accessKeySecret"] not in json.dumps(one(docs, "Deployment"))

    docs = render(chart, scenario_values("existing-secret"))
    assert "Secret" not in kinds(docs)
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container(docs)["env"]}
    assert refs == {
        "ALIBABA_CLOUD_ACCESS_KEY_ID": {"name": "ehpc-ak", "key": "id"},
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET": {"name": "ehpc-ak", "key": "secret"},
    }

    for name in ("default", "rrsa"):
        env = container(render(chart, scenario_values(name))).get("env") or []
        assert not [e for e in env if e["name"].startswith("ALIBABA_CLOUD_ACCESS_KEY")]


def test_created_secret_change_rolls_pods(chart: helm.Chart) -> None:
    """Rotating the created AccessKey changes a pod annotation, so the Deployment rolls."""
    values = scenario_values("created-secret")

    def annotations(v: dict[str, Any]) -> dict[str, str]:
        ann = one(render(chart, v), "Deployment")["spec"]["template"]["metadata"]["annotations"]
        assert isinstance(ann, dict)
        return ann

    rotated = copy.deepcopy(values)
    rotated["credentials"]["accessKeySecret"] = "AnotherFakeSecret"
    assert annotations(values)["checksum/credentials"] != annotations(rotated)["checksum/credentials"]
    assert values["credentials"]["accessKeySecret"] not in json.dumps(annotations(values))


def test_rrsa_scenario_annotates_the_service_account(chart: helm.Chart) -> None:
    """RRSA: the ServiceAccount the pod uses carries the ack-pod-identity-webhook role annotation."""
    docs = render(chart, scenario_values("rrsa"))
    sa = one(docs, "ServiceAccount")
    assert (
        sa["metadata"]["annotations"]["pod-identity.alibabacloud.com/role-name"]
        == "ehpc-image-exporter-reader"
    )
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == sa["metadata"]["name"] == "ehpc-image-exporter"
    env = {e["name"]: e.get("value") for e in container(docs).get("env") or []}
    assert env == {"ALIBABA_CLOUD_ECS_METADATA_DISABLED": "true"}, "no AccessKey may shadow the RRSA role"

    plain = one(render(chart, {}), "ServiceAccount")
    assert "pod-identity.alibabacloud.com/role-name" not in (plain["metadata"].get("annotations") or {})


@pytest.mark.parametrize("scenario", ["(defaults)", *SCENARIOS])
def test_pods_are_locked_down(chart: helm.Chart, scenario: str) -> None:
    """Non-root, read-only root, no privilege escalation, no capabilities, RuntimeDefault seccomp.

    Which user, and which mounts may be writable, is what the built image proved it needs: see
    test_pod_security_matches_the_built_image.
    """
    docs = render(chart, {} if scenario == "(defaults)" else scenario_values(scenario))
    pod = pod_spec(docs)
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert not pod.get("hostNetwork")
    assert not pod.get("hostPID")
    assert not pod.get("hostIPC")
    for c in pod["containers"]:
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["runAsNonRoot"] is True
        assert sc.get("privileged", False) is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        tmp = "/tmp"  # noqa: S108 -- the container's path, not a file the test writes
        assert "emptyDir" in volumes[mounts[tmp]], "the only writable path must be an emptyDir"
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert c["resources"]["requests"]
        assert c["resources"]["limits"]["memory"]


@pytest.mark.process
@pytest.mark.xdist_group("image")  # on the worker that builds the image for tests/test_image.py
@pytest.mark.timeout(600)  # the first test to use the image pays for its build
def test_pod_security_matches_the_built_image(
    chart: helm.Chart, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The pod runs as the image's inspected User, and gets writable exactly what the image run needed.

    tests/test_image.py builds the Dockerfile and runs it as that User on a read-only root with only
    WRITABLE_PATHS writable (a tmpfs); the chart must promise the same: the same UID and GID, non-root
    (the image's UID is not 0), readOnlyRootFilesystem, and no other writable mount but the state file's
    directory (an emptyDir or a claim, writable for the image's group through fsGroup). Builds the image
    on first use (once per session, shared with tests/test_image.py).
    """
    image = built_image(request.config, tmp_path_factory)
    uid, gid = image.uid_gid
    assert uid != 0, "runAsNonRoot would refuse the image"
    assert image.env["HOME"] in WRITABLE_PATHS
    for scenario in ["(defaults)", *SCENARIOS]:
        docs = render(chart, {} if scenario == "(defaults)" else scenario_values(scenario))
        pod = pod_spec(docs)
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True, scenario
        volumes = {m["name"]: v for m, v in mounts_of(docs).values()}
        state = state_dir(docs)
        for c in pod["containers"]:
            sc = c["securityContext"]
            # The container's settings win over the pod's; both are set, and both must be the image's.
            for level in (psc, sc):
                assert (level["runAsUser"], level["runAsGroup"]) == (uid, gid), scenario
            assert sc["readOnlyRootFilesystem"] is True, scenario
            writable = {m["mountPath"]: m["name"] for m in c["volumeMounts"] if not m.get("readOnly")}
            expected = {*WRITABLE_PATHS, *([state] if state else [])}
            assert set(writable) == expected, f"{scenario}: writable mounts {sorted(writable)}"
            for path, name in writable.items():
                if path == state:
                    assert volumes[name].keys() & {"emptyDir", "persistentVolumeClaim", "claimTemplate"}
                    assert psc["fsGroup"] == gid, f"{scenario}: the image's group must own the state volume"
                else:
                    assert "emptyDir" in volumes[name], f"{scenario}: {path} must be an emptyDir (a tmpfs)"


def test_config_change_rolls_pods(chart: helm.Chart) -> None:
    """checksum/config follows the rendered config: same config, same hash; any change, a new one."""

    def checksum(values: dict[str, Any]) -> str:
        docs = render(chart, values)
        ann = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
        config_text = one(docs, "ConfigMap")["data"]["config.yaml"]
        assert ann["checksum/config"] == hashlib.sha256(config_text.encode()).hexdigest()
        return str(ann["checksum/config"])

    base = checksum({})
    assert checksum({"replicaCount": 3}) == base
    assert checksum({"config": {"refresh": {"interval_seconds": 30}}}) != base


def test_image_tag_defaults_to_app_version(chart: helm.Chart) -> None:
    """No tag means appVersion; an explicit tag wins; a digest wins over both."""
    app = chart.metadata["appVersion"]
    assert container(render(chart, {}))["image"] == f"ehpc-image-exporter:{app}"
    assert container(render(chart, {"image": {"tag": "dev"}}))["image"] == "ehpc-image-exporter:dev"
    digest = "sha256:" + "ab" * 32
    assert container(render(chart, {"image": {"tag": "dev", "digest": digest}}))["image"].endswith(
        "@" + digest
    )


def test_networkpolicy_admits_scrapes_and_limits_egress(chart: helm.Chart) -> None:
    """Ingress only to the metrics port from the chosen peers; egress DNS, 443, metadata only when asked."""
    values = scenario_values("networkpolicy")
    np = one(render(chart, values), "NetworkPolicy")["spec"]
    (ingress,) = np["ingress"]
    assert ingress["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert ingress["from"] == values["networkPolicy"]["ingressFrom"]
    ports = sorted((p["port"], p["protocol"]) for rule in np["egress"] for p in rule["ports"])
    assert ports == [(53, "TCP"), (53, "UDP"), (80, "TCP"), (443, "TCP")]
    without_metadata = one(render(chart, {"networkPolicy": {"enabled": True}}), "NetworkPolicy")["spec"]
    assert 80 not in [p["port"] for rule in without_metadata["egress"] for p in rule["ports"]]
    assert "from" not in without_metadata["ingress"][0], "no peers given: any source may scrape"


def test_pdb_and_replicas_in_full_scenario(chart: helm.Chart) -> None:
    """The full scenario's PodDisruptionBudget selects the Deployment's pods."""
    docs = render(chart, scenario_values("full"))
    pdb = one(docs, "PodDisruptionBudget")["spec"]
    deployment = one(docs, "Deployment")["spec"]
    assert pdb["minAvailable"] == 1
    assert "maxUnavailable" not in pdb
    assert pdb["selector"] == deployment["selector"]
    assert deployment["replicas"] == 2


# ---------------------------------------------------------------------- the exporter accepts the config


def _check_config_args(docs: list[Doc], tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    """The container's own args, with the mounted files replaced by local copies, plus its literal env.

    The state file moves into a fresh local directory, as the pod gets an empty writable volume.
    """
    text = one(docs, "ConfigMap")["data"]["config.yaml"]
    data = yaml.safe_load(text) or {}
    if "state" in data:
        state = tmp_path / "state"
        state.mkdir()
        data["state"]["path"] = str(state / PurePosixPath(data["state"]["path"]).name)
        text = yaml.safe_dump(data, sort_keys=False)
    config = tmp_path / "config.yaml"
    config.write_text(text)
    web = tmp_path / "web-config.yml"
    web.write_text("{}\n")
    args = [
        a.replace("/etc/ehpc-image-exporter/config.yaml", str(config)).replace(
            "/etc/ehpc-image-exporter/web/web-config.yml", str(web)
        )
        for a in container(docs)["args"]
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALIBABA_CLOUD_")}
    env.update({e["name"]: e["value"] for e in container(docs).get("env") or [] if "value" in e})
    # The downward API's pod name, as the StatefulSet's first pod (ordinal 0) gets it.
    for e in container(docs).get("env") or []:
        if (e.get("valueFrom") or {}).get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[e["name"]] = f"{workload(docs)['metadata']['name']}-0"
    # Each secretKeyRef gets a fake value of the right shape, as the Secret would supply it.
    for e in container(docs).get("env") or []:
        if "secretKeyRef" in (e.get("valueFrom") or {}):
            fake = "LTAI5tFakeIdForChartCheck" if e["name"].endswith("_ID") else "FakeSecretForChartCheck00"
            env[e["name"]] = fake
    return args, env


@pytest.mark.process
@pytest.mark.parametrize("scenario", ["(defaults)", *SCENARIOS])
def test_configmap_passes_the_exporters_check(chart: helm.Chart, scenario: str, tmp_path: Path) -> None:
    """`ehpc-image-exporter <the pod's args> --check-config` accepts what the chart mounts."""
    docs = render(chart, {} if scenario == "(defaults)" else scenario_values(scenario))
    args, env = _check_config_args(docs, tmp_path)
    proc = subprocess.run(
        [str(EXPORTER), *args, "--check-config"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.process
def test_exporter_check_rejects_a_broken_configmap(chart: helm.Chart, tmp_path: Path) -> None:
    """Control: the same check fails on a config the exporter cannot use (an unset ${VAR})."""
    docs = render(chart, {"config": {"images": [{"id": "${UNSET_IMAGE_ID_FOR_TEST}"}]}})
    args, env = _check_config_args(docs, tmp_path)
    env.pop("UNSET_IMAGE_ID_FOR_TEST", None)
    proc = subprocess.run(
        [str(EXPORTER), *args, "--check-config"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0
    assert "UNSET_IMAGE_ID_FOR_TEST" in proc.stdout + proc.stderr
