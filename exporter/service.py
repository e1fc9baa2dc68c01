"""ExporterService: the API client, the refresh loop and the web server, wired for run, demo and check.

The aiohttp application owns the long-lived resources through one ``cleanup_ctx`` each: the API client
(its session is closed on the way out), the refresher task (cancelled, then awaited) and the rarer
full garbage collections used while serving (restored). A new snapshot is rendered on the event loop
in ~2 ms slices (gzip in a worker thread, where zlib drops the GIL), then swapped in with one
assignment, so a scrape always reads one consistent snapshot.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator, Callable

import structlog
from aiohttp import web

from exporter.buildinfo import BuildInfo
from exporter.clock import Clock
from exporter.config import STOP_TIMEOUT_SECONDS, Config, parse_listen_address
from exporter.credentials import build_credential_source
from exporter.exposition import RenderedSnapshot, SelfMetrics, SnapshotRenderer
from exporter.http.app import OPEN_PATHS, create_app
from exporter.openapi.client import ApiObserver, EhpcClient
from exporter.refresher import Refresher
from exporter.snapshot import Snapshot

__all__ = ["ClientFactory", "ExporterService"]

log = structlog.get_logger("ehpc.service")

ClientFactory = Callable[[Config, ApiObserver], EhpcClient]
# aiohttp waits this long for in-flight requests on stop, leaving room in the 5 s stop budget.
SHUTDOWN_TIMEOUT_SECONDS = 2.0  # in-flight scrapes may finish this long after a stop begins

FULL_GC_THRESHOLD = 100  # gc threshold2 while serving; see _gc_ctx


def default_client(config: Config, observer: ApiObserver) -> EhpcClient:
    """The real client for ``config`` with ``observer`` counting every attempt."""
    return EhpcClient(config.api, build_credential_source(config.credentials), observer=observer)


class ExporterService:
    """The running exporter: ``start()``/``stop()`` for the server, ``refresh_once()`` for ``check``."""

    def __init__(
        self,
        config: Config,
        *,
        build_info: BuildInfo | None = None,
        process_metrics: bool = True,
        client_factory: ClientFactory = default_client,
        wall_clock: Callable[[], float] = time.time,
        clock: Clock | None = None,
    ) -> None:
        self._config = config
        self._steady = clock
        self._client_factory = client_factory
        self._clock = wall_clock
        self.metrics = SelfMetrics(
            build_info, process_metrics=process_metrics, max_error_codes=config.limits.max_error_codes
        )
        self.metrics.record_reload(True, wall_clock())  # the config this service starts with did load
        self._renderer = SnapshotRenderer()
        self._rendered = self._renderer.render(Snapshot(status=config.status))
        self._client: EhpcClient | None = None
        self._refresher: Refresher | None = None
        self._retired: set[EhpcClient] = set()  # replaced by a reload, closed once no cycle uses them
        self._closers: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self._url: str | None = None

    # -- what the web app reads (exporter.http.source.MetricsSource) -------------------------------------

    @property
    def config(self) -> Config:
        """The configuration in force (the latest successful reload)."""
        return self._config

    @property
    def rendered(self) -> RenderedSnapshot:
        """The current snapshot with its rendered exposition."""
        return self._rendered

    @property
    def snapshot(self) -> Snapshot:
        """The current snapshot (empty until the first refresh completes)."""
        return self._rendered.snapshot

    @property
    def ready(self) -> bool:
        """The first refresh has completed and its snapshot is being served."""
        return self._rendered.snapshot.completed

    @property
    def version(self) -> str:
        """The exporter version shown on the landing page."""
        return self.metrics.build_info.version

    @property
    def url(self) -> str:
        """The base URL the server is bound to (``http(s)://host:port``); only after :meth:`start`."""
        if self._url is None:
            raise RuntimeError("the service is not started")
        return self._url

    def render_self(self, openmetrics: bool) -> bytes:
        """The per-scrape self-metrics part."""
        return self.metrics.render(openmetrics)

    # -- lifecycle ---------------------------------------------------------------------------------------

    def _ensure_refresher(self) -> Refresher:
        if self._refresher is None:
            self._client = self._client_factory(self._config, self.metrics)
            self._refresher = Refresher(
                self._config,
                self._client,
                metrics=self.metrics,
                publish=self._publish,
                wall_clock=self._clock,
                clock=self._steady,
            )
        return self._refresher

    async def start(self) -> None:
        """Bind the web server and start refreshing (the first refresh starts at once)."""
        if self._runner is not None:
            raise RuntimeError("the service is already started")
        cfg = self._config.web
        middlewares = []
        ssl_context = None
        if cfg.config_file:
            from exporter.http.toolkit import load_web_security  # only needed with a web config file

            security = load_web_security(cfg.config_file)
            ssl_context = security.ssl_context()
            middlewares.append(security.middleware(OPEN_PATHS))
        host, port = parse_listen_address(cfg.listen_address)  # "" (":9765") binds every interface
        app = create_app(self, telemetry_path=cfg.telemetry_path, middlewares=middlewares)
        app.cleanup_ctx.append(_gc_ctx)
        app.cleanup_ctx.append(self._client_ctx)
        app.cleanup_ctx.append(self._refresher_ctx)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_SECONDS)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host or None, port, ssl_context=ssl_context)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._url = _base_url(runner.addresses, https=ssl_context is not None)
        # Every address really bound (":9765" is 0.0.0.0 and [::]), then one URL a person can open.
        log.info(
            "web_listening",
            addresses=_bound_addresses(runner.addresses),
            url=self._url,
            telemetry_path=cfg.telemetry_path,
            tls=ssl_context is not None,
        )

    async def _client_ctx(self, _app: web.Application) -> AsyncIterator[None]:
        """The API client lives as long as the app; its session is closed on the way out."""
        self._ensure_refresher()
        try:
            yield
        finally:
            for task in list(self._closers):
                task.cancel()
            await asyncio.gather(*self._closers, return_exceptions=True)
            clients = [c for c in (self._client, *self._retired) if c is not None]
            self._retired.clear()
            await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)

    async def _refresher_ctx(self, _app: web.Application) -> AsyncIterator[None]:
        """The refresh loop runs as long as the app; cancelled, then awaited, on the way out."""
        task = asyncio.create_task(self._ensure_refresher().run(), name="ehpc-refresher")
        try:
            yield
        finally:
            task.cancel()
            await asyncio.wait([task])

    async def stop(self) -> bool:
        """Stop accepting, stop the refresh loop and close the API session within STOP_TIMEOUT_SECONDS;
        whether it finished in time."""
        runner, self._runner = self._runner, None
        if runner is None:
            return True
        try:
            async with asyncio.timeout(STOP_TIMEOUT_SECONDS):
                await runner.cleanup()
        except TimeoutError:
            log.warning("stop_timeout", timeout_seconds=STOP_TIMEOUT_SECONDS)
            return False
        finally:
            self._url = None
        log.info("stopped")
        return True

    async def refresh_once(self) -> Snapshot:
        """One refresh now and its snapshot; without :meth:`start` the API session is closed afterwards."""
        refresher = self._ensure_refresher()
        try:
            return await refresher.refresh_once()
        finally:
            if self._runner is None and self._client is not None:
                await self._client.close()  # the client reopens its session if used again

    async def _publish(self, snapshot: Snapshot) -> None:
        previous = self._rendered
        # On the loop in short slices: a worker thread would hold the GIL against scrapes for longer.
        rendered = await self._renderer.render_async(snapshot)
        # Compress, before the swap, each format scrapers asked gzip for last time, so no scrape waits.
        for openmetrics in (False, True):
            if previous.has_deflated(openmetrics):
                await asyncio.to_thread(rendered.deflated, openmetrics)  # zlib releases the GIL
        self._rendered = rendered

    # -- configuration -----------------------------------------------------------------------------------

    async def reload(self, config: Config) -> None:
        """Use ``config`` from the next refresh on (which starts at once); rebuild the client if needed.

        The one place a reload that got this far is recorded (``ehpc_config_last_reload_*``) and logged
        as done: if applying it raises, the outcome is recorded as failed and the error re-raised for
        the caller to report.
        """
        try:
            rebuild = self._apply(config)
        except Exception:
            self.record_reload(False)
            raise
        self.record_reload(True)
        log.info(
            "config_reloaded",
            client_rebuilt=rebuild,
            static_images=len(config.images),
            discovery=config.discovery.enabled,
            interval_seconds=config.refresh.interval_seconds,
        )

    def _apply(self, config: Config) -> bool:
        """Swap ``config`` in; whether the API client was rebuilt for it."""
        old = self._config
        rebuild = (config.api, config.credentials) != (old.api, old.credentials)
        refresher = self._refresher
        # Built before anything changes, so a factory that raises leaves the running config whole.
        client = self._client_factory(config, self.metrics) if refresher is not None and rebuild else None
        self._config = config
        self.metrics.max_error_codes = config.limits.max_error_codes
        if config.web != old.web and self._runner is not None:
            log.warning("web_config_change_needs_restart")
        if refresher is not None:
            if client is not None:
                retired, self._client = self._client, client
                if retired is not None:
                    self._retire(retired, refresher)
            refresher.reconfigure(config, client)
        return rebuild

    def _retire(self, client: EhpcClient, refresher: Refresher) -> None:
        """Close ``client`` once the cycle that may be using it has finished."""
        self._retired.add(client)

        async def close_when_idle() -> None:
            async with refresher.cycle_lock:
                pass
            self._retired.discard(client)
            await client.close()

        task = asyncio.create_task(close_when_idle(), name="ehpc-close-retired-client")
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    def record_reload(self, ok: bool) -> None:
        """Record a configuration reload outcome in ``ehpc_config_last_reload_*``."""
        self.metrics.record_reload(ok, self._clock())


