"""Render the Helm chart with Helm's own engine (helm-python-sdk) and read back what a pod would get.

The chart tests use it object by object, through the ``chart`` fixture (registered in tests/conftest.py);
a test that runs the exporter "as the pod would" uses rendered_env() and rendered_config(): the
container's environment with literal values (and, when given, Secret values) resolved, and the config
file the ConfigMap mounts.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "ehpc-image-exporter"
RELEASE, NAMESPACE = "ehpc", "monitoring"

Doc = dict[str, Any]


def render(ch: helm.Chart, values: Mapping[str, Any]) -> list[Doc]:
    """All rendered Kubernetes objects (NOTES.txt and templates whose `if` is false left out)."""
    out = ch.render(dict(values), name=RELEASE, namespace=NAMESPACE)
    docs: list[Doc] = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


@pytest.fixture(scope="session")
def chart() -> Iterator[helm.Chart]:
    """The chart directory, loaded once per session (rendering does not change it)."""
    with helm.Chart.load(CHART) as ch:
        yield ch


def render_chart(values: Mapping[str, Any]) -> list[Doc]:
    """render() with the chart loaded for this one call."""
    with helm.Chart.load(CHART) as ch:
        return render(ch, values)


def one(docs: list[Doc], kind: str) -> Doc:
    """The single object of `kind`."""
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


WORKLOAD_KINDS = ("Deployment", "StatefulSet")


def workload(docs: list[Doc]) -> Doc:
    """The object that runs the exporter pods: the Deployment, or the StatefulSet with autosharding."""
    found = [d for d in docs if d["kind"] in WORKLOAD_KINDS]
    assert len(found) == 1, f"{[d['kind'] for d in found]} workloads"
    return found[0]


def pod_spec(docs: list[Doc]) -> Doc:
    """The pod template's spec of the workload."""
    spec = workload(docs)["spec"]["template"]["spec"]
    assert isinstance(spec, dict)
    return spec


def container(docs: list[Doc]) -> Doc:
    """The exporter container of the workload (Deployment or StatefulSet)."""
    (c,) = pod_spec(docs)["containers"]
    assert isinstance(c, dict)
    return c


def _relocated(value: str, mounts: Mapping[str, str]) -> str:
    for inside, outside in mounts.items():
        prefix = inside.rstrip("/")
        if value == prefix or value.startswith(prefix + "/"):
            return outside.rstrip("/") + value[len(prefix) :]
    return value


def env_of(
    docs: list[Doc],
    *,
    secrets: Mapping[str, Mapping[str, str]] | None = None,
    mounts: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The exporter container's environment as the kubelet would build it, from rendered objects.

    Literal `value`s are taken as they are; `secretKeyRef`s are resolved from `secrets` ({Secret name:
    {key: value}}), and one that is missing raises LookupError (unless the ref is `optional`). `mounts`
    ({path in the pod: local directory}) rewrites values under a mount path, e.g. the RRSA token file, so a
    local run reads a local copy. Other `valueFrom` kinds (fieldRef, ...) raise LookupError.
    """
    out: dict[str, str] = {}
    for entry in container(docs).get("env") or []:
        name = entry["name"]
        if "value" in entry:
            out[name] = _relocated(str(entry["value"]), mounts or {})
            continue
        ref = (entry.get("valueFrom") or {}).get("secretKeyRef")
        if ref is None:
            raise LookupError(f"env {name}: only value and secretKeyRef are resolved")
        secret = (secrets or {}).get(ref["name"], {})
        if ref["key"] in secret:
            out[name] = secret[ref["key"]]
        elif not ref.get("optional"):
            raise LookupError(f"env {name}: no value for Secret {ref['name']!r} key {ref['key']!r}")
    return out


def config_of(docs: list[Doc]) -> str:
    """The config file the pod mounts (the ConfigMap's config.yaml, byte for byte)."""
    text = one(docs, "ConfigMap")["data"]["config.yaml"]
    assert isinstance(text, str)
    return text


def rendered_env(
    values: Mapping[str, Any],
    *,
    secrets: Mapping[str, Mapping[str, str]] | None = None,
    mounts: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The exporter container's environment for these chart values (see env_of)."""
    return env_of(render_chart(values), secrets=secrets, mounts=mounts)


def rendered_config(values: Mapping[str, Any]) -> str:
    """The config.yaml the chart mounts for these chart values."""
    return config_of(render_chart(values))


def rendered_mounts(values: Mapping[str, Any]) -> dict[str, tuple[Doc, Doc]]:
    """{mountPath: (volumeMount, volume)} of the exporter container, e.g. to find the RRSA token volume."""
    return mounts_of(render_chart(values))


def mounts_of(docs: list[Doc]) -> dict[str, tuple[Doc, Doc]]:
    """{mountPath: (volumeMount, volume)} of the exporter container; a StatefulSet's claim templates count
    as volumes (the pod's volume of that name is the claim made from the template)."""
    sts_claims = workload(docs)["spec"].get("volumeClaimTemplates") or []
    volumes = {v["metadata"]["name"]: {"name": v["metadata"]["name"], "claimTemplate": v} for v in sts_claims}
    volumes.update({v["name"]: v for v in pod_spec(docs)["volumes"]})
    return {m["mountPath"]: (m, volumes[m["name"]]) for m in container(docs)["volumeMounts"]}
