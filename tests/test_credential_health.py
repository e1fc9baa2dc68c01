"""Credential and cycle health: ``ehpc_credentials_*`` per account and ``ehpc_refresh_cycles_total{result}``.

- The expiry gauge, the refresh and refresh-error counters, against a credentials endpoint that records
  what it answered (the oracle: the server's log, not the source's caching rules), over generated
  schedules of time passing and the endpoint failing and recovering; the expiry only moves forward.
- A long-term AccessKey has none of these series; a reload from a temporary source to a key removes them
  (the last expiry must not linger and fire the alert), and back adds them, counters kept.
- A cycle's result from every mix of image verdicts and discovery (generated), then through the real
  refresher against the simulator, and a cycle that crashed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.config import CredentialsConfig, DiscoveryConfig, StatusConfig, WatchedImage
from exporter.credentials import CachedCredentialSource, build_credential_source
from exporter.errors import ApiError
from exporter.exposition import SelfMetrics
from exporter.refresher import Refresher, cycle_result
from exporter.service import ExporterService, default_client, new_account
from exporter.snapshot import DiscoveryStatus, ImageError, ImageFacts, ImageState, Snapshot
from tests.exporter_support import captured_events, samples, sim_config, value
from tests.fixtures.clock import FakeClock, FakeWall
from tests.fixtures.http import wait_until_async
from tests.fixtures.sim import SIM_CONTAINER_ID, SIM_VM_FAILED_ID, SIM_VM_ID, RunningSimulator

EXPIRY = "ehpc_credentials_expiry_timestamp_seconds"
REFRESHES = "ehpc_credentials_refreshes_total"
ERRORS = "ehpc_credentials_refresh_errors_total"
CYCLES = "ehpc_refresh_cycles_total"
CREDENTIAL_FAMILIES = (EXPIRY, REFRESHES, ERRORS)


@dataclass
class Endpoint:
    """A credentials URI that answers each fetch well or not, and writes down what it answered."""

    clock: FakeWall
    ttl: int = 3600
    ok: bool = True
    answers: list[float | None] = field(default_factory=list)  # each fetch: its expiry, None if failed
    url: str = ""

    async def handle(self, _request: web.Request) -> web.Response:
        if not self.ok:
            self.answers.append(None)
            return web.json_response({"Code": "InternalError"}, status=500)
        expires = int(self.clock()) + self.ttl  # to the second, as Expiration says it
        self.answers.append(float(expires))
        n = len(self.answers)
        return web.json_response(
            {
                "Code": "Success",
                "AccessKeyId": f"STS.health{n}",
                "AccessKeySecret": f"health-secret-{n:04d}",
                "SecurityToken": f"CAIShealthtoken{n:04d}",
                "Expiration": datetime.fromtimestamp(expires, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        )


async def serve(endpoint: Endpoint) -> web.AppRunner:
    app = web.Application()
    app.router.add_get("/creds", endpoint.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    endpoint.url = f"http://127.0.0.1:{runner.addresses[0][1]}/creds"
    return runner


def exposed(metrics: SelfMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return samples(metrics.render(False))


# -- the credential families against the endpoint's own record ---------------------------------------------

STEPS = st.lists(st.tuples(st.integers(0, 5000), st.booleans()), min_size=1, max_size=12)


@contextlib.asynccontextmanager
async def observed_source(
    ttl: int, *, ok: bool = True
) -> AsyncIterator[tuple[FakeWall, Endpoint, SelfMetrics, CachedCredentialSource]]:
    """A credentials-URI source on a fake wall clock, fetching from an endpoint issuing ``ttl``-second
    credentials, its outcomes told to account ``acct``'s metrics."""
    clock = FakeWall()
    endpoint = Endpoint(clock, ttl, ok=ok)
    runner = await serve(endpoint)
    metrics = SelfMetrics(process_metrics=False)
    try:
        source = build_credential_source(
            CredentialsConfig(type="credentials_uri", credentials_uri=endpoint.url), clock=clock
        )
        assert isinstance(source, CachedCredentialSource)
        source.observer = metrics.credentials("acct")
        yield clock, endpoint, metrics, source
    finally:
        await runner.cleanup()


async def _run_schedule(ttl: int, steps: list[tuple[int, bool]]) -> None:
    async with observed_source(ttl) as (clock, endpoint, metrics, source):
        shown: list[float] = []
        for advance, ok in steps:
            clock.now += advance
            endpoint.ok = ok
            with contextlib.suppress(ApiError):
                await source.get()
            await source.settled()  # a refresh behind a valid credential has ended too
            found = exposed(metrics)
            answered = [a for a in endpoint.answers if a is not None]
            # The oracle is what the endpoint answered: every fetch counted, every failed one an error,
            # the expiry that of the newest credential it issued (none before the first).
            assert value(found, REFRESHES, account="acct") == len(endpoint.answers)
            assert value(found, ERRORS, account="acct") == endpoint.answers.count(None)
            expiry = value(found, EXPIRY, account="acct")
            assert expiry == (answered[-1] if answered else None)
            if expiry is not None:
                shown.append(expiry)
        assert shown == sorted(shown)  # it only moves forward: each renewal is later than the last


