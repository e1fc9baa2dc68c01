"""EhpcClient against the real simulator: calls, errors, retries, timeouts and the call budget."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ehpc_simulator import Faults, SimImage
from exporter.config import ApiConfig, RetryConfig
from exporter.credentials import Credential, CredentialSource, StaticCredentialSource
from exporter.errors import SEED_CODES, ApiError, is_retryable
from exporter.openapi.client import EhpcClient
from tests.exporter_support import captured_events
from tests.fixtures.sim import (
    SIM_CONTAINER_ID,
    SIM_REGISTRY_PASSWORD,
    SIM_VM_ID,
    RunningSimulator,
)

FAST_RETRY = RetryConfig(
    max_attempts=3, base_delay_seconds=0.01, max_delay_seconds=0.05, max_elapsed_seconds=5
)


@dataclass
class Attempt:
    """One observed attempt, with monotonic start and end."""

    action: str
    start: float
    end: float
    error: ApiError | None


@dataclass
class Recorder:
    """An ApiObserver that keeps every attempt and can run a hook after each."""

    attempts: list[Attempt] = field(default_factory=list)
    after: Callable[[int], None] | None = None

    def on_attempt(self, action: str, duration_seconds: float, error: ApiError | None) -> None:
        end = time.monotonic()
        self.attempts.append(Attempt(action, end - duration_seconds, end, error))
        if self.after is not None:
            self.after(len(self.attempts))

    def on_failure(self, action: str, error: ApiError) -> None:
        self.attempts.append(Attempt(action, time.monotonic(), time.monotonic(), error))

    @property
    def codes(self) -> list[str | None]:
        return [a.error.code if a.error else None for a in self.attempts]


def make_client(
    running: RunningSimulator,
    *,
    observer: Recorder | None = None,
    credentials: CredentialSource | None = None,
    secret: str | None = None,
    retry: RetryConfig = FAST_RETRY,
    **api: Any,
) -> EhpcClient:
    settings: dict[str, Any] = {
        "ca_file": running.ca_file,
        "qps": 0,
        "timeout_seconds": 3,
        "connect_timeout_seconds": 2,
        **api,
    }
    config = ApiConfig(endpoint=running.url, retry=retry, **settings)
    source = credentials or StaticCredentialSource(
        Credential(running.access_key_id, secret or running.access_key_secret)
    )
    return EhpcClient(config, source, observer=observer)


def count(running: RunningSimulator, action: str, code: str) -> int:
    return running.sim.counters().get((action, code), 0)


# -- success paths --------------------------------------------------------------------------------------


async def test_get_image_over_http(simulator: RunningSimulator) -> None:
    async with make_client(simulator) as client:
        image = await client.get_image(
            SIM_VM_ID, image_type="VM", additional_region_ids=["cn-beijing", "cn-shanghai"]
        )
    assert image.image_id == SIM_VM_ID
    assert image.name == "gromacs"
    assert image.status == "Available"
    assert image.size_bytes == 40 * 1024**3
    assert {(r.region_id, r.status) for r in image.additional_regions} == {
        ("cn-beijing", "Available"),
        ("cn-shanghai", "Creating"),
    }
    assert image.request_id
    assert count(simulator, "GetImage", "Success") == 1


async def test_get_image_over_https(simulator_https: RunningSimulator) -> None:
    assert simulator_https.url.startswith("https://")
    async with make_client(simulator_https) as client:
        image = await client.get_image(SIM_CONTAINER_ID, image_type="Container")
    assert image.image_id == SIM_CONTAINER_ID
    assert image.registry_url.endswith("nginx:latest")
    assert SIM_REGISTRY_PASSWORD not in repr(image)
    assert count(simulator_https, "GetImage", "Success") == 1


async def test_https_without_the_ca_is_refused(simulator_https: RunningSimulator) -> None:
    """TLS is verified: without ca_file the throwaway CA is not trusted."""
    async with make_client(simulator_https, ca_file=None, retry=RetryConfig(max_attempts=1)) as client:
        with pytest.raises(ApiError) as info:
            await client.get_image(SIM_VM_ID)
    assert info.value.code == "ConnectionError"
    assert "certificate" in info.value.message.lower()


@pytest.mark.parametrize("tls", [False, True])
async def test_list_images_walks_every_page(
    simulator: RunningSimulator, simulator_https: RunningSimulator, tls: bool
) -> None:
    running = simulator_https if tls else simulator
    running.sim.images.clear()
    for i in range(23):
        running.sim.images[f"m-page{i:03d}"] = SimImage(image_id=f"m-page{i:03d}", name=f"app{i}")
    running.sim.images["m-ct"] = SimImage(image_id="m-ct", image_type="Container", name="ct")
    async with make_client(running) as client:
        listed = await client.list_images(image_type="VM", page_size=5)
        one = await client.list_images(image_ids=["m-page007", "m-ct"], page_size=5)
    assert sorted(i.image_id for i in listed) == [f"m-page{i:03d}" for i in range(23)]
    assert count(running, "ListImages", "Success") == 5 + 1  # ceil(23 / 5) pages, then one filtered page
    assert sorted(i.image_id for i in one) == ["m-ct", "m-page007"]


async def test_list_images_empty(simulator: RunningSimulator) -> None:
    simulator.sim.images.clear()
    async with make_client(simulator) as client:
        assert await client.list_images() == []
    assert count(simulator, "ListImages", "Success") == 1


# -- errors ---------------------------------------------------------------------------------------------


async def test_wrong_secret_is_signature_mismatch_and_not_retried(simulator: RunningSimulator) -> None:
    rec = Recorder()
    async with make_client(simulator, secret="not-the-secret-at-all", observer=rec) as client:
        with pytest.raises(ApiError) as info:
            await client.get_image(SIM_VM_ID)
    err = info.value
    assert err.code == "SignatureDoesNotMatch"
    assert err.http_status == 400
    assert err.action == "GetImage"
    assert "string to sign" not in err.message
    assert "not-the-secret-at-all" not in str(err)
    assert count(simulator, "GetImage", "SignatureDoesNotMatch") == 1
    assert rec.codes == ["SignatureDoesNotMatch"]


async def test_unknown_access_key(simulator: RunningSimulator) -> None:
    source = StaticCredentialSource(Credential("nobody", "nobody-secret-0123456"))
    async with make_client(simulator, credentials=source) as client:
        with pytest.raises(ApiError) as info:
            await client.get_image(SIM_VM_ID)
    assert info.value.code == "InvalidAccessKeyId.NotFound"
    assert count(simulator, "GetImage", "InvalidAccessKeyId.NotFound") == 1


@pytest.mark.parametrize("code", sorted(SEED_CODES))
async def test_seed_error_codes_reach_the_client(simulator: RunningSimulator, code: str) -> None:
    simulator.sim.images[SIM_VM_ID].error = code
    rec = Recorder()
    async with make_client(simulator, observer=rec, retry=RetryConfig(2, 0.001, 0.002, 5)) as client:
        with pytest.raises(ApiError) as info:
            await client.get_image(SIM_VM_ID)
    err = info.value
    assert (err.code, err.http_status, err.action) == (code, SEED_CODES[code], "GetImage")
    assert err.request_id
    attempts = 2 if is_retryable(code, SEED_CODES[code]) else 1
    assert count(simulator, "GetImage", code) == attempts
    assert rec.codes == [code] * attempts
    assert (code == "ServiceUnavailable") == (attempts == 2)  # the only retryable seed code


async def test_global_error_on_list_images(simulator: RunningSimulator) -> None:
    simulator.sim.faults = Faults(global_error="NotAuthorized")
    async with make_client(simulator) as client:
        with pytest.raises(ApiError) as info:
            await client.list_images()
    assert (info.value.code, info.value.http_status, info.value.action) == (
        "NotAuthorized",
        407,
        "ListImages",
    )
    assert count(simulator, "ListImages", "NotAuthorized") == 1


@pytest.mark.parametrize(
    ("setup", "call", "code"),
    [
        ("none", {"image_id": "m-does-not-exist"}, "ImageNotFound"),
        ("global", {"image_id": SIM_VM_ID}, "NotAuthorized"),
        ("none", {"image_id": SIM_VM_ID, "image_type": "Bogus"}, "InvalidParams"),
    ],
)
async def test_caller_errors_are_not_retried(
    simulator: RunningSimulator, setup: str, call: dict[str, str], code: str
) -> None:
    if setup == "global":
        simulator.sim.faults = Faults(global_error=code)
    rec = Recorder()
    async with make_client(simulator, observer=rec, retry=RetryConfig(5, 0.001, 0.002, 5)) as client:
        with pytest.raises(ApiError) as info:
            await client.get_image(call["image_id"], image_type=call.get("image_type"))
    assert info.value.code == code
    assert count(simulator, "GetImage", code) == 1
    assert rec.codes == [code]


# -- retries --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", ["ServiceUnavailable", "Throttling.User", "InternalError"])
async def test_transient_errors_retried_then_succeed(simulator: RunningSimulator, code: str) -> None:
    simulator.sim.faults = Faults(error_rates={code: 1.0})

    def heal(n: int) -> None:
        if n == 2:  # two failures, then the service recovers
            simulator.sim.faults = Faults()

    rec = Recorder(after=heal)
    async with make_client(simulator, observer=rec, retry=RetryConfig(4, 0.01, 0.02, 5)) as client:
        image = await client.get_image(SIM_VM_ID)
    assert image.image_id == SIM_VM_ID
    assert rec.codes == [code, code, None]
    assert count(simulator, "GetImage", code) == 2
    assert count(simulator, "GetImage", "Success") == 1


async def test_transient_errors_exhaust_attempts(simulator: RunningSimulator) -> None:
    simulator.sim.faults = Faults(error_rates={"Throttling.User": 1.0})
    rec = Recorder()
    async with make_client(simulator, observer=rec, retry=RetryConfig(3, 0.01, 0.02, 5)) as client:
        with pytest.raises(ApiError) as info:
            await client.get_image(SIM_VM_ID)
    assert info.value.code == "Throttling.User"
    assert count(simulator, "GetImage", "Throttling.User") == 3
    assert rec.codes == ["Throttling.User"] * 3


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    attempts=st.integers(2, 6),
    base_ms=st.integers(1, 20),
    max_ms=st.integers(1, 40),
)
async def test_backoff_delays_stay_under_the_exponential_ceiling(
    simulator: RunningSimulator, attempts: int, base_ms: int, max_ms: int
) -> None:
    """Why: the wait before retry n is jittered in [0, min(max_delay, base * 2**(n-1))], so retries
    neither hammer the API nor stall. Checked on the delays the client chose (its api_retry lines),
    not on the gaps a busy machine stretches."""
    simulator.sim.faults = Faults(error_rates={"ServiceUnavailable": 1.0})
    base, most = base_ms / 1000, max_ms / 1000
    retry = RetryConfig(attempts, base, most, 60)
    with captured_events("api_retry") as retries:
        async with make_client(simulator, retry=retry) as client:
            with pytest.raises(ApiError):
                await client.get_image(SIM_VM_ID)
    assert [e["attempt"] for e in retries] == list(range(1, attempts))
    for e in retries:
        assert 0 <= e["delay"] <= round(min(most, base * 2 ** (e["attempt"] - 1)), 3), (e, retry)


async def test_retry_after_is_a_lower_bound_of_the_wait(simulator: RunningSimulator) -> None:
    simulator.sim.faults = Faults(error_rates={"Throttling.User": 1.0}, retry_after_ms=250)
    rec = Recorder()
    retry = RetryConfig(
        max_attempts=3, base_delay_seconds=0.001, max_delay_seconds=0.002, max_elapsed_seconds=5
    )
    with captured_events("api_retry") as retries:
        async with make_client(simulator, observer=rec, retry=retry) as client:
            with pytest.raises(ApiError) as info:
                await client.get_image(SIM_VM_ID)
    assert info.value.retry_after == pytest.approx(0.25)
    assert len(rec.attempts) == 3
    gaps = [b.start - a.end for a, b in zip(rec.attempts, rec.attempts[1:], strict=False)]
    assert all(g >= 0.25 for g in gaps), gaps  # a busy machine only waits longer
    # And not more than asked: the chosen delay is the server's, not the server's plus the backoff.
    assert [e["delay"] for e in retries] == [0.25, 0.25]


async def test_retry_after_beyond_the_deadline_gives_up_at_once(simulator: RunningSimulator) -> None:
    simulator.sim.faults = Faults(error_rates={"Throttling.User": 1.0}, retry_after_ms=5000)
    retry = RetryConfig(
        max_attempts=5, base_delay_seconds=0.001, max_delay_seconds=0.002, max_elapsed_seconds=1
    )
    with captured_events("api_retry") as retries:
        async with make_client(simulator, retry=retry) as client:
            with pytest.raises(ApiError) as info:
                await client.get_image(SIM_VM_ID)
    assert info.value.code == "Throttling.User"
    assert retries == []  # never slept toward a wait that ends past the deadline
    assert count(simulator, "GetImage", "Throttling.User") == 1


async def test_max_elapsed_bounds_the_retries(simulator: RunningSimulator) -> None:
    simulator.sim.faults = Faults(error_rates={"ServiceUnavailable": 1.0})
    rec = Recorder()
    retry = RetryConfig(
        max_attempts=1000, base_delay_seconds=0.02, max_delay_seconds=0.08, max_elapsed_seconds=0.6
    )
    with captured_events("api_retry") as retries:
        async with make_client(simulator, observer=rec, retry=retry) as client:
            with pytest.raises(ApiError) as info:
                await client.get_image(SIM_VM_ID)
    # The last attempt is cut to the time left before the deadline; on a loaded machine that cut can
    # fire first, and then the call's answer is that attempt's Timeout (the client's documented rule).
    assert info.value.code in {"ServiceUnavailable", "Timeout"}
    assert {a.error.code for a in rec.attempts[:-1] if a.error} == {"ServiceUnavailable"}
    assert len(rec.attempts) < 1000  # the deadline, not max_attempts, ended the retries
    # A retry whose sleep ends at the deadline finds no time left and answers without sending.
    assert len(rec.attempts) - 1 <= len(retries) <= len(rec.attempts)
    # Every attempt started before the deadline (0.6 s after the first): none is sent after it, and
    # the client never sleeps toward a wait that ends past it (it answers with the last error instead).
    assert rec.attempts[-1].start - rec.attempts[0].start <= 0.6
    assert sum(e["delay"] for e in retries) <= 0.6


# -- transport failures ---------------------------------------------------------------------------------


async def test_timeout(simulator: RunningSimulator) -> None:
    """Why: a server that never answers must cost one timeout per attempt, not a hang. The simulator
    holds every request until the test ends, so an answer of Timeout can only be the client's."""
    simulator.sim.faults = Faults(timeout_rate=1.0, timeout_seconds=3600)
    rec = Recorder()
    async with make_client(
        simulator, observer=rec, timeout_seconds=0.3, retry=RetryConfig(2, 0.01, 0.02, 5)
    ) as client:
        with pytest.raises(ApiError) as info:
            await client.get_image(SIM_VM_ID)
    assert info.value.code == "Timeout"
    assert info.value.http_status == 0
    assert rec.codes == ["Timeout", "Timeout"]  # transport errors are retried
    assert all(a.end - a.start >= 0.25 for a in rec.attempts)  # each waited for its 0.3 s timeout
    assert count(simulator, "GetImage", "Timeout") == 2


