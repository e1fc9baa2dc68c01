"""The metric contract and its exposition: names and specs, API self-metrics, and the snapshot renderer.

Two parts make up one ``/metrics`` answer:

* the **snapshot part** — every per-image series plus the refresh gauges. It only changes when a refresh
  swaps in a new :class:`~exporter.snapshot.Snapshot`, so it is rendered once per swap (text format and
  OpenMetrics) by a dedicated renderer (:class:`SnapshotRenderer`: unchanged images reuse their lines,
  the work runs on the event loop in ~2 ms slices) and kept as a list of byte parts; gzip is computed
  lazily, once per format, as a sync-flushed raw deflate stream that each scrape extends;
* the **self part** — API call counters and latency, refresh overruns, config reload state, build info
  (and process metrics) — rendered per scrape by ``prometheus_client`` from :class:`SelfMetrics`. It is
  a few hundred samples and comes last, so the OpenMetrics ``# EOF`` it ends with is the only one.

:class:`SnapshotCollector` is the same snapshot as an ordinary ``prometheus_client`` collector; the tests
prove the fast renderer is byte-identical to ``generate_latest`` over it.

Series semantics (chosen for alerting; ``_series`` is the one place they are decided):

* a healthy image: info, status state set, available, size, created, replication, ``up 1``, last success;
* a **failing** image (any error but ``ImageNotFound``): its last good data keeps being served (status,
  replication, info) so dashboards keep context, with ``up 0`` and ``last_error_info{code} 1``; alert on
  ``up`` and on ``time() - last_success`` for staleness;
* a **missing** image (``ImageNotFound``): info, size and created stay for context, but the status and
  replication state sets are all 0 and ``available`` / ``replication_available`` are 0: the image is gone,
  so "image not available" alerts fire without a special case;
* an image that never answered (and is not missing): only ``up 0`` and ``last_error_info``;
* a replication region that was asked for (``additional_regions``) but is absent from the answer:
  state set all 0 and ``replication_available 0`` (the copy is not there);
* an empty ``Status`` is exposed as ``status="Unknown"``; a status outside the configured vocabulary gets
  its own label value next to the vocabulary;
* the refresh gauges (``ehpc_watched_images``, ``ehpc_refresh_*``) have no sample before the first cycle.

Additions to the product contract: ``ehpc_config_last_reload_successful``,
``ehpc_config_last_reload_success_timestamp_seconds``, ``ehpc_refresh_overruns_total``, and the standard
``process_*`` / ``python_gc_*`` collectors of ``prometheus_client`` (optional).
"""

from __future__ import annotations

import asyncio
import struct
import threading
import time
import zlib
from array import array
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from prometheus_client import CollectorRegistry, GCCollector, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.exposition import generate_latest as generate_text
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as CONTENT_TYPE_OPENMETRICS
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.utils import floatToGoString as _float_to_go_string

from exporter.buildinfo import BuildInfo
from exporter.openapi.errors import KNOWN_CODES, LOCAL_CODES, OVERFLOW_CODE, ApiError
from exporter.redaction import scrub
from exporter.snapshot import ImageState, Snapshot
from exporter.view import Health, ReplicaHealth

__all__ = [
    "API_ACTIONS",
    "API_DURATION_BUCKETS",
    "CONTENT_TYPE_OPENMETRICS",
    "CONTENT_TYPE_TEXT",
    "SNAPSHOT_METRICS",
    "SPECS",
    "BuildInfo",
    "MetricName",
    "MetricSpec",
    "RenderedSnapshot",
    "SelfMetrics",
    "SnapshotCollector",
    "gzip_body",
    "render_snapshot",
]

CONTENT_TYPE_TEXT = CONTENT_TYPE_PLAIN_0_0_4
API_ACTIONS: tuple[str, ...] = ("GetImage", "ListImages")
# Per-attempt latency: loopback simulator calls take milliseconds, real ones 50-500 ms, timeouts 10 s.
API_DURATION_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
# Level 1: exposition text is so repetitive that it already compresses ~27x, at 4x the speed of level 6.
GZIP_LEVEL = 1


