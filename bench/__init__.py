"""Benchmarks of the exporter against its performance targets (`python -m bench`; not part of `make test`)."""
