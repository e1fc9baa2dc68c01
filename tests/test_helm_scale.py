"""The chart's persisted state (`state.*`) and autosharding (`autosharding.*`), rendered by Helm's own engine.

Every render is validated like the others (kubernetes-validate --strict for 1.30; the ServiceMonitor with
the prometheus-operator CRD models); the properties are checked over families of values (replica counts,
state paths) with hypothesis. The exporter itself is not run with `state:` or --total-shards here: those
arrive from other branches (tests/test_helm.py checks the rendered config with the exporter once it knows
them).
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import helm_python as helm
import kubernetes_validate as kv
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes_validate.utils import SchemaNotFoundError

from tests.helm_render import (
    CHART,
    NAMESPACE,
    RELEASE,
    Doc,
    container,
    mounts_of,
    one,
    pod_spec,
    render,
    workload,
)
from tests.test_helm import KUBE_VERSION, MONITORING_KINDS, run_crd_validator, scenario_values

FULLNAME = f"{RELEASE}-ehpc-image-exporter"
HEADLESS = f"{FULLNAME}-headless"
DEFAULT_STATE_DIR = "/var/lib/ehpc-image-exporter"
SHARDED: dict[str, Any] = {"autosharding": {"enabled": True, "replicas": 3}}
PERSISTENT: dict[str, Any] = {"state": {"persistence": {"enabled": True}}}
# Each example renders the whole chart (about 30 ms): enough examples for the edges, few enough for 2 CPUs.
FAMILY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def merged(*parts: dict[str, Any]) -> dict[str, Any]:
    """Values merged key by key (nested mappings merge, as Helm merges -f files)."""
    out: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merged(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
    return out


def sharded(replicas: int, *more: dict[str, Any]) -> dict[str, Any]:
    """Autosharding with `replicas` pods, plus more values."""
    return merged({"autosharding": {"enabled": True, "replicas": replicas}}, *more)


def validate_strictly(docs: list[Doc]) -> None:
    """Every core object passes kubernetes-validate --strict for 1.30 (as tests/test_helm.py checks)."""
    for doc in docs:
        try:
            kv.validate(doc, KUBE_VERSION, strict=True)
        except SchemaNotFoundError:
            assert doc["kind"] in MONITORING_KINDS, f"no schema for {doc['kind']}"
        except kv.ValidationError as e:
            raise AssertionError(f"{doc['kind']} {list(e.path)}: {e.message}") from e


def kinds(docs: list[Doc]) -> list[str]:
    """The kinds rendered, with repeats."""
    return sorted(d["kind"] for d in docs)


def total_shards_args(docs: list[Doc]) -> list[str]:
    """The container's --total-shards arguments."""
    return [a for a in container(docs)["args"] if a.startswith("--total-shards")]


def config_state(docs: list[Doc]) -> Any:
    """The `state` key of the mounted config file (None when absent)."""
    return (yaml.safe_load(one(docs, "ConfigMap")["data"]["config.yaml"]) or {}).get("state")


def writable_mounts(docs: list[Doc]) -> dict[str, Doc]:
    """{mountPath: volume} of the exporter container's writable mounts."""
    return {path: volume for path, (mount, volume) in mounts_of(docs).items() if not mount.get("readOnly")}


# ------------------------------------------------------------------------------------- autosharding


@FAMILY
@given(replicas=st.one_of(st.integers(1, 12), st.integers(13, 1000)))
def test_statefulset_replicas_and_total_shards_agree(chart: helm.Chart, replicas: int) -> None:
    """Any replica count renders a valid StatefulSet of that many pods, each told that many shards."""
    docs = render(chart, sharded(replicas))
    validate_strictly(docs)
    sts = one(docs, "StatefulSet")
    assert "Deployment" not in kinds(docs)
    assert sts["spec"]["replicas"] == replicas
    assert total_shards_args(docs) == [f"--total-shards={replicas}"]
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    assert sts["spec"]["serviceName"] == HEADLESS


