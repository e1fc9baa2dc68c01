"""What the HTTP app reads, and the keys it is stored under: the seam between the service and its pages."""

from __future__ import annotations

from typing import Protocol

from aiohttp import web

from exporter.config import Config
from exporter.exposition import RenderedSnapshot

__all__ = ["SOURCE_KEY", "TELEMETRY_PATH_KEY", "MetricsSource"]


class MetricsSource(Protocol):
    """What the web app reads: implemented by :class:`~exporter.service.ExporterService`."""

    @property
    def rendered(self) -> RenderedSnapshot:
        """The current snapshot and its rendered exposition."""
        ...

    @property
    def ready(self) -> bool:
        """The first refresh has completed."""
        ...

    @property
    def config(self) -> Config:
        """The current configuration."""
        ...

    @property
    def version(self) -> str:
        """The exporter version."""
        ...

    def render_self(self, openmetrics: bool) -> bytes:
        """The per-scrape self-metrics part (ends with ``# EOF`` in OpenMetrics)."""
        ...


SOURCE_KEY: web.AppKey[MetricsSource] = web.AppKey("source")
TELEMETRY_PATH_KEY: web.AppKey[str] = web.AppKey("telemetry_path")