class MetricName(StrEnum):
    """Every metric name the exporter exposes (exposition names, counters with ``_total``)."""

    IMAGE_INFO = "ehpc_image_info"
    IMAGE_STATUS = "ehpc_image_status"
    IMAGE_AVAILABLE = "ehpc_image_available"
    IMAGE_SIZE_BYTES = "ehpc_image_size_bytes"
    IMAGE_CREATED = "ehpc_image_created_timestamp_seconds"
    IMAGE_REPLICATION_STATUS = "ehpc_image_replication_status"
    IMAGE_REPLICATION_AVAILABLE = "ehpc_image_replication_available"
    IMAGE_UP = "ehpc_image_up"
    IMAGE_LAST_SUCCESS = "ehpc_image_last_success_timestamp_seconds"
    IMAGE_LAST_ERROR = "ehpc_image_last_error_info"
    WATCHED_IMAGES = "ehpc_watched_images"
    REFRESH_DURATION = "ehpc_refresh_duration_seconds"
    REFRESH_LAST_SUCCESS = "ehpc_refresh_last_success_timestamp_seconds"
    DISCOVERY_UP = "ehpc_discovery_up"
    DISCOVERY_LAST_SUCCESS = "ehpc_discovery_last_success_timestamp_seconds"
    DISCOVERED_IMAGES = "ehpc_discovered_images"
    API_REQUESTS = "ehpc_api_requests_total"
    API_ERRORS = "ehpc_api_errors_total"
    API_REQUEST_DURATION = "ehpc_api_request_duration_seconds"
    API_IGNORED_VALUES = "ehpc_api_ignored_values_total"
    REFRESH_OVERRUNS = "ehpc_refresh_overruns_total"
    CONFIG_RELOAD_SUCCESSFUL = "ehpc_config_last_reload_successful"
    CONFIG_RELOAD_TIMESTAMP = "ehpc_config_last_reload_success_timestamp_seconds"
    BUILD_INFO = "ehpc_exporter_build_info"


MetricType = Literal["gauge", "counter", "histogram"]


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """Name, type, help text and label names (in the order the code passes values) of one metric."""

    name: MetricName
    type: MetricType
    help: str
    labels: tuple[str, ...] = ()


_M = MetricName
SPECS: Mapping[MetricName, MetricSpec] = {
    s.name: s
    for s in (
        MetricSpec(
            _M.IMAGE_INFO,
            "gauge",
            "Static facts about a watched image, always 1 (from the last successful GetImage).",
            (
                "image_id",
                "name",
                "version",
                "image_type",
                "app_id",
                "os_tag",
                "platform",
                "architecture",
                "registry_url",
            ),
        ),
        MetricSpec(
            _M.IMAGE_STATUS,
            "gauge",
            "Image status as a state set: 1 for the current status, 0 for every other known status.",
            ("image_id", "status"),
        ),
        MetricSpec(
            _M.IMAGE_AVAILABLE,
            "gauge",
            "1 if the image status is in the configured healthy set, 0 otherwise or while it is missing.",
            ("image_id",),
        ),
        MetricSpec(_M.IMAGE_SIZE_BYTES, "gauge", "Image size in bytes.", ("image_id",)),
        MetricSpec(_M.IMAGE_CREATED, "gauge", "Image creation time as Unix seconds.", ("image_id",)),
        MetricSpec(
            _M.IMAGE_REPLICATION_STATUS,
            "gauge",
            "Status of the image copy in another region as a state set (all 0 when there is no copy).",
            ("image_id", "replication_region", "status"),
        ),
        MetricSpec(
            _M.IMAGE_REPLICATION_AVAILABLE,
            "gauge",
            "1 if the image copy in that region is usable, 0 otherwise.",
            ("image_id", "replication_region"),
        ),
        MetricSpec(_M.IMAGE_UP, "gauge", "1 if the last GetImage for this image succeeded.", ("image_id",)),
        MetricSpec(
            _M.IMAGE_LAST_SUCCESS,
            "gauge",
            "Unix time of the last successful GetImage for this image.",
            ("image_id",),
        ),
        MetricSpec(
            _M.IMAGE_LAST_ERROR,
            "gauge",
            "Error code of the last failed GetImage, always 1, present while the image is failing.",
            ("image_id", "code"),
        ),
        MetricSpec(_M.WATCHED_IMAGES, "gauge", "Images in the watched set (after discovery and sharding)."),
        MetricSpec(_M.REFRESH_DURATION, "gauge", "Duration of the last refresh cycle in seconds."),
        MetricSpec(_M.REFRESH_LAST_SUCCESS, "gauge", "Unix time the last completed refresh cycle ended."),
        MetricSpec(
            _M.DISCOVERY_UP,
            "gauge",
            "1 if the last ListImages discovery succeeded, 0 if it failed (absent while discovery is off).",
        ),
        MetricSpec(
            _M.DISCOVERY_LAST_SUCCESS,
            "gauge",
            "Unix time of the last successful ListImages discovery.",
        ),
        MetricSpec(
            _M.DISCOVERED_IMAGES,
            "gauge",
            "Images found by discovery (the last good set while it fails), before sharding.",
        ),
        MetricSpec(
            _M.API_REQUESTS,
            "counter",
            "E-HPC Instant API calls made, each retry attempt counted.",
            ("action",),
        ),
        MetricSpec(
            _M.API_ERRORS,
            "counter",
            "Failed E-HPC Instant API calls by error code and HTTP status (0: no HTTP answer).",
            ("action", "code", "http_status"),
        ),
        MetricSpec(
            _M.API_REQUEST_DURATION,
            "histogram",
            "Latency of one E-HPC Instant API call attempt in seconds.",
            ("action",),
        ),
        MetricSpec(
            _M.API_IGNORED_VALUES,
            "counter",
            "Values of accepted API answers the exporter could not use and left out (an unparseable size "
            "or time, a region entry that was not asked for, empty or repeated), by field.",
            ("action", "field"),
        ),
        MetricSpec(
            _M.REFRESH_OVERRUNS,
            "counter",
            "Refresh cycles that outlasted the refresh interval (the next one then started at once).",
        ),
        MetricSpec(
            _M.CONFIG_RELOAD_SUCCESSFUL,
            "gauge",
            "1 if the last configuration load or reload succeeded, 0 if it failed.",
        ),
        MetricSpec(
            _M.CONFIG_RELOAD_TIMESTAMP,
            "gauge",
            "Unix time of the last successful configuration load or reload.",
        ),
        MetricSpec(
            _M.BUILD_INFO,
            "gauge",
            "Exporter build information, always 1.",
            ("version", "revision", "python_version"),
        ),
    )
}