def test_pod_name_comes_from_the_downward_api(chart: helm.Chart) -> None:
    """POD_NAME is the pod's own metadata.name (the exporter takes its ordinal from the trailing -<n>)."""
    env = container(render(chart, SHARDED))["env"]
    (pod_name,) = [e for e in env if e["name"] == "POD_NAME"]
    assert pod_name == {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
    # The ordinal is the StatefulSet's: its pods are <statefulset name>-0 .. -<n-1>.
    assert workload(render(chart, SHARDED))["metadata"]["name"] == FULLNAME


def test_scaling_changes_every_pods_total_shards(chart: helm.Chart) -> None:
    """Another replica count changes the pod template (so every pod restarts), only in --total-shards."""
    three, four = (one(render(chart, sharded(n)), "StatefulSet")["spec"] for n in (3, 4))
    assert three["template"] != four["template"]
    strip = re.compile(r"--total-shards=\d+")
    assert strip.sub("", json.dumps(three["template"])) == strip.sub("", json.dumps(four["template"]))


def test_headless_service_selects_the_pods(chart: helm.Chart) -> None:
    """One Service, headless, named by serviceName, selecting the pod template's labels on the named port."""
    docs = render(chart, SHARDED)
    (svc,) = [d for d in docs if d["kind"] == "Service"]
    sts = one(docs, "StatefulSet")["spec"]
    assert svc["metadata"]["name"] == sts["serviceName"] == HEADLESS
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"].items() <= sts["template"]["metadata"]["labels"].items()
    assert svc["spec"]["selector"] == sts["selector"]["matchLabels"]
    (port,) = svc["spec"]["ports"]
    assert port["targetPort"] == container(docs)["ports"][0]["name"] == "http"


def test_pdb_covers_the_shards(chart: helm.Chart) -> None:
    """Autosharding always gets a PodDisruptionBudget over its pods, with podDisruptionBudget's budget."""
    docs = render(chart, SHARDED)
    pdb = one(docs, "PodDisruptionBudget")["spec"]
    assert pdb["selector"] == one(docs, "StatefulSet")["spec"]["selector"]
    assert pdb == {"maxUnavailable": 1, "selector": pdb["selector"]}
    pdb = one(render(chart, sharded(5, {"podDisruptionBudget": {"minAvailable": 4}})), "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 4
    assert "PodDisruptionBudget" not in kinds(render(chart, {}))


@pytest.mark.process
def test_servicemonitor_scrapes_every_pod_and_labels_the_shard(chart: helm.Chart, tmp_path: Path) -> None:
    """It selects the headless Service (whose endpoints are the pods), relabels the pod name into `pod`
    and `instance` before the user's relabelings, and passes the operator's CRD schema."""
    values = scenario_values("autosharding")
    docs = render(chart, values)
    sm, svc = one(docs, "ServiceMonitor"), one(docs, "Service")
    assert svc["spec"]["clusterIP"] == "None"
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] == "http"
    by_pod = [r for r in endpoint["relabelings"] if r.get("sourceLabels") == ["__meta_kubernetes_pod_name"]]
    assert {r["targetLabel"] for r in by_pod} == {"pod", "instance"}
    assert all(r.get("action", "replace") == "replace" for r in by_pod)
    user = values["serviceMonitor"]["relabelings"]
    assert endpoint["relabelings"][-len(user) :] == user, "the user's relabelings come last and can override"
    manifest = tmp_path / "sm.yaml"
    manifest.write_text(yaml.safe_dump(sm))
    rc, results = run_crd_validator(manifest)
    assert (rc, [r["ok"] for r in results]) == (0, [True])

    plain = one(render(chart, scenario_values("monitoring")), "ServiceMonitor")["spec"]["endpoints"][0]
    assert plain["relabelings"] == scenario_values("monitoring")["serviceMonitor"]["relabelings"], (
        "Deployment mode keeps its relabelings as they were"
    )


def test_deployment_mode_has_no_sharding(chart: helm.Chart) -> None:
    """Without autosharding: the Deployment and its ClusterIP Service, no POD_NAME, no --total-shards."""
    docs = render(chart, {"replicaCount": 2})
    assert "StatefulSet" not in kinds(docs)
    assert one(docs, "Service")["spec"].get("clusterIP") != "None"
    assert one(docs, "Deployment")["spec"]["replicas"] == 2
    assert total_shards_args(docs) == []
    assert "POD_NAME" not in json.dumps(docs)


# ---------------------------------------------------------------------------------------------- state


def test_state_on_an_emptydir_by_default(chart: helm.Chart) -> None:
    """By default the state file's directory is an emptyDir, in both modes, and nothing claims storage."""
    for values in ({}, SHARDED):
        docs = render(chart, values)
        assert config_state(docs) == {"path": f"{DEFAULT_STATE_DIR}/state.db"}
        volume = writable_mounts(docs)[DEFAULT_STATE_DIR]
        assert volume["emptyDir"] == {"sizeLimit": "64Mi"}
        assert "PersistentVolumeClaim" not in kinds(docs)
        assert "volumeClaimTemplates" not in workload(docs)["spec"]


def test_state_disabled_leaves_no_trace(chart: helm.Chart) -> None:
    """state.enabled=false: no `state` key, no state volume, the same pod as before the feature."""
    for values in ({}, SHARDED):
        docs = render(chart, merged(values, {"state": {"enabled": False}}))
        assert config_state(docs) is None
        assert set(writable_mounts(docs)) == {"/tmp"}  # noqa: S108 -- the container's path


def test_claim_per_replica_with_autosharding(chart: helm.Chart) -> None:
    """Persistence with autosharding: a `state` volumeClaimTemplate (one claim per pod), no shared claim."""
    values = scenario_values("autosharding")
    docs = render(chart, values)
    validate_strictly(docs)
    sts = one(docs, "StatefulSet")["spec"]
    (template,) = sts["volumeClaimTemplates"]
    persistence = values["state"]["persistence"]
    assert template["metadata"]["name"] == "state"
    assert template["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "storageClassName": persistence["storageClassName"],
        "resources": {"requests": {"storage": persistence["size"]}},
    }
    assert "state" not in {v["name"] for v in pod_spec(docs)["volumes"]}, (
        "a pod volume would shadow the claim"
    )
    assert writable_mounts(docs)[DEFAULT_STATE_DIR]["claimTemplate"] == template
    assert "PersistentVolumeClaim" not in kinds(docs)
    # The template's labels must never change (a StatefulSet's claim templates are immutable).
    assert "helm.sh/chart" not in template["metadata"]["labels"]
    assert "app.kubernetes.io/version" not in template["metadata"]["labels"]


def test_deployment_claim_created_or_existing(chart: helm.Chart) -> None:
    """Persistence with the Deployment: the chart's claim, or an existing one; Recreate either way."""
    docs = render(chart, scenario_values("state-pvc"))
    pvc = one(docs, "PersistentVolumeClaim")
    deployment = one(docs, "Deployment")["spec"]
    assert deployment["strategy"] == {"type": "Recreate"}
    (volume,) = [v for v in pod_spec(docs)["volumes"] if v["name"] == "state"]
    assert volume["persistentVolumeClaim"] == {"claimName": pvc["metadata"]["name"]}
    assert pvc["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert "storageClassName" not in pvc["spec"], "empty means the cluster's default class"

    docs = render(chart, merged(PERSISTENT, {"state": {"persistence": {"existingClaim": "ehpc-history"}}}))
    assert "PersistentVolumeClaim" not in kinds(docs)
    (volume,) = [v for v in pod_spec(docs)["volumes"] if v["name"] == "state"]
    assert volume["persistentVolumeClaim"] == {"claimName": "ehpc-history"}
    assert "strategy" not in one(render(chart, {}), "Deployment")["spec"], "emptyDir keeps RollingUpdate"


@pytest.mark.parametrize(("given_class", "rendered"), [("", None), ("-", ""), ("alicloud-disk-essd", "x")])
def test_storage_class_name(chart: helm.Chart, given_class: str, rendered: str | None) -> None:
    """Empty: the cluster default (omitted); `-`: no class (""); a name: that class; in both modes."""
    expected = given_class if rendered == "x" else rendered
    persistence = {"state": {"persistence": {"enabled": True, "storageClassName": given_class}}}
    pvc = one(render(chart, persistence), "PersistentVolumeClaim")["spec"]
    (template,) = one(render(chart, sharded(2, persistence)), "StatefulSet")["spec"]["volumeClaimTemplates"]
    for spec in (pvc, template["spec"]):
        assert spec.get("storageClassName") == expected


segment = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,15}", fullmatch=True).filter(lambda s: s not in {".", ".."})


@FAMILY
@given(
    dirs=st.lists(segment, min_size=1, max_size=4).filter(lambda d: d[0] not in {"tmp", "etc"}),
    name=segment,
    autosharding=st.booleans(),
    persistence=st.booleans(),
)
def test_state_path_lies_in_the_mounted_directory(
    chart: helm.Chart, dirs: list[str], name: str, autosharding: bool, persistence: bool
) -> None:
    """For any state.path, the config names exactly it and the writable volume is its directory."""
    path = "/" + "/".join([*dirs, name])
    values = merged(
        {"state": {"path": path, "persistence": {"enabled": persistence}}},
        SHARDED if autosharding else {},
    )
    docs = render(chart, values)
    assert config_state(docs) == {"path": path}
    writable = writable_mounts(docs)
    assert set(writable) == {"/tmp", str(PurePosixPath(path).parent)}  # noqa: S108 -- the container's path
    volume = writable[str(PurePosixPath(path).parent)]
    kind = ("claimTemplate" if autosharding else "persistentVolumeClaim") if persistence else "emptyDir"
    assert kind in volume
    assert container(docs)["securityContext"]["readOnlyRootFilesystem"] is True


def test_state_volume_is_writable_for_the_non_root_user(chart: helm.Chart) -> None:
    """The pod's fsGroup is the exporter's group, so a fresh claim is group-writable for user 65532."""
    for values in (scenario_values("state-pvc"), scenario_values("autosharding")):
        docs = render(chart, values)
        psc = pod_spec(docs)["securityContext"]
        assert psc["runAsNonRoot"] is True
        assert psc["fsGroup"] == psc["runAsGroup"] == container(docs)["securityContext"]["runAsGroup"]


# --------------------------------------------------------------------------------------------- refusals


FAILURES: list[tuple[str, dict[str, Any], str]] = [
    ("no replicas", sharded(0), "autosharding.replicas is 0: it is the number of shards"),
    ("negative replicas", sharded(-2), "autosharding.replicas is -2"),
    (
        "shared claim with autosharding",
        sharded(3, PERSISTENT, {"state": {"persistence": {"existingClaim": "shared"}}}),
        "state.persistence.existingClaim (shared) cannot be used with autosharding",
    ),
    (
        "replicaCount with autosharding",
        sharded(3, {"replicaCount": 2}),
        "the pod count is autosharding.replicas (3); leave replicaCount at 1",
    ),
    (
        "config.sharding with autosharding",
        sharded(3, {"config": {"sharding": {"shards": 3, "shard": 0}}}),
        "config.sharding is set with autosharding.enabled",
    ),
    (
        "a shard flag in extraArgs",
        sharded(3, {"extraArgs": ["--shard=1"]}),
        "extraArgs has --shard with autosharding.enabled",
    ),
    (
        "total shards in extraArgs",
        sharded(3, {"extraArgs": ["--total-shards", "4"]}),
        "extraArgs has --total-shards with autosharding.enabled",
    ),
    (
        "load-balanced service with autosharding",
        sharded(3, {"service": {"type": "LoadBalancer"}}),
        "service.type LoadBalancer with autosharding.enabled",
    ),
    (
        "persistence without state",
        {"state": {"enabled": False, "persistence": {"enabled": True}}},
        "state.persistence.enabled is true but state.enabled is false",
    ),
    (
        "one claim for two Deployment pods",
        merged(PERSISTENT, {"replicaCount": 2}),
        "state.persistence.enabled with replicaCount 2: the Deployment's pods would share one claim",
    ),
    (
        "claim without fsGroup",
        merged(PERSISTENT, {"podSecurityContext": {"fsGroup": None}}),
        "needs podSecurityContext.fsGroup",
    ),
    (
        "state in /tmp",
        {"state": {"path": "/tmp/state.db"}},  # noqa: S108 -- the container's path
        'state.path "/tmp/state.db": its directory /tmp overlaps the chart\'s mount /tmp',
    ),
    (
        "state over the config file",
        {"state": {"path": "/etc/ehpc-image-exporter/state.db"}},
        "overlaps the chart's mount /etc/ehpc-image-exporter",
    ),
    (
        "state above the config file",
        {"state": {"path": "/etc/state.db"}},
        'state.path "/etc/state.db": its directory /etc overlaps the chart\'s mount /etc/ehpc-image-exporter',
    ),
    ("state at the root", {"state": {"path": "/state.db"}}, "the file needs a directory of its own"),
    ("unclean path", {"state": {"path": "/var/lib/../state.db"}}, "must be an absolute, clean file path"),
    (
        "state dir also an extra mount",
        {
            "state": {"path": "/data/state.db"},
            "extraVolumes": [{"name": "data", "emptyDir": {}}],
            "extraVolumeMounts": [{"name": "data", "mountPath": "/data"}],
        },
        "extraVolumeMounts already mounts /data (volume data)",
    ),
]


@pytest.mark.parametrize(("case", "values", "message"), FAILURES, ids=[c[0] for c in FAILURES])
def test_nonsense_fails_the_render(
    chart: helm.Chart, case: str, values: dict[str, Any], message: str
) -> None:
    """Contradictory scale and state values fail with a message naming the keys."""
    with pytest.raises(helm.HelmRenderError, match=re.escape(message)):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


@pytest.fixture(scope="module")
def chart_without_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[helm.Chart]:
    """The chart with values.schema.json removed: what `--skip-schema-validation` renders."""
    copy_dir = tmp_path_factory.mktemp("chart") / CHART.name
    shutil.copytree(CHART, copy_dir)
    (copy_dir / "values.schema.json").unlink()
    with helm.Chart.load(copy_dir) as ch:
        yield ch


SCHEMA_FIRST: list[tuple[dict[str, Any], str, str]] = [
    ({"state": {"path": "state.db"}}, "/state/path", 'state.path "state.db" must be an absolute'),
    ({"state": {"path": "/var/lib/ehpc/"}}, "/state/path", 'state.path "/var/lib/ehpc/" must be an absolute'),
]


@pytest.mark.parametrize(("values", "where", "message"), SCHEMA_FIRST)
def test_schema_and_templates_both_refuse_a_bad_path(
    chart: helm.Chart, chart_without_schema: helm.Chart, values: dict[str, Any], where: str, message: str
) -> None:
    """The schema names the field; with it skipped, the template's guard names the mistake."""
    with pytest.raises(helm.HelmValuesError, match=re.escape(where)):
        chart.validate_schema(chart.merge_values(values))
    with pytest.raises(helm.HelmRenderError, match=re.escape(message)):
        chart_without_schema.render(values, name=RELEASE, namespace=NAMESPACE)


@pytest.mark.parametrize(
    ("values", "needles"),
    [
        ({"autosharding": {"replicas": "three"}}, ["/autosharding/replicas", "integer"]),
        ({"autosharding": {"replicas": 1001}}, ["/autosharding/replicas"]),
        ({"autosharding": {"shards": 3}}, ["/autosharding", "shards"]),
        ({"state": {"persistence": {"accessModes": []}}}, ["/state/persistence/accessModes"]),
        ({"state": {"persistence": {"accessModes": ["ReadWrite"]}}}, ["/state/persistence/accessModes/0"]),
        ({"state": {"persistence": {"size": "lots"}}}, ["/state/persistence/size"]),
        ({"state": {"persistence": {"existingClaim": "My_Claim"}}}, ["/state/persistence/existingClaim"]),
        ({"state": {"pathh": "/x/y"}}, ["/state", "pathh"]),
    ],
)
def test_values_schema_rejects_bad_scale_values(
    chart: helm.Chart, values: dict[str, Any], needles: list[str]
) -> None:
    """values.schema.json types the new values and names the field."""
    with pytest.raises(helm.HelmValuesError) as info:
        chart.validate_schema(chart.merge_values(values))
    for needle in needles:
        assert needle in str(info.value), f"{needle!r} not in {info.value}"


def test_notes_point_at_a_pod_when_sharded(chart: helm.Chart) -> None:
    """NOTES.txt port-forwards to shard 0 (the Service has no cluster IP) and says where the state lives."""
    notes = chart.render(scenario_values("autosharding"), name=RELEASE, namespace=NAMESPACE)
    text = next(v for k, v in notes.items() if k.endswith("NOTES.txt"))
    assert f"port-forward pod/{FULLNAME}-0 9765" in text
    assert f"a PersistentVolumeClaim per pod (state-{FULLNAME}-<n>)" in text
    plain = chart.render({}, name=RELEASE, namespace=NAMESPACE)
    text = next(v for k, v in plain.items() if k.endswith("NOTES.txt"))
    assert f"port-forward svc/{FULLNAME} 9765" in text
    assert "an emptyDir" in text
