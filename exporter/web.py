"""The exporter's HTTP surface (aiohttp): ``/metrics``, ``/healthz``, ``/readyz`` and a landing page.

A scrape never calls the cloud API and never renders the per-image series: it writes the bytes rendered
when the snapshot was swapped in, followed by the small self-metrics part rendered now. Content
negotiation follows Prometheus: OpenMetrics 1.0.0 when ``Accept`` prefers ``application/openmetrics-text``,
else text format 0.0.4; gzip when ``Accept-Encoding`` allows it.
"""

from __future__ import annotations

import asyncio
import html
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from importlib import resources
from string import Template
from typing import Protocol

import structlog
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

from exporter.config import Config
from exporter.metrics import CONTENT_TYPE_OPENMETRICS, CONTENT_TYPE_TEXT, RenderedSnapshot, gzip_body
from exporter.redaction import scrub
from exporter.snapshot import ImageState, status_label

__all__ = [
    "OPEN_PATHS",
    "SOURCE_KEY",
    "MetricsSource",
    "accepts_gzip",
    "create_app",
    "wants_openmetrics",
]

log = structlog.get_logger("ehpc.web")

# Reachable without authentication (Kubernetes probes carry no credentials).
OPEN_PATHS: frozenset[str] = frozenset({"/healthz", "/readyz"})
# The landing page lists at most this many images (failing ones first); /metrics always has them all.
MAX_LANDING_ROWS = 500
WRITE_SLICE_BYTES = 256 * 1024  # bigger parts are written in slices of this size


class MetricsSource(Protocol):
    """What the web app reads: implemented by :class:`~exporter.service.ExporterService`."""

    @property
    def rendered(self) -> RenderedSnapshot:
        """The current snapshot and its rendered exposition."""
        ...

    @property
    def ready(self) -> bool:
        """The first refresh has completed."""
        ...

    @property
    def config(self) -> Config:
        """The current configuration."""
        ...

    @property
    def version(self) -> str:
        """The exporter version."""
        ...

    def render_self(self, openmetrics: bool) -> bytes:
        """The per-scrape self-metrics part (ends with ``# EOF`` in OpenMetrics)."""
        ...


SOURCE_KEY: web.AppKey[MetricsSource] = web.AppKey("source")
TELEMETRY_PATH_KEY: web.AppKey[str] = web.AppKey("telemetry_path")
_LANDING: Template = Template(
    resources.files("exporter").joinpath("landing.html").read_text(encoding="utf-8")
)


def _q(params: Iterable[str]) -> float:
    """The ``q`` parameter of one Accept entry (1 when absent, 0 when malformed)."""
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() == "q":
            try:
                q = float(value.strip())
            except ValueError:
                return 0.0
            return q if 0.0 <= q <= 1.0 else 0.0
    return 1.0


