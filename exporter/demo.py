"""``ehpc-image-exporter demo``: a small simulated estate and the exporter watching it, in one process.

The estate is three accounts in two regions, each account reached the way a real estate reaches them:
``prod`` with a static AccessKey, ``staging`` by assuming a role (STS AssumeRole) with prod's key, and
``research`` through OIDC (STS AssumeRoleWithOIDC with a token file, as RRSA on ACK), against the
simulator's STS over HTTPS. The demo owns its process, so it points ``SSL_CERT_FILE`` at the STS's
throwaway CA: the exporter's STS client uses the system's trust, which honours that variable, and nothing
else can reach it. Every series carries ``account`` and ``region_id``.

prod's fleet in the home region is generated (deterministic for a seed) with the things an operator
wants to see on a dashboard: images that are not Available, images whose replication is incomplete (a
copy still creating, failed, or never made), images whose GetImage always fails with an API error, and one
watched image that no longer exists. A little throttling and latency is injected so the API error and
latency metrics move, and the fleet slowly evolves (lagging copies finish, new copies start) so graphs
are not flat.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from exporter.config import (
    ApiConfig,
    AssumeRoleConfig,
    Config,
    CredentialsConfig,
    DiscoveryConfig,
    RefreshConfig,
    RetryConfig,
    TargetConfig,
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
from exporter.simulator.estate import Estate

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
SECOND_REGION = "cn-shanghai"
ESTATE_REGIONS = (HOME_REGION, SECOND_REGION)  # the regions whose endpoints the exporter calls
DEMO_REGIONS = ("cn-beijing", "cn-shanghai", "ap-southeast-1")  # where images are replicated to
# The demo accounts: name -> id. prod holds the AccessKey; staging trusts prod; research trusts OIDC.
DEMO_ACCOUNTS = {"prod": "1111111111111111", "staging": "2222222222222222", "research": "3333333333333333"}
ROLE_NAME = "ehpc-image-reader"
OIDC_PROVIDER = "ack-rrsa"
OIDC_ISSUER = "https://oidc-ack-cn-hangzhou.oss-cn-hangzhou.aliyuncs.com/demo"
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


def role_arn(account: str) -> str:
    """The demo reader role of ``account``."""
    return f"acs:ram::{DEMO_ACCOUNTS[account]}:role/{ROLE_NAME}"


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


def demo_config(
    region_urls: dict[str, str],
    sts_host: str,
    token_file: str,
    *,
    listen_address: str = "127.0.0.1:9765",
    interval_seconds: float = 15.0,
) -> Config:
    """The exporter's config for the demo estate: three targets, each account reached its own way."""
    regions = tuple(
        ApiConfig(
            region_id=region,
            endpoint=region_urls[region],
            protocol="http",
            timeout_seconds=5.0,
            retry=RetryConfig(
                max_attempts=4, base_delay_seconds=0.1, max_delay_seconds=1.0, max_elapsed_seconds=5.0
            ),
        )
        for region in ESTATE_REGIONS
    )
    refresh = RefreshConfig(
        interval_seconds=interval_seconds,
        jitter_ratio=0.1,
        image_timeout_seconds=min(RefreshConfig().image_timeout_seconds, interval_seconds),
    )
    discovery = DiscoveryConfig(enabled=True, additional_region_ids=DEMO_REGIONS)
    key = CredentialsConfig(
        type="access_key", access_key_id=DEMO_ACCESS_KEY_ID, access_key_secret=DEMO_ACCESS_KEY_SECRET
    )
    oidc = CredentialsConfig(
        type="oidc_role_arn",
        role_arn=role_arn("research"),
        oidc_provider_arn=f"acs:ram::{DEMO_ACCOUNTS['research']}:oidc-provider/{OIDC_PROVIDER}",
        oidc_token_file=token_file,
        sts_endpoint=sts_host,
    )
    missing = WatchedImage(MISSING_IMAGE_ID, "VM", None, DEMO_REGIONS)  # deleted: missing in both regions
    assume = AssumeRoleConfig(role_arn("staging"), sts_endpoint=sts_host)
    targets = (
        TargetConfig("prod", key, None, regions, refresh, (missing,), discovery),
        TargetConfig("staging", key, assume, regions, refresh, (), discovery),
        TargetConfig("research", oidc, None, regions, refresh, (), discovery),
    )
    return Config(refresh=refresh, targets=targets, web=WebConfig(listen_address=listen_address))


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
    """A running demo: the estate, the exporter, and where to reach them."""

    estate: Estate
    simulator_url: str  # prod's home region gateway (its admin API takes ?account=NAME)
    sts_url: str
    service: ExporterService

    @property
    def simulator(self) -> Simulator:
        """prod's simulator of the home region (the generated fleet)."""
        return self.estate.account("prod").region(HOME_REGION)

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
    """Start the estate and the exporter; stop both (exporter first) on exit.

    prod's home region listens on ``simulator_listen_address``, the second region on the next port (a
    free one for port 0), the STS on a free port. Raises ValueError for an address that does not parse
    and OSError for one that cannot be bound.
    """
    sim_host, sim_port = parse_listen_address(simulator_listen_address)
    parse_listen_address(listen_address)
    fleet = demo_fleet(images, seed)
    # Public demo values, but the exporter treats every secret alike: none of it reaches a log line.
    register_secret(DEMO_ACCESS_KEY_SECRET, pin=True)
    estate = demo_estate(fleet, seed)
    ports = {HOME_REGION: sim_port, SECOND_REGION: sim_port + 1 if sim_port else 0}
    host = sim_host or "0.0.0.0"  # noqa: S104 - as the user asked
    with tempfile.TemporaryDirectory(prefix="ehpc-demo-") as tmp:
        async with estate.serve(host, region_ports=ports) as ep:
            # The estate may listen on every interface; the exporter reaches it on loopback.
            urls = {r: u.replace("://0.0.0.0:", "://127.0.0.1:") for r, u in ep.region_urls.items()}
            sts_host = ep.sts_host.replace("0.0.0.0:", "127.0.0.1:")
            if ep.ca_file is not None:
                os.environ["SSL_CERT_FILE"] = ep.ca_file  # see the module docstring
            token = Path(tmp) / "rrsa-token"
            # What the kubelet projects for RRSA; a day is longer than any demo.
            token.write_text(estate.issue_oidc_token(OIDC_PROVIDER, ttl_seconds=86_400))
            config = demo_config(
                urls, sts_host, str(token), listen_address=listen_address, interval_seconds=interval_seconds
            )
            service = ExporterService(config)
            await service.start()
            # The simulators mutate the SimImage objects they hold; evolve those.
            live = [i for a in estate.accounts for sim in a.regions.values() for i in sim.images.values()]
            evolver = asyncio.create_task(
                _evolve_forever(live, interval_seconds, seed), name="ehpc-demo-evolve"
            )
            try:
                log.info(
                    "demo_started",
                    simulator=urls[HOME_REGION],
                    sts=ep.sts_url,
                    exporter=service.url,
                    targets=len(config.scopes()),
                    images=len(live) + 1,
                )
                yield RunningDemo(estate, urls[HOME_REGION], ep.sts_url, service)
            finally:
                evolver.cancel()
                await asyncio.wait([evolver])
                await service.stop()