# The families of the snapshot part, in exposition order.
SNAPSHOT_METRICS: tuple[MetricName, ...] = (
    _M.IMAGE_INFO,
    _M.IMAGE_STATUS,
    _M.IMAGE_AVAILABLE,
    _M.IMAGE_SIZE_BYTES,
    _M.IMAGE_CREATED,
    _M.IMAGE_REPLICATION_STATUS,
    _M.IMAGE_REPLICATION_AVAILABLE,
    _M.IMAGE_UP,
    _M.IMAGE_LAST_SUCCESS,
    _M.IMAGE_LAST_ERROR,
    _M.WATCHED_IMAGES,
    _M.REFRESH_DURATION,
    _M.REFRESH_LAST_SUCCESS,
    _M.DISCOVERY_UP,
    _M.DISCOVERY_LAST_SUCCESS,
    _M.DISCOVERED_IMAGES,
)


def go_float(value: float) -> str:
    """prometheus_client's float formatting (Go style), which both renderers must share."""
    return str(_float_to_go_string(value))  # type: ignore[no-untyped-call]  # untyped upstream


# --------------------------------------------------------------------------------------------------
# What series an image has: decided once, consumed by both renderers.


@dataclass(frozen=True, slots=True)
class _Replica:
    region: str
    states: tuple[tuple[str, float], ...]  # (status label, 0/1) in exposition order
    available: float


@dataclass(frozen=True, slots=True)
class _Series:
    image_id: str
    info: tuple[str, ...] | None  # values of SPECS[IMAGE_INFO].labels[1:]
    states: tuple[tuple[str, float], ...]
    available: float | None
    size: float | None
    created: float | None
    replicas: tuple[_Replica, ...]
    up: float
    last_success: float | None
    error_code: str | None


def _series(state: ImageState, snapshot: Snapshot) -> _Series:
    """An image's series, from its verdict (``snapshot.views``) and its last good facts."""
    view = snapshot.views[state.image_id]
    img = state.image
    info: tuple[str, ...] | None = None
    size: float | None = None
    created: float | None = None
    if img is not None:
        # Every label value passes the output gate: here, or in the view for ids, statuses and regions.
        info = tuple(
            map(
                scrub,
                (
                    img.name,
                    img.version,
                    img.image_type,
                    img.app_id,
                    img.os_tag,
                    img.platform,
                    img.architecture,
                    img.registry_url,
                ),
            )
        )
        size = float(img.size_bytes) if img.size_bytes is not None else None
        created = img.create_time.timestamp() if img.create_time is not None else None
    # An image that never answered (and is not missing) has no replication series: nothing is known.
    replicas: tuple[_Replica, ...] = ()
    if img is not None or view.health is Health.MISSING:
        replicas = tuple(
            _Replica(r.region, r.states, 1.0 if r.health is ReplicaHealth.AVAILABLE else 0.0)
            for r in view.replicas
        )
    return _Series(
        image_id=view.image_id,
        info=info,
        states=view.states,
        available=view.available,
        size=size,
        created=created,
        replicas=replicas,
        up=1.0 if state.up else 0.0,
        last_success=state.last_success,
        error_code=view.error_code,
    )


def _global_values(snapshot: Snapshot) -> tuple[float | None, ...]:
    """The values of the families after the per-image ones, in order; None where there is no sample."""
    if snapshot.refreshed_at is None:
        return (None,) * (len(SNAPSHOT_METRICS) - _IMAGE_FAMILIES)
    d = snapshot.discovery
    return (
        float(len(snapshot.images)),
        float(snapshot.duration_seconds or 0.0),
        snapshot.refreshed_at,
        None if d is None else (1.0 if d.up else 0.0),
        None if d is None else d.last_success,
        None if d is None else float(d.discovered),
    )