def wants_openmetrics(accept: str) -> bool:
    """Whether ``Accept`` prefers OpenMetrics over the text format (ties go to OpenMetrics)."""
    best_om = best_text = 0.0
    for entry in accept.split(","):
        media, *params = entry.split(";")
        media = media.strip().lower()
        q = _q(params)
        if media == "application/openmetrics-text":
            best_om = max(best_om, q)
        elif media in ("text/plain", "text/*", "*/*"):
            best_text = max(best_text, q)
    return best_om > 0 and best_om >= best_text


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether ``Accept-Encoding`` allows gzip (explicitly or through ``*``, and not with ``q=0``)."""
    gzip_q: float | None = None
    star_q: float | None = None
    for entry in accept_encoding.split(","):
        coding, *params = entry.split(";")
        coding = coding.strip().lower()
        if coding in ("gzip", "x-gzip"):
            gzip_q = _q(params)
        elif coding == "*":
            star_q = _q(params)
    q = gzip_q if gzip_q is not None else star_q
    return q is not None and q > 0


# --------------------------------------------------------------------------------------------------
# Handlers


async def _metrics(request: web.Request) -> web.StreamResponse:
    source = request.app[SOURCE_KEY]
    openmetrics = wants_openmetrics(request.headers.get(hdrs.ACCEPT, ""))
    gzip = accepts_gzip(request.headers.get(hdrs.ACCEPT_ENCODING, ""))
    rendered = source.rendered  # one read: a swap during this scrape does not mix two snapshots
    headers = {
        hdrs.CONTENT_TYPE: CONTENT_TYPE_OPENMETRICS if openmetrics else CONTENT_TYPE_TEXT,
        hdrs.VARY: "Accept, Accept-Encoding",
        hdrs.CACHE_CONTROL: "no-store",
    }
    if gzip:
        headers[hdrs.CONTENT_ENCODING] = "gzip"
    response = web.StreamResponse(headers=headers)
    if request.method == hdrs.METH_HEAD:
        await response.prepare(request)
        await response.write_eof()
        return response
    tail = source.render_self(openmetrics)
    chunks: Sequence[bytes]
    if gzip:
        if not rendered.has_deflated(openmetrics):
            # Once per snapshot and format; zlib releases the GIL, so the loop keeps serving meanwhile.
            await asyncio.to_thread(rendered.deflated, openmetrics)
        chunks = gzip_body(rendered.deflated(openmetrics), tail)
    else:
        chunks = (*rendered.parts(openmetrics), tail)
    response.content_length = sum(len(c) for c in chunks)
    try:
        await response.prepare(request)  # a scraper gone before the headers fails here already
        for chunk in chunks:
            # The cached parts as they are, never concatenated; the transport copies at most one slice
            # into its buffer and drains it before the next (one huge write moves megabytes per send).
            if len(chunk) <= WRITE_SLICE_BYTES:
                await response.write(chunk)
                continue
            view = memoryview(chunk)
            for start in range(0, len(view), WRITE_SLICE_BYTES):
                await response.write(view[start : start + WRITE_SLICE_BYTES])
        await response.write_eof()
    except ConnectionError:  # the scraper went away (timeout, restart): normal, not a server error
        log.debug("scrape_aborted", path=request.path)
    return response


async def _healthz(_request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _readyz(request: web.Request) -> web.Response:
    if request.app[SOURCE_KEY].ready:
        return web.Response(text="ready\n")
    return web.Response(status=503, text="not ready: the first refresh has not completed\n")


def _h(text: str, *, quote: bool = True) -> str:
    """``text`` through the output gate, then HTML-escaped: how every value reaches the page."""
    return html.escape(scrub(text), quote=quote)


def _time(ts: float | None) -> str:
    if ts is None:
        return "never"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _row(cells: Iterable[tuple[str, str]]) -> str:
    """One table row of (css class, already-escaped html) cells."""
    return "<tr>" + "".join(f'<td class="{c}">{h}</td>' if c else f"<td>{h}</td>" for c, h in cells) + "</tr>"


def _config_rows(source: MetricsSource) -> str:
    cfg = source.config
    e = _h
    endpoint = cfg.api.endpoint or f"(from region, {cfg.api.network})"
    rows = [
        ("region", cfg.api.region_id),
        ("endpoint", endpoint),
        ("protocol", cfg.api.protocol),
        ("credentials", cfg.credentials.type if cfg.credentials is not None else "default chain"),
        ("refresh interval", f"{cfg.refresh.interval_seconds:g} s (jitter ±{cfg.refresh.jitter_ratio:.0%})"),
        ("static images", str(len(cfg.images))),
        ("discovery", "enabled" if cfg.discovery.enabled else "disabled"),
        ("shard", f"{cfg.sharding.shard} of {cfg.sharding.shards}"),
        ("healthy statuses", ", ".join(cfg.status.healthy)),
    ]
    return "\n".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows)


def _image_row(state: ImageState, healthy: Sequence[str]) -> str:
    e = _h
    img = state.image
    if state.missing:
        status, status_class = "missing (ImageNotFound)", "bad"
    elif img is None:
        status, status_class = "unknown", "bad"
    else:
        status = status_label(img.status)
        status_class = "ok" if img.status in healthy else "bad"
    regions = {r.region_id: status_label(r.status) for r in img.additional_regions} if img is not None else {}
    for region in state.watched.additional_region_ids:
        regions.setdefault(region, "no copy")
    replication = "<br>".join(f"{e(region)}: {e(regions[region])}" for region in sorted(regions))
    error = ""
    if state.error is not None:
        error = e(state.error.code)
        if state.error.request_id:
            error += f' <span class="muted">request {e(state.error.request_id)}</span>'
        error += f' <span class="muted">since {e(_time(state.error.since))}</span>'
    return _row(
        [
            ("", f"<code>{e(state.image_id)}</code>"),
            ("", e(img.name) if img else ""),
            ("", e(img.version) if img else ""),
            ("", e(state.watched.image_type)),
            (status_class, e(status)),
            ("", replication),
            ("ok" if state.up else "bad", "1" if state.up else "0"),
            ("", e(_time(state.last_success))),
            ("bad" if error else "", error),
        ]
    )


async def _landing(request: web.Request) -> web.Response:
    source = request.app[SOURCE_KEY]
    snapshot = source.rendered.snapshot
    states = sorted(snapshot.images.values(), key=lambda s: (s.up, s.image_id))  # failing first
    shown = states[:MAX_LANDING_ROWS]
    if not snapshot.completed:
        summary = "Waiting for the first refresh."
    else:
        summary = (
            f"{len(states)} watched: {snapshot.ok_count} ok, {snapshot.failed_count} failing, "
            f"{snapshot.missing_count} missing; last refresh {_time(snapshot.refreshed_at)} UTC"
            f" took {snapshot.duration_seconds or 0:.2f} s."
        )
        if len(shown) < len(states):
            summary += f" Showing the first {len(shown)} (failing first)."
    page = _LANDING.substitute(
        version=_h(source.version),
        telemetry_path=_h(request.app[TELEMETRY_PATH_KEY], quote=True),
        config_rows=_config_rows(source),
        image_summary=_h(summary),
        image_rows="\n".join(_image_row(s, snapshot.status.healthy) for s in shown),
    )
    return web.Response(text=page, content_type="text/html", charset="utf-8")


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A handler bug answers 500 and is logged once; HTTP errors (404, 405, 401...) pass through."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception:
        log.exception("http_handler_failed", method=request.method, path=request.path)
        return web.Response(status=500, text="internal error\n")


def create_app(
    source: MetricsSource, *, telemetry_path: str = "/metrics", middlewares: Sequence[Middleware] = ()
) -> web.Application:
    """The aiohttp application; ``middlewares`` (e.g. web-config auth) run outside the error guard."""
    if not telemetry_path.startswith("/") or telemetry_path in OPEN_PATHS or telemetry_path == "/":
        raise ValueError(
            f"telemetry path {telemetry_path!r} must start with / and not be /, /healthz, /readyz"
        )
    app = web.Application(middlewares=[*middlewares, _errors])
    app[SOURCE_KEY] = source
    app[TELEMETRY_PATH_KEY] = telemetry_path
    app.router.add_get(telemetry_path, _metrics)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/", _landing)
    return app