async def test_reset_is_a_connection_error(simulator: RunningSimulator) -> None:
    simulator.sim.faults = Faults(reset_rate=1.0)
    rec = Recorder()
    async with make_client(simulator, observer=rec, retry=RetryConfig(2, 0.01, 0.02, 5)) as client:
        with pytest.raises(ApiError) as info:
            await client.get_image(SIM_VM_ID)
    assert info.value.code == "ConnectionError"
    assert rec.codes == ["ConnectionError", "ConnectionError"]
    assert count(simulator, "GetImage", "ConnectionError") == 2


async def test_malformed_body_is_invalid_response(simulator: RunningSimulator) -> None:
    simulator.sim.faults = Faults(malformed_rate=1.0)
    async with make_client(simulator, retry=RetryConfig(max_attempts=1)) as client:
        with pytest.raises(ApiError) as info:
            await client.get_image(SIM_VM_ID)
    assert (info.value.code, info.value.http_status) == ("InvalidResponse", 200)
    assert count(simulator, "GetImage", "InvalidResponse") == 1


async def test_oversized_body_is_invalid_response(simulator: RunningSimulator) -> None:
    async with make_client(simulator, max_response_bytes=64, retry=RetryConfig(max_attempts=1)) as client:
        with pytest.raises(ApiError) as info:
            await client.get_image(SIM_VM_ID)
    assert info.value.code == "InvalidResponse"
    assert "too large" in info.value.message