@given(st.sampled_from([60, 900, 3600, 43200]), STEPS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_the_expiry_follows_renewals_and_every_fetch_is_counted(
    ttl: int, steps: list[tuple[int, bool]]
) -> None:
    """Generated schedules of time passing and the endpoint failing or recovering, at four lifetimes."""
    asyncio.run(_run_schedule(ttl, steps))


async def test_a_renewal_moves_the_expiry_forward_and_a_failed_one_keeps_it() -> None:
    """The case the alert is about, spelt out: renewed, then the STS fails: errors grow, expiry stays."""
    async with observed_source(900) as (clock, endpoint, metrics, source):
        start = clock.now
        await source.get()
        assert value(exposed(metrics), EXPIRY, account="acct") == start + 900
        clock.now += 700  # past its refresh time (675 s of 900): served, renewed behind it
        await source.get()
        await source.settled()
        assert value(exposed(metrics), EXPIRY, account="acct") == start + 700 + 900
        endpoint.ok = False
        clock.now += 700
        await source.get()  # still valid: served while the renewal behind it fails
        await source.settled()
        found = exposed(metrics)
        assert value(found, EXPIRY, account="acct") == start + 700 + 900
        assert value(found, ERRORS, account="acct") == 1
        assert value(found, REFRESHES, account="acct") == 3


async def test_failing_renewals_are_logged_once_per_streak() -> None:
    """A renewal failing behind a valid credential is otherwise silent until expiry: one warning when the
    streak starts (with when the held credential expires), debug lines after, one line when it ends."""
    clock = FakeWall()
    endpoint = Endpoint(clock, 900, ok=False)
    runner = await serve(endpoint)
    try:
        source = build_credential_source(
            CredentialsConfig(type="credentials_uri", credentials_uri=endpoint.url), clock=clock
        )
        assert isinstance(source, CachedCredentialSource)
        events = ("credential_refresh_failed", "credential_refresh_recovered")
        with captured_events(*events) as logs:
            for ok in (False, False, True, False):
                endpoint.ok = ok
                clock.now += 10  # past the failure hold
                with contextlib.suppress(ApiError):
                    await source.get()
                    clock.now += 700  # past the refresh time: the next get renews behind it
                await source.settled()
        assert [(e["event"], e["log_level"]) for e in logs] == [
            ("credential_refresh_failed", "warning"),
            ("credential_refresh_failed", "debug"),
            ("credential_refresh_recovered", "info"),
            ("credential_refresh_failed", "warning"),  # a new streak, behind a valid credential
        ]
        assert logs[0]["held_until"] is None  # nothing held yet
        assert logs[3]["held_until"] == endpoint.answers[2]
        assert "HTTP 500" in logs[0]["reason"]
    finally:
        await runner.cleanup()


# -- which accounts have the series --------------------------------------------------------------------------


def credential_samples(svc: ExporterService) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {k: v for k, v in samples(svc.render_self(False)).items() if k[0] in CREDENTIAL_FAMILIES}


async def test_a_long_term_key_has_no_credential_series_and_a_reload_follows_the_source(
    simulator: RunningSimulator,
) -> None:
    """A configured AccessKey is never fetched: no series. A reload to a credentials URI adds them; back
    to the key removes them (a stale expiry would read as "not renewed"); the counters survive a reload
    that keeps the URI (a new source, the same account)."""
    clock = FakeWall(time.time())
    endpoint = Endpoint(clock, 3600)
    runner = await serve(endpoint)
    keyed = sim_config(simulator, [SIM_VM_ID])
    uri = replace(keyed, credentials=CredentialsConfig(type="credentials_uri", credentials_uri=endpoint.url))
    svc = ExporterService(keyed, process_metrics=False)
    try:
        await svc.refresh_once()
        assert credential_samples(svc) == {}
        await svc.reload(uri)
        await svc.refresh_once()  # the simulator refuses the endpoint's keys: a fetch all the same
        found = credential_samples(svc)
        assert found[(REFRESHES, frozenset({("account", "default")}))] >= 1
        assert found[(EXPIRY, frozenset({("account", "default")}))] == endpoint.answers[-1]
        before = found[(REFRESHES, frozenset({("account", "default")}))]
        await svc.reload(replace(uri, refresh=replace(uri.refresh, interval_seconds=120)))
        await svc.refresh_once()
        assert credential_samples(svc)[(REFRESHES, frozenset({("account", "default")}))] > before
        await svc.reload(keyed)
        await svc.refresh_once()
        assert credential_samples(svc) == {}
    finally:
        await svc.stop()
        await runner.cleanup()


# -- cycle results -------------------------------------------------------------------------------------------

KINDS = st.sampled_from(["healthy", "unhealthy", "failing", "missing", "never"])
DISCOVERY = st.sampled_from([None, "up", "down"])
FACTS = ImageFacts("VM", "n", "v", "", "Available", None, None, "", "", "", "", ())


def image_state(n: int, kind: str) -> ImageState:
    watched = WatchedImage(f"m-cycle-{n}")
    if kind == "healthy":
        return ImageState(watched, FACTS, 1.0)
    if kind == "unhealthy":
        return ImageState(watched, FACTS._replace(status="CreateFailed"), 1.0)
    if kind == "missing":
        return ImageState(watched, FACTS, 1.0, ImageError("ImageNotFound", 404, None, 1.0))
    if kind == "failing":
        return ImageState(watched, FACTS, 1.0, ImageError("ServiceUnavailable", 503, None, 1.0))
    return ImageState(watched, None, None, ImageError("Timeout", 0, None, 1.0))  # never answered


@given(st.lists(KINDS, max_size=8), DISCOVERY)
@settings(max_examples=300)
def test_a_cycle_result_from_every_mix_of_verdicts(kinds: list[str], discovery: str | None) -> None:
    """Failure: no image answered (missing is an answer), or none watched and discovery failed; partial:
    some failure; success: none."""
    found = None if discovery is None else DiscoveryStatus(discovery == "up", None, len(kinds))
    snapshot = Snapshot.build(
        [image_state(n, k) for n, k in enumerate(kinds)],
        status=StatusConfig(),
        refreshed_at=2.0,
        duration_seconds=0.1,
        sequence=1,
        discovery=found,
    )
    failed = sum(k in ("failing", "never") for k in kinds)
    discovery_failed = discovery == "down"
    if (kinds and failed == len(kinds)) or (not kinds and discovery_failed):
        expected = "failure"
    elif failed or discovery_failed:
        expected = "partial"
    else:
        expected = "success"
    assert cycle_result(snapshot) == expected


def cycles(metrics: SelfMetrics) -> dict[str, float | None]:
    found = exposed(metrics)
    return {r: value(found, CYCLES, result=r) for r in ("success", "partial", "failure")}


async def test_cycles_are_counted_by_result_against_the_simulator(simulator: RunningSimulator) -> None:
    """Every (account, region) starts at 0 for each result; each cycle adds one to its own."""
    metrics = SelfMetrics(process_metrics=False)
    config = sim_config(
        simulator, [SIM_VM_ID, SIM_VM_FAILED_ID, WatchedImage(SIM_CONTAINER_ID, image_type="Container")]
    )
    client = default_client(config, metrics.scope(config.scope), new_account(config))
    try:
        refresher = Refresher(config, client, metrics=metrics)
        assert cycles(metrics) == {"success": 0, "partial": 0, "failure": 0}
        await refresher.refresh_once()  # one image is CreateFailed: unhealthy, but it answered
        assert cycles(metrics) == {"success": 1, "partial": 0, "failure": 0}
        simulator.sim.images[SIM_VM_ID].error = "ServiceUnavailable"
        await refresher.refresh_once()
        assert cycles(metrics) == {"success": 1, "partial": 1, "failure": 0}
        for image in simulator.sim.images.values():
            image.error = "NotAuthorized"
        await refresher.refresh_once()
        assert cycles(metrics) == {"success": 1, "partial": 1, "failure": 1}
        # Discovery failing with nothing watched: nothing was learnt.
        simulator.sim.faults.error_rates = {"Forbidden.RAM": 1.0}
        refresher.reconfigure(replace(config, images=(), discovery=DiscoveryConfig(enabled=True)))
        await refresher.refresh_once()
        assert cycles(metrics) == {"success": 1, "partial": 1, "failure": 2}
    finally:
        await client.close()


async def test_a_crashed_cycle_is_a_failure(simulator: RunningSimulator, fake_clock: FakeClock) -> None:
    """A cycle that raises (here its publish) is counted as failed, once, and the loop goes on."""
    metrics = SelfMetrics(process_metrics=False)
    config = sim_config(simulator, [SIM_VM_ID])
    client = default_client(config, metrics.scope(config.scope), new_account(config))
    published = 0

    async def publish(_snapshot: Snapshot) -> None:
        nonlocal published
        published += 1
        raise RuntimeError("publish broke")

    refresher = Refresher(config, client, metrics=metrics, publish=publish, clock=fake_clock)
    task = asyncio.create_task(refresher.run())
    try:
        await wait_until_async(lambda: published == 1, 10, "the first cycle")
        await wait_until_async(lambda: cycles(metrics)["failure"] == 1, 10, "the crash counted")
        assert cycles(metrics) == {"success": 0, "partial": 0, "failure": 1}
        await fake_clock.advance(config.refresh.interval_seconds)
        await wait_until_async(lambda: cycles(metrics)["failure"] == 2, 10, "the next cycle ran and crashed")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()
