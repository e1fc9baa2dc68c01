"""Serve a benchmark estate (accounts x regions) in this process; prints one JSON line once listening.

Run as a child of the benchmark (`python -m bench.estateserver --spec FILE`) so the simulated estate's
CPU does not compete with the exporter being measured. The spec (JSON) names the regions and, per
account, its static AccessKey, its image count and seed, and per region its faults::

    {"regions": ["cn-hangzhou", "cn-shanghai"],
     "accounts": [{"name": "acct-a", "id": "100000000000000001", "key_id": "AK-A", "secret": "s",
                   "images": 1000, "seed": 11, "replicas": ["cn-beijing"],
                   "regions": {"cn-hangzhou": {"latency_ms": 40, "jitter_ms": 8, "qps_limit": 150}}}]}

Every region of an account serves the same images (`account_images`, copied to ``replicas``, by default
REPLICA_REGIONS), so one target's image list is watched in each of its regions. The announcement is
``{"url": ..., "region_urls": {region: url}}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ehpc_simulator import SimImage
from ehpc_simulator.estate import Estate
from ehpc_simulator.fleet import generate_fleet
from ehpc_simulator.model import Faults

# Regions the images are copied to (AdditionalRegionsInfo); not served, only reported per image.
REPLICA_REGIONS = ("cn-beijing", "cn-shenzhen")


def account_images(n: int, seed: int, replicas: Sequence[str] = REPLICA_REGIONS) -> list[SimImage]:
    """One account's images: the generator's realistic mix of states, but no image answers an error."""
    return generate_fleet(n, replicas, seed=seed, error_fraction=0)


def build_estate(spec: dict[str, Any]) -> Estate:
    """The estate the spec describes (see the module docstring)."""
    estate = Estate(spec["regions"])
    for acct in spec["accounts"]:
        account = estate.add_account(acct["id"], acct["name"], {acct["key_id"]: acct["secret"]})
        images = account_images(acct["images"], acct["seed"], acct.get("replicas", REPLICA_REGIONS))
        for region_id, faults in acct["regions"].items():
            sim = account.region(region_id)
            sim.images.update({i.image_id: i for i in images})
            sim.faults = Faults(**faults)
    return estate


async def serve(spec: dict[str, Any]) -> None:
    """Serve until SIGTERM/SIGINT."""
    estate = build_estate(spec)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with estate.serve("127.0.0.1") as ep:
        first = next(iter(ep.region_urls.values()))
        sys.stdout.write(json.dumps({"url": first, "region_urls": ep.region_urls}) + "\n")
        sys.stdout.flush()
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> None:
    """Parse arguments and serve."""
    parser = argparse.ArgumentParser(prog="python -m bench.estateserver")
    parser.add_argument("--spec", required=True, type=Path, help="the estate spec, JSON")
    args = parser.parse_args(argv)
    spec = json.loads(args.spec.read_text())
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(spec))


if __name__ == "__main__":
    main()
