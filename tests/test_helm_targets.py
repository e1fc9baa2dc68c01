"""The chart's `targets` (one exporter, several accounts) and RRSA rendered by the chart itself.

Rendered with Helm's own engine (tests/helm_render.py) and validated like every other render: the schema,
kubernetes-validate --strict for 1.30, and the template guards' `fail` messages.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate as kv
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes_validate.utils import SchemaNotFoundError

from alerts import build
from exporter.config.load import interpolate
from tests.helm_render import (
    CHART,
    NAMESPACE,
    RELEASE,
    Doc,
    config_of,
    container,
    env_of,
    one,
    render,
    rendered_config,
    rendered_env,
    rendered_mounts,
)

KUBE_VERSION = "1.30.0"
TOKEN_DIR = "/var/run/secrets/ack.alibabacloud.com/rrsa-tokens"
ROLE_ARN = "acs:ram::111111111111:role/ehpc-monitor"
OIDC_ARN = "acs:ram::111111111111:oidc-provider/ack-rrsa-c0123456789abcdef"
RRSA = {"enabled": True, "roleArn": ROLE_ARN, "oidcProviderArn": OIDC_ARN}

# Throwaway values the Secrets would hold; none of them may appear in anything the chart renders.
SECRETS = {
    "ehpc-prod-ak": {
        "access-key-id": "LTAI5tProdFakeId000000",
        "access-key-secret": "ProdFakeSecretText00000",
    },
    "ehpc-staging-ak": {"id": "LTAI5tStagingFakeId000", "secret": "StagingFakeSecretText00"},
}

TWO_ACCOUNTS: dict[str, Any] = {
    "config": {"api": {"region_id": "cn-hangzhou", "qps": 20}, "discovery": {"enabled": True}},
    "targets": [
        {
            "account": "prod",
            "credentials": {"existingSecret": "ehpc-prod-ak"},
            "regions": [{"region_id": "cn-hangzhou"}, {"region_id": "cn-shanghai", "network": "vpc"}],
            "api": {"qps": 10},
            "accountQps": 15,
            "accountMaxConcurrency": 30,
            "images": [{"id": "m-bp1abcdef0123456789", "additional_regions": ["cn-beijing"]}],
        },
        {
            "account": "staging",
            "credentials": {
                "existingSecret": "ehpc-staging-ak",
                "keys": {"accessKeyId": "id", "accessKeySecret": "secret"},
            },
            "assumeRole": {
                "roleArn": "acs:ram::222222222222:role/ehpc-image-reader",
                "externalId": "ehpc-exporter-staging",
                "roleSessionName": "ehpc-image-exporter",
                "durationSeconds": 3600,
                "stsEndpoint": "sts-vpc.cn-hangzhou.aliyuncs.com",
            },
            "regions": [{"region_id": "cn-hangzhou"}],
            "refresh": {"interval_seconds": 120},
            "discovery": {"enabled": False},
        },
    ],
}


def validate_strictly(docs: list[Doc]) -> None:
    """Every core object passes kubernetes-validate --strict for 1.30 (as tests/test_helm.py checks)."""
    for doc in docs:
        try:
            kv.validate(doc, KUBE_VERSION, strict=True)
        except SchemaNotFoundError:
            assert doc["kind"] in {"ServiceMonitor", "PrometheusRule"}
        except kv.ValidationError as e:
            raise AssertionError(f"{doc['kind']} {list(e.path)}: {e.message}") from e


def with_targets(**changes: Any) -> dict[str, Any]:
    """TWO_ACCOUNTS with the first target's keys changed (None removes a key)."""
    values = copy.deepcopy(TWO_ACCOUNTS)
    for key, value in changes.items():
        if value is None:
            values["targets"][0].pop(key, None)
        else:
            values["targets"][0][key] = value
    return values


# --------------------------------------------------------------------------------------------- targets


