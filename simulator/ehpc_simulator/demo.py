"""The demo's estate: three accounts in two regions, a generated fleet with problems worth seeing, served.

``ehpc-image-exporter demo`` runs this estate and the exporter in one process. This module is the
simulator's half: which accounts exist and how each is reached (``prod`` with a static AccessKey,
``staging`` by a role that trusts prod, ``research`` by a role that trusts an OIDC provider, as RRSA on
ACK), the fleets, the faults, and the slow evolution that keeps graphs moving. The exporter's half
(``exporter.demo``) reads the constants here and :class:`DemoEndpoints` to build its own configuration;
nothing here knows the exporter.

prod's fleet in the home region is generated (deterministic for a seed) with the things an operator
wants to see on a dashboard: images that are not Available, images whose replication is incomplete (a
copy still creating, failed, or never made), and images whose GetImage always fails with an API error.
A little throttling and latency is injected so the API error and latency metrics move.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from ehpc_simulator.estate import Estate
from ehpc_simulator.fleet import generate_fleet
from ehpc_simulator.model import Faults, SimImage
from ehpc_simulator.server import DEMO_ACCESS_KEY_ID, DEMO_ACCESS_KEY_SECRET, Simulator

__all__ = [
    "DEMO_ACCESS_KEY_ID",
    "DEMO_ACCESS_KEY_SECRET",
    "DEMO_ACCOUNTS",
    "DEMO_REGIONS",
    "ESTATE_REGIONS",
    "HOME_REGION",
    "DemoEndpoints",
    "demo_estate",
    "demo_faults",
    "demo_fleet",
    "evolve",
    "oidc_provider_arn",
    "role_arn",
    "serve_demo",
]

HOME_REGION = "cn-hangzhou"
SECOND_REGION = "cn-shanghai"
ESTATE_REGIONS = (HOME_REGION, SECOND_REGION)  # the regions whose endpoints the exporter calls
DEMO_REGIONS = ("cn-beijing", "cn-shanghai", "ap-southeast-1")  # where images are replicated to
# The demo accounts: name -> id. prod holds the AccessKey; staging trusts prod; research trusts OIDC.
DEMO_ACCOUNTS = {"prod": "1111111111111111", "staging": "2222222222222222", "research": "3333333333333333"}
ROLE_NAME = "ehpc-image-reader"
OIDC_PROVIDER = "ack-rrsa"
OIDC_ISSUER = "https://oidc-ack-cn-hangzhou.oss-cn-hangzhou.aliyuncs.com/demo"
# What the kubelet projects for RRSA is renewed; a day is longer than any demo.
OIDC_TOKEN_TTL_SECONDS = 86_400
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


def role_arn(account: str) -> str:
    """The demo reader role of ``account``."""
    return f"acs:ram::{DEMO_ACCOUNTS[account]}:role/{ROLE_NAME}"


def oidc_provider_arn(account: str) -> str:
    """The ARN of ``account``'s demo OIDC provider."""
    return f"acs:ram::{DEMO_ACCOUNTS[account]}:oidc-provider/{OIDC_PROVIDER}"


def demo_estate(fleet: Sequence[SimImage], seed: int = 7) -> Estate:
    """The demo estate: ``fleet`` is prod's in the home region; every other (account, region) gets a
    small generated fleet of its own, with the same kinds of problems."""
    estate = Estate(ESTATE_REGIONS)
    prod = estate.add_account(DEMO_ACCOUNTS["prod"], "prod", {DEMO_ACCESS_KEY_ID: DEMO_ACCESS_KEY_SECRET})
    staging = estate.add_account(DEMO_ACCOUNTS["staging"], "staging")
    staging.add_role(ROLE_NAME, trusted_accounts=[prod.id])
    research = estate.add_account(DEMO_ACCOUNTS["research"], "research")
    provider = research.add_oidc_provider(OIDC_PROVIDER, issuer=OIDC_ISSUER)
    research.add_role(ROLE_NAME, trusted_oidc_providers=[provider.arn])
    small = max(3, len(fleet) // 4)
    for n, account in enumerate((prod, staging, research)):
        for m, region in enumerate(ESTATE_REGIONS):
            sim = account.region(region)
            sim.faults = demo_faults(seed + 10 * n + m)
            if (account, region) == (prod, HOME_REGION):
                images = list(fleet)
            else:
                images = demo_fleet(small, seed + 10 * n + m)
            for image in images:
                sim.images[image.image_id] = image
    return estate


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
class DemoEndpoints:
    """A served demo estate: where each part listens, the STS's CA, and research's OIDC token."""

    estate: Estate
    region_urls: dict[str, str]  # region id -> loopback URL of its gateway (admin API: ?account=NAME)
    sts_url: str
    sts_host: str  # host:port of the STS, on loopback
    ca_file: str | None  # the throwaway CA the STS certificate is signed by
    oidc_token: str  # what the kubelet would project for research's service account
    images: int  # how many images the estate holds, every account and region

    @property
    def simulator(self) -> Simulator:
        """prod's simulator of the home region (the generated fleet)."""
        return self.estate.account("prod").region(HOME_REGION)


async def _evolve_forever(
    fleet: Sequence[SimImage], interval_seconds: float, seed: int, on_change: Callable[[str], None]
) -> None:
    rng = random.Random(seed)  # noqa: S311 - demo data, not security
    while True:
        await asyncio.sleep(interval_seconds)
        change = evolve(fleet, rng)
        if change:
            on_change(change)


@contextlib.asynccontextmanager
async def serve_demo(
    host: str,
    port: int,
    *,
    images: int = 24,
    interval_seconds: float = 15.0,
    seed: int = 7,
    on_change: Callable[[str], None] = lambda change: None,
) -> AsyncIterator[DemoEndpoints]:
    """Serve the demo estate until the block ends; one step of :func:`evolve` every ``interval_seconds``.

    The home region listens on ``host:port``, the second region on the next port (a free one for port 0),
    the STS on a free port; an empty host means every interface. The URLs handed back are on loopback.
    ``on_change`` hears each change the evolution makes. OSError when a port cannot be bound.
    """
    estate = demo_estate(demo_fleet(images, seed), seed)
    ports = {HOME_REGION: port, SECOND_REGION: port + 1 if port else 0}
    async with estate.serve(host or "0.0.0.0", region_ports=ports) as ep:  # noqa: S104 - as the user asked
        # The estate may listen on every interface; its clients reach it on loopback.
        urls = {r: u.replace("://0.0.0.0:", "://127.0.0.1:") for r, u in ep.region_urls.items()}
        # The simulators mutate the SimImage objects they hold; evolve those.
        live = [i for a in estate.accounts for sim in a.regions.values() for i in sim.images.values()]
        evolver = asyncio.create_task(
            _evolve_forever(live, interval_seconds, seed, on_change), name="ehpc-demo-evolve"
        )
        try:
            yield DemoEndpoints(
                estate=estate,
                region_urls=urls,
                sts_url=ep.sts_url,
                sts_host=ep.sts_host.replace("0.0.0.0:", "127.0.0.1:"),
                ca_file=ep.ca_file,
                oidc_token=estate.issue_oidc_token(OIDC_PROVIDER, ttl_seconds=OIDC_TOKEN_TTL_SECONDS),
                images=len(live),
            )
        finally:
            evolver.cancel()
            await asyncio.wait([evolver])