async def _gc_ctx(_app: web.Application) -> AsyncIterator[None]:
    """Full garbage collections ten times rarer while serving (restored on the way out).

    A full collection traverses every tracked object: with 10,000 images (two snapshots alive during
    a refresh) that is a 100-200 ms stop of the event loop, which CPython's default (700, 10, 10)
    triggers about twice per refresh, right into the latency of every scrape in flight. Young
    collections, which catch nearly all short-lived cycles, keep their default cadence.
    """
    before = gc.get_threshold()
    gc.set_threshold(before[0], before[1], max(before[2], FULL_GC_THRESHOLD))
    try:
        yield
    finally:
        gc.set_threshold(*before)


def _bound_addresses(addresses: list[object]) -> list[str]:
    """``host:port`` of every bound TCP socket, IPv6 hosts in brackets."""
    out = []
    for a in addresses:
        if isinstance(a, tuple):
            host, port = str(a[0]), a[1]
            out.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    return out


def _base_url(addresses: list[object], *, https: bool) -> str:
    """A URL that reaches the bound server: wildcard addresses become loopback, IPv4 preferred."""
    socknames = [a for a in addresses if isinstance(a, tuple)]
    if not socknames:
        raise RuntimeError("the server is not bound to a TCP address")
    ipv4 = [a for a in socknames if ":" not in str(a[0])]
    host, port = (ipv4 or socknames)[0][:2]
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(str(host), str(host))  # noqa: S104 - mapping, not binding
    shown = f"[{host}]" if ":" in host else host
    return f"{'https' if https else 'http'}://{shown}:{port}"