def test_two_accounts_render_secret_refs_and_config_references(chart: helm.Chart) -> None:
    """Each account's Secret becomes two EHPC_TARGET_<index>_* env vars; its config credentials name them."""
    docs = render(chart, TWO_ACCOUNTS)
    validate_strictly(docs)
    env = container(docs)["env"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in env if "valueFrom" in e}
    assert refs == {
        "EHPC_TARGET_0_ACCESS_KEY_ID": {"name": "ehpc-prod-ak", "key": "access-key-id"},
        "EHPC_TARGET_0_ACCESS_KEY_SECRET": {"name": "ehpc-prod-ak", "key": "access-key-secret"},
        "EHPC_TARGET_1_ACCESS_KEY_ID": {"name": "ehpc-staging-ak", "key": "id"},
        "EHPC_TARGET_1_ACCESS_KEY_SECRET": {"name": "ehpc-staging-ak", "key": "secret"},
    }
    assert not [e for e in env if e["name"].startswith("ALIBABA_CLOUD_")], "no pod-wide key or role"

    config = yaml.safe_load(config_of(docs))
    assert config["api"] == {"qps": 20}, "api.region_id is per target; the other api keys are defaults"
    assert "discovery" not in config
    assert "credentials" not in config
    prod, staging = config["targets"]
    assert prod == {
        "account": "prod",
        "credentials": {
            "type": "access_key",
            "access_key_id": "${EHPC_TARGET_0_ACCESS_KEY_ID}",
            "access_key_secret": "${EHPC_TARGET_0_ACCESS_KEY_SECRET}",
        },
        "regions": [{"region_id": "cn-hangzhou"}, {"region_id": "cn-shanghai", "network": "vpc"}],
        "api": {"qps": 10},
        "account_qps": 15,
        "account_max_concurrency": 30,
        "images": [{"id": "m-bp1abcdef0123456789", "additional_regions": ["cn-beijing"]}],
        "discovery": {"enabled": True},  # config.discovery: the default of targets that set none
    }
    assert staging == {
        "account": "staging",
        "credentials": {
            "type": "access_key",
            "access_key_id": "${EHPC_TARGET_1_ACCESS_KEY_ID}",
            "access_key_secret": "${EHPC_TARGET_1_ACCESS_KEY_SECRET}",
        },
        "assume_role": {
            "role_arn": "acs:ram::222222222222:role/ehpc-image-reader",
            "external_id": "ehpc-exporter-staging",
            "role_session_name": "ehpc-image-exporter",
            "duration_seconds": 3600,
            "sts_endpoint": "sts-vpc.cn-hangzhou.aliyuncs.com",
        },
        "regions": [{"region_id": "cn-hangzhou"}],
        "refresh": {"interval_seconds": 120},
        "discovery": {"enabled": False},
    }


def test_no_secret_text_reaches_any_rendered_object(chart: helm.Chart) -> None:
    """The secrets live only in the Secrets: the ConfigMap holds ${...} references, and once the pod's env
    is applied (what the exporter's interpolation does) each target gets its own account's pair."""
    docs = render(chart, TWO_ACCOUNTS)
    everything = json.dumps(docs)
    for secret in SECRETS.values():
        for value in secret.values():
            assert value not in everything
    env = env_of(docs, secrets=SECRETS)
    expanded, missing = interpolate(config_of(docs), env)
    assert missing == []
    prod, staging = yaml.safe_load(expanded)["targets"]
    assert prod["credentials"]["access_key_id"] == SECRETS["ehpc-prod-ak"]["access-key-id"]
    assert prod["credentials"]["access_key_secret"] == SECRETS["ehpc-prod-ak"]["access-key-secret"]
    assert staging["credentials"]["access_key_id"] == SECRETS["ehpc-staging-ak"]["id"]
    assert staging["credentials"]["access_key_secret"] == SECRETS["ehpc-staging-ak"]["secret"]


