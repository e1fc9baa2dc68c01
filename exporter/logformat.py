"""The log flags' vocabulary: the formats and levels ``--log.format`` and ``--log.level`` take.

A leaf of its own so that the command line's parser knows them without loading structlog and aiohttp
(:mod:`exporter.logging`, which re-exports them): ``--help`` and ``--version`` need nothing more.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["LEVELS", "LOG_FORMATS", "LogFormat"]

LogFormat = Literal["logfmt", "json", "console"]
# logfmt and json as the Prometheus tools spell them; console: structlog's coloured lines for people.
LOG_FORMATS: tuple[LogFormat, ...] = ("logfmt", "json", "console")
LEVELS: tuple[str, ...] = ("debug", "info", "warning", "error", "critical")
