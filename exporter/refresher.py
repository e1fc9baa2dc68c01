"""The refresh loop: decide the watched set, GetImage every watched image concurrently, swap a snapshot.

One cycle at a time: the first starts at once, each next one ``interval * (1 ± jitter_ratio)`` after
the previous one *started*; a cycle that ends later than that is an overrun (logged, counted in
``ehpc_refresh_overruns_total``) and the next one starts right away rather than stacking up.

The watched set is the static images plus the discovered ones (ListImages with the configured filters;
``name_regex`` is searched, unanchored, in the image name with RE2, whose matching is linear in the
name's length: no pattern and no API-supplied name can stall the loop), static entries winning, then cut
to this replica's shard (:func:`exporter.sharding.in_shard`, rendezvous hashing of the image's identity):
every replica discovers the whole account and keeps its own share. A failed discovery keeps the
previously discovered set; its calls are counted by the client's observer under ``ListImages``.

Each cycle is counted by its result (:func:`cycle_result`, ``ehpc_refresh_cycles_total{result}``): success
when every watched image answered and discovery, while on, succeeded; failure when no image answered (or,
with none watched, discovery failed), or the cycle crashed; partial otherwise. ``ImageNotFound`` is an
answer: the API was reached and said so.

Per image, a failure keeps the last good :class:`~exporter.models.Image` and records the error code;
``ImageNotFound`` marks the image missing until it answers again or leaves the watched set. An image
that leaves the watched set is simply not in the next snapshot, so its series disappear.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol

import re2
import structlog

from exporter.clock import Clock, LoopClock
from exporter.config import Config, DiscoveryConfig, ImageType, WatchedImage
from exporter.errors import TIMEOUT, ApiError
from exporter.exposition import SelfMetrics
from exporter.history import observe
from exporter.models import Image, ImageSummary
from exporter.sharding import in_shard
from exporter.snapshot import DiscoveryStatus, ImageError, ImageFacts, ImageKey, ImageState, Snapshot
from exporter.view import Health, error_reason

__all__ = ["ImageApi", "Refresher", "cycle_result"]

log = structlog.get_logger("ehpc.refresh")


# An unexpected exception in one image's fetch (a bug, not an API answer) is reported under this code.
EXPORTER_ERROR = "ExporterError"


class ImageApi(Protocol):
    """What the refresher needs of :class:`~exporter.openapi.client.EhpcClient`."""

    async def get_image(
        self,
        image_id: str,
        *,
        image_type: str | None = None,
        image_category: str | None = None,
        additional_region_ids: Sequence[str] = (),
        max_elapsed_seconds: float | None = None,
        max_regions: int = 50,
    ) -> Image:
        """GetImage; failures raise ApiError; ``max_elapsed_seconds`` bounds retries from the first send."""
        ...

    async def list_images(
        self,
        *,
        image_type: str | None = None,
        image_category: str | None = None,
        image_ids: Sequence[str] = (),
        image_names: Sequence[str] = (),
        mode: str | None = None,
        page_size: int = 50,
        max_pages: int = 1000,
    ) -> list[ImageSummary]:
        """ListImages, all pages; every failure raises ApiError."""
        ...


def _discovered(summaries: Sequence[ImageSummary], cfg: DiscoveryConfig) -> dict[str, WatchedImage]:
    pattern = re2.compile(cfg.name_regex) if cfg.name_regex else None
    out: dict[str, WatchedImage] = {}
    for s in summaries:
        if not s.image_id or (pattern is not None and pattern.search(s.name) is None):
            continue
        image_type: ImageType = (
            "Container"
            if s.image_type == "Container"
            else "VM"
            if s.image_type == "VM"
            else cfg.image_type or "VM"
        )
        out.setdefault(
            s.image_id,
            WatchedImage(
                image_id=s.image_id,
                image_type=image_type,
                image_category=cfg.image_category,
                additional_region_ids=cfg.additional_region_ids,
            ),
        )
    return out


Publish = Callable[[Snapshot], Awaitable[None]]


def cycle_result(snapshot: Snapshot) -> str:
    """How the cycle that made ``snapshot`` (one (account, region)'s) ended: success, partial or failure.

    An image failed when its verdict is failing (missing is an answer); discovery failed when it is on
    and its last run failed. Failure: every watched image failed, or none is watched and discovery
    failed. Partial: anything else that failed. Success: nothing failed.
    """
    failed = sum(1 for view in snapshot.views.values() if view.health is Health.FAILING)
    discovery_failed = snapshot.discovery_failed
    nothing_answered = failed == len(snapshot.views) if snapshot.views else discovery_failed
    if nothing_answered:
        return "failure"
    return "partial" if failed or discovery_failed else "success"


class Refresher:
    """Owns the refresh loop and the current snapshot; :meth:`reconfigure` applies a reloaded config."""

    def __init__(
        self,
        config: Config,
        client: ImageApi,
        *,
        metrics: SelfMetrics | None = None,
        publish: Publish | None = None,
        wall_clock: Callable[[], float] = time.time,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._config = config
        self._client = client
        # This refresher's (account, region) counters: a reload never changes its scope.
        self._metrics = metrics.scope(config.scope) if metrics is not None else None
        self._scope = config.scope
        self._log = log.bind(account=config.account, region_id=config.api.region_id)
        self._publish = publish
        self._wall_clock = wall_clock
        self._clock: Clock = clock or LoopClock()  # cycle durations and the schedule
        self._rng = rng or random.Random()  # noqa: S311 - schedule jitter, not cryptography
        self._snapshot = Snapshot(status=config.status, expected=(config.scope,))
        self._discovered: dict[str, WatchedImage] = {}
        self._discovery: DiscoveryStatus | None = None
        self._cycle_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._sequence = 0

    @property
    def snapshot(self) -> Snapshot:
        """The latest snapshot (the empty start-up one until the first cycle completes)."""
        return self._snapshot

    @property
    def config(self) -> Config:
        """The configuration the next cycle will use."""
        return self._config

    @property
    def client(self) -> ImageApi:
        """The client the next cycle will use."""
        return self._client

    @property
    def cycle_lock(self) -> asyncio.Lock:
        """Held for the whole of every cycle (wait on it to know a client is no longer in use)."""
        return self._cycle_lock

    def restore(self, snapshot: Snapshot) -> None:
        """Continue from ``snapshot`` (this scope's, from the state file) as if it were the last cycle's.

        Its discovered images stand in for discovery's last good set until discovery next succeeds.
        """
        if snapshot.expected != (self._scope,):
            raise ValueError("a restored snapshot must be this refresher's (account, region)")
        self._snapshot = snapshot
        status = snapshot.scopes.get(self._scope)
        if self._config.discovery.enabled and status is not None:
            static = {i.image_id for i in self._config.images}
            self._discovered = {
                k.image_id: s.watched for k, s in snapshot.images.items() if k.image_id not in static
            }
            self._discovery = status.discovery

    def reconfigure(self, config: Config, client: ImageApi | None = None) -> None:
        """Use ``config`` (and ``client``) from the next cycle on, and start that cycle without waiting."""
        if config.scope != self._config.scope:
            raise ValueError("a refresher watches one (account, region); its scope cannot change")
        self._config = config
        if client is not None:
            self._client = client
        self._wake.set()

    async def run(self) -> None:
        """Refresh forever: first at once, then every jittered interval, never overlapping; cancel to stop."""
        clock = self._clock
        while True:
            started = clock.monotonic()
            try:
                await self.refresh_once()
            except Exception:  # a bug in one cycle must not end the loop; the next cycle retries
                self._log.exception("refresh_crashed")
                if self._metrics is not None:
                    self._metrics.record_cycle("failure")
            cfg = self._config.refresh
            jitter = self._rng.uniform(-cfg.jitter_ratio, cfg.jitter_ratio)
            next_start = started + cfg.interval_seconds * (1 + jitter)
            now = clock.monotonic()
            if now >= next_start:
                if self._metrics is not None:
                    self._metrics.record_overrun()
                self._log.warning(
                    "refresh_overrun",
                    duration_seconds=round(now - started, 3),
                    interval_seconds=cfg.interval_seconds,
                )
                await asyncio.sleep(0)  # let scrapes and reloads in before the next cycle
                continue
            await clock.sleep(next_start - now, self._wake)

    async def refresh_once(self) -> Snapshot:
        """Run one full cycle now (waiting for a running one to finish first) and return its snapshot."""
        async with self._cycle_lock:
            self._wake.clear()
            config, client = self._config, self._client
            monotonic = self._clock.monotonic
            started = monotonic()
            watched = await self._watched_set(config, client)
            if self._metrics is not None:
                regions = {r for w in watched.values() for r in w.additional_region_ids}
                self._metrics.track_replication(regions)
            states = await self._fetch_all(client, list(watched.values()), config)
            self._sequence += 1
            snapshot = Snapshot.build(
                states,
                status=config.status,
                refreshed_at=self._wall_clock(),
                duration_seconds=monotonic() - started,
                sequence=self._sequence,
                discovery=self._discovery if config.discovery.enabled else None,
                previous=self._snapshot,
                scope=config.scope,
            )
            if self._publish is not None:
                await self._publish(snapshot)
            self._snapshot = snapshot
            # The same verdicts as the metrics, the page and check: counts by health class.
            counts = {h.name.lower(): n for h, n in snapshot.health_counts().items()}
            discovery = {} if snapshot.discovery is None else {"discovery_up": snapshot.discovery.up}
            self._log.info(
                "refresh_done",
                watched=len(states),
                **counts,
                **discovery,
                duration_seconds=round(snapshot.duration_seconds or 0.0, 3),
            )
            if self._metrics is not None:  # last: a cycle that raised before here counts as crashed
                self._metrics.record_cycle(cycle_result(snapshot))
            return snapshot

    async def _watched_set(self, config: Config, client: ImageApi) -> dict[str, WatchedImage]:
        watched: dict[str, WatchedImage] = {}
        if config.discovery.enabled:
            watched.update(await self._discover(config, client))
        else:
            self._discovered, self._discovery = {}, None
        for image in config.images:  # static configuration wins over what discovery says
            watched[image.image_id] = image
        account, region_id = self._scope
        sharding = config.sharding
        return {k: watched[k] for k in sorted(watched) if in_shard(account, region_id, k, sharding)}

    async def _discover(self, config: Config, client: ImageApi) -> Mapping[str, WatchedImage]:
        cfg = config.discovery
        # Paging through a big account takes many budgeted calls; the bound only keeps a hung loop out.
        limit = config.refresh.interval_seconds + config.refresh.image_timeout_seconds
        try:
            async with asyncio.timeout(limit):
                summaries = await client.list_images(
                    image_type=cfg.image_type,
                    image_category=cfg.image_category,
                    image_ids=cfg.image_ids,
                    page_size=cfg.page_size,
                    max_pages=cfg.max_pages,
                )
        except ApiError as exc:
            self._discovery_failed(exc.code, exc.message)
            self._log.warning(
                "discovery_failed",
                code=exc.code,
                http_status=exc.http_status,
                request_id=exc.request_id,
                reason=exc.message,
                kept=len(self._discovered),
            )
            return self._discovered
        except TimeoutError:
            self._discovery_failed(TIMEOUT, f"ListImages: no listing within {limit:g}s")
            self._log.warning(
                "discovery_failed", code=TIMEOUT, timeout_seconds=limit, kept=len(self._discovered)
            )
            return self._discovered
        except Exception:  # a bug must not stop the static images from being refreshed
            self._discovery_failed(EXPORTER_ERROR, "ListImages: the exporter failed (see its log)")
            self._log.exception("discovery_crashed", kept=len(self._discovered))
            return self._discovered
        self._discovered = _discovered(summaries, cfg)
        self._discovery = DiscoveryStatus(True, self._wall_clock(), len(self._discovered))
        return self._discovered

    def _discovery_failed(self, code: str, message: str) -> None:
        """Record a failed discovery: the last good set is kept, and so is when it was found."""
        last = self._discovery.last_success if self._discovery is not None else None
        self._discovery = DiscoveryStatus(False, last, len(self._discovered), code, error_reason(message))

    async def _fetch_all(
        self, client: ImageApi, watched: list[WatchedImage], config: Config
    ) -> list[ImageState]:
        """Every image's next state, fetched concurrently by as many workers as the client's concurrency cap.

        A fixed pool rather than one task per image: ten thousand tasks created at once would stall the
        event loop (and every scrape) at the start of each cycle; the client's budget caps the
        concurrency anyway. Each state is built as its answer arrives, spreading that work over the cycle.
        """
        previous = self._snapshot.images
        account, region_id = self._scope
        limit = config.refresh.image_timeout_seconds
        max_regions = config.limits.max_regions_per_image
        healthy = config.status.replication_healthy
        states: list[ImageState | None] = [None] * len(watched)
        todo = iter(enumerate(watched))

        async def worker() -> None:
            for i, image in todo:  # one shared iterator: each image is taken by exactly one worker
                result, at = await self._fetch(client, image, limit, max_regions)
                prev = previous.get(ImageKey(account, region_id, image.image_id))
                states[i] = self._next_state(image, prev, result, at, healthy)

        workers = max(1, min(len(watched), config.api.max_concurrency))
        await asyncio.gather(*(worker() for _ in range(workers)))
        return [s for s in states if s is not None]

    async def _fetch(
        self, client: ImageApi, watched: WatchedImage, limit_seconds: float, max_regions: int
    ) -> tuple[Image | ApiError, float]:
        """GetImage for one image within ``limit_seconds`` (retries included): answer or error, and when.

        The limit is enforced by the client from the image's first send, not by cancelling from outside:
        time queued behind the QPS budget is not the image's fault (a fleet larger than qps x limit
        would otherwise time out at its tail), and an attempt is never cut off unobserved, so every
        attempt the simulator answers is counted in ehpc_api_errors_total exactly once.
        """
        result: Image | ApiError
        try:
            result = await client.get_image(
                watched.image_id,
                image_type=watched.image_type,
                image_category=watched.image_category,
                additional_region_ids=watched.additional_region_ids,
                max_elapsed_seconds=limit_seconds,
                max_regions=max_regions,
            )
        except ApiError as exc:
            result = exc
        except Exception as exc:  # a bug must cost one image, not the cycle
            self._log.exception("image_refresh_crashed", image_id=watched.image_id)
            result = ApiError(code=EXPORTER_ERROR, message=type(exc).__name__, action="GetImage")
        return result, self._wall_clock()

    def _next_state(
        self,
        watched: WatchedImage,
        prev: ImageState | None,
        result: Image | ApiError,
        at: float,
        healthy: tuple[str, ...],
    ) -> ImageState:
        scope = self._scope
        if isinstance(result, Image):
            facts = ImageFacts.from_image(result)
            if result.ignored:
                if self._metrics is not None:
                    self._metrics.record_ignored("GetImage", result.ignored)
                if prev is None or prev.image is None or prev.image.ignored != facts.ignored:
                    # Once per change, not once per cycle: the counter tells how often.
                    self._log.info(
                        "image_values_ignored", image_id=watched.image_id, fields=list(result.ignored)
                    )
            # An unchanged answer keeps the previous object: one copy stays alive, and the by-value
            # comparisons downstream (verdict reuse, render cache) end at once on identity. Nothing
            # depends on it: equal facts in a new object hit the same caches.
            image = prev.image if prev is not None and prev.image == facts else facts
            history, replicated = observe(
                prev.history if prev is not None else None,
                facts.status,
                {r.region_id: r.status for r in facts.additional_regions},
                watched.additional_region_ids,
                healthy,
                at,
            )
            if self._metrics is not None:
                for region, seconds in replicated:
                    self._metrics.record_replication(region, seconds)
            return ImageState(watched, image, at, None, scope, history)
        streak = prev is not None and prev.error is not None and prev.error.code == result.code
        # Logged when a failure streak starts or changes code; every failure is counted in the metrics.
        (self._log.debug if streak else self._log.warning)(
            "image_refresh_failed",
            image_id=watched.image_id,
            code=result.code,
            http_status=result.http_status,
            request_id=result.request_id,
            reason=result.message,
        )
        since = prev.error.since if streak and prev is not None and prev.error is not None else at
        return ImageState(
            watched,
            prev.image if prev is not None else None,
            prev.last_success if prev is not None else None,
            ImageError(
                result.code, result.http_status, result.request_id, since, error_reason(result.message)
            ),
            scope,
            prev.history if prev is not None else None,  # failures are not observations
        )