async def test_connection_refused(simulator: RunningSimulator) -> None:
    with socket.socket() as s:  # a port that was free a moment ago and has no listener now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    closed = RunningSimulator(simulator.sim, f"http://127.0.0.1:{port}")
    rec = Recorder()
    # A connect timeout far longer than the test: a refusal must end each attempt, not a timer.
    retry = RetryConfig(2, 0.01, 0.02, 3600)
    async with make_client(closed, observer=rec, retry=retry, connect_timeout_seconds=3600) as client:
        with pytest.raises(ApiError) as info:
            await client.get_image(SIM_VM_ID)
    assert info.value.code == "ConnectionError"
    assert info.value.http_status == 0
    assert rec.codes == ["ConnectionError", "ConnectionError"]


async def test_credential_failure_is_one_observed_unretried_error(simulator: RunningSimulator) -> None:
    class Broken:
        calls = 0

        async def get(self) -> Credential:
            Broken.calls += 1
            raise ApiError(code="CredentialError", message="no provider in the chain")

    rec = Recorder()
    async with make_client(simulator, observer=rec, credentials=Broken()) as client:
        with pytest.raises(ApiError) as info:
            await client.get_image(SIM_VM_ID)
    assert (info.value.code, info.value.http_status, info.value.action) == ("CredentialError", 0, "GetImage")
    assert Broken.calls == 1
    assert rec.codes == ["CredentialError"]
    assert simulator.sim.counters() == {}


