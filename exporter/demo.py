"""``ehpc-image-exporter demo``: the simulator and the exporter pointed at it, in one process.

The fleet is generated (deterministic for a seed) with the things an operator wants to see on a dashboard:
images that are not Available, images whose replication is incomplete (a copy still creating, failed, or
never made), images whose GetImage always fails with an API error, and one watched image that no longer
exists. A little throttling and latency is injected so the API error and latency metrics move, and the
fleet slowly evolves (lagging copies finish, new copies start) so graphs are not flat.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import structlog

from exporter.config import (
    ApiConfig,
    Config,
    CredentialsConfig,
    RefreshConfig,
    RetryConfig,
    WatchedImage,
    WebConfig,
    parse_listen_address,
)
from exporter.logging import register_secret
from exporter.service import ExporterService
from exporter.simulator import (
    DEMO_ACCESS_KEY_ID,
    DEMO_ACCESS_KEY_SECRET,
    Faults,
    SimImage,
    Simulator,
    generate_fleet,
)

__all__ = [
    "DEMO_REGIONS",
    "MISSING_IMAGE_ID",
    "RunningDemo",
    "demo_config",
    "demo_faults",
    "demo_fleet",
    "evolve",
    "run_demo",
]

log = structlog.get_logger("ehpc.demo")

HOME_REGION = "cn-hangzhou"
DEMO_REGIONS = ("cn-beijing", "cn-shanghai", "ap-southeast-1")
# Watched but absent from the simulator: how a deleted image looks (ImageNotFound).
MISSING_IMAGE_ID = "m-0000deleted0000demo"
_IN_PROGRESS = ("Creating", "Waiting")


def demo_fleet(n: int, seed: int = 7) -> list[SimImage]:
    """``n`` simulated images; from 3 images on, at least one failing and one incompletely replicated."""
    fleet = generate_fleet(
        n,
        DEMO_REGIONS,
        seed=seed,
        problem_fraction=0.1,
        lagging_fraction=0.25,
        error_fraction=0.05,
        home_region=HOME_REGION,
    )
    if n >= 3:
        # Small fleets may draw no problem at all; the demo is about showing them.
        if not any(image.error for image in fleet):
            fleet[-1].error = "EcsError"
        if not any(
            set(image.regions.values()) - {"Available"} or len(image.regions) < len(DEMO_REGIONS)
            for image in fleet
        ):
            fleet[0].regions[DEMO_REGIONS[-1]] = "Creating"
    return fleet


def demo_faults(seed: int = 7) -> Faults:
    """Occasional throttling and 5xx (the exporter retries them) and some latency."""
    return Faults(
        error_rates={"Throttling.User": 0.03, "ServiceUnavailable": 0.01},
        latency_ms=25,
        jitter_ms=25,
        seed=seed,
    )


def demo_config(
    simulator_url: str,
    fleet: Sequence[SimImage],
    *,
    listen_address: str = "127.0.0.1:9765",
    interval_seconds: float = 15.0,
) -> Config:
    """The exporter's config for the demo: the simulator over HTTP with the demo AccessKey pair."""
    images = [
        WatchedImage(
            image.image_id, "Container" if image.image_type == "Container" else "VM", None, DEMO_REGIONS
        )
        for image in fleet
    ]
    images.append(WatchedImage(MISSING_IMAGE_ID, "VM", None, DEMO_REGIONS))
    return Config(
        api=ApiConfig(
            region_id=HOME_REGION,
            endpoint=simulator_url,
            protocol="http",
            timeout_seconds=5.0,
            retry=RetryConfig(
                max_attempts=4, base_delay_seconds=0.1, max_delay_seconds=1.0, max_elapsed_seconds=5.0
            ),
        ),
        credentials=CredentialsConfig(
            type="access_key", access_key_id=DEMO_ACCESS_KEY_ID, access_key_secret=DEMO_ACCESS_KEY_SECRET
        ),
        images=tuple(images),
        refresh=RefreshConfig(
            interval_seconds=interval_seconds,
            jitter_ratio=0.1,
            image_timeout_seconds=min(RefreshConfig().image_timeout_seconds, interval_seconds),
        ),
        web=WebConfig(listen_address=listen_address),
    )


def evolve(fleet: Sequence[SimImage], rng: random.Random) -> str | None:
    """One step of life: finish a copy in progress, else start a new copy; returns what changed."""
    in_progress = [
        (image, region)
        for image in fleet
        for region, status in image.regions.items()
        if status in _IN_PROGRESS and image.error is None
    ]
    if in_progress:
        image, region = rng.choice(in_progress)
        image.regions[region] = "Available"
        return f"{image.image_id} {region} Available"
    candidates = [i for i in fleet if i.error is None and i.status == "Available" and i.regions]
    if not candidates:
        return None
    image = rng.choice(candidates)
    region = rng.choice(sorted(image.regions))
    image.regions[region] = "Creating"
    return f"{image.image_id} {region} Creating"


@dataclass(frozen=True, slots=True)
class RunningDemo:
    """A running demo: the simulator, the exporter, and where to reach them."""

    simulator: Simulator
    simulator_url: str
    service: ExporterService

    @property
    def metrics_url(self) -> str:
        """The exporter's metrics URL."""
        return f"{self.service.url}{self.service.config.web.telemetry_path}"


async def _evolve_forever(fleet: Sequence[SimImage], interval_seconds: float, seed: int) -> None:
    rng = random.Random(seed)  # noqa: S311 - demo data, not security
    while True:
        await asyncio.sleep(interval_seconds)
        change = evolve(fleet, rng)
        if change:
            log.info("demo_fleet_changed", change=change)


@contextlib.asynccontextmanager
async def run_demo(
    *,
    listen_address: str = "127.0.0.1:9765",
    simulator_listen_address: str = "127.0.0.1:9766",
    images: int = 24,
    interval_seconds: float = 15.0,
    seed: int = 7,
) -> AsyncIterator[RunningDemo]:
    """Start the simulator and the exporter; stop both (exporter first) on exit.

    Raises ValueError for an address that does not parse and OSError for one that cannot be bound.
    """
    sim_host, sim_port = parse_listen_address(simulator_listen_address)
    parse_listen_address(listen_address)
    fleet = demo_fleet(images, seed)
    # Public demo values, but the exporter treats every secret alike: none of it reaches a log line.
    register_secret(DEMO_ACCESS_KEY_SECRET, pin=True)
    simulator = Simulator(images=fleet, faults=demo_faults(seed), region_id=HOME_REGION)
    async with simulator.serve(sim_host or "0.0.0.0", sim_port) as url:  # noqa: S104 - as the user asked
        # The simulator may listen on every interface; the exporter reaches it on loopback.
        endpoint = url.replace("://0.0.0.0:", "://127.0.0.1:")
        # The simulator mutates the SimImage objects it was given; evolve those (it keeps them by id).
        live = list(simulator.images.values())
        service = ExporterService(
            demo_config(endpoint, fleet, listen_address=listen_address, interval_seconds=interval_seconds)
        )
        await service.start()
        evolver = asyncio.create_task(_evolve_forever(live, interval_seconds, seed), name="ehpc-demo-evolve")
        try:
            log.info("demo_started", simulator=endpoint, exporter=service.url, images=len(fleet) + 1)
            yield RunningDemo(simulator, endpoint, service)
        finally:
            evolver.cancel()
            await asyncio.wait([evolver])
            await service.stop()
