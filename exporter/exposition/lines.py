"""Exposition text from the family table: headers and sample lines, exactly as prometheus_client writes them.

Everything here is derived from a :class:`~exporter.exposition.families.MetricSpec`: the ``# HELP`` /
``# TYPE`` lines (text format 0.0.4 and OpenMetrics, which escapes quotes in help text and names a
counter without its ``_total``), and a :class:`LineEncoder` per family that writes its samples with the
label names sorted, the label values escaped and the value formatted exactly like ``generate_latest``.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as CONTENT_TYPE_OPENMETRICS
from prometheus_client.utils import floatToGoString as _float_to_go_string

from exporter.exposition.spec import MetricSpec, Sample

__all__ = ["CONTENT_TYPE_OPENMETRICS", "CONTENT_TYPE_TEXT", "LineEncoder", "go_float", "header"]

CONTENT_TYPE_TEXT = CONTENT_TYPE_PLAIN_0_0_4


def go_float(value: float) -> str:
    """prometheus_client's float formatting (Go style), which both renderers must share."""
    return str(_float_to_go_string(value))  # type: ignore[no-untyped-call]  # untyped upstream


def _fmt(value: float) -> str:
    # The two values most samples have, without the general formatting.
    if value == 1.0:
        return "1.0"
    if value == 0.0:
        return "0.0"
    return go_float(value)


def _esc(value: str) -> str:
    """Escape a label value exactly as both exposition formats require (backslash, newline, quote)."""
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


def header(spec: MetricSpec, openmetrics: bool) -> bytes:
    """The ``# HELP`` and ``# TYPE`` lines of one family in one format."""
    if spec.type not in ("gauge", "counter"):
        # Their samples have suffixes (_bucket, _sum) the line encoder does not write.
        raise ValueError(f"{spec.name}: a {spec.type} cannot be rendered by the snapshot renderer")
    help_text = spec.help.replace("\\", r"\\").replace("\n", r"\n")
    name = spec.name
    if spec.type == "counter" and not name.endswith("_total"):
        raise ValueError(f"{name}: a counter's name ends with _total")
    if openmetrics:
        help_text = help_text.replace('"', r"\"")
        if spec.type == "counter":
            name = name.removesuffix("_total")  # OpenMetrics names the family, its samples carry _total
    return f"# HELP {name} {help_text}\n# TYPE {name} {spec.type}\n".encode()


class LineEncoder:
    """Writes the sample lines of one family: ``name{sorted labels} value``, the same in both formats."""

    __slots__ = ("_template",)

    def __init__(self, spec: MetricSpec) -> None:
        names = spec.labels
        if len(set(names)) != len(names):
            raise ValueError(f"{spec.name}: a label name is listed twice: {names}")
        # A str.format template with the values' positions in sorted label-name order, then the value.
        order = sorted(range(len(names)), key=names.__getitem__)
        labels = ",".join(f'{names[j]}="{{{j}}}"' for j in order)
        self._template = (
            f"{spec.name}{{{{{labels}}}}} {{{len(names)}}}\n" if names else f"{spec.name} {{0}}\n"
        )

    def lines(self, samples: Iterable[Sample]) -> str:
        """The lines of ``samples`` (empty when there is none)."""
        fmt = self._template.format
        out = []
        for values, value in samples:
            # One scan of all the values for the characters that need escaping (almost never there),
            # instead of three per value: the line encoder is most of a render's time.
            joined = "".join(values)
            if "\\" in joined or "\n" in joined or '"' in joined:
                out.append(fmt(*map(_esc, values), _fmt(value)))
            else:
                out.append(fmt(*values, _fmt(value)))
        return "".join(out)
