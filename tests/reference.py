"""The reference path: the family table as ordinary ``prometheus_client`` metric families (the test oracle).

:class:`SnapshotCollector` turns a snapshot into ``prometheus_client`` families through the same table
as the fast renderer; ``generate_latest`` over it is what the renderer's bytes must equal. It lives with
the tests, not in the product: the exporter never serves it. Empty families come from the same
spec-checked helpers the self-metrics use (:mod:`exporter.exposition.selfmetrics`).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from exporter.exposition.families import TABLE, FamilyTable, ImageInput, MetricSpec, Sample
from exporter.exposition.selfmetrics import counter, gauge
from exporter.snapshot import Snapshot

__all__ = ["SnapshotCollector"]


def _family(spec: MetricSpec) -> GaugeMetricFamily | CounterMetricFamily:
    """An empty family of the snapshot part (gauges and counters: one value per sample)."""
    return counter(spec) if spec.type == "counter" else gauge(spec)


class SnapshotCollector:
    """A ``prometheus_client`` collector over one snapshot (the reference the fast renderer must equal)."""

    def __init__(self, snapshot: Snapshot, table: FamilyTable = TABLE) -> None:
        self.snapshot = snapshot
        self.table = table

    def collect(self) -> Iterator[Metric]:
        """Yield the snapshot's metric families in exposition order."""
        snapshot = self.snapshot
        wide = [list(family.samples(snapshot)) for family in self.table.snapshot]
        images = _kept(
            [
                [list(f.samples(ImageInput.of(s, snapshot, self.table.labels))) for f in self.table.images]
                for s in snapshot.images.values()
            ],
            self.table.max_series - sum(map(len, wide)) if self.table.max_series else None,
        )
        for i, family in enumerate(self.table.images):
            metric = _family(family.spec)
            for image in images:
                for values, value in image[i]:
                    metric.add_metric(list(values), value)
            yield metric
        for snapshot_family, found in zip(self.table.snapshot, wide, strict=True):
            metric = _family(snapshot_family.spec)
            for values, value in found:
                metric.add_metric(list(values), value)
            yield metric


def _kept(images: list[list[list[Sample]]], budget: int | None) -> list[list[list[Sample]]]:
    """The images (each its samples per family, in key order) the series cap keeps: while they fit."""
    if budget is None:
        return images
    for n, image in enumerate(images):
        budget -= sum(map(len, image))
        if budget < 0:
            return images[:n]
    return images
