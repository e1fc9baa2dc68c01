"""ExporterService end to end: lifecycle, reload, client rebuild, check mode, concurrent scrapes."""

from __future__ import annotations

import asyncio
import gc
import socket
import time
from dataclasses import replace

import aiohttp
import pytest
from structlog.testing import capture_logs

from ehpc_simulator import Faults, generate_fleet
from exporter.config import (
    ApiConfig,
    Config,
    CredentialsConfig,
    DiscoveryConfig,
    ShardingConfig,
    TargetConfig,
    WatchedImage,
    WebConfig,
)
from exporter.openapi.client import ApiObserver, EhpcClient
from exporter.service import Account, ExporterService
from exporter.sharding import in_shard
from tests.exporter_support import samples, series_of, sim_config, value
from tests.fixtures.http import wait_until_async
from tests.fixtures.sim import SIM_CONTAINER_ID, SIM_VM_FAILED_ID, SIM_VM_ID, RunningSimulator

WATCHED = (SIM_VM_ID, SIM_VM_FAILED_ID, WatchedImage(SIM_CONTAINER_ID, image_type="Container"))


class TrackedClient(EhpcClient):
    """The real client, remembering whether it was closed."""

    def __init__(self, api: ApiConfig, config: Config, observer: ApiObserver, account: Account) -> None:
        super().__init__(api, account.credentials, observer=observer, account_budget=account.budget)
        self.closed = False

    async def close(self) -> None:
        """Close the session and remember it."""
        self.closed = True
        await super().close()


class Factory:
    """A client factory that keeps every client it built."""

    def __init__(self) -> None:
        self.clients: list[TrackedClient] = []

    def __call__(self, config: Config, observer: ApiObserver, account: Account) -> EhpcClient:
        client = TrackedClient(config.api, config, observer, account)
        self.clients.append(client)
        return client


