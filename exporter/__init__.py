"""Prometheus exporter for Alibaba Cloud E-HPC Instant images."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ehpc-image-exporter")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
