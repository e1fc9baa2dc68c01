"""The exporter's HTTP surface (aiohttp): ``/metrics``, ``/healthz``, ``/readyz``, a health board at ``/``
and ``POST /-/reload``.

A scrape never calls the cloud API and never renders the per-image series: it writes the bytes rendered
when the snapshot was swapped in, followed by the small self-metrics part rendered now. Content
negotiation follows Prometheus: OpenMetrics 1.0.0 when ``Accept`` prefers ``application/openmetrics-text``,
else text format 0.0.4; gzip when ``Accept-Encoding`` allows it.

``POST`` (or ``PUT``) ``/-/reload`` is Prometheus' lifecycle endpoint: with ``--web.enable-lifecycle``
it reloads the config as SIGHUP does (one reload at a time, shared with SIGHUP) and answers 200, or 500
with the one-line reason the reload failed (the running config stays); without the flag 403 "Lifecycle
API is not enabled.", as Prometheus and Alertmanager answer. Other methods get 405. It is behind the web
config's authentication like every route but the probes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence

import structlog
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

from exporter.config import PROBE_PATHS, RESERVED_PATHS
from exporter.exposition import CONTENT_TYPE_OPENMETRICS, CONTENT_TYPE_TEXT, gzip_body
from exporter.http.landing import landing
from exporter.http.source import SOURCE_KEY, TELEMETRY_PATH_KEY, MetricsSource

__all__ = [
    "LIFECYCLE_RELOAD_PATH",
    "OPEN_PATHS",
    "SOURCE_KEY",
    "LifecycleReload",
    "MetricsSource",
    "accepts_gzip",
    "create_app",
    "wants_openmetrics",
]

log = structlog.get_logger("ehpc.web")

# Reachable without authentication (Kubernetes probes carry no credentials).
OPEN_PATHS = PROBE_PATHS
WRITE_SLICE_BYTES = 256 * 1024  # bigger parts are written in slices of this size
LIFECYCLE_RELOAD_PATH = "/-/reload"
# Reloads the config: None when it was applied, else why not (one line, no secret).
LifecycleReload = Callable[[], Awaitable[str | None]]
_RELOAD_KEY: web.AppKey[LifecycleReload | None] = web.AppKey("lifecycle_reload")


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
    source = request.app[SOURCE_KEY]
    if source.ready:
        scopes = source.rendered.snapshot.scopes.values()
        restored = sum(1 for s in scopes if s.restored)
        if restored:  # a warm start: saved data is served until the first cycle replaces it
            return web.Response(
                text=f"ready: {restored} of {len(scopes)} (account, region) serving the saved state"
                " until their first refresh\n"
            )
        return web.Response(text="ready\n")
    return web.Response(status=503, text="not ready: the first refresh has not completed\n")


async def _reload(request: web.Request) -> web.Response:
    reload = request.app[_RELOAD_KEY]
    if reload is None:
        return web.Response(status=403, text="Lifecycle API is not enabled.\n")
    reason = await reload()
    if reason is not None:
        # Prometheus' wording; the reason comes from the config loader, which never quotes a secret.
        return web.Response(status=500, text=f"failed to reload config: {reason}\n")
    return web.Response(text="config reloaded\n")


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
    source: MetricsSource,
    *,
    telemetry_path: str = "/metrics",
    middlewares: Sequence[Middleware] = (),
    reload: LifecycleReload | None = None,
) -> web.Application:
    """The aiohttp application; ``middlewares`` (e.g. web-config auth) run outside the error guard;
    ``reload`` enables ``POST /-/reload``."""
    if not telemetry_path.startswith("/") or telemetry_path in RESERVED_PATHS:
        raise ValueError(
            f"telemetry path {telemetry_path!r} must start with / and not be /, /healthz, /readyz, /-/reload"
        )
    app = web.Application(middlewares=[*middlewares, _errors])
    app[SOURCE_KEY] = source
    app[TELEMETRY_PATH_KEY] = telemetry_path
    app.router.add_get(telemetry_path, _metrics)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/", landing)
    app[_RELOAD_KEY] = reload
    app.router.add_post(LIFECYCLE_RELOAD_PATH, _reload)
    app.router.add_put(LIFECYCLE_RELOAD_PATH, _reload)
    return app
