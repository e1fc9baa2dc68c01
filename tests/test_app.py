"""The HTTP surface on real sockets: negotiation, gzip, probes, landing page, errors, auth/TLS, no secrets."""

from __future__ import annotations

import asyncio
import gzip
import re
import ssl
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import bcrypt
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from structlog.testing import capture_logs

import exporter.http.landing
from ehpc_simulator import Faults, SimImage
from exporter.config import (
    Config,
    CredentialsConfig,
    Labels,
    StatusConfig,
    TargetConfig,
    WatchedImage,
    WebConfig,
)
from exporter.exposition import RenderedSnapshot, render_snapshot
from exporter.exposition.families import build_table
from exporter.http.app import accepts_gzip, create_app, wants_openmetrics
from exporter.service import ExporterService
from exporter.snapshot import DiscoveryStatus, ImageError, ImageState, Snapshot
from tests.exporter_support import make_image, samples, sim_config, value
from tests.fixtures.http import wait_until_async
from tests.fixtures.sim import (
    SIM_CONTAINER_ID,
    SIM_REGISTRY_PASSWORD,
    SIM_VM_FAILED_ID,
    SIM_VM_ID,
    RunningSimulator,
)

WATCHED = (SIM_VM_ID, SIM_VM_FAILED_ID, WatchedImage(SIM_CONTAINER_ID, image_type="Container"))
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
TEXT = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


@pytest.fixture
async def raw_http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client that shows bodies as sent (no transparent gunzip); identity unless a test asks for gzip."""
    async with aiohttp.ClientSession(
        auto_decompress=False, headers={"Accept-Encoding": "identity"}
    ) as session:
        yield session


async def started(config: Config) -> ExporterService:
    service = ExporterService(config, process_metrics=False)
    await service.start()
    return service


@pytest.fixture
async def service(simulator: RunningSimulator) -> AsyncIterator[ExporterService]:
    """A started exporter watching the fixture fleet, after its first refresh."""
    svc = await started(sim_config(simulator, WATCHED))
    await wait_until_async(lambda: svc.ready)
    yield svc
    await svc.stop()


async def get(
    raw_http: aiohttp.ClientSession, url: str, method: str = "GET", **headers: str
) -> tuple[int, dict[str, str], bytes]:
    async with raw_http.request(method, url, headers=headers) as resp:
        return resp.status, dict(resp.headers), await resp.read()


@pytest.mark.process
async def test_readyz_turns_200_after_the_first_refresh(
    simulator: RunningSimulator, raw_http: aiohttp.ClientSession
) -> None:
    """/readyz answers 503 until the first refresh completed, /healthz 200 all along."""
    simulator.sim.faults = Faults(latency_ms=400)
    svc = await started(sim_config(simulator, WATCHED))
    try:
        status, _, body = await get(raw_http, svc.url + "/readyz")
        assert status == 503
        assert b"first refresh" in body
        assert (await get(raw_http, svc.url + "/healthz"))[0] == 200
        metrics_before = (await get(raw_http, svc.url + "/metrics"))[2].decode()
        assert "ehpc_image_up{" not in metrics_before
        await wait_until_async(lambda: svc.ready)
        assert (await get(raw_http, svc.url + "/readyz"))[0] == 200
    finally:
        await svc.stop()


@pytest.mark.process
@pytest.mark.parametrize(
    ("accept", "content_type"),
    [
        ("", TEXT),
        (PROMETHEUS_ACCEPT, OPENMETRICS),
        ("application/openmetrics-text", OPENMETRICS),
        ("text/plain;version=0.0.4", TEXT),
        ("application/openmetrics-text;version=1.0.0;q=0.2,text/plain;q=0.9", TEXT),
        ("application/openmetrics-text;q=0", TEXT),
        ("*/*", TEXT),
        ("application/json", TEXT),
    ],
)
async def test_content_negotiation(
    service: ExporterService, raw_http: aiohttp.ClientSession, accept: str, content_type: str
) -> None:
    """OpenMetrics only when Accept prefers it; OpenMetrics ends with exactly one # EOF, text with none."""
    headers = {"Accept": accept} if accept else {}
    status, got, body = await get(raw_http, service.url + "/metrics", **headers)
    assert status == 200
    assert got["Content-Type"] == content_type
    assert "Accept" in got["Vary"]
    text = body.decode()
    if content_type == OPENMETRICS:
        assert text.endswith("\n# EOF\n")
        assert text.count("# EOF") == 1
    else:
        assert "# EOF" not in text
        assert value(samples(text), "ehpc_image_up", image_id=SIM_VM_ID) == 1


