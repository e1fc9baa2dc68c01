"""The landing page in headless Chromium: a health board that agrees with the metrics and ``check``.

The exporter runs against the simulator with one image of each kind (healthy, unhealthy status,
replication incomplete, failing since start-up, failing after a success, missing) and a discovery that
failed after a success. The test reads what the DOM shows, not the HTML source, at 1400 px and at 400 px.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import Browser, Page, async_playwright

from ehpc_simulator import SimImage
from exporter.cli.check import check_row
from exporter.config import DiscoveryConfig, WatchedImage
from exporter.service import ExporterService
from tests.exporter_support import samples, sim_config
from tests.fixtures.http import wait_until_async
from tests.fixtures.sim import SIM_CONTAINER_ID, SIM_VM_FAILED_ID, SIM_VM_ID, RunningSimulator

pytestmark = pytest.mark.process  # most tests here start real processes (make test-fast skips the file)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# The exporter's wall clock: the first refresh at T1, the second at T2 (the page prints both).
T1 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()
T2 = T1 + 90
T1_TEXT = "2026-01-02 03:04:05 UTC"
T2_TEXT = "2026-01-02 03:05:35 UTC"

BROKEN = "m-broken"  # GetImage has failed since start-up: nothing is known of it
FLAKY = "m-flaky"  # answered the first refresh, fails from the second on: its data is stale
ABSENT = "m-absent"  # ImageNotFound
FOUND = "m-disc-1"  # found by discovery before discovery started failing

# Worst first (HEALTH_ORDER, then id), written out so a broken sort cannot pass.
EXPECTED_ORDER = [ABSENT, BROKEN, FLAKY, SIM_VM_FAILED_ID, SIM_VM_ID, FOUND, SIM_CONTAINER_ID]
EXPECTED_COUNTS = {
    "missing": 1,
    "failing": 2,
    "unhealthy": 1,
    "replication incomplete": 1,
    "healthy": 2,
}
# A failing or missing image: its code, since when, and the reason (the simulator's documented message).
REASONS = {
    ABSENT: "The specified image does not exist.",
    BROKEN: "No authorization is granted.",
    FLAKY: "The request has failed due to a temporary failure of the server.",
}
EXPECTED_HEALTH = {
    ABSENT: f"⊘ missing ImageNotFound since {T1_TEXT} {REASONS[ABSENT]}",
    BROKEN: f"⚠ failing NotAuthorized since {T1_TEXT} {REASONS[BROKEN]}",
    FLAKY: f"⚠ failing ServiceUnavailable since {T2_TEXT} {REASONS[FLAKY]}",
    SIM_VM_FAILED_ID: "✖ unhealthy status CreateFailed, cn-beijing not available",
    SIM_VM_ID: "◐ replication incomplete cn-shanghai not available, cn-wulanchabu not replicated",
    FOUND: "✔ healthy",
    SIM_CONTAINER_ID: "✔ healthy",
}
EXPECTED_STATUS = {
    ABSENT: "—",
    BROKEN: "—",
    FLAKY: "Available last known",
    SIM_VM_FAILED_ID: "CreateFailed",
    SIM_VM_ID: "Available",
    FOUND: "Available",
    SIM_CONTAINER_ID: "Available",
}
REGIONS = ["cn-beijing", "cn-shanghai", "cn-wulanchabu"]
NOT_REQUESTED = "·"
EXPECTED_CELLS = {  # one text per region column, in REGIONS order
    ABSENT: [NOT_REQUESTED, "∅ no copy not replicated", NOT_REQUESTED],
    BROKEN: ["? — unknown", NOT_REQUESTED, NOT_REQUESTED],
    FLAKY: ["✔ Available", NOT_REQUESTED, NOT_REQUESTED],  # the last known copy
    SIM_VM_FAILED_ID: ["✖ CreateFailed not available", NOT_REQUESTED, NOT_REQUESTED],
    SIM_VM_ID: ["✔ Available", "✖ Creating not available", "∅ no copy not replicated"],
    FOUND: [NOT_REQUESTED, NOT_REQUESTED, NOT_REQUESTED],
    SIM_CONTAINER_ID: ["✔ Available", NOT_REQUESTED, NOT_REQUESTED],
}
EXPECTED_HEALTHY = {FOUND, SIM_CONTAINER_ID}
EXPECTED_DISCOVERY = (
    "⚠ Discovery is failing (ListImages: InvalidResponse: ListImages: paging did not end after 1 pages)."
    " Still watching the 1 image(s) it found at"
    f" {T1_TEXT}; images created since are not watched."
)


def squash(text: str) -> str:
    """Rendered text with its whitespace (line breaks between blocks) folded to single spaces."""
    return " ".join(text.split())


@pytest.fixture
def chromium() -> str:
    """Debian's Chromium; its absence fails the test, never skips it (it is a declared test dependency)."""
    assert CHROMIUM.exists(), "Chromium is missing: apt-get install -y --no-install-recommends chromium"
    return str(CHROMIUM)


