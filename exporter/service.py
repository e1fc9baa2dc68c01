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
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web

from exporter.buildinfo import BuildInfo
from exporter.clock import Clock
from exporter.config import STOP_TIMEOUT_SECONDS, Config, Scope, parse_listen_address
from exporter.credentials import CachedCredentialSource, CredentialSource, build_credential_source
from exporter.exposition import RenderedSnapshot, SelfMetrics, SnapshotRenderer
from exporter.exposition.families import build_table, family_filter
from exporter.exposition.selfmetrics import StateMetrics
from exporter.http.app import OPEN_PATHS, LifecycleReload, create_app
from exporter.openapi.budget import Budget
from exporter.openapi.client import ApiObserver, EhpcClient
from exporter.refresher import Refresher
from exporter.snapshot import Snapshot
from exporter.state import StateStore

__all__ = ["Account", "ClientFactory", "ExporterService", "default_client", "new_account"]

log = structlog.get_logger("ehpc.service")

# aiohttp waits this long for in-flight requests on stop, leaving room in the 5 s stop budget.
SHUTDOWN_TIMEOUT_SECONDS = 2.0  # in-flight scrapes may finish this long after a stop begins

FULL_GC_THRESHOLD = 100  # gc threshold2 while serving; see _gc_ctx


@dataclass(frozen=True, slots=True)
class Account:
    """What the regions of one account share: its credential source (one cache, one refresh) and the
    account-wide budget, if configured."""

    credentials: CredentialSource
    budget: Budget | None = None


# Builds the client of one scope (account, region): its per-scope config, observer and account's resources.
ClientFactory = Callable[[Config, ApiObserver, Account], EhpcClient]


def default_client(config: Config, observer: ApiObserver, account: Account) -> EhpcClient:
    """The real client for one (account, region) with ``observer`` counting every attempt."""
    return EhpcClient(config.api, account.credentials, observer=observer, account_budget=account.budget)


def new_account(config: Config, budget: Budget | None = None) -> Account:
    """The shared resources of ``config``'s account: a new credential source, and ``budget`` or a new one."""
    if budget is None:
        cap = config.account_max_concurrency
        # A QPS cap alone still needs a concurrency bound: one no account reaches (the regions' own bind).
        budget = Budget(config.account_qps, cap or 1_000_000) if config.account_qps or cap else None
    source = build_credential_source(config.credentials, config.assume_role, ca_file=config.api.ca_file)
    return Account(source, budget)


@dataclass(slots=True)
class _Unit:
    """One (account, region) being watched: its config, client and refresher (and loop task)."""

    config: Config
    client: EhpcClient
    refresher: Refresher
    task: asyncio.Task[None] | None = None