@pytest.mark.parametrize("accept", ["", PROMETHEUS_ACCEPT])
async def test_gzip_when_accepted(
    service: ExporterService, raw_http: aiohttp.ClientSession, accept: str
) -> None:
    """Accept-Encoding: gzip gets the same exposition gzipped, with a correct Content-Length."""
    url = service.url + "/metrics"
    headers = {"Accept": accept} if accept else {}
    _, plain_headers, plain = await get(raw_http, url, **headers)
    _, zipped_headers, zipped = await get(raw_http, url, **headers, **{"Accept-Encoding": "gzip, deflate"})
    assert "Content-Encoding" not in plain_headers
    assert zipped_headers["Content-Encoding"] == "gzip"
    assert int(zipped_headers["Content-Length"]) == len(zipped)
    assert gzip.decompress(zipped) == plain
    _, again_headers, _ = await get(raw_http, url, **headers, **{"Accept-Encoding": "gzip;q=0, identity"})
    assert "Content-Encoding" not in again_headers


async def test_gzip_is_understood_by_a_transparent_client(service: ExporterService) -> None:
    """A client that decompresses by itself (as Prometheus does) reads the whole exposition."""
    async with aiohttp.ClientSession() as session, session.get(service.url + "/metrics") as resp:
        assert resp.headers["Content-Encoding"] == "gzip"
        text = await resp.text()
    assert text.rstrip().endswith("1.0")
    assert value(samples(text), "ehpc_watched_images") == 3


async def test_not_found_wrong_method_and_head(
    service: ExporterService, raw_http: aiohttp.ClientSession
) -> None:
    """Unknown paths 404, wrong methods 405, HEAD answers headers only."""
    assert (await get(raw_http, service.url + "/nope"))[0] == 404
    assert (await get(raw_http, service.url + "/metrics/extra"))[0] == 404
    assert (await get(raw_http, service.url + "/metrics", "POST"))[0] == 405
    assert (await get(raw_http, service.url + "/healthz", "PUT"))[0] == 405
    status, headers, body = await get(raw_http, service.url + "/metrics", "HEAD")
    assert (status, body) == (200, b"")
    assert headers["Content-Type"] == TEXT
    status, headers, body = await get(raw_http, service.url + "/", "HEAD")
    assert (status, body) == (200, b"")
    assert headers["Content-Type"].startswith("text/html")


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"GET /%zz HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
)
async def test_bad_requests_get_4xx(
    service: ExporterService, raw_http: aiohttp.ClientSession, raw: bytes
) -> None:
    """Malformed HTTP is refused with a 4xx and the server keeps serving."""
    host, port = service.url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(raw)
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    await writer.wait_closed()
    assert re.match(rb"HTTP/1\.[01] 4\d\d ", status_line), status_line
    assert (await get(raw_http, service.url + "/healthz"))[0] == 200


class BrokenSource:
    """A metrics source whose self part raises (a bug the app must contain)."""

    rendered: RenderedSnapshot = render_snapshot(Snapshot())
    ready = True
    config = Config()
    version = "test"

    def render_self(self, openmetrics: bool) -> bytes:
        raise RuntimeError("boom")


class HugeSource(BrokenSource):
    """A source with a snapshot part far bigger than the socket buffers."""

    rendered = RenderedSnapshot(Snapshot(), (b"#" * 8_000_000,) * 4, (b"#" * 8_000_000,) * 4)

    def render_self(self, openmetrics: bool) -> bytes:
        return b""