@pytest.fixture
async def browser(chromium: str) -> AsyncIterator[Browser]:
    """One headless Chromium, driven by Playwright (no browser of Playwright's own is downloaded)."""
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()


@pytest.fixture
async def fleet(simulator: RunningSimulator) -> AsyncIterator[ExporterService]:
    """The exporter after two refreshes of a fleet with one image of every kind of problem."""
    sim = simulator.sim
    sim.images[BROKEN] = SimImage(BROKEN, name="broken", error="NotAuthorized")
    sim.images[FLAKY] = SimImage(FLAKY, name="flaky", regions={"cn-beijing": "Available"})
    sim.images[FOUND] = SimImage(FOUND, name="found")
    watched = [
        WatchedImage(SIM_VM_ID, additional_region_ids=("cn-beijing", "cn-shanghai", "cn-wulanchabu")),
        WatchedImage(SIM_VM_FAILED_ID, additional_region_ids=("cn-beijing",)),
        WatchedImage(SIM_CONTAINER_ID, image_type="Container", additional_region_ids=("cn-beijing",)),
        WatchedImage(BROKEN, additional_region_ids=("cn-beijing",)),
        WatchedImage(FLAKY, additional_region_ids=("cn-beijing",)),
        WatchedImage(ABSENT, additional_region_ids=("cn-shanghai",)),
    ]
    # One ListImages page allowed: discovery works while one image matches and fails (paging) at two.
    discovery = DiscoveryConfig(enabled=True, image_ids=(FOUND, "m-disc-2"), page_size=1, max_pages=1)
    now = [T1]
    svc = ExporterService(
        sim_config(simulator, watched, interval=3600, discovery=discovery),
        process_metrics=False,
        wall_clock=lambda: now[0],
    )
    await svc.start()
    try:
        await wait_until_async(lambda: svc.ready)
        sim.images[FLAKY].error = "ServiceUnavailable"
        sim.images["m-disc-2"] = SimImage("m-disc-2", name="found later")
        now[0] = T2
        await svc.refresh_once()
        yield svc
    finally:
        await svc.stop()


async def board(page: Page) -> dict[str, dict[str, object]]:
    """Every matrix row as the browser renders it: id -> health word, health, status, cells."""
    rows: dict[str, dict[str, object]] = {}
    for row in await page.locator("#images tbody tr").all():
        image_id = await row.locator("th.image code").inner_text()
        rows[image_id] = {
            "word": await row.locator("td.health .word").inner_text(),
            "reason": squash(" ".join(await row.locator("td.health .reason").all_inner_texts())),
            "health": squash(await row.locator("td.health").inner_text()),
            "status": squash(await row.locator("td.status").inner_text()),
            "cells": [squash(t) for t in await row.locator("td.r").all_inner_texts()],
        }
    return rows


