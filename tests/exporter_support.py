"""Helpers shared by the exporter-core tests (metrics, refresher, web, service, golden files)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import structlog
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from exporter.config import (
    ApiConfig,
    Config,
    CredentialsConfig,
    RefreshConfig,
    RetryConfig,
    WatchedImage,
    WebConfig,
)
from exporter.models import Image, Replica
from exporter.snapshot import ImageFacts
from tests.fixtures.sim import RunningSimulator

SampleKey = tuple[str, frozenset[tuple[str, str]]]


def sim_config(
    running: RunningSimulator,
    images: Iterable[WatchedImage | str] = (),
    *,
    interval: float = 60.0,
    max_attempts: int = 1,
    api_timeout: float = 10.0,  # bounds a hang; a busy machine's loopback answer must never reach it
    **overrides: Any,
) -> Config:
    """A config pointed at the running simulator: no QPS budget, quick retries, an ephemeral port.

    A test that wants Timeouts stalls the simulator far past a short ``api_timeout`` of its own.
    """
    watched = tuple(WatchedImage(i) if isinstance(i, str) else i for i in images)
    api = ApiConfig(
        endpoint=running.url,
        protocol="http",
        qps=0,
        timeout_seconds=api_timeout,
        connect_timeout_seconds=api_timeout,
        retry=RetryConfig(
            max_attempts=max_attempts, base_delay_seconds=0.01, max_delay_seconds=0.02, max_elapsed_seconds=10
        ),
    )
    cfg = Config(
        api=api,
        credentials=CredentialsConfig(
            type="access_key",
            access_key_id=running.access_key_id,
            access_key_secret=running.access_key_secret,
        ),
        images=watched,
        refresh=RefreshConfig(interval_seconds=interval, jitter_ratio=0.0, image_timeout_seconds=10),
        web=WebConfig(listen_address="127.0.0.1:0"),
    )
    return replace(cfg, **overrides)


def samples(exposition: str | bytes) -> dict[SampleKey, float]:
    """Every sample of a text-format exposition: (name, labels) -> value."""
    text = exposition.decode() if isinstance(exposition, bytes) else exposition
    out: dict[SampleKey, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name, frozenset(s.labels.items())] = s.value
    return out


IDENTITY_LABELS = frozenset({"account", "region_id"})


def value(found: dict[SampleKey, float], name: str, **labels: str) -> float | None:
    """The value of one sample, or None when the series is absent.

    The identity labels (account, region_id) may be left out when one (account, region) alone has the
    series: the other labels must still match exactly.
    """
    exact = found.get((name, frozenset(labels.items())))
    if exact is not None or labels.keys() >= IDENTITY_LABELS:
        return exact
    wanted = frozenset(labels.items())
    matches = [
        v
        for (n, have), v in found.items()
        if n == name and wanted <= have and {k for k, _ in have - wanted} == IDENTITY_LABELS - labels.keys()
    ]
    if len(matches) > 1:
        raise AssertionError(f"{name}{labels} is ambiguous: name account and region_id")
    return matches[0] if matches else None


def series_of(found: dict[SampleKey, float], image_id: str) -> list[SampleKey]:
    """Every sample key that belongs to ``image_id``."""
    return [k for k in found if ("image_id", image_id) in k[1]]


@contextlib.contextmanager
def captured_events(*events: str) -> Iterator[list[dict[str, Any]]]:
    """The log events named one of ``events`` written while the block ran (filled when it ends), debug
    ones included.

    For decisions a component logs but does not return (the delay a retry chose): reading them is exact,
    where timing their effect would judge the machine's speed.
    """
    wrapper = structlog.get_config()["wrapper_class"]
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    captured: list[dict[str, Any]] = []
    try:
        with capture_logs() as logs:
            yield captured
            captured += [dict(e) for e in logs if e.get("event") in events]
    finally:
        structlog.configure(wrapper_class=wrapper)


def make_image(
    image_id: str,
    *,
    status: str = "Available",
    regions: Sequence[tuple[str, str]] = (),
    name: str = "app",
    version: str = "v1",
    image_type: str = "VM",
    registry_url: str = "",
    size_bytes: int | None = 40 * 1024**3,
    created: datetime | None = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
    os_tag: str = "Alibaba Cloud Linux 3",
) -> ImageFacts:
    """What the refresher keeps of a GetImage answer with these fields (for tests that need no server)."""
    return ImageFacts.from_image(
        Image(
            image_id=image_id,
            image_type=image_type,
            name=name,
            version=version,
            app_id="",
            status=status,
            size_bytes=size_bytes,
            create_time=created,
            os_tag=os_tag,
            platform="Linux",
            architecture="x86_64",
            registry_url=registry_url,
            additional_regions=tuple(Replica(r, s) for r, s in regions),
            request_id="req",
        )
    )