async def test_scraper_going_away_is_not_an_error() -> None:
    """A client that disconnects mid-body is logged at debug, not as a handler failure."""
    runner = web.AppRunner(create_app(HugeSource()), access_log=None)  # as the service runs it
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        with capture_logs() as logs:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept-Encoding: identity\r\n\r\n")
            await writer.drain()
            assert (await reader.readline()).startswith(b"HTTP/1.1 200")
            writer.close()
            await writer.wait_closed()
            await wait_until_async(lambda: any(e["event"] == "scrape_aborted" for e in logs))
        async with aiohttp.ClientSession() as raw_http, raw_http.get(f"http://{host}:{port}/healthz") as resp:
            assert resp.status == 200
    finally:
        await runner.cleanup()
    assert not [e for e in logs if e["log_level"] in ("error", "warning")]


async def test_handler_exception_is_a_logged_500() -> None:
    """An exception inside a handler answers 500 and logs one error event with the path."""
    async with TestClient(TestServer(create_app(BrokenSource()))) as client:
        with capture_logs() as logs:
            resp = await client.get("/metrics")
            assert resp.status == 500
            assert await resp.text() == "internal error\n"
        assert (await client.get("/healthz")).status == 200
    failed = [e for e in logs if e["event"] == "http_handler_failed"]
    assert len(failed) == 1
    assert failed[0]["path"] == "/metrics"
    assert failed[0]["log_level"] == "error"


async def test_landing_page(simulator: RunningSimulator, raw_http: aiohttp.ClientSession) -> None:
    """The landing page shows version, the folded config and the health matrix, HTML-escaped."""
    simulator.sim.images["m-xss"] = SimImage("m-xss", name='<script>alert("x")</script>', status="Creating")
    watched: list[WatchedImage | str] = [
        WatchedImage(SIM_VM_ID, additional_region_ids=("cn-shanghai",)),
        *WATCHED[1:],
    ]
    cfg = sim_config(simulator, [*watched, WatchedImage("m-xss", additional_region_ids=("cn-wulanchabu",))])
    svc = await started(cfg)
    try:
        await wait_until_async(lambda: svc.ready)
        status, headers, body = await get(raw_http, svc.url + "/")
    finally:
        await svc.stop()
    page = body.decode()
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert svc.version in page
    assert page.index("<details>") < page.index('<table id="config">') < page.index("</details>")
    assert "<td>access_key</td>" in page
    assert "cn-hangzhou" in page
    assert f'data-image="{SIM_VM_ID}" data-health="replication incomplete"' in page
    assert re.search(r'data-region="cn-shanghai" data-replica="not available"[^>]*>.*?Creating', page)
    assert re.search(r'data-region="cn-wulanchabu" data-replica="not replicated"[^>]*>.*?no copy', page)
    assert f'data-image="{SIM_VM_FAILED_ID}" data-health="unhealthy"' in page
    assert "<script" not in page  # the page has no script of its own, and the name is escaped
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert simulator.access_key_secret not in page
    assert '<meta http-equiv="refresh"' not in page


T0 = 1_767_323_045.0  # 2026-01-02 03:04:05 UTC


class SnapshotSource(BrokenSource):
    """A source serving one given snapshot (for landing-page cases no simulator produces), rendered with
    the own labels of ``config``."""

    def __init__(self, snapshot: Snapshot, config: Config | None = None) -> None:
        self.config = config or Config()
        self.rendered = render_snapshot(
            snapshot, build_table(self.config.metrics, labels=self.config.own_labels())
        )

    def render_self(self, openmetrics: bool) -> bytes:
        return b""


def built(*states: ImageState, discovery: DiscoveryStatus | None = None) -> Snapshot:
    """A completed snapshot of ``states``."""
    return Snapshot.build(
        states, status=StatusConfig(), refreshed_at=T0, duration_seconds=0.5, sequence=1, discovery=discovery
    )


async def landing(source: SnapshotSource, path: str = "/") -> tuple[int, str]:
    async with TestClient(TestServer(create_app(source))) as client:
        resp = await client.get(path)
        return resp.status, await resp.text()


