"""A target whose credentials hang or fail, in a running exporter: its images are published with
``ehpc_image_up 0`` and the exporter is ready; the other targets, gzip ``/metrics`` and reloads go on;
a reload replaces the stuck or refused provider; ``check`` returns.

The estate (tests/fixtures/estate.py) plays the region gateways and the healthy STS; the hanging or
lying STS is :mod:`tests.hostile_sts`. Waits are on events and on what ``/metrics`` says, each bounded
by a generous ``WAIT``; none measures a time.
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from exporter import credential_io
from exporter.cli.run import reload_config
from exporter.config import Scope
from exporter.config.load import load_config
from exporter.service import ExporterService
from tests.exporter_support import samples, value
from tests.fixtures.estate import (
    ALPHA_AK,
    ALPHA_HZ_IMAGE,
    ALPHA_SECRET,
    BETA_HZ_IMAGE,
    BETA_ID,
    HZ,
    READER_ARN,
    RunningEstate,
)
from tests.fixtures.http import wait_until_async
from tests.fixtures.promstack import exporter_command, free_port
from tests.hostile_sts import hang, hostile_sts, json_answer, sts_body

WAIT = 30.0  # the longest any wait here lasts before the test fails; never a measurement
BETA = Scope("beta", HZ)


def config_text(
    estate: RunningEstate, sts_endpoint: str, *, listen: str = "127.0.0.1:0", beta_timeout: float = 10
) -> str:
    """alpha with its own key, beta through alpha's key assuming beta's reader role at ``sts_endpoint``.

    An attempt of beta's (the credential included) may take ``beta_timeout`` seconds, alpha's 10 s; a
    credential fetch is bounded at 10 s on its own.
    """
    region = f"[{{region_id: {HZ}, endpoint: '{estate.ep.region_urls[HZ]}'}}]"
    key = f"{{type: access_key, access_key_id: {ALPHA_AK}, access_key_secret: {ALPHA_SECRET}}}"
    return f"""
api: {{qps: 0, timeout_seconds: 10, retry: {{max_attempts: 1}}, ca_file: "{estate.ca_file}"}}
refresh: {{interval_seconds: 3600, jitter_ratio: 0}}
web: {{listen_address: "{listen}"}}
targets:
  - account: alpha
    credentials: {key}
    regions: {region}
    images: [{{id: {ALPHA_HZ_IMAGE}}}]
  - account: beta
    credentials: {key}
    assume_role: {{role_arn: "{READER_ARN}", sts_endpoint: "{sts_endpoint}"}}
    api: {{timeout_seconds: {beta_timeout}}}
    regions: {region}
    images: [{{id: {BETA_HZ_IMAGE}}}]
