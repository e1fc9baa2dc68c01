"""Prometheus alerting rules of ehpc-image-exporter, generated from alerts/thresholds.yaml."""
