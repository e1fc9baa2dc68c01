"""Credential rotations: what 1,000 fetched credentials cost the process (memory, CPU).

A credentials URI on loopback hands out a new AccessKey and a realistic STS token (1,200 characters) on
every fetch; the source's wall clock is moved past each credential's refresh time, so every round fetches
and registers a new secret with the output gate. Before the gate kept its secrets in an index updated in
place, each new secret recompiled one regular expression over all of them (and filled ``re``'s cache):
RSS grew by ~700 MB over 1,000 rotations.
"""

from __future__ import annotations

import resource
import secrets
import time
from datetime import UTC, datetime, timedelta

from aiohttp import web

from bench.common import Result, Settings, at_most, info
from exporter import credentials
from exporter.config import CredentialsConfig

TOKEN_CHARS = 1200
HOUR = timedelta(hours=1)


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024


async def _rotations(count: int) -> tuple[int, float, float]:
    """Rotate ``count`` times; (fetches, RSS growth in MB, CPU seconds per rotation)."""
    clock = [time.time()]
    fetches = 0

    async def handle(_request: web.Request) -> web.Response:
        nonlocal fetches
        fetches += 1
        expires = datetime.fromtimestamp(clock[0], UTC) + HOUR
        return web.json_response(
            {
                "Code": "Success",
                "AccessKeyId": f"STS.{secrets.token_hex(12)}",
                "AccessKeySecret": secrets.token_urlsafe(24),
                "SecurityToken": "CAIS" + secrets.token_urlsafe(TOKEN_CHARS * 3 // 4),
                "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        )

    app = web.Application()
    app.router.add_get("/creds", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/creds"
        config = CredentialsConfig(type="credentials_uri", credentials_uri=url)
        source = credentials.build_credential_source(config, clock=lambda: clock[0])
        await source.get()
        before, cpu = _rss_mb(), time.process_time()
        while fetches <= count:
            clock[0] += 2701  # past the refresh time of a one-hour credential
            await source.get()
        cpu = time.process_time() - cpu
        return fetches - 1, _rss_mb() - before, cpu / max(1, fetches - 1)
    finally:
        await runner.cleanup()


async def run(settings: Settings) -> list[Result]:
    """RSS growth and CPU per rotation over 1,000 rotations (200 with --quick)."""
    count = 200 if settings.quick else 1000
    growth: list[float] = []
    per_rotation: list[float] = []
    for _ in range(settings.repeats):
        _fetches, grown, cpu = await _rotations(count)
        growth.append(grown)
        per_rotation.append(cpu * 1000)
    detail = f"{count} rotations, a new key and a {TOKEN_CHARS}-character token each"
    return [
        at_most("credential_rotations_rss_growth_mb", growth, 10, "MB", detail),
        info("credential_rotation_cpu_ms", per_rotation, "ms", detail),
    ]
