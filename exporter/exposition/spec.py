"""What a metric family is (:class:`MetricSpec`: name, type, help, label names) and the labels every
family of the exporter starts with: the one shape the family table, the self part and the renderers share.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

__all__ = ["IDENTITY", "MetricSpec", "MetricType", "Sample", "with_own_labels"]

MetricType = Literal["gauge", "counter", "histogram"]
# One sample: its label values in the order of the family's label names, and its value.
Sample = tuple[tuple[str, ...], float]
# The identity labels: the account and the region whose endpoint answered (not "region", which clashes
# with the labels Prometheus targets often carry).
IDENTITY = ("account", "region_id")


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """Name, type, help text and label names (in the order samples give their values) of one family."""

    name: str  # a MetricName for the exporter's own; a plain string for a family added elsewhere
    type: MetricType
    help: str
    labels: tuple[str, ...] = ()


def with_own_labels(spec: MetricSpec, names: tuple[str, ...]) -> MetricSpec:
    """``spec`` with the own label ``names`` first when it has an ``account`` label (its samples' values
    then start with the account's or the image's), else ``spec`` itself."""
    if not names or "account" not in spec.labels:
        return spec
    return replace(spec, labels=(*names, *spec.labels))
