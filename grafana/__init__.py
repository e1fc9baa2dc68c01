"""Grafana dashboard of ehpc-image-exporter, built as code with grafana-foundation-sdk."""