# -- budget ---------------------------------------------------------------------------------------------


async def test_qps_budget_keeps_a_rate_limited_server_free_of_throttling(simulator: RunningSimulator) -> None:
    """Drain the server's bucket, then call at exactly its limit: no Throttling; at 1.5x the limit: some."""
    limit = 20.0
    simulator.sim.faults = Faults(qps_limit=limit)
    once = RetryConfig(max_attempts=1)

    async def drain() -> None:
        async with make_client(simulator, retry=once, max_concurrency=30) as burst:
            results = await asyncio.gather(
                *(burst.get_image(SIM_VM_ID) for _ in range(30)), return_exceptions=True
            )
        assert any(isinstance(r, ApiError) and r.code == "Throttling.User" for r in results)
        await asyncio.sleep(1.5 / limit)  # the first call after the drain then finds >= 1.5 tokens

    async def run(qps: float, n: int) -> int:
        await drain()
        simulator.sim.reset_counters()
        async with make_client(simulator, retry=once, qps=qps, max_concurrency=8) as client:
            await asyncio.gather(*(client.get_image(SIM_VM_ID) for _ in range(n)), return_exceptions=True)
        assert sum(simulator.sim.counters().values()) == n
        return count(simulator, "GetImage", "Throttling.User")

    assert await run(limit, 20) == 0
    # The test can fail: a faster client is throttled. Long enough that it is whatever the server's
    # bucket held at the start (a drain's sleep overshoots on a busy machine): over 89/30 s the server
    # admits at most its burst (20) plus 20/s, about 79 of the 90.
    assert await run(limit * 1.5, 90) > 0


