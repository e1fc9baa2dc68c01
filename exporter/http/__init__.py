"""The exporter's HTTP surface: the aiohttp app (``/metrics``, probes), the landing page, and the
exporter-toolkit web config (TLS, basic auth, rate limit).

- :mod:`exporter.http.app`: routes, content negotiation, gzip, the error guard;
- :mod:`exporter.http.landing`: the health board at ``/``;
- :mod:`exporter.http.source`: what the app reads from the service;
- :mod:`exporter.http.toolkit`: ``--web.config.file`` (Prometheus exporter-toolkit format).
"""

from exporter.http.app import OPEN_PATHS, accepts_gzip, create_app, wants_openmetrics
from exporter.http.source import SOURCE_KEY, MetricsSource

__all__ = ["OPEN_PATHS", "SOURCE_KEY", "MetricsSource", "accepts_gzip", "create_app", "wants_openmetrics"]
