"""The metric contract and its exposition: one family table, a fast renderer, gzip, self-metrics.

Two parts make up one ``/metrics`` answer:

* the **snapshot part** — every per-image series plus the refresh and discovery gauges. It only changes
  when a refresh swaps in a new :class:`~exporter.snapshot.Snapshot`, so it is rendered once per swap
  (text format and OpenMetrics) by :class:`SnapshotRenderer` and kept as byte parts; gzip is computed
  lazily, once per format, as a sync-flushed deflate stream that each scrape extends (:func:`gzip_body`);
* the **self part** — API call counters and latency, refresh overruns, config reload state, build info
  (and process metrics) — rendered per scrape by ``prometheus_client`` from :class:`SelfMetrics`.

Modules, one job each: ``families`` (the table: names, specs, sample functions, series semantics),
``lines`` (headers and sample lines as prometheus_client writes them), ``render`` (the fast renderer),
``deflate`` (gzip), ``selfmetrics`` (the self part). The renderer's oracle (the same table as a
prometheus_client collector) is tests/reference.py: it is not part of the product.
"""

from exporter.buildinfo import BuildInfo
from exporter.exposition.deflate import Deflated, gzip_body
from exporter.exposition.families import (
    SNAPSHOT_METRICS,
    SPECS,
    TABLE,
    Family,
    FamilyTable,
    ImageInput,
    MetricName,
    MetricSpec,
)
from exporter.exposition.lines import CONTENT_TYPE_OPENMETRICS, CONTENT_TYPE_TEXT, go_float
from exporter.exposition.render import RenderedSnapshot, SnapshotRenderer, render_snapshot
from exporter.exposition.selfmetrics import API_ACTIONS, API_DURATION_BUCKETS, ScopeMetrics, SelfMetrics

__all__ = [
    "API_ACTIONS",
    "API_DURATION_BUCKETS",
    "CONTENT_TYPE_OPENMETRICS",
    "CONTENT_TYPE_TEXT",
    "SNAPSHOT_METRICS",
    "SPECS",
    "TABLE",
    "BuildInfo",
    "Deflated",
    "Family",
    "FamilyTable",
    "ImageInput",
    "MetricName",
    "MetricSpec",
    "RenderedSnapshot",
    "ScopeMetrics",
    "SelfMetrics",
    "SnapshotRenderer",
    "go_float",
    "gzip_body",
    "render_snapshot",
]