def assert_paced(attempts: list[Attempt], qps: float) -> None:
    """The i-th send started no earlier than the first plus i/qps (1 ms for the two clocks' reads)."""
    starts = sorted(a.start for a in attempts)
    late = [(i, t - starts[0]) for i, t in enumerate(starts) if t < starts[0] + i / qps - 1e-3]
    assert not late, late


async def test_qps_budget_is_precise(simulator: RunningSimulator) -> None:
    """Why: every send goes through the budget, so the i-th one starts no earlier than the first plus
    i/qps. A busy machine only makes sends later; that the pacer adds nothing on top (no tick
    rounding, no drift) is its schedule, checked exactly on virtual time in test_budget.py."""
    n, qps = 30, 50.0
    rec = Recorder()
    async with make_client(simulator, observer=rec, qps=qps, max_concurrency=10) as client:
        await asyncio.gather(*(client.get_image(SIM_VM_ID) for _ in range(n)))
    assert rec.codes == [None] * n
    assert_paced(rec.attempts, qps)


async def test_concurrency_cap(simulator: RunningSimulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """Why: never more than ``cap`` requests at the server at once, and the cap used fully (nothing
    after the budget serializes them). The simulator holds each request until ``cap`` are there at
    once: a client that never sends ``cap`` together fails on the hold's bound instead of passing slowly."""
    n, cap = 16, 4
    in_flight = peak = 0
    full = asyncio.Event()
    answer = simulator.sim.answer

    async def held(*args: Any, **kwargs: Any) -> Any:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        if in_flight >= cap:
            full.set()
        try:
            await asyncio.wait_for(full.wait(), 60)  # bounds a client that never reaches its cap
            return await answer(*args, **kwargs)
        finally:
            in_flight -= 1

    monkeypatch.setattr(simulator.sim, "answer", held)
    async with make_client(simulator, max_concurrency=cap) as client:
        await asyncio.gather(*(client.get_image(SIM_VM_ID) for _ in range(n)))
        assert client.budget.max_in_flight == cap
    assert peak == cap
    assert count(simulator, "GetImage", "Success") == n


async def test_budget_shared_by_retries(simulator: RunningSimulator) -> None:
    """Retries take tokens too: 5 calls x 2 attempts at 40 qps are 10 sends on one 1/40 s schedule."""
    simulator.sim.faults = Faults(error_rates={"ServiceUnavailable": 1.0})
    rec = Recorder()
    async with make_client(simulator, observer=rec, qps=40, retry=RetryConfig(2, 0.001, 0.001, 5)) as client:
        results = await asyncio.gather(
            *(client.get_image(SIM_VM_ID) for _ in range(5)), return_exceptions=True
        )
    assert all(isinstance(r, ApiError) for r in results)
    assert count(simulator, "GetImage", "ServiceUnavailable") == 10
    assert len(rec.attempts) == 10
    assert_paced(rec.attempts, 40)