def test_rrsa_target_uses_oidc_role_arn_with_the_sts_endpoint(chart: helm.Chart) -> None:
    """`rrsa: true` gives credentials type oidc_role_arn (the role and token come from the pod's env) with
    rrsa.stsEndpoint; an AccessKey target next to it keeps its own pair, and nothing shadows the role."""
    values = copy.deepcopy(TWO_ACCOUNTS)
    values["rrsa"] = {**RRSA, "stsEndpoint": "sts-vpc.cn-hangzhou.aliyuncs.com"}
    values["targets"].append(
        {
            "account": "research",
            "rrsa": True,
            "assumeRole": {"roleArn": "acs:ram::333333333333:role/ehpc-image-reader"},
            "regions": [{"region_id": "cn-beijing"}],
        }
    )
    docs = render(chart, values)
    validate_strictly(docs)
    research = yaml.safe_load(config_of(docs))["targets"][2]
    assert research == {
        "account": "research",
        "credentials": {"type": "oidc_role_arn", "sts_endpoint": "sts-vpc.cn-hangzhou.aliyuncs.com"},
        "assume_role": {"role_arn": "acs:ram::333333333333:role/ehpc-image-reader"},
        "regions": [{"region_id": "cn-beijing"}],
        "discovery": {"enabled": True},
    }
    names = [e["name"] for e in container(docs)["env"]]
    assert "ALIBABA_CLOUD_ROLE_ARN" in names
    assert not [n for n in names if n.startswith("ALIBABA_CLOUD_ACCESS_KEY")]


def test_target_without_credentials_uses_the_default_chain(chart: helm.Chart) -> None:
    """No credentials and no rrsa: the config's target has no credentials block (the pod's default chain)."""
    values = with_targets(credentials=None)
    target = yaml.safe_load(rendered_config(values))["targets"][0]
    assert "credentials" not in target
    names = [e["name"] for e in container(render(chart, values))["env"]]
    assert not [n for n in names if n.startswith("EHPC_TARGET_0_")]


def test_env_names_follow_the_index(chart: helm.Chart) -> None:
    """Names come from the position, so any account name (dots, dashes) gives a valid ${VAR} name."""
    values = copy.deepcopy(TWO_ACCOUNTS)
    values["targets"][0]["account"] = "prod.cn-east_1"
    values["targets"].reverse()
    docs = render(chart, values)
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in container(docs)["env"]}
    assert refs["EHPC_TARGET_0_ACCESS_KEY_ID"] == "ehpc-staging-ak"
    assert refs["EHPC_TARGET_1_ACCESS_KEY_ID"] == "ehpc-prod-ak"
    targets = yaml.safe_load(config_of(docs))["targets"]
    assert targets[1]["account"] == "prod.cn-east_1"
    assert targets[1]["credentials"]["access_key_id"] == "${EHPC_TARGET_1_ACCESS_KEY_ID}"


def test_changing_a_target_rolls_the_pods(chart: helm.Chart) -> None:
    """checksum/config covers the derived targets too."""

    def checksum(values: dict[str, Any]) -> str:
        ann = one(render(chart, values), "Deployment")["spec"]["template"]["metadata"]["annotations"]
        return str(ann["checksum/config"])

    changed = with_targets(regions=[{"region_id": "cn-shenzhen"}])
    assert checksum(TWO_ACCOUNTS) != checksum(changed)


FAILURES: list[tuple[str, dict[str, Any], str]] = [
    (
        "duplicate account",
        {"targets": [TWO_ACCOUNTS["targets"][0], {**TWO_ACCOUNTS["targets"][1], "account": "prod"}]},
        "targets[1] (account prod): account prod is also targets[0]; account names must be unique",
    ),
    (
        "region listed twice",
        with_targets(regions=[{"region_id": "cn-hangzhou"}, {"region_id": "cn-hangzhou"}]),
        "targets[0] (account prod): region cn-hangzhou is listed twice",
    ),
    (
        "secret and rrsa",
        {**with_targets(rrsa=True), "rrsa": RRSA},
        "targets[0] (account prod): credentials.existingSecret and rrsa are mutually exclusive",
    ),
    (
        "rrsa target without rrsa.enabled",
        with_targets(credentials=None, rrsa=True),
        "targets[0] (account prod): rrsa is true but rrsa.enabled is false",
    ),
    (
        "top-level credentials with targets",
        {**TWO_ACCOUNTS, "config": {"credentials": {"type": "ecs_ram_role"}}},
        "targets is set: move config.credentials into each target's credentials",
    ),
    (
        "top-level images with targets",
        {**TWO_ACCOUNTS, "config": {"images": [{"id": "m-1"}]}},
        "targets is set: move config.images into each target's images",
    ),
    (
        "top-level labels with targets",
        {**TWO_ACCOUNTS, "config": {"labels": {"team": "hpc"}}},
        "targets is set: move config.labels into each target's labels",
    ),
    (
        "sts endpoint without rrsa",
        {"rrsa": {"stsEndpoint": "sts-vpc.cn-hangzhou.aliyuncs.com"}},
        "rrsa.stsEndpoint is set but rrsa.enabled is false",
    ),
    (
        "sts endpoint and config credentials",
        {
            "rrsa": {**RRSA, "stsEndpoint": "sts-vpc.cn-hangzhou.aliyuncs.com"},
            "config": {"credentials": {"type": "default"}},
        },
        "rrsa.stsEndpoint writes config.credentials",
    ),
]