async def test_landing_page_groups_images_by_account_and_region(
    simulator: RunningSimulator, raw_http: aiohttp.ClientSession
) -> None:
    """With several (account, region), each gets a heading row with its count, the worst group first, and
    every image row names its account and region; the config lists each target."""
    simulator.sim.images[SIM_VM_FAILED_ID].error = "EcsError"
    base = sim_config(simulator, [SIM_VM_ID, SIM_VM_FAILED_ID])
    targets = (
        TargetConfig("ok", base.credentials, None, (base.api,), base.refresh, (WatchedImage(SIM_VM_ID),)),
        TargetConfig("bad", base.credentials, None, (base.api,), base.refresh, base.images),
    )
    svc = await started(replace(base, images=(), credentials=None, targets=targets))
    try:
        await wait_until_async(lambda: svc.ready)
        _status, _headers, body = await get(raw_http, svc.url + "/")
    finally:
        await svc.stop()
    page = body.decode()
    groups = re.findall(
        r'<tr class="group" data-account="(\w+)" data-region="([\w-]+)">.*?(\d+) image\(s\), ([^<]+)<', page
    )
    assert groups == [("bad", "cn-hangzhou", "2", "1 not healthy"), ("ok", "cn-hangzhou", "1", "all healthy")]
    assert (
        f'data-image="{SIM_VM_FAILED_ID}" data-health="failing" data-account="bad" data-region="cn-hangzhou"'
        in page
    )
    assert page.count(f'data-image="{SIM_VM_ID}"') == 2  # the same id in two accounts: two images
    assert "<th>target 1 of 2</th>" in page
    assert "<th>target 2 of 2</th>" in page


async def test_landing_page_escapes_hostile_values_in_text_and_attributes() -> None:
    """Regions, codes and names reach text and attributes escaped: no tag and no attribute break out."""
    region = '"><img src=x onerror=alert(1)>'
    hostile = ImageState(
        WatchedImage("m-hostile", additional_region_ids=(region,)),
        make_image("m-hostile", name="<b>name</b>", regions=[(region, "Available")]),
        last_success=T0,
        error=ImageError('<i>code</i>"', since=T0),
    )
    discovery = DiscoveryStatus(up=False, last_success=None, discovered=0, error_code="<u>Forbidden</u>")
    status, page = await landing(SnapshotSource(built(hostile, discovery=discovery)))
    assert status == 200
    for raw in ("<img", "<b>name", "<i>code", "<u>Forbidden"):
        assert raw not in page
    assert 'data-region="&quot;&gt;&lt;img src=x onerror=alert(1)&gt;"' in page
    assert "&lt;b&gt;name&lt;/b&gt;" in page
    assert "&lt;i&gt;code&lt;/i&gt;&quot;" in page
    assert "&lt;u&gt;Forbidden&lt;/u&gt;" in page
    assert "It has not succeeded since start-up" in page


# Own labels: the target's, one image's own on top (a value to escape, a name unset), one image's empty.
LABELLED = Config(
    labels=Labels({"team": "hpc"}),
    images=(
        WatchedImage("m-db", labels=Labels({"team": 'db <b>"x"</b>', "env": "prod"})),
        WatchedImage("m-off", labels=Labels({"team": ""})),
    ),
)
LABELLED_STATES = (
    ImageState(WatchedImage("m-db"), make_image("m-db", status="CreateFailed"), last_success=T0),
    ImageState(WatchedImage("m-hpc"), make_image("m-hpc"), last_success=T0),
    ImageState(WatchedImage("m-off"), None, error=ImageError("ServiceUnavailable", since=T0)),
    ImageState(WatchedImage("m-disc"), make_image("m-disc", status="Creating"), last_success=T0),
)


def own_labels_of(page: str) -> dict[str, list[str]]:
    """Each row's own labels as the page lists them (name=value, escaped as in the page)."""
    rows = re.findall(r'<tr class="h-\w+" data-image="([^"]+)".*?</th>', page)
    found = {}
    for image_id in rows:
        row = re.search(rf'data-image="{re.escape(image_id)}".*?</th>', page)
        assert row is not None
        found[image_id] = [
            f"{n}={v}" for n, v in re.findall(r'<li data-label="([^"]+)">[^=]+=<b>(.*?)</b></li>', row[0])
        ]
    return found