async def scrape(
    http: aiohttp.ClientSession, svc: ExporterService
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    async with http.get(svc.url + "/metrics") as resp:
        assert resp.status == 200
        return samples(await resp.text())


async def test_start_and_stop_within_budget(simulator: RunningSimulator, http: aiohttp.ClientSession) -> None:
    """stop() during a refresh stuck on the API stops accepting, cancels the loop and closes the client,
    within its deadline (stop() says whether it made it; the deadline rule itself:
    test_cli.py::test_a_stop_past_the_deadline_exits_1_at_the_deadline). The simulator holds the
    cycle's request until the test ends, so a stop that waited for the cycle would never return."""
    factory = Factory()
    svc = ExporterService(sim_config(simulator, WATCHED), process_metrics=False, client_factory=factory)
    await svc.start()
    url = svc.url
    await wait_until_async(lambda: svc.ready)
    simulator.sim.reset_counters()
    simulator.sim.faults = Faults(timeout_rate=1.0, timeout_seconds=3600)
    in_flight = asyncio.create_task(svc.refresh_once())  # a cycle in flight
    # The simulator counts a held request when it arrives: then the cycle is waiting on the API.
    await wait_until_async(lambda: simulator.sim.counters().get(("GetImage", "Timeout"), 0) > 0, within=60)
    assert await svc.stop()
    assert not in_flight.done()  # the stop did not wait for the cycle
    assert all(c.closed for c in factory.clients)
    with pytest.raises(RuntimeError):
        _ = svc.url
    with pytest.raises(aiohttp.ClientConnectionError):
        await http.get(url + "/healthz")
    in_flight.cancel()
    await asyncio.wait([in_flight])


async def test_full_gc_is_rarer_only_while_serving(simulator: RunningSimulator) -> None:
    """start() raises the full-collection threshold (long pauses hurt scrapes); stop() restores it."""
    before = gc.get_threshold()
    svc = ExporterService(sim_config(simulator, [SIM_VM_ID]), process_metrics=False)
    await svc.start()
    try:
        assert gc.get_threshold()[:2] == before[:2]
        assert gc.get_threshold()[2] >= 100
    finally:
        await svc.stop()
    assert gc.get_threshold() == before


async def test_reload_drops_images_and_records_success(
    simulator: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    """After a reload, an image that left the config is gone from /metrics at the next (immediate) refresh."""
    cfg = sim_config(simulator, WATCHED)
    svc = ExporterService(cfg, process_metrics=False)
    await svc.start()
    try:
        await wait_until_async(lambda: svc.ready)
        assert series_of(await scrape(http, svc), SIM_VM_FAILED_ID)
        first_sequence = svc.snapshot.sequence
        await svc.reload(replace(cfg, images=tuple(i for i in cfg.images if i.image_id != SIM_VM_FAILED_ID)))
        await wait_until_async(lambda: svc.snapshot.sequence > first_sequence, within=3)
        found = await scrape(http, svc)
        assert not series_of(found, SIM_VM_FAILED_ID)
        assert series_of(found, SIM_VM_ID)
        assert value(found, "ehpc_config_last_reload_successful") == 1
        stamp = value(found, "ehpc_config_last_reload_success_timestamp_seconds")
        assert stamp is not None
        assert abs(stamp - time.time()) < 60
        svc.record_reload(False)
        found = await scrape(http, svc)
        assert value(found, "ehpc_config_last_reload_successful") == 0
        assert value(found, "ehpc_config_last_reload_success_timestamp_seconds") == stamp
    finally:
        await svc.stop()


async def test_discovered_image_deleted_upstream_disappears(
    simulator: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    """An image discovery no longer finds is gone from /metrics after the next refresh."""
    cfg = sim_config(simulator, (), interval=0.2, discovery=DiscoveryConfig(enabled=True))
    svc = ExporterService(cfg, process_metrics=False)
    await svc.start()
    try:
        await wait_until_async(lambda: svc.ready)
        assert series_of(await scrape(http, svc), SIM_VM_FAILED_ID)
        del simulator.sim.images[SIM_VM_FAILED_ID]
        simulator.sim.reindex()
        sequence = svc.snapshot.sequence
        await wait_until_async(lambda: svc.snapshot.sequence > sequence + 1, within=3)
        found = await scrape(http, svc)
        assert not series_of(found, SIM_VM_FAILED_ID)
        assert value(found, "ehpc_image_up", image_id=SIM_VM_ID) == 1
    finally:
        await svc.stop()


async def test_reload_rebuilds_the_client_when_api_or_credentials_change(simulator: RunningSimulator) -> None:
    """New credentials mean a new client (the old one is closed once idle); other changes keep the client."""
    factory = Factory()
    cfg = sim_config(simulator, [SIM_VM_ID])
    svc = ExporterService(cfg, process_metrics=False, client_factory=factory)
    await svc.start()
    try:
        await wait_until_async(lambda: svc.ready)
        await svc.reload(
            replace(cfg, images=(WatchedImage(SIM_VM_ID), WatchedImage(SIM_VM_FAILED_ID)))
        )  # watched set only
        await wait_until_async(lambda: len(svc.snapshot.images) == 2)
        assert len(factory.clients) == 1
        wrong = CredentialsConfig(
            type="access_key", access_key_id="unknown-key", access_key_secret="whatever-secret-0123"
        )
        sequence = svc.snapshot.sequence
        await svc.reload(replace(cfg, credentials=wrong))
        await wait_until_async(lambda: svc.snapshot.sequence > sequence)
        assert len(factory.clients) == 2
        await wait_until_async(lambda: factory.clients[0].closed)
        assert not factory.clients[1].closed
        state = svc.snapshot.find(SIM_VM_ID)
        assert state.error is not None
        assert state.error.code == "InvalidAccessKeyId.NotFound"
        assert state.image is not None  # the last good data survives
    finally:
        await svc.stop()
    assert factory.clients[1].closed


def reload_outcomes(svc: ExporterService, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Each outcome ``record_reload`` is given from now on (a spy around the real method)."""
    outcomes: list[bool] = []
    real = svc.metrics.record_reload

    def record(ok: bool, at: float) -> None:
        outcomes.append(ok)
        real(ok, at)

    monkeypatch.setattr(svc.metrics, "record_reload", record)
    return outcomes


async def test_reload_records_its_outcome_once_and_a_failed_one_keeps_the_config(
    simulator: RunningSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why: success was recorded twice (service and CLI); a client factory that raises must show 0.

    The failed reload keeps the running config and client, and the error reaches the caller to log.
    """
    factory = Factory()
    cfg = sim_config(simulator, [SIM_VM_ID])
    svc = ExporterService(cfg, process_metrics=False, client_factory=factory)
    await svc.start()
    try:
        await wait_until_async(lambda: svc.ready)
        outcomes = reload_outcomes(svc, monkeypatch)
        await svc.reload(replace(cfg, images=(WatchedImage(SIM_VM_ID), WatchedImage(SIM_VM_FAILED_ID))))
        assert outcomes == [True]

        def broken(config: Config, observer: ApiObserver, account: Account) -> EhpcClient:
            raise RuntimeError("cannot build a client")

        svc._client_factory = broken
        wrong = CredentialsConfig(
            type="access_key", access_key_id="other", access_key_secret="other-secret-012345"
        )
        before = svc.config
        with pytest.raises(RuntimeError):
            await svc.reload(replace(cfg, credentials=wrong))
        assert outcomes == [True, False]
        assert svc.config is before  # the running config stays whole
        assert value(samples(svc.render_self(False)), "ehpc_config_last_reload_successful") == 0
        assert len(factory.clients) == 1
        assert not factory.clients[0].closed
    finally:
        await svc.stop()


async def test_refresh_once_without_a_server(simulator: RunningSimulator) -> None:
    """The check command's path: one refresh, no listener, the session closed afterwards."""
    factory = Factory()
    svc = ExporterService(sim_config(simulator, WATCHED), process_metrics=False, client_factory=factory)
    snapshot = await svc.refresh_once()
    assert sum(s.up for s in snapshot.images.values()) == 3
    assert svc.ready
    assert svc.snapshot is snapshot
    assert factory.clients[0].closed
    assert value(samples(svc.rendered.text), "ehpc_watched_images") == 3
    with pytest.raises(RuntimeError):
        _ = svc.url


async def test_listen_on_every_interface(simulator: RunningSimulator, http: aiohttp.ClientSession) -> None:
    """':port' binds every interface; the start-up line names every bound address, and the reported
    URL is reachable through loopback."""
    cfg = sim_config(simulator, [SIM_VM_ID], web=WebConfig(listen_address=":0"))
    svc = ExporterService(cfg, process_metrics=False)
    with capture_logs() as logs:
        await svc.start()
    try:
        port = svc.url.rsplit(":", 1)[1]
        addresses = next(e for e in logs if e["event"] == "web_listening")["addresses"]
        assert f"0.0.0.0:{port}" in addresses
        if socket.has_ipv6:  # port 0 may give the IPv6 socket a port of its own
            assert any(a.startswith("[::]:") for a in addresses), addresses
        assert svc.url.startswith("http://127.0.0.1:")
        async with http.get(svc.url + "/healthz") as resp:
            assert resp.status == 200
    finally:
        await svc.stop()


async def test_port_in_use_fails_start_cleanly(simulator: RunningSimulator) -> None:
    """A taken port raises OSError from start() and leaves nothing running."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        factory = Factory()
        cfg = sim_config(simulator, [SIM_VM_ID], web=WebConfig(listen_address=f"127.0.0.1:{port}"))
        svc = ExporterService(cfg, process_metrics=False, client_factory=factory)
        with pytest.raises(OSError, match=r"(?i)address already in use"):
            await svc.start()
    assert all(c.closed for c in factory.clients)
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "ehpc-refresher"]


async def test_concurrent_scrapes_during_refreshes_see_whole_snapshots(
    simulator: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    """Four scrapers hammering /metrics while refreshes swap snapshots always read one consistent snapshot."""
    fleet = generate_fleet(100, ["cn-beijing", "cn-shanghai"], seed=1, error_fraction=0)
    for image in fleet:
        simulator.sim.images[image.image_id] = image
    simulator.sim.reindex()
    expected = len(simulator.sim.images)
    cfg = sim_config(simulator, (), interval=0.05, discovery=DiscoveryConfig(enabled=True))
    svc = ExporterService(cfg, process_metrics=False)
    await svc.start()
    scrapes = 0
    try:
        await wait_until_async(lambda: svc.ready)
        first = svc.snapshot.sequence

        async def scraper() -> None:
            nonlocal scrapes
            mine = 0
            while svc.snapshot.sequence < first + 3 or mine < 2:  # ends on events, however slow
                mine += 1
                async with http.get(svc.url + "/metrics", headers={"Accept-Encoding": "identity"}) as resp:
                    body = await resp.read()
                scrapes += 1
                # Cheap checks (a full parse would starve the shared loop): every part from one snapshot.
                assert body.count(b"\nehpc_image_up{") == expected
                line = (
                    f'\nehpc_watched_images{{account="default",region_id="cn-hangzhou"}} {float(expected)}\n'
                )
                assert line.encode() in body
                assert body.count(b"\nehpc_refresh_last_success_timestamp_seconds{") == 1

        await asyncio.wait_for(asyncio.gather(*(scraper() for _ in range(4))), 120)  # bounds a hang
    finally:
        await svc.stop()
    # Every scraper read at least twice, across three snapshot swaps. How fast is bench/scrape.py's.
    assert scrapes >= 8


def _targets(base: Config, *accounts: str) -> Config:
    """``base`` as targets: one per account, all at the base's endpoint, key and images."""
    return replace(
        base,
        images=(),
        credentials=None,
        targets=tuple(
            TargetConfig(account, base.credentials, None, (base.api,), base.refresh, base.images)
            for account in accounts
        ),
    )


async def test_reload_adds_and_removes_targets_with_their_series(simulator: RunningSimulator) -> None:
    """Why: a target a reload removes must leave /metrics whole (its images and its API counters), and
    one it adds must start at once, in the same process; a target that stays keeps its loop."""
    base = sim_config(simulator, [SIM_VM_ID], interval=3600)
    svc = ExporterService(_targets(base, "alpha"), process_metrics=False)
    await svc.start()
    try:
        await wait_until_async(lambda: svc.ready)

        def accounts(name: str) -> set[str]:
            return {
                dict(labels)["account"]
                for n, labels in samples(svc.rendered.text + svc.render_self(False))
                if n == name
            }

        assert accounts("ehpc_image_up") == accounts("ehpc_api_requests_total") == {"alpha"}
        await svc.reload(_targets(base, "alpha", "beta"))
        await wait_until_async(lambda: accounts("ehpc_image_up") == {"alpha", "beta"}, what="beta refreshed")
        await svc.reload(_targets(base, "beta"))
        await wait_until_async(lambda: accounts("ehpc_image_up") == {"beta"}, what="alpha gone")
        assert accounts("ehpc_api_requests_total") == accounts("ehpc_watched_images") == {"beta"}
        assert svc.ready
    finally:
        await svc.stop()


async def test_a_reload_that_reshards_moves_the_shard_gauges_and_the_watched_set(
    simulator: RunningSimulator,
) -> None:
    """Why: after `sharding:` changes in a reload, the shard gauges (what EhpcShardsMissing reads) and the
    watched set both follow; a stale ordinal would page for a shard that exists."""
    images = [f"m-reshard{i:011d}" for i in range(40)]
    base = sim_config(simulator, images, interval=3600)
    svc = ExporterService(base, process_metrics=False)
    await svc.refresh_once()

    def gauges() -> tuple[float | None, float | None, int]:
        found = samples(svc.rendered.text + svc.render_self(False))
        watched = sum(1 for n, _ in found if n == "ehpc_image_up")
        return (
            value(found, "ehpc_exporter_shard_ordinal"),
            value(found, "ehpc_exporter_total_shards"),
            watched,
        )

    assert gauges() == (0.0, 1.0, 40)
    await svc.reload(replace(base, sharding=ShardingConfig(shards=3, shard=2)))
    await svc.refresh_once()
    ordinal, total, watched = gauges()
    assert (ordinal, total) == (2.0, 3.0)
    expected = sum(1 for i in images if in_shard("default", "cn-hangzhou", i, ShardingConfig(3, 2)))
    assert watched == expected < 40