# --------------------------------------------------------------------------------------------------
# The reference path: the snapshot as an ordinary prometheus_client collector.


class SnapshotCollector:
    """A ``prometheus_client`` collector over one snapshot (the reference the fast renderer must equal)."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        """Yield the snapshot's metric families in exposition order."""
        fams = {
            n: GaugeMetricFamily(n.value, SPECS[n].help, labels=SPECS[n].labels) for n in SNAPSHOT_METRICS
        }
        for state in self.snapshot.images.values():
            s = _series(state, self.snapshot)
            iid = s.image_id
            if s.info is not None:
                fams[_M.IMAGE_INFO].add_metric([iid, *s.info], 1.0)
            for status, v in s.states:
                fams[_M.IMAGE_STATUS].add_metric([iid, status], v)
            if s.available is not None:
                fams[_M.IMAGE_AVAILABLE].add_metric([iid], s.available)
            if s.size is not None:
                fams[_M.IMAGE_SIZE_BYTES].add_metric([iid], s.size)
            if s.created is not None:
                fams[_M.IMAGE_CREATED].add_metric([iid], s.created)
            for r in s.replicas:
                for status, v in r.states:
                    fams[_M.IMAGE_REPLICATION_STATUS].add_metric([iid, r.region, status], v)
                fams[_M.IMAGE_REPLICATION_AVAILABLE].add_metric([iid, r.region], r.available)
            fams[_M.IMAGE_UP].add_metric([iid], s.up)
            if s.last_success is not None:
                fams[_M.IMAGE_LAST_SUCCESS].add_metric([iid], s.last_success)
            if s.error_code is not None:
                fams[_M.IMAGE_LAST_ERROR].add_metric([iid, s.error_code], 1.0)
        for name, value in zip(
            SNAPSHOT_METRICS[_IMAGE_FAMILIES:], _global_values(self.snapshot), strict=True
        ):
            if value is not None:
                fams[name].add_metric([], value)
        yield from fams.values()


# --------------------------------------------------------------------------------------------------
# The fast path: the same bytes as generate_latest(SnapshotCollector(...)), without building Sample objects.


def _esc(value: str) -> str:
    """Escape a label value exactly as both exposition formats require (backslash, newline, quote)."""
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


def _fmt(value: float) -> str:
    if value == 1.0:
        return "1.0"
    if value == 0.0:
        return "0.0"
    return go_float(value)


def _header(name: str, openmetrics: bool) -> bytes:
    help_text = SPECS[MetricName(name)].help.replace("\\", r"\\").replace("\n", r"\n")
    if openmetrics:
        help_text = help_text.replace('"', r"\"")
    return f"# HELP {name} {help_text}\n# TYPE {name} gauge\n".encode()


_TEXT_HEADERS = tuple(_header(n.value, False) for n in SNAPSHOT_METRICS)
_OM_HEADERS = tuple(_header(n.value, True) for n in SNAPSHOT_METRICS)
_LAST_SUCCESS_INDEX = SNAPSHOT_METRICS.index(_M.IMAGE_LAST_SUCCESS)
_IMAGE_FAMILIES = SNAPSHOT_METRICS.index(_M.WATCHED_IMAGES)  # the families before it are per image


def _image_lines(s: _Series) -> tuple[bytes, ...]:
    """The sample lines of one image, one (possibly empty, possibly multi-line) chunk per image family."""
    iid = _esc(s.image_id)
    key = f'{{image_id="{iid}"}} '
    info = states = avail = size = created = rstates = ravail = last_err = ""
    if s.info is not None:
        name, version, itype, app_id, os_tag, plat, arch, reg = (_esc(v) for v in s.info)
        # generate_latest sorts label names: app_id architecture image_id image_type name os_tag platform
        # registry_url version.
        info = (
            f'ehpc_image_info{{app_id="{app_id}",architecture="{arch}",image_id="{iid}",'
            f'image_type="{itype}",name="{name}",os_tag="{os_tag}",platform="{plat}",'
            f'registry_url="{reg}",version="{version}"}} 1.0\n'
        )
    if s.states:
        states = "".join(
            f'ehpc_image_status{{image_id="{iid}",status="{_esc(st)}"}} {_fmt(v)}\n' for st, v in s.states
        )
    if s.available is not None:
        avail = f"ehpc_image_available{key}{_fmt(s.available)}\n"
    if s.size is not None:
        size = f"ehpc_image_size_bytes{key}{_fmt(s.size)}\n"
    if s.created is not None:
        created = f"ehpc_image_created_timestamp_seconds{key}{_fmt(s.created)}\n"
    if s.replicas:
        rs: list[str] = []
        ra: list[str] = []
        for r in s.replicas:
            head = f'image_id="{iid}",replication_region="{_esc(r.region)}"'
            rs.extend(
                f'ehpc_image_replication_status{{{head},status="{_esc(st)}"}} {_fmt(v)}\n'
                for st, v in r.states
            )
            ra.append(f"ehpc_image_replication_available{{{head}}} {_fmt(r.available)}\n")
        rstates, ravail = "".join(rs), "".join(ra)
    up = f"ehpc_image_up{key}{_fmt(s.up)}\n"
    if s.error_code is not None:
        last_err = f'ehpc_image_last_error_info{{code="{_esc(s.error_code)}",image_id="{iid}"}} 1.0\n'
    # The last-success slot is filled per render (it changes every cycle; everything else rarely does).
    # A tuple of bytes: the garbage collector stops tracking it, so a big cache costs collections nothing.
    return tuple(x.encode() for x in (info, states, avail, size, created, rstates, ravail, up, "", last_err))


