"""The demo estate, watched as ``ehpc-image-exporter demo`` watches it: what the people on call see of
errors and credentials.

- Its failing images (the generated fleet's EcsError and friends, the watched-but-deleted image) show
  why they fail on the health board and in ``check`` (table and JSON): the code and, under it, the
  reason, the same words in each.
- Its role account (``staging``, AssumeRole with prod's key) and OIDC account (``research``, RRSA) hold
  temporary credentials: ``ehpc_credentials_expiry_timestamp_seconds`` moves forward as the exporter
  renews them. The estate's STS caps lifetimes at a few seconds (as the real one honours a short
  DurationSeconds), so renewals come every few seconds; the test waits on the gauge's values, no sleep.
  ``prod`` holds a long-term AccessKey: no expiry.
"""

from __future__ import annotations

import contextlib
import html
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from ehpc_simulator.demo import serve_demo
from exporter.cli.check import print_report
from exporter.demo import demo_config
from exporter.logging import register_secret
from exporter.service import ExporterService
from exporter.view import Health
from tests.exporter_support import samples
from tests.fixtures.http import wait_until_async

pytestmark = pytest.mark.process  # a whole estate and exporter on loopback, several seconds

STS_TTL_SECONDS = 5  # renewed with a quarter left: every ~4 s, at the next 2 s refresh cycle
EXPIRY = "ehpc_credentials_expiry_timestamp_seconds"


@pytest.fixture
async def demo(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> AsyncIterator[ExporterService]:
    """The demo's estate and config (6 generated images per region, 2 s refresh), STS lifetimes capped."""
    from ehpc_simulator.demo import DEMO_ACCESS_KEY_SECRET

    register_secret(DEMO_ACCESS_KEY_SECRET, pin=True)  # as the demo does
    async with serve_demo("127.0.0.1", 0, images=6, interval_seconds=3600) as ep:
        ep.estate.sts_max_ttl_seconds = STS_TTL_SECONDS
        if ep.ca_file is not None:
            monkeypatch.setenv("SSL_CERT_FILE", ep.ca_file)  # what exporter.demo does for its process
        token = tmp_path / "rrsa-token"
        token.write_text(ep.oidc_token)
        config = demo_config(
            ep.region_urls, ep.sts_host, str(token), listen_address="127.0.0.1:0", interval_seconds=2.0
        )
        service = ExporterService(config, process_metrics=False)
        await service.start()
        try:
            await wait_until_async(lambda: service.ready, 60, "every target's first cycle")
            yield service
        finally:
            await service.stop()


async def scrape(service: ExporterService, path: str = "/metrics") -> str:
    async with aiohttp.ClientSession() as http, http.get(service.url + path) as resp:
        assert resp.status == 200
        return await resp.text()


async def test_expiry_moves_forward_as_the_role_and_oidc_accounts_renew(demo: ExporterService) -> None:
    """staging and research: three renewals each, every one later than the last; prod: no expiry."""
    seen: dict[str, list[float]] = {"staging": [], "research": []}

    async def renewed_thrice() -> bool:
        found = samples(await scrape(demo))
        for account, values in seen.items():
            value = found.get((EXPIRY, frozenset({("account", account)})))
            if value is not None and (not values or values[-1] != value):
                values.append(value)
        return all(len(v) >= 3 for v in seen.values())

    for _ in range(300):  # refresh cycles of any target; the bound only stops a hang
        if await renewed_thrice():
            break
        await _one_refresh(demo)
    else:
        pytest.fail(f"the role and OIDC accounts did not renew three times: {seen}")
    for account, values in seen.items():
        assert values == sorted(values), (account, values)
        assert len(set(values)) == len(values), (account, values)
    found = samples(await scrape(demo))
    assert not [k for k in found if k[0] == EXPIRY and ("account", "prod") in k[1]]
    assert found[("ehpc_credentials_refresh_errors_total", frozenset({("account", "staging")}))] == 0
    print("expiry per renewal:", json.dumps(seen))


async def _one_refresh(service: ExporterService) -> None:
    """Wait for the next published snapshot (one more refresh cycle of some target)."""
    sequence = service.rendered.snapshot.sequence
    await wait_until_async(lambda: service.rendered.snapshot.sequence > sequence, 60, "the next cycle")


async def test_failing_images_show_their_reason_on_the_board_and_in_check(demo: ExporterService) -> None:
    """Every failing or missing image of the demo: its reason under its code on the board, the same words
    in the check table and JSON."""
    snapshot = demo.rendered.snapshot
    failing = {k: v for k, v in snapshot.views.items() if v.health in (Health.FAILING, Health.MISSING)}
    assert failing  # the demo fleet always has failing images and the deleted one
    page = await scrape(demo, "/")
    table, doc = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(table):
        print_report(snapshot, "table")
    with contextlib.redirect_stdout(doc):
        print_report(snapshot, "json")
    rows = {(r["account"], r["region_id"], r["image_id"]): r for r in json.loads(doc.getvalue())["images"]}
    for key, view in failing.items():
        reason = view.error_reason
        assert reason, (key, view.error_code)
        assert f'<div class="detail reason">{html.escape(reason)}</div>' in page, key
        assert rows[(key.account, key.region_id, key.image_id)]["last_error_reason"] == reason
        line = next(ln for ln in table.getvalue().splitlines() if ln.split()[:3] == list(key))
        assert line.endswith(f"  {reason}"), line
    print(table.getvalue())