async def metrics_healthy(url: str) -> set[str]:
    """The images the exposition calls healthy: up, available, and every replication series available."""
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as resp:
        found = samples(await resp.text())
    ids = {dict(labels)["image_id"] for name, labels in found if name == "ehpc_image_up"}

    def image_values(name: str, image_id: str) -> list[float]:
        return [v for (n, labels), v in found.items() if n == name and ("image_id", image_id) in labels]

    return {
        i
        for i in ids
        if image_values("ehpc_image_up", i) == [1.0]
        and image_values("ehpc_image_available", i) == [1.0]
        and all(v == 1.0 for v in image_values("ehpc_image_replication_available", i))
    }


async def test_the_board_shows_every_kind_of_problem(
    fleet: ExporterService, browser: Browser, tmp_path: Path
) -> None:
    """Counts, worst-first rows, each verdict and cell, discovery banner; page, check, metrics agree."""
    page = await browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(5_000)  # a missing element fails in seconds, not after 30
    response = await page.goto(fleet.url + "/")
    assert response is not None
    assert response.status == 200
    await page.screenshot(path=str(tmp_path / "landing-1400.png"), full_page=True)

    counts = {
        await tile.get_attribute("data-health"): int(await tile.locator(".n").inner_text())
        for tile in await page.locator("#counts .tile").all()
    }
    assert counts == EXPECTED_COUNTS
    assert counts == {str(h): n for h, n in fleet.snapshot.health_counts().items()}
    assert "7 image(s) watched" in await page.locator("#summary").inner_text()

    assert squash(await page.locator("#discovery").inner_text()) == EXPECTED_DISCOVERY
    assert await page.locator("#waiting").count() == 0

    assert await page.locator("#images thead th.region").all_inner_texts() == REGIONS
    rows = await board(page)
    assert list(rows) == EXPECTED_ORDER
    assert {i: r["health"] for i, r in rows.items()} == EXPECTED_HEALTH
    assert {i: r["status"] for i, r in rows.items()} == EXPECTED_STATUS
    assert {i: r["cells"] for i, r in rows.items()} == EXPECTED_CELLS
    assert await page.locator("#cut").count() == 0

    # Colour as well as words: a copy that is not available does not look like one that is.
    def background(selector: str) -> str:
        return f"getComputedStyle(document.querySelector('{selector}')).backgroundColor"

    ok = await page.evaluate(background(f'tr[data-image="{SIM_VM_ID}"] td[data-replica="available"]'))
    bad = await page.evaluate(background(f'tr[data-image="{SIM_VM_ID}"] td[data-replica="not available"]'))
    assert ok != bad

    # One verdict: the page, check and the metrics name the same healthy images, in the same words.
    views = fleet.snapshot.views
    checked = {key.image_id: check_row(view) for key, view in views.items()}
    assert {i: r["word"] for i, r in rows.items()} == {i: c["health"] for i, c in checked.items()}
    # The reason: the same words on the page and in check, for the failing and missing images only.
    assert {i: r["reason"] for i, r in rows.items() if r["reason"]} == REASONS
    assert {i: c["last_error_reason"] for i, c in checked.items() if c["last_error_reason"]} == REASONS
    page_healthy = {i for i, r in rows.items() if r["word"] == "healthy"}
    assert page_healthy == {i for i, c in checked.items() if c["ok"]} == EXPECTED_HEALTHY
    assert await metrics_healthy(fleet.url) == EXPECTED_HEALTHY

    # At phone width the page itself never scrolls sideways; only the matrix box may.
    await page.set_viewport_size({"width": 400, "height": 900})
    await page.reload()
    await page.screenshot(path=str(tmp_path / "landing-400.png"), full_page=True)
    assert await page.evaluate("document.documentElement.scrollWidth") <= 400
    for selector in ("#counts", "#discovery", "#summary", "header"):
        box = await page.locator(selector).bounding_box()
        assert box is not None
        assert box["x"] >= 0
        assert box["x"] + box["width"] <= 400, selector
    assert list(await board(page)) == EXPECTED_ORDER
    await page.locator("details summary").click()  # the folded configuration, opened
    assert await page.locator("#config").is_visible()
    assert await page.evaluate("document.documentElement.scrollWidth") <= 400
    await page.close()