@pytest.mark.parametrize(("case", "values", "message"), FAILURES, ids=[c[0] for c in FAILURES])
def test_contradictory_targets_fail_the_render(
    chart: helm.Chart, case: str, values: dict[str, Any], message: str
) -> None:
    """Mistakes the schema cannot see fail the render with a message naming the target and the keys."""
    with pytest.raises(helm.HelmRenderError, match=re.escape(message)):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


# Guards the schema already catches (so `helm install` fails there first) keep their template message for
# `helm template --skip-schema-validation` (helm lint cannot show them: in lint mode `fail` only logs).
SCHEMA_FIRST: list[tuple[dict[str, Any], str]] = [
    ({"targets": [{"account": "", "regions": [{"region_id": "cn-hangzhou"}]}]}, "targets[0]: set account"),
    (with_targets(regions=[]), "targets[0] (account prod): set at least one entry under regions"),
    (with_targets(credentials={"keys": {}}), "credentials is set without credentials.existingSecret"),
    (with_targets(assumeRole={"externalId": "x"}), "assumeRole is set without assumeRole.roleArn"),
    (with_targets(regions=[{"network": "vpc"}]), "targets[0] (account prod): regions[0] has no region_id"),
    (
        {"rrsa": {"enabled": True, "roleArn": ROLE_ARN, "oidcProviderArn": ""}},
        "set rrsa.roleArn and rrsa.oidcProviderArn, or set rrsa.injectEnvironment=false",
    ),
]


@pytest.fixture(scope="module")
def chart_without_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[helm.Chart]:
    """The chart with values.schema.json removed: what `--skip-schema-validation` renders."""
    copy_dir = tmp_path_factory.mktemp("chart") / CHART.name
    shutil.copytree(CHART, copy_dir)
    (copy_dir / "values.schema.json").unlink()
    with helm.Chart.load(copy_dir) as ch:
        yield ch


@pytest.mark.parametrize(("values", "message"), SCHEMA_FIRST)
def test_schema_caught_mistakes_also_fail_in_the_templates(
    chart: helm.Chart, chart_without_schema: helm.Chart, values: dict[str, Any], message: str
) -> None:
    """The schema rejects these values; with it skipped, the templates' own guard names the mistake."""
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema(chart.merge_values(values))
    with pytest.raises(helm.HelmRenderError, match=re.escape(message)):
        chart_without_schema.render(values, name=RELEASE, namespace=NAMESPACE)


# ------------------------------------------------------------------------------------------------ RRSA


