"""Alibaba Cloud OpenAPI protocol: V3 signing, typed errors and the E-HPC Instant client."""