"""


@pytest.fixture(autouse=True)
def trust_only_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """The healthy STS is the estate's, over HTTPS with a private CA: trusted by the config's
    ``api.ca_file`` (config_text), nothing in the environment."""
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def service(estate: RunningEstate, tmp_path: Path) -> AsyncIterator[Any]:
    """``start(sts_endpoint)``: an in-process exporter on ``config.yaml`` (rewritten by ``write``)."""
    started: list[ExporterService] = []
    path = tmp_path / "config.yaml"

    class Harness:
        config = path

        def write(self, sts_endpoint: str) -> None:
            path.write_text(config_text(estate, sts_endpoint))

        async def start(self, sts_endpoint: str, beta_timeout: float = 10) -> ExporterService:
            path.write_text(config_text(estate, sts_endpoint, beta_timeout=beta_timeout))
            svc = ExporterService(load_config(path), process_metrics=False)
            svc.enable_lifecycle(functools.partial(reload_config, svc, str(path), {}))
            started.append(svc)
            await svc.start()
            return svc

    yield Harness()
    for svc in started:
        await svc.stop()


def up(svc: ExporterService, account: str, image_id: str) -> float | None:
    return value(
        samples(svc.rendered.text), "ehpc_image_up", account=account, region_id=HZ, image_id=image_id
    )


def error_code(svc: ExporterService, account: str, image_id: str) -> str | None:
    found = samples(svc.rendered.text)
    for (name, labels), v in found.items():
        d = dict(labels)
        if (
            name == "ehpc_image_last_error_info"
            and v
            and (d["account"], d["image_id"]) == (account, image_id)
        ):
            return d["code"]
    return None


async def test_a_target_whose_sts_hangs_still_publishes_its_images_up_0(
    estate: RunningEstate, service: Any
) -> None:
    """Why: credentials.get() ran outside every deadline, so a hanging STS kept the target from ever
    finishing its first cycle: no ehpc_image_up series (no ``up == 0`` alert), /readyz 503 for ever.

    Now the image gives up at its attempt's deadline (1 s) while the shared fetch goes on to its own
    (10 s): the image is published up 0 before the STS sees the fetch let go, then it does let go."""
    async with hostile_sts(hang()) as sts:
        svc = await service.start(sts.url, beta_timeout=1)
        await wait_until_async(lambda: svc.ready, within=WAIT, what="ready")
        assert up(svc, "beta", BETA_HZ_IMAGE) == 0
        assert error_code(svc, "beta", BETA_HZ_IMAGE) == "CredentialError"
        assert up(svc, "alpha", ALPHA_HZ_IMAGE) == 1
        assert not sts.hung_up.is_set()  # the fetch the image stopped waiting for is still going
        async with asyncio.timeout(WAIT):
            await sts.hung_up.wait()  # and ends at its own deadline


async def test_a_reload_to_a_healthy_sts_replaces_a_stuck_provider(
    estate: RunningEstate, service: Any
) -> None:
    """Why: with the cycle stuck in a fetch, a reload pointing at a healthy STS made no call."""
    async with hostile_sts(hang()) as sts:
        svc = await service.start(sts.url, beta_timeout=2)
        await wait_until_async(lambda: up(svc, "beta", BETA_HZ_IMAGE) == 0, within=WAIT, what="beta down")
        service.write(estate.ep.sts_host)
        await svc.reload(load_config(service.config))
        await wait_until_async(lambda: up(svc, "beta", BETA_HZ_IMAGE) == 1, within=WAIT, what="beta up")
    assert estate.estate.sts.sessions() == {READER_ARN: 1}


async def test_a_reload_with_the_same_file_replaces_a_refused_provider(
    estate: RunningEstate, service: Any
) -> None:
    """Why: a malformed STS answer broke the target until a restart, and a reload did not help.

    The STS answers garbage once (the failure is then held for a few seconds); it answers well from then
    on, and a reload of the unchanged file fetches from it at once, without waiting for the hold."""
    async with hostile_sts(json_answer(sts_body(expiration="not a time"))) as sts:
        svc = await service.start(sts.url)
        await wait_until_async(lambda: up(svc, "beta", BETA_HZ_IMAGE) == 0, within=WAIT, what="beta refused")
        issued = estate.estate.sts.store.issue(3600, estate.clock(), BETA_ID)  # a real credential of beta
        expiration = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(issued.expires_at))
        sts.behaviour = json_answer(
            sts_body(
                access_key_id=issued.access_key_id,
                secret=issued.access_key_secret,
                token=issued.security_token,
                expiration=expiration,
            )
        )
        before = svc.snapshot.scopes[BETA].refreshed_at
        await svc.reload(load_config(service.config))
        await wait_until_async(
            lambda: svc.snapshot.scopes[BETA].refreshed_at != before, within=WAIT, what="beta's next cycle"
        )
        assert up(svc, "beta", BETA_HZ_IMAGE) == 1
        assert len(sts.requests) == 2


@pytest.fixture
def hung_file_system(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Every token file read blocks until the returned event is set (a hung network mount): the edge
    of the process, the one thing replaced here."""
    release = threading.Event()
    real = credential_io.read_token_bytes

    def stuck(path: str) -> bytes:
        release.wait()
        return real(path)

    monkeypatch.setattr(credential_io, "read_token_bytes", stuck)
    yield release
    release.set()


async def test_stuck_token_reads_never_starve_gzip_metrics_or_a_reload(
    estate: RunningEstate, tmp_path: Path, hung_file_system: threading.Event
) -> None:
    """Why: the library read token files on the loop's default pool; enough stuck reads exhausted it,
    and gzip /metrics and POST /-/reload (both on that pool) timed out. Eight RRSA targets whose token
    files never answer: the credential threads fill up and the rest fail at once, the targets are
    published up 0, and gzip /metrics and POST /-/reload answer."""
    region = f"[{{region_id: {HZ}, endpoint: '{estate.ep.region_urls[HZ]}'}}]"
    targets = "".join(
        f"""
  - account: rrsa{i}
    credentials:
      type: oidc_role_arn
      role_arn: "{READER_ARN}"
      oidc_provider_arn: "acs:ram::{BETA_ID}:oidc-provider/rrsa"
      oidc_token_file: "{tmp_path / f"token{i}"}"
      sts_endpoint: "{estate.ep.sts_host}"
    api: {{timeout_seconds: 2}}
    regions: {region}
    images: [{{id: {BETA_HZ_IMAGE}}}]"""
        for i in range(8)
    )
    path = tmp_path / "config.yaml"
    path.write_text(config_text(estate, estate.ep.sts_host) + targets + "\n")
    svc = ExporterService(load_config(path), process_metrics=False)
    svc.enable_lifecycle(functools.partial(reload_config, svc, str(path), {}))
    await svc.start()
    try:
        await wait_until_async(lambda: svc.ready, within=WAIT, what="ready")
        assert {up(svc, f"rrsa{i}", BETA_HZ_IMAGE) for i in range(8)} == {0}
        assert up(svc, "beta", BETA_HZ_IMAGE) == 1
        async with aiohttp.ClientSession() as http, asyncio.timeout(WAIT):
            async with http.get(f"{svc.url}/metrics", headers={"Accept-Encoding": "gzip"}) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Encoding"] == "gzip"
                assert b"ehpc_image_up" in await resp.read()
            async with http.post(f"{svc.url}/-/reload") as resp:
                assert resp.status == 200, await resp.text()
        assert not hung_file_system.is_set()  # all of it while the reads were still stuck
    finally:
        hung_file_system.set()
        await svc.stop()