class ExporterService:
    """The running exporter: ``start()``/``stop()`` for the server, ``refresh_once()`` for ``check``.

    Every (account, region) of the config has its own client (budget, session) and refresh loop, so a
    slow or failing one delays no other; each loop's snapshot joins the published one as it completes.
    """

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
        self._clock = clock
        self._client_factory = client_factory
        self._wall_clock = wall_clock
        self.metrics = SelfMetrics(
            build_info, process_metrics=process_metrics, max_error_codes=config.limits.max_error_codes
        )
        self.metrics.record_reload(True, wall_clock())  # the config this service starts with did load
        self.metrics.set_sharding(config.sharding.shard, config.sharding.shards)
        self._lifecycle: LifecycleReload | None = None
        self._sequence = 0
        self._renderer = self._new_renderer(config)
        self._rendered = self._renderer.render(_merged(config, {}, 0))
        self._count_series(self._rendered)
        self._units: dict[Scope, _Unit] = {}
        self._accounts: dict[tuple[object, ...], Account] = {}
        self._parts: dict[Scope, Snapshot] = {}
        self._publish_lock = asyncio.Lock()
        self._running = False  # the refresh loops run (between the app's startup and cleanup)
        self._retired: set[EhpcClient] = set()  # replaced by a reload, closed once no cycle uses them
        self._closers: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self._url: str | None = None
        self._store: StateStore | None = None  # while serving with a state file

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
        """Every (account, region) has data being served: from a completed cycle, successful or failed, or
        from the state file. A cycle always completes: every API call and every credential fetch has a
        deadline, so a scope whose STS hangs is ready with its images at ``ehpc_image_up 0``."""
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

    def _account(self, config: Config, accounts: dict[tuple[object, ...], Account] | None = None) -> Account:
        """The shared resources of ``config``'s account, made once per distinct account settings (in
        ``accounts``, by default the service's own)."""
        accounts = self._accounts if accounts is None else accounts
        key = config.account_settings
        found = accounts.get(key)
        if found is None:
            found = accounts[key] = self._observed(config, new_account(config))
        return found

    def _observed(self, config: Config, account: Account) -> Account:
        """``account`` with its credential refreshes counted under its name (a source that fetches)."""
        if isinstance(account.credentials, CachedCredentialSource):
            account.credentials.observer = self.metrics.credentials(config.account)
        return account

    def _retain_credentials(self) -> None:
        """Keep the credential counters of the accounts whose source fetches; forget the others'."""
        keep = []
        for c in self._config.scopes():
            account = self._accounts.get(c.account_settings)
            if account is not None and isinstance(account.credentials, CachedCredentialSource):
                keep.append(c.account)
        self.metrics.retain_credentials(keep)

    def _new_unit(self, config: Config, accounts: dict[tuple[object, ...], Account] | None = None) -> _Unit:
        observer = self.metrics.scope(config.scope)
        client = self._client_factory(config, observer, self._account(config, accounts))
        observer.rate_limit = client.budget.effective_qps
        refresher = Refresher(
            config,
            client,
            metrics=self.metrics,
            publish=self._publisher(config.scope),
            wall_clock=self._wall_clock,
            clock=self._clock,
        )
        return _Unit(config, client, refresher)

    def _ensure_units(self) -> dict[Scope, _Unit]:
        if not self._units:
            self._units = {c.scope: self._new_unit(c) for c in self._config.scopes()}
        return self._units

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
        await self._warm_start()  # before listening: the first scrape already sees what was known
        app = create_app(
            self, telemetry_path=cfg.telemetry_path, middlewares=middlewares, reload=self._lifecycle
        )
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

    async def _warm_start(self) -> None:
        """Open the state file and serve its snapshots until each (account, region)'s first cycle."""
        state = self._config.state
        if state is None or self._store is not None:
            return
        self.metrics.state = StateMetrics()
        self._store = StateStore(state.path, self.metrics.state, wall_clock=self._wall_clock)
        loaded = await self._store.load(self._config)
        units = self._ensure_units()
        for scope, snapshot in loaded.items():
            units[scope].refresher.restore(snapshot)
            self._parts[scope] = snapshot
        if loaded:
            await self._publish()

    def enable_lifecycle(self, reload: LifecycleReload) -> None:
        """Answer ``POST /-/reload`` with ``reload`` (None: applied, else why not); call before start."""
        self._lifecycle = reload

    async def _client_ctx(self, _app: web.Application) -> AsyncIterator[None]:
        """The API clients live as long as the app; their sessions are closed on the way out."""
        self._ensure_units()
        try:
            yield
        finally:
            for task in list(self._closers):
                task.cancel()
            await asyncio.gather(*self._closers, return_exceptions=True)
            clients = [u.client for u in self._units.values()] + list(self._retired)
            self._retired.clear()
            await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)

    async def _refresher_ctx(self, _app: web.Application) -> AsyncIterator[None]:
        """A refresh loop per (account, region) runs as long as the app; cancelled, then awaited."""
        self._running = True
        for unit in self._ensure_units().values():
            self._start_loop(unit)
        try:
            yield
        finally:
            self._running = False
            tasks = [u.task for u in self._units.values() if u.task is not None]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks)
            store, self._store = self._store, None
            if store is not None:
                await store.close()  # after any save in flight (one worker thread, in order)

    def _start_loop(self, unit: _Unit) -> None:
        account, region = unit.config.scope
        unit.task = asyncio.create_task(unit.refresher.run(), name=f"ehpc-refresher-{account}-{region}")

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
        """One refresh of every (account, region) now, in parallel, and the snapshot they make; without
        :meth:`start` the API sessions are closed afterwards."""
        units = list(self._ensure_units().values())
        try:
            await asyncio.gather(*(u.refresher.refresh_once() for u in units))
            return self.snapshot
        finally:
            if self._runner is None:
                await asyncio.gather(*(u.client.close() for u in units))  # reopened if used again

    def _publisher(self, scope: Scope) -> Callable[[Snapshot], Awaitable[None]]:
        async def publish(snapshot: Snapshot) -> None:
            self._parts[scope] = snapshot
            await self._publish()
            if self._store is not None:
                await self._store.save(snapshot)  # the next cycle waits for it: saves never pile up

        return publish

    async def _publish(self) -> None:
        """Render and swap in the merged snapshot (one at a time: each render reuses the last one's bytes)."""
        async with self._publish_lock:
            self._sequence += 1
            snapshot = _merged(self._config, self._parts, self._sequence)
            previous = self._rendered
            # On the loop in short slices: a worker thread would hold the GIL against scrapes for longer.
            rendered = await self._renderer.render_async(snapshot)
            # Compress, before the swap, each format scrapers asked gzip for last time, so no scrape waits.
            for openmetrics in (False, True):
                if previous.has_deflated(openmetrics):
                    await asyncio.to_thread(rendered.deflated, openmetrics)  # zlib releases the GIL
            self._rendered = rendered
            self._count_series(rendered, previous.dropped_images)

    def _new_renderer(self, config: Config) -> SnapshotRenderer:
        """A renderer of ``config``'s table (metrics: and own labels), with the self part filtered and
        labelled the same way."""
        labels = config.own_labels()
        self.metrics.allow = family_filter(config.metrics)
        self.metrics.labels = labels
        return SnapshotRenderer(build_table(config.metrics, labels=labels))

    def _count_series(self, rendered: RenderedSnapshot, dropped_before: int = 0) -> None:
        """Publish the exposition's size, and log when the series cap starts, changes or stops dropping."""
        self.metrics.exposition_series = rendered.series
        self.metrics.exposition_dropped_images = dropped = rendered.dropped_images
        if dropped and dropped != dropped_before:
            log.warning(
                "series_cap_reached",
                max_series=self._config.metrics.max_series,
                series=rendered.series,
                images=len(rendered.snapshot.images),
                dropped_images=dropped,
            )
        elif dropped_before and not dropped:
            log.info("series_cap_released", series=rendered.series, images=len(rendered.snapshot.images))

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
        scopes = config.scopes()
        log.info(
            "config_reloaded",
            client_rebuilt=rebuild,
            targets=len(scopes),
            static_images=sum(len(c.images) for c in scopes),
            discovery=any(c.discovery.enabled for c in scopes),
            interval_seconds=config.refresh.interval_seconds,
        )

    def _apply(self, config: Config) -> bool:
        """Swap ``config`` in; whether any API client was rebuilt for it.

        Per (account, region): a new one gets a client and a loop; a removed one's loop is cancelled,
        its series leave with the next publish; a changed one is reconfigured, with a new client when
        its endpoint, budget or credentials changed. Every account gets a new credential source (its
        budget stays): a reload is how an operator replaces a provider that is stuck or holds a refused
        key, whatever the file says. Everything that can raise (a client factory) runs before anything
        changes, so a failed reload leaves the running config whole.
        """
        old = self._config
        new_scopes = {c.scope: c for c in config.scopes()}
        units = self._units
        started = bool(units)
        rebuilt: dict[Scope, EhpcClient] = {}
        added: dict[Scope, _Unit] = {}
        accounts: dict[tuple[object, ...], Account] = {}
        if started:
            for cfg in new_scopes.values():
                key = cfg.account_settings
                if key not in accounts:
                    before = self._accounts.get(key)
                    budget = before.budget if before is not None else None
                    accounts[key] = self._observed(cfg, new_account(cfg, budget))
            for scope, cfg in new_scopes.items():
                unit = units.get(scope)
                if unit is None:
                    added[scope] = self._new_unit(cfg, accounts)
                elif (cfg.api, cfg.account_settings) != (unit.config.api, unit.config.account_settings):
                    observer = self.metrics.scope(scope)
                    rebuilt[scope] = self._client_factory(cfg, observer, accounts[cfg.account_settings])
            self._accounts = accounts
        else:
            used = {c.account_settings for c in new_scopes.values()}
            self._accounts = {k: v for k, v in self._accounts.items() if k in used}
        self._config = config
        self.metrics.max_error_codes = config.limits.max_error_codes
        self.metrics.set_sharding(config.sharding.shard, config.sharding.shards)
        # Own labels are part of the table as well: a change needs a new renderer, and its cache with it.
        metrics_changed = config.metrics != old.metrics or config.own_labels() != old.own_labels()
        if metrics_changed:
            # A cold renderer for the new table; the next publish (now, below) renders with it.
            self._renderer = self._new_renderer(config)
        self.metrics.retain(new_scopes)
        self._retain_credentials()
        if config.web != old.web and self._runner is not None:
            log.warning("web_config_change_needs_restart")
        if config.state != old.state and self._runner is not None:
            log.warning("state_config_change_needs_restart")
        if self._store is not None:
            self._spawn(self._store.retain(new_scopes), "ehpc-state-retain")
        if not started:
            return False
        if metrics_changed and self._running:
            self._spawn(self._publish())  # /metrics follows the new metrics: section now, not next cycle
        for scope in [s for s in units if s not in new_scopes]:
            unit = units.pop(scope)
            self._parts.pop(scope, None)
            if unit.task is not None:
                unit.task.cancel()
            self._retire(unit.client, unit.refresher)
        for scope, unit in added.items():
            units[scope] = unit
            if self._running:
                self._start_loop(unit)
        for scope, cfg in new_scopes.items():
            if scope in added:
                continue
            unit = units[scope]
            client = rebuilt.get(scope)
            if client is not None:
                self._retire(unit.client, unit.refresher)
                unit.client = client
                # A rebuilt client (new endpoint or budget) starts at its configured qps again.
                self.metrics.scope(scope).rate_limit = client.budget.effective_qps
            else:
                unit.client.credentials = accounts[cfg.account_settings].credentials
            unit.config = cfg
            unit.refresher.reconfigure(cfg, client)
        if self._running and [c.scope for c in old.scopes()] != list(new_scopes):
            self._spawn(self._publish())  # removed scopes leave the page and /metrics now
        return bool(rebuilt or added)

    def _retire(self, client: EhpcClient, refresher: Refresher) -> None:
        """Close ``client`` once the cycle that may be using it has finished."""
        self._retired.add(client)

        async def close_when_idle() -> None:
            async with refresher.cycle_lock:
                pass
            self._retired.discard(client)
            await client.close()

        self._spawn(close_when_idle(), "ehpc-close-retired-client")

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str = "ehpc-publish") -> None:
        task = asyncio.create_task(coro, name=name)
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    def record_reload(self, ok: bool) -> None:
        """Record a configuration reload outcome in ``ehpc_config_last_reload_*``."""
        self.metrics.record_reload(ok, self._wall_clock())


def _merged(config: Config, parts: Mapping[Scope, Snapshot], sequence: int) -> Snapshot:
    """The snapshot to publish: the latest of every (account, region) still configured."""
    scopes = [c.scope for c in config.scopes()]
    return Snapshot.merge(
        (parts[s] for s in scopes if s in parts), status=config.status, expected=scopes, sequence=sequence
    )


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