async def test_landing_page_shows_each_images_own_labels() -> None:
    """Each row lists the labels /metrics gives the image (its own over its target's; a discovered one
    its target's; an empty value none), escaped; the folded config lists the target's."""
    status, page = await landing(SnapshotSource(built(*LABELLED_STATES), LABELLED))
    assert status == 200
    assert own_labels_of(page) == {
        "m-off": [],
        "m-db": ["env=prod", "team=db &lt;b&gt;&quot;x&quot;&lt;/b&gt;"],
        "m-disc": ["team=hpc"],
        "m-hpc": ["team=hpc"],
    }
    assert '<b>"x"</b>' not in page  # no tag of the value's gets through
    assert "<th>labels</th><td>team=hpc</td>" in page
    assert (
        'id="grouping">group by: <strong>account and region</strong> <a href="/?group=env">env</a>'
        ' <a href="/?group=team">team</a>'
    ) in page


async def test_landing_page_groups_by_a_chosen_label() -> None:
    """``?group=team``: one heading per value (the group with the worst image first, then by value),
    the images without it last among equals; each heading counts its images."""
    status, page = await landing(SnapshotSource(built(*LABELLED_STATES), LABELLED), "/?group=team&refresh=60")
    assert status == 200
    groups = re.findall(
        r'<tr class="group" data-label="team" data-value="([^"]*)">.*?(\d+) image\(s\), ([^<]+)<', page
    )
    assert groups == [
        ("", "1", "1 not healthy"),
        ("db &lt;b&gt;&quot;x&quot;&lt;/b&gt;", "1", "1 not healthy"),
        ("hpc", "2", "1 not healthy"),
    ]
    assert re.findall(r'<tr class="h-\w+" data-image="([^"]+)"', page) == ["m-off", "m-db", "m-disc", "m-hpc"]
    assert "no team &middot; 1 image(s)" in page
    assert (
        '<a href="/?refresh=60">account and region</a> <a href="/?group=env&amp;refresh=60">env</a>'
        " <strong>team</strong>"
    ) in page
    _status, by_env = await landing(SnapshotSource(built(*LABELLED_STATES), LABELLED), "/?group=env")
    assert re.findall(r'data-label="env" data-value="([^"]*)"', by_env) == ["", "prod"]


@pytest.mark.parametrize(
    ("config", "query", "known"),
    [
        (LABELLED, "group=owner", "env, team"),
        (LABELLED, "group=Team", "env, team"),
        (LABELLED, "group=team&group=env", "env, team"),
        (LABELLED, "group=", "env, team"),
        (LABELLED, "group=%3Cscript%3E", "env, team"),
        (Config(), "group=team", "none is configured"),
    ],
)
async def test_landing_bad_group_is_a_400(config: Config, query: str, known: str) -> None:
    """A group that is not one configured own label answers 400 naming the ones there are."""
    status, body = await landing(SnapshotSource(built(*LABELLED_STATES), config), f"/?{query}")
    assert status == 400
    assert body == f"group must be the name of an own label ({known})\n"


async def test_landing_page_without_labels_has_no_grouping() -> None:
    """Without own labels the board is as it was: no chips, no grouping links."""
    status, page = await landing(SnapshotSource(built(*LABELLED_STATES)))
    assert status == 200
    assert "own-labels" not in page.replace(".own-labels", "")
    assert 'id="grouping"' not in page


async def test_landing_page_while_waiting_for_the_first_refresh() -> None:
    """Before the first refresh a banner says so, and no count or matrix pretends to know anything."""
    status, page = await landing(SnapshotSource(Snapshot()))
    assert status == 200
    assert 'id="waiting"' in page
    assert "Waiting for the first refresh." in page
    assert 'id="counts"' not in page
    assert "<tbody>" not in page
    assert "<title>(waiting) E-HPC image exporter</title>" in page


