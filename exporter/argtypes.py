"""Argparse value types of the exporter's command line."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import TypeVar

N = TypeVar("N", int, float)


def bounded(
    kind: Callable[[str], N], what: str, *, low: float = 0, above: bool = False, high: float = math.inf
) -> Callable[[str], N]:
    """An argparse ``type``: a finite ``kind(text)`` in ``[low, high]`` (``(low, high]`` with ``above``)."""

    def parse(text: str) -> N:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value) or value < low or (above and value == low) or value > high:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse
