"""The exporter's HTTP surface: the aiohttp app (``/metrics``, probes), the landing page, and the
exporter-toolkit web config (TLS, basic auth, rate limit).

- :mod:`exporter.http.app`: routes, content negotiation, gzip, the error guard;
- :mod:`exporter.http.landing`: the health board at ``/``;
- :mod:`exporter.http.source`: what the app reads from the service;
- :mod:`exporter.http.webconfig`: ``--web.config.file`` (Prometheus exporter-toolkit format) read and checked;
- :mod:`exporter.http.toolkit`: the TLS context, basic auth and rate limit built from it.
"""

from exporter.http.app import OPEN_PATHS, accepts_gzip, create_app, wants_openmetrics
from exporter.http.source import SOURCE_KEY, MetricsSource

__all__ = ["OPEN_PATHS", "SOURCE_KEY", "MetricsSource", "accepts_gzip", "create_app", "wants_openmetrics"]
