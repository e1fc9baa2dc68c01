"""``ehpc-image-exporter demo`` and ``simulate``: the one place the exporter meets the simulator.

The simulator is a distribution of its own (``ehpc-image-exporter-simulator``, package ``ehpc_simulator``,
in simulator/ of the source tree) that imports nothing of the exporter: it is the independent referee of
the exporter's protocol code, and it stays out of the exporter's wheel and image. This module is the one
exporter module that imports it (an import-linter contract in pyproject.toml says so); the command line
imports this module only for ``demo`` and ``simulate``, and says how to install the simulator when it is
missing.

The demo: the simulator's demo estate (:mod:`ehpc_simulator.demo`: three accounts in two regions,
``prod`` with a static AccessKey, ``staging`` by assuming a role with prod's key, ``research`` through
OIDC with a token file as RRSA on ACK, against the simulator's STS over HTTPS) and the exporter watching
it, in one process. The STS's certificate comes from a throwaway CA, which the demo's targets trust as
any user trusts a private CA: ``api.ca_file``. Every series carries ``account`` and ``region_id``.
Besides the estate's images, prod watches one image that does not exist, in both its regions: how a
deleted image looks.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import structlog

from ehpc_simulator.cli import add_simulate_arguments, run_simulate
from ehpc_simulator.demo import (
    DEMO_ACCESS_KEY_ID,
    DEMO_ACCESS_KEY_SECRET,
    DEMO_REGIONS,
    ESTATE_REGIONS,
    HOME_REGION,
    DemoEndpoints,
    oidc_provider_arn,
    role_arn,
    serve_demo,
)
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

__all__ = [
    "MISSING_IMAGE_ID",
    "RunningDemo",
    "add_simulate_arguments",
    "demo_config",
    "run_demo",
    "run_simulate",
]

log = structlog.get_logger("ehpc.demo")

# Watched but absent from the simulator: how a deleted image looks (ImageNotFound).
MISSING_IMAGE_ID = "m-0000deleted0000demo"


def demo_config(
    region_urls: dict[str, str],
    sts_host: str,
    token_file: str,
    *,
    listen_address: str = "127.0.0.1:9765",
    interval_seconds: float = 15.0,
    ca_file: str | None = None,
) -> Config:
    """The exporter's config for the demo estate: three targets, each account reached its own way;
    ``ca_file``: the STS's CA."""
    regions = tuple(
        ApiConfig(
            region_id=region,
            endpoint=region_urls[region],
            protocol="http",
            ca_file=ca_file,
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
        oidc_provider_arn=oidc_provider_arn("research"),
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


@dataclass(frozen=True, slots=True)
class RunningDemo:
    """A running demo: the estate's endpoints, the exporter, and where to reach them."""

    endpoints: DemoEndpoints
    service: ExporterService

    @property
    def simulator_url(self) -> str:
        """prod's home region gateway (its admin API takes ?account=NAME)."""
        return self.endpoints.region_urls[HOME_REGION]

    @property
    def sts_url(self) -> str:
        """The simulator's STS."""
        return self.endpoints.sts_url

    @property
    def metrics_url(self) -> str:
        """The exporter's metrics URL."""
        return f"{self.service.url}{self.service.config.web.telemetry_path}"


def _changed(change: str) -> None:
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
    # Public demo values, but the exporter treats every secret alike: none of it reaches a log line.
    register_secret(DEMO_ACCESS_KEY_SECRET, pin=True)
    with tempfile.TemporaryDirectory(prefix="ehpc-demo-") as tmp:
        async with serve_demo(
            sim_host,
            sim_port,
            images=images,
            interval_seconds=interval_seconds,
            seed=seed,
            on_change=_changed,
        ) as ep:
            token = Path(tmp) / "rrsa-token"
            token.write_text(ep.oidc_token)  # what the kubelet projects for RRSA
            config = demo_config(
                ep.region_urls,
                ep.sts_host,
                str(token),
                listen_address=listen_address,
                interval_seconds=interval_seconds,
                ca_file=ep.ca_file,
            )
            service = ExporterService(config)
            await service.start()
            try:
                log.info(
                    "demo_started",
                    simulator=ep.region_urls[HOME_REGION],
                    sts=ep.sts_url,
                    exporter=service.url,
                    targets=len(config.scopes()),
                    # The estate's images (each in its one (account, region)) and the static ones, watched
                    # in every region of their target: the deleted image is watched in both of prod's.
                    images=ep.images + sum(len(scope.images) for scope in config.scopes()),
                )
                yield RunningDemo(ep, service)
            finally:
                await service.stop()
