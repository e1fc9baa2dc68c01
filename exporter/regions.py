"""The documented E-HPC Instant regions, declared once, with no project imports.

The union of the two lists in the shared protocol notes (alibaba-openapi.md, 5.1 "Endpoints"): the product
documentation's endpoint table (ten regions with public and VPC endpoints, three public only, and the
Malaysia row, ap-southeast-3, where the source table was cut) and the API metadata's endpoint list
(which adds us-west-1 and eu-central-1). Regions are added without notice, so a region outside these is
a warning (``--check-config``, the start-up log), never a refusal.
"""

from __future__ import annotations

__all__ = ["KNOWN_REGIONS"]

KNOWN_REGIONS: tuple[str, ...] = (
    # Public and VPC endpoints.
    "cn-beijing",
    "cn-wulanchabu",
    "cn-hangzhou",
    "cn-shanghai",
    "cn-shenzhen",
    "cn-heyuan",
    "cn-guangzhou",
    "cn-chengdu",
    "cn-hongkong",
    "ap-southeast-1",
    # Public endpoints only.
    "ap-northeast-1",
    "ap-southeast-5",
    "ap-northeast-2",
    "ap-southeast-3",
    # Only in the API metadata's endpoint list.
    "us-west-1",
    "eu-central-1",
)