def test_rrsa_renders_exactly_what_the_webhook_injects(chart: helm.Chart) -> None:
    """The env, the projected token volume and its read-only mount of ACK's manual RRSA template; the
    ServiceAccount gets no role-name annotation, so a labelled namespace's webhook injects nothing twice."""
    docs = render(chart, {"rrsa": RRSA})
    validate_strictly(docs)
    env = {e["name"]: e for e in container(docs)["env"]}
    rrsa_env = {name: e for name, e in env.items() if name.startswith("ALIBABA_CLOUD_")}
    assert rrsa_env == {
        "ALIBABA_CLOUD_ROLE_ARN": {"name": "ALIBABA_CLOUD_ROLE_ARN", "value": ROLE_ARN},
        "ALIBABA_CLOUD_OIDC_PROVIDER_ARN": {"name": "ALIBABA_CLOUD_OIDC_PROVIDER_ARN", "value": OIDC_ARN},
        "ALIBABA_CLOUD_OIDC_TOKEN_FILE": {
            "name": "ALIBABA_CLOUD_OIDC_TOKEN_FILE",
            "value": f"{TOKEN_DIR}/token",
        },
    }
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "rrsa-oidc-token"]
    assert volume == {
        "name": "rrsa-oidc-token",
        "projected": {
            "defaultMode": 420,
            "sources": [
                {
                    "serviceAccountToken": {
                        "audience": "sts.aliyuncs.com",
                        "expirationSeconds": 3600,
                        "path": "token",
                    }
                }
            ],
        },
    }
    (mount,) = [m for m in container(docs)["volumeMounts"] if m["name"] == "rrsa-oidc-token"]
    assert mount == {"name": "rrsa-oidc-token", "mountPath": TOKEN_DIR, "readOnly": True}
    assert pod["automountServiceAccountToken"] is False, "the STS token needs no Kubernetes API token"
    sa = one(docs, "ServiceAccount")
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    assert "pod-identity.alibabacloud.com/role-name" not in (sa["metadata"].get("annotations") or {})
    assert "credentials" not in yaml.safe_load(config_of(docs)), "no stsEndpoint: the plain default chain"


def test_rrsa_sts_endpoint_goes_to_the_single_target_config(chart: helm.Chart) -> None:
    """Without targets, rrsa.stsEndpoint becomes credentials {type: default, sts_endpoint}: the default
    chain's RRSA step then assumes the role at that endpoint."""
    values = {"rrsa": {**RRSA, "stsEndpoint": "sts-vpc.cn-hangzhou.aliyuncs.com"}}
    config = yaml.safe_load(rendered_config(values))
    assert config["credentials"] == {"type": "default", "sts_endpoint": "sts-vpc.cn-hangzhou.aliyuncs.com"}
    assert config["api"]["region_id"] == "cn-hangzhou", "the single-target form keeps its top-level keys"


def test_rrsa_left_to_the_webhook_renders_no_environment(chart: helm.Chart) -> None:
    """injectEnvironment=false: only the ServiceAccount annotation; no env, no token volume."""
    values = {"rrsa": {"enabled": True, "injectEnvironment": False, "roleName": "ehpc-reader"}}
    docs = render(chart, values)
    assert not [e for e in container(docs).get("env") or [] if e["name"].startswith("ALIBABA_CLOUD_")]
    assert "rrsa-oidc-token" not in json.dumps(one(docs, "Deployment"))
    sa = one(docs, "ServiceAccount")
    assert sa["metadata"]["annotations"]["pod-identity.alibabacloud.com/role-name"] == "ehpc-reader"


# ----------------------------------------------------------------------------------- the render helper


def test_rendered_env_relocates_the_token_and_resolves_secrets(tmp_path: Path) -> None:
    """The helper a local run uses: literal env as rendered, the token path moved under a local dir, and
    Secret references resolved only from the given Secrets."""
    values = {**copy.deepcopy(TWO_ACCOUNTS), "rrsa": RRSA}
    env = rendered_env(values, secrets=SECRETS, mounts={TOKEN_DIR: str(tmp_path)})
    assert env["ALIBABA_CLOUD_OIDC_TOKEN_FILE"] == f"{tmp_path}/token"
    assert env["ALIBABA_CLOUD_ROLE_ARN"] == ROLE_ARN
    assert env["EHPC_TARGET_1_ACCESS_KEY_SECRET"] == SECRETS["ehpc-staging-ak"]["secret"]
    with pytest.raises(LookupError, match="ehpc-prod-ak"):
        rendered_env(values)
    mounts = rendered_mounts(values)
    mount, volume = mounts[TOKEN_DIR]
    assert mount["readOnly"] is True
    assert volume["projected"]["sources"][0]["serviceAccountToken"]["audience"] == "sts.aliyuncs.com"


# --------------------------------------------------------------------------------------------------------
# Own labels: targets[].labels and images[].labels reach the config; the carried labels reach the rules.