# ----- a real process ---------------------------------------------------------------------------------------


async def until(check: Callable[[], Awaitable[bool]]) -> None:
    """Ask a separate process until ``check`` holds (no event crosses the process boundary); the caller
    bounds the wait."""
    while True:
        if await check():
            return
        await asyncio.sleep(0.1)


async def _get(http: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
    async with http.get(url, **kwargs) as resp:
        return resp.status, dict(resp.headers), await resp.read()


@pytest.mark.process
async def test_a_hanging_sts_in_a_real_process(estate: RunningEstate, tmp_path: Path) -> None:
    """The exporter process with a target whose STS never answers: /readyz 200, gzip /metrics with that
    target's image up 0 (CredentialError), ``check`` exits 1, and POST /-/reload to the healthy STS
    brings the image up, in the same process."""
    async with hostile_sts(hang()) as sts:
        port = free_port()
        path = tmp_path / "config.yaml"
        path.write_text(config_text(estate, sts.url, listen=f"127.0.0.1:{port}", beta_timeout=3))
        env = {  # the STS's CA is the config's api.ca_file: nothing of it in the environment
            **{k: v for k, v in os.environ.items() if not k.startswith(("ALIBABA_CLOUD_", "SSL_CERT_"))},
            "HOME": str(tmp_path),
            "ALIBABA_CLOUD_ECS_METADATA_DISABLED": "true",
        }
        log = (tmp_path / "exporter.log").open("wb")
        proc = await asyncio.create_subprocess_exec(
            exporter_command(), "run", "--config", str(path), "--web.enable-lifecycle",
            env=env, stdout=log, stderr=log,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession() as http:

                async def ready() -> bool:
                    assert proc.returncode is None, (tmp_path / "exporter.log").read_text()[-2000:]
                    try:
                        return (await _get(http, f"{url}/readyz"))[0] == 200
                    except aiohttp.ClientError:
                        return False

                async with asyncio.timeout(WAIT):
                    await until(ready)
                    status, headers, body = await _get(
                        http, f"{url}/metrics", headers={"Accept-Encoding": "gzip"}, auto_decompress=False
                    )
                assert status == 200
                assert headers["Content-Encoding"] == "gzip"
                found = samples(gzip.decompress(body))
                assert (
                    value(found, "ehpc_image_up", account="beta", region_id=HZ, image_id=BETA_HZ_IMAGE) == 0
                )
                assert (
                    value(found, "ehpc_image_up", account="alpha", region_id=HZ, image_id=ALPHA_HZ_IMAGE) == 1
                )

                check = await asyncio.create_subprocess_exec(
                    exporter_command(), "check", "--config", str(path),
                    env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                )  # fmt: skip
                async with asyncio.timeout(WAIT):
                    output, _ = await check.communicate()
                assert check.returncode == 1, output.decode()[-2000:]
                assert b"CredentialError" in output

                path.write_text(
                    config_text(estate, estate.ep.sts_host, listen=f"127.0.0.1:{port}", beta_timeout=3)
                )
                async with asyncio.timeout(WAIT):
                    async with http.post(f"{url}/-/reload") as resp:
                        assert resp.status == 200, await resp.text()

                    async def beta_up() -> bool:
                        text = (await _get(http, f"{url}/metrics"))[2]
                        return (
                            value(samples(text), "ehpc_image_up", account="beta", image_id=BETA_HZ_IMAGE) == 1
                        )

                    await until(beta_up)
        finally:
            proc.terminate()
            async with asyncio.timeout(WAIT):
                await proc.wait()
            log.close()
    assert estate.estate.sts.sessions() == {READER_ARN: 1}
