"""The family table: every metric family the exporter exposes, declared once (name, type, help, samples).

In the spirit of kube-state-metrics' ``FamilyGenerator``: a family is one :class:`MetricSpec` (name, type,
help text, label names in the order its samples give values) plus, for the snapshot part, a function from
its input to its samples. The fast renderer, the reference collector and the headers of both formats all
read this table; nothing else spells a family out. Label names are listed once, in any order: the
renderers sort them as ``prometheus_client`` does. Every family carries the identity labels
(:data:`IDENTITY`: ``account`` and ``region_id``); per image they are part of the image's key, so the same
image id in two accounts or regions is two images. Own labels (config ``labels:``) go where the account
goes: :func:`build_table` puts their names first on every family with an ``account`` label, and the values
of the image or the account before its samples' own (:func:`with_own_labels`). What a family is lives in
:mod:`exporter.exposition.spec`; the self part's families, rendered per scrape, in
:mod:`exporter.exposition.selfspecs`; :data:`SPECS` joins both parts by name.

Series semantics (chosen for alerting; the sample functions below are the one place they are decided).
The default, ``metrics.state_sets: current``, exposes a sample where it says something, as
kube-state-metrics 2.20 does for ``kube_pod_status_reason`` (only the reason that is set); ``full`` adds
the dense rest, byte for byte the exposition of the versions before it:

* a healthy image: info, status (its current status, 1), available, size, created, up 1, last success,
  status since, status changes, replication complete, and per requested region its copy's status (1) and
  ``replication_available 1``: 10 series plus 2 per region, **20 at 5 regions** (``full``: 15 plus 8 per
  region, 55 at 5: every status of both state sets at 0 or 1, every copy's since-timestamp);
* a **failing** image (any error but ``ImageNotFound``): its last good data keeps being served (status,
  replication, info) so dashboards keep context, with ``up 0`` and ``last_error_info{code} 1``; alert on
  ``up`` and on ``time() - last_success`` for staleness;
* a **missing** image (``ImageNotFound``): info, size and created stay for context, ``available`` /
  ``replication_available`` / ``replication_complete`` are 0 (the image is gone, so "image not available"
  alerts fire without a special case), and the status and replication state sets have no sample (no
  status is current; ``full``: every status at 0);
* an image that never answered (and is not missing): only ``up 0`` and ``last_error_info``;
* a replication region that was asked for (``additional_regions``) but is absent from the answer:
  ``replication_available 0`` and no state-set sample (``full``: all 0): the copy is not there;
* the since-timestamp of a copy (``ehpc_image_replication_since_timestamp_seconds``) only while that copy
  is not available (its ``replication_available`` is 0, or it has none): how long a copy has been
  missing, waiting or broken is what the runbook and the on-call read; when an available copy became
  available is history no shipped alert or panel reads (``full`` keeps it for every requested region);
* an empty ``Status`` is exposed as ``status="Unknown"``; a status outside the configured vocabulary gets
  its own label value next to the vocabulary;
* the refresh gauges (``ehpc_watched_images``, ``ehpc_refresh_*``) and the discovery gauges have no
  sample before the first cycle; the discovery gauges none while discovery is off.

Why these two cuts and no other: what they leave out is implied by what stays. A state set's 0 samples are
the vocabulary minus the current status; an available copy's since-timestamp is the only sample of the
current form that no alert, panel or runbook query reads (``replication_available`` says it is there;
``ehpc_image_replication_duration_seconds`` says how long copies took). Every family keeps a sample for a
healthy image with requested regions but two, which are conditional by design: ``last_error_info``
(only while the image fails) and ``replication_since_timestamp_seconds`` (only while that copy is not
available).

History (:mod:`exporter.history`): the since-timestamps and change counters have no sample before an
image's first successful answer; ``ehpc_image_replication_complete`` follows the replication series.

Additions to the product contract: ``ehpc_config_last_reload_successful``,
``ehpc_config_last_reload_success_timestamp_seconds``, ``ehpc_refresh_overruns_total``,
``ehpc_exporter_shard_ordinal`` and ``ehpc_exporter_total_shards``, and the standard
``process_*`` / ``python_gc_*`` collectors of ``prometheus_client`` (optional).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from typing import Generic, NamedTuple, TypeVar

from exporter.config import MetricsConfig, OwnLabels
from exporter.config.labels import NO_LABELS
from exporter.exposition.selfspecs import SELF_SPECS
from exporter.exposition.spec import IDENTITY, MetricSpec, Sample, with_own_labels
from exporter.history import ImageHistory
from exporter.names import CLIENT_FAMILIES, EXPOSED_NAMES, INFO_LABELS, MetricName, pattern_matches
from exporter.redaction import scrub
from exporter.snapshot import ImageFacts, ImageState, ScopeStatus, Snapshot
from exporter.view import Health, ImageView, ReplicaHealth

__all__ = [
    "CLIENT_FAMILIES",
    "EXPOSED_NAMES",
    "IDENTITY",
    "IMAGE_FAMILIES",
    "INFO_LABELS",
    "SELF_SPECS",
    "SNAPSHOT_FAMILIES",
    "SNAPSHOT_METRICS",
    "SPECS",
    "TABLE",
    "Family",
    "FamilyTable",
    "ImageInput",
    "MetricName",
    "MetricSpec",
    "Sample",
    "build_table",
    "family_filter",
    "pattern_matches",
    "with_own_labels",
]


In = TypeVar("In")


@dataclass(frozen=True, slots=True)
class Family(Generic[In]):
    """A family of the snapshot part: its spec and the function from its input to its samples."""

    spec: MetricSpec
    samples: Callable[[In], Iterable[Sample]]
    # Its samples change every cycle (a timestamp): rendered afresh each time, never cached per image.
    volatile: bool = False
    # A state set (a sample per known state, 1 for the current one): metrics.state_sets: current keeps the 1s.
    state_set: bool = False
    # Under metrics.state_sets: current: its samples where that form leaves out more than a state set's 0s
    # (None: the same), and its help text where the full form's would mislead ("": the same).
    sparse: Callable[[In], Iterable[Sample]] | None = None
    sparse_help: str = ""


class ImageInput(NamedTuple):
    """What the series of one image are computed from: its verdict, its last good facts, its history, its
    last success and its own label values."""

    view: ImageView
    facts: ImageFacts | None
    last_success: float | None  # changes every cycle: only volatile families may read it
    history: ImageHistory | None = None
    own: tuple[str, ...] = ()  # its own label values, in the order of the table's OwnLabels.names

    @classmethod
    def of(cls, state: ImageState, snapshot: Snapshot, labels: OwnLabels = NO_LABELS) -> ImageInput:
        """The input of ``state``, an image of ``snapshot`` (whose verdict it reads), with its values of
        ``labels`` (the table's)."""
        key = state.key
        own = labels.image(key.account, key.image_id) if labels.names else ()
        return cls(snapshot.views[key], state.image, state.last_success, state.history, own)


class FamilyTable(NamedTuple):
    """The families of the snapshot part in exposition order: per image first, then snapshot-wide; the
    cap on its series (``metrics.max_series``, 0: none); and the own labels its families carry."""

    images: tuple[Family[ImageInput], ...]
    snapshot: tuple[Family[Snapshot], ...]
    max_series: int = 0
    labels: OwnLabels = NO_LABELS

    @property
    def specs(self) -> tuple[MetricSpec, ...]:
        """Every family's spec, in exposition order."""
        return (*(f.spec for f in self.images), *(f.spec for f in self.snapshot))


# --------------------------------------------------------------------------------------------------
# Per image: the samples of one image, from its ImageInput. Every one starts with the image's identity.


def _id(i: ImageInput) -> tuple[str, str, str]:
    """The identity label values of an image: account, region_id, image_id."""
    v = i.view
    return (v.account, v.region_id, v.image_id)


def _info(i: ImageInput) -> Iterable[Sample]:
    f = i.facts
    if f is None:
        return ()
    # Every label value passes the output gate: here, or in the view for ids, statuses and regions.
    values = (f.name, f.version, f.image_type, f.app_id, f.os_tag, f.platform, f.architecture, f.registry_url)
    return (((*_id(i), *map(scrub, values)), 1.0),)


def _status(i: ImageInput) -> Iterable[Sample]:
    iid = _id(i)
    return [((*iid, status), v) for status, v in i.view.states]


def _available(i: ImageInput) -> Iterable[Sample]:
    return () if i.view.available is None else ((_id(i), i.view.available),)


def _size(i: ImageInput) -> Iterable[Sample]:
    if i.facts is None or i.facts.size_bytes is None:
        return ()
    return ((_id(i), float(i.facts.size_bytes)),)


def _created(i: ImageInput) -> Iterable[Sample]:
    if i.facts is None or i.facts.create_time is None:
        return ()
    return ((_id(i), i.facts.create_time.timestamp()),)


def _has_replicas(i: ImageInput) -> bool:
    # An image that never answered (and is not missing) has no replication series: nothing is known.
    return i.facts is not None or i.view.health is Health.MISSING


def _replication_status(i: ImageInput) -> Iterable[Sample]:
    if not _has_replicas(i):
        return ()
    iid = _id(i)
    return [((*iid, r.region, status), v) for r in i.view.replicas for status, v in r.states]


def _replication_available(i: ImageInput) -> Iterable[Sample]:
    if not _has_replicas(i):
        return ()
    iid = _id(i)
    return [((*iid, r.region), 1.0 if r.health is ReplicaHealth.AVAILABLE else 0.0) for r in i.view.replicas]


def _up(i: ImageInput) -> Iterable[Sample]:
    # Up: the last GetImage succeeded (an error code is set exactly while the last one failed).
    up = i.facts is not None and i.view.error_code is None
    return ((_id(i), 1.0 if up else 0.0),)


def _last_success(i: ImageInput) -> Iterable[Sample]:
    return () if i.last_success is None else ((_id(i), i.last_success),)


def _last_error(i: ImageInput) -> Iterable[Sample]:
    code = i.view.error_code
    return () if code is None else (((*_id(i), code), 1.0),)


def _status_since(i: ImageInput) -> Iterable[Sample]:
    return () if i.history is None else ((_id(i), i.history.since),)


def _status_changes(i: ImageInput) -> Iterable[Sample]:
    return () if i.history is None else ((_id(i), float(i.history.changes)),)


def _replication_since(i: ImageInput, *, available_too: bool = True) -> Iterable[Sample]:
    if i.history is None:
        return ()
    # The copies replication_available calls available (view regions have passed the gate, as these).
    skip = () if available_too else {r.region for r in i.view.replicas if r.health is ReplicaHealth.AVAILABLE}
    iid = _id(i)
    regions = ((scrub(r.region_id), r.since) for r in i.history.replicas)
    return [((*iid, region), since) for region, since in regions if region not in skip]


def _replication_since_pending(i: ImageInput) -> Iterable[Sample]:
    return _replication_since(i, available_too=False)


def _replication_complete(i: ImageInput) -> Iterable[Sample]:
    if not _has_replicas(i):
        return ()
    # A missing image has no copies anywhere, whatever was asked for; nothing asked for is complete.
    complete = i.view.health is not Health.MISSING and all(
        r.health is ReplicaHealth.AVAILABLE for r in i.view.replicas
    )
    return ((_id(i), 1.0 if complete else 0.0),)


# --------------------------------------------------------------------------------------------------
# Per (account, region): one sample each, from the status of its last completed cycle.


def _per_scope(value: Callable[[ScopeStatus], float | None]) -> Callable[[Snapshot], Iterable[Sample]]:
    """A family with one sample per (account, region) that completed a cycle, ``value(status)``
    (none where it is None)."""

    def samples(snapshot: Snapshot) -> Iterable[Sample]:
        out = []
        for scope, status in snapshot.scopes.items():
            v = value(status)
            if v is not None:
                out.append(((scrub(scope.account), scrub(scope.region_id)), v))
        return out

    return samples


def _discovery_up(s: ScopeStatus) -> float | None:
    return None if s.discovery is None else (1.0 if s.discovery.up else 0.0)


def _discovery_last_success(s: ScopeStatus) -> float | None:
    return None if s.discovery is None else s.discovery.last_success


def _discovered(s: ScopeStatus) -> float | None:
    return None if s.discovery is None else float(s.discovery.discovered)


_M = MetricName
_IMAGE_ID = (*IDENTITY, "image_id")
# The names (MetricName, INFO_LABELS) live in exporter.names, which the config reads too.

IMAGE_FAMILIES: tuple[Family[ImageInput], ...] = (
    Family(
        MetricSpec(
            _M.IMAGE_INFO,
            "gauge",
            "Static facts about a watched image, always 1 (from the last successful GetImage).",
            (*_IMAGE_ID, *INFO_LABELS),
        ),
        _info,
    ),
    Family(
        MetricSpec(
            _M.IMAGE_STATUS,
            "gauge",
            "Image status as a state set: 1 for the current status, 0 for every other known status.",
            (*_IMAGE_ID, "status"),
        ),
        _status,
        state_set=True,
        sparse_help="Image status: 1 for the current status (none while the image is missing; "
        "metrics.state_sets: full adds 0 for every other known status).",
    ),
    Family(
        MetricSpec(
            _M.IMAGE_AVAILABLE,
            "gauge",
            "1 if the image status is in the configured healthy set, 0 otherwise or while it is missing.",
            _IMAGE_ID,
        ),
        _available,
    ),
    Family(MetricSpec(_M.IMAGE_SIZE_BYTES, "gauge", "Image size in bytes.", _IMAGE_ID), _size),
    Family(
        MetricSpec(_M.IMAGE_CREATED, "gauge", "Image creation time as Unix seconds.", _IMAGE_ID), _created
    ),
    Family(
        MetricSpec(
            _M.IMAGE_REPLICATION_STATUS,
            "gauge",
            "Status of the image copy in another region as a state set (all 0 when there is no copy).",
            (*_IMAGE_ID, "replication_region", "status"),
        ),
        _replication_status,
        state_set=True,
        sparse_help="Status of the image copy in another region: 1 for its current status (none when "
        "there is no copy; metrics.state_sets: full adds 0 for every other known status).",
    ),
    Family(
        MetricSpec(
            _M.IMAGE_REPLICATION_AVAILABLE,
            "gauge",
            "1 if the image copy in that region is usable, 0 otherwise.",
            (*_IMAGE_ID, "replication_region"),
        ),
        _replication_available,
    ),
    Family(
        MetricSpec(_M.IMAGE_UP, "gauge", "1 if the last GetImage for this image succeeded.", _IMAGE_ID), _up
    ),
    Family(
        MetricSpec(
            _M.IMAGE_LAST_SUCCESS,
            "gauge",
            "Unix time of the last successful GetImage for this image.",
            _IMAGE_ID,
        ),
        _last_success,
        volatile=True,
    ),
    Family(
        MetricSpec(
            _M.IMAGE_LAST_ERROR,
            "gauge",
            "Error code of the last failed GetImage, always 1, present while the image is failing.",
            (*_IMAGE_ID, "code"),
        ),
        _last_error,
    ),
    Family(
        MetricSpec(
            _M.IMAGE_STATUS_SINCE,
            "gauge",
            "Unix time the image's current status was first observed (the exporter's first look at the "
            "image if the status has not changed since then; the state file keeps it across restarts).",
            _IMAGE_ID,
        ),
        _status_since,
    ),
    Family(
        MetricSpec(
            _M.IMAGE_STATUS_CHANGES,
            "counter",
            "Observed changes of the image's status between successful GetImage answers.",
            _IMAGE_ID,
        ),
        _status_changes,
    ),
    Family(
        MetricSpec(
            _M.IMAGE_REPLICATION_SINCE,
            "gauge",
            "Unix time the current status of the image's copy in that region (or its absence) was first "
            "observed (the exporter's first look if unchanged since then; kept across restarts by the "
            "state file).",
            (*_IMAGE_ID, "replication_region"),
        ),
        _replication_since,
        sparse=_replication_since_pending,
        sparse_help="Unix time the current status of the image's copy in that region (or its absence) was "
        "first observed, while the copy is not available (the exporter's first look if unchanged since "
        "then; kept across restarts by the state file; metrics.state_sets: full: for every copy).",
    ),
    Family(
        MetricSpec(
            _M.IMAGE_REPLICATION_COMPLETE,
            "gauge",
            "1 if the image has a usable copy in every requested region (1 when none is requested), 0 "
            "otherwise or while it is missing.",
            _IMAGE_ID,
        ),
        _replication_complete,
    ),
)

SNAPSHOT_FAMILIES: tuple[Family[Snapshot], ...] = (
    Family(
        MetricSpec(
            _M.WATCHED_IMAGES, "gauge", "Images in the watched set (after discovery and sharding).", IDENTITY
        ),
        _per_scope(lambda s: float(s.watched)),
    ),
    Family(
        MetricSpec(_M.REFRESH_DURATION, "gauge", "Duration of the last refresh cycle in seconds.", IDENTITY),
        _per_scope(lambda s: float(s.duration_seconds or 0.0)),
    ),
    Family(
        MetricSpec(
            _M.REFRESH_LAST_SUCCESS, "gauge", "Unix time the last completed refresh cycle ended.", IDENTITY
        ),
        _per_scope(lambda s: s.refreshed_at),
    ),
    Family(
        MetricSpec(
            _M.DISCOVERY_UP,
            "gauge",
            "1 if the last ListImages discovery succeeded, 0 if it failed (absent while discovery is off).",
            IDENTITY,
        ),
        _per_scope(_discovery_up),
    ),
    Family(
        MetricSpec(
            _M.DISCOVERY_LAST_SUCCESS,
            "gauge",
            "Unix time of the last successful ListImages discovery.",
            IDENTITY,
        ),
        _per_scope(_discovery_last_success),
    ),
    Family(
        MetricSpec(
            _M.DISCOVERED_IMAGES,
            "gauge",
            "Images found by discovery (the last good set while it fails), before sharding.",
            IDENTITY,
        ),
        _per_scope(_discovered),
    ),
)

# The exporter's whole table of the snapshot part: every sample of every family (``state_sets: full``);
# build_table derives the one a config asks for (the default: current states, sparse since-timestamps).
TABLE = FamilyTable(IMAGE_FAMILIES, SNAPSHOT_FAMILIES)
# The families of the snapshot part, in exposition order.
SNAPSHOT_METRICS: tuple[str, ...] = tuple(spec.name for spec in TABLE.specs)
# Every family the exporter exposes, by name.
SPECS: Mapping[str, MetricSpec] = {spec.name: spec for spec in (*TABLE.specs, *SELF_SPECS)}


# --------------------------------------------------------------------------------------------------
# The table for one ``metrics:`` config: derived families, never special cases in the renderers.


def family_filter(metrics: MetricsConfig) -> Callable[[str], bool]:
    """Whether a family, by exposed name (counters with ``_total``), is exposed under ``metrics``."""
    include, exclude = metrics.include, metrics.exclude
    if not include and not exclude:
        return _everything
    decided: dict[str, bool] = {}

    def allowed(name: str) -> bool:
        found = decided.get(name)
        if found is None:
            # Exclude wins: "everything under ehpc_image_* but the state sets" reads as it is written.
            found = (not include or any(fnmatchcase(name, p) for p in include)) and not any(
                fnmatchcase(name, p) for p in exclude
            )
            decided[name] = found
        return found

    return allowed


def _everything(_name: str) -> bool:
    return True


def _current_only(samples: Callable[[In], Iterable[Sample]]) -> Callable[[In], Iterable[Sample]]:
    """``samples`` without the 0-valued ones (a state set's current state only)."""
    return lambda i: [s for s in samples(i) if s[1] == 1.0]


def _projected(family: Family[In], keep: tuple[str, ...]) -> Family[In]:
    """``family`` with only the labels ``keep`` (in its own order); each sample keeps those values."""
    labels = tuple(name for name in family.spec.labels if name in keep)
    at = tuple(family.spec.labels.index(name) for name in labels)
    samples = family.samples

    def projected(i: In) -> Iterable[Sample]:
        return [(tuple(values[j] for j in at), v) for values, v in samples(i)]

    return replace(family, spec=replace(family.spec, labels=labels), samples=projected)


def _configured(family: Family[In], metrics: MetricsConfig) -> Family[In]:
    if metrics.state_sets == "current":
        if family.state_set:
            family = replace(family, samples=_current_only(family.samples))
        if family.sparse is not None:
            family = replace(family, samples=family.sparse)
        if family.sparse_help:
            family = replace(family, spec=replace(family.spec, help=family.sparse_help))
    if family.spec.name == _M.IMAGE_INFO and metrics.info_labels is not None:
        # The identity always stays: without it two images' info samples would be one series.
        family = _projected(family, (*_IMAGE_ID, *metrics.info_labels))
    return family


# The config that asks nothing of the table: every family, every sample, no cap.
_WHOLE = MetricsConfig(state_sets="full")


def _own_per_image(family: Family[ImageInput], names: tuple[str, ...]) -> Family[ImageInput]:
    """``family`` with the image's own label values (``ImageInput.own``) before each sample's."""
    samples = family.samples

    def labelled(i: ImageInput) -> Iterable[Sample]:
        own = i.own
        return [((*own, *values), v) for values, v in samples(i)]

    return replace(family, spec=with_own_labels(family.spec, names), samples=labelled)


def _own_per_scope(family: Family[Snapshot], labels: OwnLabels) -> Family[Snapshot]:
    """``family`` with its account's own label values before each sample's, found by the sample's
    ``account`` value (gated like the values: both pass the output gate at the same render)."""
    samples = family.samples
    at = family.spec.labels.index("account")
    unset = ("",) * len(labels.names)

    def labelled(snapshot: Snapshot) -> Iterable[Sample]:
        by_account = labels.by_gated_account()
        return [((*by_account.get(values[at], unset), *values), v) for values, v in samples(snapshot)]

    return replace(family, spec=with_own_labels(family.spec, labels.names), samples=labelled)


def build_table(
    metrics: MetricsConfig, base: FamilyTable = TABLE, *, labels: OwnLabels = NO_LABELS
) -> FamilyTable:
    """The table of the snapshot part under ``metrics``: ``base``'s families that pass include and exclude,
    state sets, sparse families and info labels cut as configured, the series cap, and the own ``labels``
    on every family with an account (``base`` itself when nothing is asked of it)."""
    names = labels.names
    if metrics == _WHOLE and not names:
        return base
    allowed = family_filter(metrics)
    images = tuple(_configured(f, metrics) for f in base.images if allowed(f.spec.name))
    wide = tuple(_configured(f, metrics) for f in base.snapshot if allowed(f.spec.name))
    if names:
        images = tuple(_own_per_image(f, names) if "account" in f.spec.labels else f for f in images)
        wide = tuple(_own_per_scope(f, labels) if "account" in f.spec.labels else f for f in wide)
    return FamilyTable(images, wide, metrics.max_series, labels if names else NO_LABELS)