def _last_success_line(state: ImageState) -> bytes:
    if state.last_success is None:
        return b""
    iid = _esc(state.image_id)
    return (
        f'ehpc_image_last_success_timestamp_seconds{{image_id="{iid}"}} {_fmt(state.last_success)}\n'.encode()
    )


# Images per joined part: big enough that a scrape writes few chunks, small enough that one join is short.
PART_IMAGES = 256
# The longest the renderer runs before yielding to the event loop (scrapes interleave with a render).
RENDER_SLICE_SECONDS = 0.002

_RenderSteps = Generator[None, None, "RenderedSnapshot"]


@dataclass(frozen=True, slots=True)
class _Previous:
    """Where the last render put each image's lines: no second copy of the exposition is kept."""

    parts: tuple[tuple[bytes, ...], ...]  # per image family, its batches of PART_IMAGES images (b"" kept)
    ends: tuple[array[int], ...]  # per image family, per image: end offset of its lines in its batch part
    count: int  # images rendered


_NO_PREVIOUS = _Previous(((),) * _IMAGE_FAMILIES, tuple(array("Q") for _ in range(_IMAGE_FAMILIES)), 0)


class SnapshotRenderer:
    """Renders snapshots to both formats, reusing the bytes of every image unchanged since the last render.

    The result is a list of parts (no multi-megabyte join): the header of each family, then its sample
    lines in batches of :data:`PART_IMAGES` images. Joined, the parts are byte-identical to
    ``generate_latest(SnapshotCollector(snapshot))`` (and to the OpenMetrics generator without its
    ``# EOF``). An unchanged image's lines are not kept apart: the renderer remembers where they sit in
    the previous render's parts (which the server holds anyway) and copies that range; a batch whose
    images are all unchanged and in place reuses the previous part object itself. :meth:`render_async`
    does the same work in slices of about 2 ms on the event loop, which keeps scrape latency flat where a
    worker thread would hold the GIL against the loop. One render at a time (refresh cycles never overlap).
    """

    def __init__(self) -> None:
        # image id -> (what its lines depend on, its position in the previous render)
        self._cache: dict[str, tuple[tuple[object, ...], int]] = {}
        self._previous = _NO_PREVIOUS

    def render(self, snapshot: Snapshot) -> RenderedSnapshot:
        """Render ``snapshot`` in one go."""
        steps = self._steps(snapshot)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                rendered: RenderedSnapshot = done.value
                return rendered

    async def render_async(
        self, snapshot: Snapshot, slice_seconds: float = RENDER_SLICE_SECONDS
    ) -> RenderedSnapshot:
        """Render ``snapshot`` on the event loop, yielding to it every ``slice_seconds``."""
        steps = self._steps(snapshot)
        clock = time.perf_counter
        deadline = clock() + slice_seconds
        while True:
            try:
                next(steps)
            except StopIteration as done:
                result: RenderedSnapshot = done.value
                return result
            if clock() >= deadline:
                await asyncio.sleep(0)
                deadline = clock() + slice_seconds

    def _steps(self, snapshot: Snapshot) -> _RenderSteps:
        """The render as a generator that yields between small pieces of work."""
        cache: dict[str, tuple[tuple[object, ...], int]] = {}
        old = self._cache
        prev = self._previous
        states = list(snapshot.images.values())
        count = len(states)
        batches: list[list[bytes]] = [[] for _ in range(_IMAGE_FAMILIES)]
        family_ends = tuple(array("Q") for _ in range(_IMAGE_FAMILIES))
        # Batch by batch, so at most one batch of freshly rendered lines is alive besides the parts.
        for start in range(0, count, PART_IMAGES):
            # Per image: its position in the previous render (unchanged) or its freshly rendered lines.
            entries: list[int | tuple[bytes, ...]] = []
            last_success: list[bytes] = []
            for n in range(start, min(start + PART_IMAGES, count)):
                state = states[n]
                # What its lines depend on, compared by value: its verdict and its facts.
                key = (snapshot.views[state.image_id], state.image)
                hit = old.get(state.image_id)
                entries.append(
                    hit[1] if hit is not None and hit[0] == key else _image_lines(_series(state, snapshot))
                )
                cache[state.image_id] = (key, n)
                # The last-success line changes every cycle: always rendered, never reused.
                last_success.append(_last_success_line(state))
                if n % 16 == 15:
                    yield
            for i in range(_IMAGE_FAMILIES):
                if i == _LAST_SUCCESS_INDEX:
                    batches[i].append(b"".join(last_success))
                else:
                    batches[i].append(_batch(entries, i, prev, family_ends[i]))
                yield

        refresh = [
            b"" if v is None else f"{n.value} {_fmt(v)}\n".encode()
            for n, v in zip(SNAPSHOT_METRICS[_IMAGE_FAMILIES:], _global_values(snapshot), strict=True)
        ]
        parts: list[bytes] = []
        header_at: list[int] = []
        for i, header in enumerate(_TEXT_HEADERS):
            header_at.append(len(parts))
            parts.append(header)
            if i >= _IMAGE_FAMILIES:
                if refresh[i - _IMAGE_FAMILIES]:
                    parts.append(refresh[i - _IMAGE_FAMILIES])
            else:
                parts.extend(part for part in batches[i] if part)
        self._cache = cache
        self._previous = _Previous(tuple(map(tuple, batches)), family_ends, count)
        text = tuple(parts)
        if _OM_HEADERS == _TEXT_HEADERS:  # no help text needs OpenMetrics' extra quote escaping
            om = text
        else:
            for at, header in zip(header_at, _OM_HEADERS, strict=True):
                parts[at] = header
            om = tuple(parts)
        return RenderedSnapshot(snapshot, text, om)


