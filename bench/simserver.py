"""Serve a benchmark fleet from the simulator in this process; prints {"url": ...} once listening.

Run as a child of the benchmark (`python -m bench.simserver --images N ...`) so the simulator's CPU
does not compete with the client being measured for the same core.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import ssl
import sys
from collections.abc import Sequence

from bench.common import REGIONS, image_id
from ehpc_simulator import Faults, SimImage, Simulator

# A few images in each non-Available state, so the fleet is not uniform (every 97th/89th image).
_STATUS_EVERY = {97: "Creating", 89: "UnAvailable"}


def bench_fleet(n: int, regions: Sequence[str]) -> list[SimImage]:
    """n VM images replicated to `regions`, mostly Available."""
    images = []
    for i in range(n):
        status = next((s for every, s in _STATUS_EVERY.items() if i % every == every - 1), "Available")
        region_status = {r: ("Creating" if (i + j) % 53 == 0 else "Available") for j, r in enumerate(regions)}
        images.append(
            SimImage(
                image_id=image_id(i),
                image_type="VM",
                category="Custom",
                name=f"bench-image-{i}",
                version=f"v{1 + i % 7}",
                description="benchmark image",
                status=status,
                size_gib=float(20 + i % 200),
                create_time="2024-03-01T08:00:00Z",
                os_tag="CentOS 7.9 64 bit",
                platform="CentOS",
                architecture="x86_64",
                regions=region_status,
            )
        )
    return images


async def serve(args: argparse.Namespace) -> None:
    """Serve until SIGTERM/SIGINT."""
    regions = [r for r in args.regions.split(",") if r]
    faults = Faults(**json.loads(args.faults))
    sim = Simulator(images=bench_fleet(args.images, regions), faults=faults)
    ssl_ctx: ssl.SSLContext | None = None
    if args.cert:
        ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_ctx.load_cert_chain(args.cert, args.key)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with sim.serve("127.0.0.1", args.port, ssl_context=ssl_ctx) as url:
        sys.stdout.write(json.dumps({"url": url}) + "\n")
        sys.stdout.flush()
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> None:
    """Parse arguments and serve."""
    parser = argparse.ArgumentParser(prog="python -m bench.simserver")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--regions", default=",".join(REGIONS))
    parser.add_argument("--faults", default="{}", help="Faults fields as a JSON object")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args))


if __name__ == "__main__":
    main()