def test_target_and_image_labels_reach_the_config(chart: helm.Chart) -> None:
    """A target's ``labels`` and its images' are copied into the config as written, beside the one-target
    form's ``config.labels``; the exporter then resolves them (its own tests say how)."""
    values = copy.deepcopy(TWO_ACCOUNTS)
    values["targets"][0]["labels"] = {"team": "hpc", "env": "prod"}
    values["targets"][0]["images"][0]["labels"] = {"team": "cfd"}
    config = yaml.safe_load(config_of(render(chart, values)))
    assert config["targets"][0]["labels"] == {"team": "hpc", "env": "prod"}
    assert config["targets"][0]["images"][0]["labels"] == {"team": "cfd"}
    assert "labels" not in config["targets"][1]
    single = yaml.safe_load(
        config_of(render(chart, {"config": {"labels": {"team": "hpc"}, "images": [{"id": "m-1"}]}}))
    )
    assert single["labels"] == {"team": "hpc"}


# (labels, what the message names). A bad name is named itself: Helm's validator reports a
# propertyNames failure at the name, not at the mapping's path.
LABEL_MISTAKES = [
    ({"account": "x"}, "'account'"),
    ({"job": "x"}, "'job'"),
    ({"__team": "x"}, "'__team'"),
    ({"team-name": "x"}, "'team-name'"),
    ({"team": 3}, "{path}/team"),
    ({"team": "x" * 129}, "{path}/team"),
    ({f"l{i}": "v" for i in range(11)}, "{path}"),
]


@pytest.mark.parametrize(("labels", "needle"), LABEL_MISTAKES)
@pytest.mark.parametrize("where", ["target", "image", "config"])
def test_the_values_schema_refuses_what_the_exporter_would(
    chart: helm.Chart, labels: dict[str, Any], needle: str, where: str
) -> None:
    """A reserved, ``__`` or mis-spelt name, a value that is no string or too long, too many labels: the
    chart's schema (the exporter's own, for labels) refuses each at ``helm install``, naming the place."""
    values = copy.deepcopy(TWO_ACCOUNTS)
    if where == "target":
        values["targets"][1]["labels"] = labels
        path = "/targets/1/labels"
    elif where == "image":
        values["targets"][0]["images"][0]["labels"] = labels
        path = "/targets/0/images/0/labels"
    else:
        values = {"config": {"labels": labels}}
        path = "/config/labels"
    with pytest.raises(helm.HelmValuesError) as info:
        chart.validate_schema(chart.merge_values(values))
    assert needle.format(path=path) in str(info.value)


CARRY_NAMES = st.sampled_from(["team", "env", "cluster", "owner", "cost_centre", "Tier"])


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(carried=st.lists(CARRY_NAMES, unique=True, max_size=4))
def test_the_chart_carries_the_labels_as_the_rules_builder_does(
    chart: helm.Chart, carried: list[str]
) -> None:
    """For any list of carried labels, the PrometheusRule is exactly what ``alerts.build`` renders with
    ``carry_labels`` set to that list: the chart fills its copy's placeholders the same way."""
    docs = render(chart, {"prometheusRule": {"enabled": True, "carryLabels": carried}})
    thresholds = build.load_thresholds().model_copy(update={"carry_labels": tuple(carried)})
    assert one(docs, "PrometheusRule")["spec"] == yaml.safe_load(build.render(thresholds))
    assert build.CHART_CARRY not in json.dumps(one(docs, "PrometheusRule")["spec"])


@pytest.mark.parametrize(
    "carried", [["account"], ["image_id"], ["instance"], ["__name"], ["team-x"], ["team", "team"], [""]]
)
def test_the_values_schema_refuses_a_label_that_cannot_be_carried(
    chart: helm.Chart, carried: list[str]
) -> None:
    """Labels the aggregations keep anyway, instance and pod, Prometheus' own, bad names, repeats."""
    with pytest.raises(helm.HelmValuesError) as info:
        chart.validate_schema(chart.merge_values({"prometheusRule": {"carryLabels": carried}}))
    assert "/prometheusRule/carryLabels" in str(info.value)