async def test_landing_rows_are_bounded_worst_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MAX_LANDING_ROWS the page keeps the worst rows and says how many it left out."""
    monkeypatch.setattr(exporter.http.landing, "MAX_LANDING_ROWS", 2)
    states = [
        ImageState(WatchedImage("m-a-healthy"), make_image("m-a-healthy"), last_success=T0),
        ImageState(WatchedImage("m-b-healthy"), make_image("m-b-healthy"), last_success=T0),
        ImageState(WatchedImage("m-c-bad"), make_image("m-c-bad", status="CreateFailed"), last_success=T0),
        ImageState(WatchedImage("m-d-failing"), None, error=ImageError("ServiceUnavailable", since=T0)),
    ]
    status, page = await landing(SnapshotSource(built(*states)))
    assert status == 200
    assert re.findall(r'<tr class="h-\w+" data-image="([^"]+)"', page) == ["m-d-failing", "m-c-bad"]
    assert "Showing the 2 worst of 4 images" in page
    assert '<li class="tile h-healthy" data-health="healthy"><span class="n">2</span>' in page
    assert "<title>(2 not healthy) E-HPC image exporter</title>" in page


@pytest.mark.parametrize(("query", "seconds"), [("refresh=5", 5), ("refresh=60", 60), ("refresh=3600", 3600)])
async def test_landing_auto_refresh(query: str, seconds: int) -> None:
    """``?refresh=N`` adds a meta refresh of N seconds and says so in the header."""
    status, page = await landing(SnapshotSource(Snapshot()), f"/?{query}")
    assert status == 200
    assert f'<meta http-equiv="refresh" content="{seconds}">' in page
    assert f"auto-refresh every {seconds} s" in page


@pytest.mark.parametrize(
    "query",
    [
        "refresh=",
        "refresh=4",
        "refresh=3601",
        "refresh=abc",
        "refresh=1e3",
        "refresh=-5",
        "refresh=30.5",
        "refresh=%20 30",
        "refresh=%D9%A3%D9%A0",
        "refresh=99999999999999999999",
        "refresh=30&refresh=40",
        "refresh=%zz",
    ],
)
async def test_landing_bad_refresh_is_a_400(query: str) -> None:
    """A bad refresh value answers 400 with one line saying what is allowed, never a 500."""
    status, body = await landing(SnapshotSource(Snapshot()), f"/?{query}")
    assert status == 400
    assert body == "refresh must be a whole number of seconds from 5 to 3600\n"


async def test_no_secret_in_metrics_page_or_logs(
    simulator: RunningSimulator, raw_http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """Registry passwords, userinfo in registry URLs, the AccessKey secret and an STS token never show."""
    ak, secret, token = simulator.sim.issue_sts()
    container = simulator.sim.images[SIM_CONTAINER_ID]
    container.registry_url = "https://puller:url-password-never-shown@registry.example.com/ns/app:1"
    simulator.sim.images["m-broken"] = SimImage("m-broken", error="NotAuthorized")
    cfg = replace(
        sim_config(simulator, [*WATCHED, "m-broken", "m-absent"]),
        credentials=CredentialsConfig(
            type="sts", access_key_id=ak, access_key_secret=secret, security_token=token
        ),
    )
    with capture_logs() as logs:
        svc = await started(cfg)
        try:
            await wait_until_async(lambda: svc.ready)
            bodies = [
                (await get(raw_http, svc.url + "/metrics"))[2],
                (await get(raw_http, svc.url + "/metrics", Accept=PROMETHEUS_ACCEPT))[2],
                (await get(raw_http, svc.url + "/"))[2],
            ]
        finally:
            await svc.stop()
    found = samples(bodies[0])
    assert value(found, "ehpc_image_up", image_id=SIM_CONTAINER_ID) == 1  # the STS credentials worked
    assert value(found, "ehpc_image_last_error_info", image_id="m-broken", code="NotAuthorized") == 1
    assert any(e["event"] == "image_refresh_failed" for e in logs)
    everything = b"\n".join(bodies).decode() + repr(logs) + caplog.text
    for leak in (
        secret,
        token,
        SIM_REGISTRY_PASSWORD,
        "url-password-never-shown",
        simulator.access_key_secret,
        container.registry_username,  # the registry user name is no one's business either
    ):
        assert leak not in everything
    assert "registry.example.com/ns/app:1" in bodies[0].decode()


async def test_custom_telemetry_path(simulator: RunningSimulator, raw_http: aiohttp.ClientSession) -> None:
    """web.telemetry_path moves the exposition; the old path is a 404."""
    cfg = sim_config(
        simulator, [SIM_VM_ID], web=WebConfig(listen_address="127.0.0.1:0", telemetry_path="/x/m")
    )
    svc = await started(cfg)
    try:
        assert (await get(raw_http, svc.url + "/x/m"))[0] == 200
        assert (await get(raw_http, svc.url + "/metrics"))[0] == 404
        assert 'href="/x/m"' in (await get(raw_http, svc.url + "/"))[2].decode()
    finally:
        await svc.stop()


async def test_web_config_file_tls_and_basic_auth(
    simulator: RunningSimulator,
    tmp_path: Path,
    server_cert_files: tuple[str, str],
    client_ssl_context: ssl.SSLContext,
) -> None:
    """With --web.config.file: HTTPS, basic auth on /metrics and /, probes open."""
    cert, key = server_cert_files
    hashed = bcrypt.hashpw(b"scrape-pass", bcrypt.gensalt(rounds=4)).decode()
    web_config = tmp_path / "web.yml"
    web_config.write_text(
        yaml.safe_dump(
            {
                "tls_server_config": {"cert_file": cert, "key_file": key},
                "basic_auth_users": {"prometheus": hashed},
            }
        )
    )
    cfg = sim_config(
        simulator, [SIM_VM_ID], web=WebConfig(listen_address="127.0.0.1:0", config_file=str(web_config))
    )
    svc = await started(cfg)
    try:
        assert svc.url.startswith("https://")
        connector = aiohttp.TCPConnector(ssl=client_ssl_context)
        async with aiohttp.ClientSession(connector=connector) as https:
            assert (await get(https, svc.url + "/metrics"))[0] == 401
            assert (await get(https, svc.url + "/"))[0] == 401
            assert (await get(https, svc.url + "/healthz"))[0] == 200
            await wait_until_async(lambda: svc.ready)
            assert (await get(https, svc.url + "/readyz"))[0] == 200
            auth = aiohttp.encode_basic_auth("prometheus", "scrape-pass")
            status, _, body = await get(https, svc.url + "/metrics", Authorization=auth)
            assert status == 200
            assert b"ehpc_image_up" in body
            wrong = aiohttp.encode_basic_auth("prometheus", "nope")
            assert (await get(https, svc.url + "/metrics", Authorization=wrong))[0] == 401
    finally:
        await svc.stop()


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("", False),
        ("application/openmetrics-text", True),
        ("Application/OpenMetrics-Text; version=1.0.0", True),
        (PROMETHEUS_ACCEPT, True),
        ("text/plain, application/openmetrics-text", True),
        ("text/plain;q=1, application/openmetrics-text;q=0.5", False),
        ("application/openmetrics-text;q=0", False),
        ("application/openmetrics-text;q=bogus", False),
        ("*/*;q=0.9, application/openmetrics-text;q=0.95", True),
    ],
)
def test_wants_openmetrics(accept: str, expected: bool) -> None:
    """q-values decide; ties go to OpenMetrics; malformed q means not acceptable."""
    assert wants_openmetrics(accept) is expected


@pytest.mark.parametrize(
    ("accept_encoding", "expected"),
    [
        ("", False),
        ("gzip", True),
        ("deflate, GZIP;q=0.5", True),
        ("gzip;q=0", False),
        ("identity", False),
        ("*", True),
        ("*;q=0.1, gzip;q=0", False),
        ("br, x-gzip", True),
    ],
)
def test_accepts_gzip(accept_encoding: str, expected: bool) -> None:
    """gzip explicitly or through *, never with q=0."""
    assert accepts_gzip(accept_encoding) is expected