def _batch(
    entries: Sequence[int | tuple[bytes, ...]], family: int, prev: _Previous, ends: array[int]
) -> bytes:
    """One family's part for one batch of images; appends their end offsets within it to ``ends``."""
    prev_parts, prev_ends = prev.parts[family], prev.ends[family]
    n = len(entries)
    first = entries[0]
    if (
        isinstance(first, int)
        and first % PART_IMAGES == 0
        and min(prev.count - first, PART_IMAGES) == n
        and entries == list(range(first, first + n))
    ):
        # The whole previous batch, unchanged and in place (the usual case): share its part object.
        ends.extend(prev_ends[first : first + n])
        return prev_parts[first // PART_IMAGES]
    pieces: list[bytes] = []
    offset = 0
    for entry in entries:
        if isinstance(entry, int):
            begin = prev_ends[entry - 1] if entry % PART_IMAGES else 0
            piece = prev_parts[entry // PART_IMAGES][begin : prev_ends[entry]]
        else:
            piece = entry[family]
        pieces.append(piece)
        offset += len(piece)
        ends.append(offset)
    return b"".join(pieces)


def render_snapshot(snapshot: Snapshot) -> RenderedSnapshot:
    """Render ``snapshot`` from scratch (see :class:`SnapshotRenderer` to reuse unchanged images)."""
    return SnapshotRenderer().render(snapshot)


@dataclass(frozen=True, slots=True)
class _Deflated:
    parts: tuple[bytes, ...]  # raw deflate, sync-flushed (byte-aligned, no final block): it can continue
    crc: int
    size: int


class RenderedSnapshot:
    """The snapshot part rendered once, as parts to write in order (no ``# EOF``), and lazy gzip."""

    __slots__ = ("_deflated", "_lock", "_parts", "_sizes", "snapshot")

    def __init__(self, snapshot: Snapshot, text: tuple[bytes, ...], openmetrics: tuple[bytes, ...]) -> None:
        self.snapshot = snapshot
        self._parts = {False: text, True: openmetrics}
        self._sizes = {False: sum(map(len, text)), True: sum(map(len, openmetrics))}
        self._deflated: dict[bool, _Deflated] = {}
        self._lock = threading.Lock()

    def parts(self, openmetrics: bool) -> tuple[bytes, ...]:
        """The uncompressed snapshot part of one format, as chunks to write in order."""
        return self._parts[openmetrics]

    def size(self, openmetrics: bool) -> int:
        """Bytes in :meth:`parts`."""
        return self._sizes[openmetrics]

    def body(self, openmetrics: bool) -> bytes:
        """The parts joined (a copy: for tests and tools; the server writes :meth:`parts`)."""
        return b"".join(self._parts[openmetrics])

    @property
    def text(self) -> bytes:
        """The text-format snapshot part, joined."""
        return self.body(False)

    @property
    def openmetrics(self) -> bytes:
        """The OpenMetrics snapshot part (without ``# EOF``), joined."""
        return self.body(True)

    def has_deflated(self, openmetrics: bool) -> bool:
        """Whether the compressed form of this format is already cached."""
        return openmetrics in self._deflated

    def deflated(self, openmetrics: bool) -> _Deflated:
        """The compressed form of one format, computed once (thread-safe; zlib releases the GIL)."""
        cached = self._deflated.get(openmetrics)
        if cached is not None:
            return cached
        with self._lock:
            cached = self._deflated.get(openmetrics)
            if cached is None:
                comp = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
                out: list[bytes] = []
                crc = 0
                for part in self._parts[openmetrics]:
                    crc = zlib.crc32(part, crc)
                    chunk = comp.compress(part)
                    if chunk:
                        out.append(chunk)
                out.append(comp.flush(zlib.Z_SYNC_FLUSH))
                cached = _Deflated(tuple(out), crc, self._sizes[openmetrics])
                self._deflated[openmetrics] = cached
        return cached


# Magic, deflate, no flags, mtime 0, no extra flags, OS "unknown".
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


def gzip_body(head: _Deflated, tail: bytes) -> list[bytes]:
    """One gzip member for ``head`` (already deflated) followed by ``tail``, as chunks to write in order.

    Deflate blocks are self-contained: a fresh compressor's blocks may follow a sync-flushed stream,
    and CRC-32 continues from the head's, so no byte of the big head is compressed twice.
    """
    comp = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
    rest = comp.compress(tail) + comp.flush(zlib.Z_FINISH)
    trailer = struct.pack("<II", zlib.crc32(tail, head.crc), (head.size + len(tail)) & 0xFFFFFFFF)
    return [_GZIP_HEADER, *head.parts, rest, trailer]


# --------------------------------------------------------------------------------------------------
# The self part: API calls, refresh overruns, config reloads, build info.


class _Histogram:
    __slots__ = ("counts", "sum")

    def __init__(self, n: int) -> None:
        self.counts = [0] * n  # per bucket, not cumulative; the last is +Inf
        self.sum = 0.0


def _error_status(error: ApiError) -> str:
    # Local failures have no API answer: always "0", whatever status a malformed body came with, so
    # the pre-registered series is the one that moves.
    return "0" if error.code in LOCAL_CODES else str(error.http_status)


# The fields ehpc_api_ignored_values_total starts at 0 for (what exporter.models may leave out).
IGNORED_FIELDS: tuple[str, ...] = ("Image.Size", "Image.CreateTime", "Image.AdditionalRegionsInfo")


class SelfMetrics:
    """The exporter's own counters: an :class:`~exporter.openapi.client.ApiObserver` and a collector.

    Every API action starts with requests 0, every known error code at 0 (with the HTTP status it is
    normally answered with) and an empty histogram, so ``rate()`` and ``increase()`` work from the first
    failure. Codes outside the catalogue get their own series up to ``max_error_codes`` distinct ones;
    later new codes are counted under ``OVERFLOW_CODE``, so a server inventing codes cannot grow
    ``/metrics`` without bound. Mutated only from the event loop; :meth:`collect` copies what it reads.
    """

    def __init__(
        self,
        build_info: BuildInfo | None = None,
        *,
        process_metrics: bool = True,
        buckets: Sequence[float] = API_DURATION_BUCKETS,
        max_error_codes: int = 50,
    ) -> None:
        self.build_info = build_info or BuildInfo.current()
        self.max_error_codes = max_error_codes
        self._buckets = tuple(buckets)
        self._le = [go_float(b) for b in self._buckets] + ["+Inf"]
        self._requests: dict[str, int] = {}
        self._errors: dict[tuple[str, str, str], int] = {}
        self._extra_codes: set[str] = set()
        self._latency: dict[str, _Histogram] = {}
        self._ignored: dict[tuple[str, str], int] = {}
        for action in API_ACTIONS:
            self._add_action(action)
        self.overruns = 0
        self.reload_successful: bool | None = None
        self.reload_success_timestamp: float | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        if process_metrics:
            ProcessCollector(registry=self.registry)
            GCCollector(registry=self.registry)

    def _add_action(self, action: str) -> None:
        self._requests[action] = 0
        self._latency[action] = _Histogram(len(self._le))
        for code, status in KNOWN_CODES.items():
            self._errors.setdefault((action, code, str(status)), 0)
        if action == "GetImage":
            for field in IGNORED_FIELDS:
                self._ignored.setdefault((action, field), 0)

    def _code(self, code: str) -> str:
        """The label value ``code`` is counted under: itself, or the overflow code past the cap."""
        if code in KNOWN_CODES or code in self._extra_codes:
            return code
        if len(self._extra_codes) >= self.max_error_codes:
            return OVERFLOW_CODE
        self._extra_codes.add(code)
        return code

    def _count_error(self, action: str, error: ApiError) -> None:
        code = self._code(error.code)
        key = (action, code, "0" if code == OVERFLOW_CODE else _error_status(error))
        self._errors[key] = self._errors.get(key, 0) + 1

    def on_attempt(self, action: str, duration_seconds: float, error: ApiError | None) -> None:
        """Count one HTTP attempt (every retry counts) and its latency."""
        if action not in self._requests:
            self._add_action(action)
        self._requests[action] += 1
        hist = self._latency[action]
        hist.sum += duration_seconds
        i = 0
        for bound in self._buckets:
            if duration_seconds <= bound:
                break
            i += 1
        hist.counts[i] += 1
        if error is not None:
            self._count_error(action, error)

    def on_failure(self, action: str, error: ApiError) -> None:
        """Count a failed call whose attempts each succeeded (it made no request of its own)."""
        if action not in self._requests:
            self._add_action(action)
        self._count_error(action, error)

    def record_ignored(self, action: str, fields: Iterable[str]) -> None:
        """Count the values of one accepted answer that were left out, by field."""
        for field in fields:
            key = (action, field)
            self._ignored[key] = self._ignored.get(key, 0) + 1

    def record_overrun(self) -> None:
        """Count a refresh cycle that outlasted its interval."""
        self.overruns += 1

    def record_reload(self, ok: bool, at: float) -> None:
        """Record the outcome of a configuration load or reload at wall time ``at``."""
        self.reload_successful = ok
        if ok:
            self.reload_success_timestamp = at

    def errors(self) -> dict[tuple[str, str, str], int]:
        """A copy of the error counters: (action, code, http_status) -> count."""
        return dict(self._errors)

    def requests(self) -> dict[str, int]:
        """A copy of the request counters: action -> count."""
        return dict(self._requests)

    def collect(self) -> Iterable[Metric]:
        """Yield the self-metric families."""
        spec = SPECS
        requests = CounterMetricFamily(_M.API_REQUESTS, spec[_M.API_REQUESTS].help, labels=["action"])
        for action, n in sorted(self._requests.items()):
            requests.add_metric([action], n)
        yield requests
        errors = CounterMetricFamily(
            _M.API_ERRORS, spec[_M.API_ERRORS].help, labels=list(spec[_M.API_ERRORS].labels)
        )
        # Codes pass the output gate here; two codes it maps to one label value are added up, so
        # the family never holds the same series twice.
        gated: dict[tuple[str, str, str], int] = {}
        for (action, code, status), n in self._errors.items():
            key = (action, scrub(code), status)
            gated[key] = gated.get(key, 0) + n
        for key, n in sorted(gated.items()):
            errors.add_metric(list(key), n)
        yield errors
        ignored = CounterMetricFamily(
            _M.API_IGNORED_VALUES, spec[_M.API_IGNORED_VALUES].help, labels=["action", "field"]
        )
        for (action, field), n in sorted(self._ignored.items()):
            ignored.add_metric([action, field], n)
        yield ignored
        latency = HistogramMetricFamily(
            _M.API_REQUEST_DURATION, spec[_M.API_REQUEST_DURATION].help, labels=["action"]
        )
        for action, hist in sorted(self._latency.items()):
            cumulative, buckets = 0, []
            for le, count in zip(self._le, list(hist.counts), strict=True):
                cumulative += count
                buckets.append((le, float(cumulative)))
            latency.add_metric([action], buckets, hist.sum)
        yield latency
        overruns = CounterMetricFamily(_M.REFRESH_OVERRUNS, spec[_M.REFRESH_OVERRUNS].help)
        overruns.add_metric([], self.overruns)
        yield overruns
        ok = GaugeMetricFamily(_M.CONFIG_RELOAD_SUCCESSFUL, spec[_M.CONFIG_RELOAD_SUCCESSFUL].help)
        if self.reload_successful is not None:
            ok.add_metric([], 1.0 if self.reload_successful else 0.0)
        yield ok
        ts = GaugeMetricFamily(_M.CONFIG_RELOAD_TIMESTAMP, spec[_M.CONFIG_RELOAD_TIMESTAMP].help)
        if self.reload_success_timestamp is not None:
            ts.add_metric([], self.reload_success_timestamp)
        yield ts
        info = GaugeMetricFamily(_M.BUILD_INFO, spec[_M.BUILD_INFO].help, labels=spec[_M.BUILD_INFO].labels)
        b = self.build_info
        info.add_metric([b.version, b.revision, b.python_version], 1.0)
        yield info

    def render(self, openmetrics: bool) -> bytes:
        """The self part of one scrape (OpenMetrics ends with the answer's single ``# EOF``)."""
        if openmetrics:
            return bytes(generate_openmetrics(self.registry))  # type: ignore[no-untyped-call]  # untyped upstream
        return generate_text(self.registry)
