"""The simulated E-HPC Instant API (2023-07-01): an aiohttp application answering GetImage and ListImages.

API (``POST /`` or ``GET /``, V3-signed like the official SDK; parameters from the query string and,
with ``Content-Type: application/x-www-form-urlencoded``, from the form body, the body winning on
conflicts). Decisions where the real service is undocumented:

- A wrong ``x-acs-version`` is answered ``InvalidAction.NotFound`` (404): in V3 the gateway finds an
  API by action *and* version, so ``GetImage`` of another version is an API that does not exist.
- ``ImageType`` / ``ImageCategory`` given to GetImage must match the image, else ``ImageNotFound``;
  when absent, any image matches (the doc's "default VM" is not enforced, to stay lenient).
- ``AdditionalRegionsInfo`` is present only when ``AdditionalRegionIds`` was sent, with one entry per
  asked region the image has a copy in (``SimImage.regions``); regions without a copy are omitted.
- ListImages: ``Mode`` defaults to ``List`` (every version); ``Merge`` keeps the newest
  (``CreateTime``, then ``Version``) image per (type, name). Order is the insertion order of the
  images. ``PageSize`` must be 1..100 and ``PageNumber`` >= 1, else ``InvalidParams``.
- Processing order per request: signature (see :mod:`ehpc_simulator.auth`), action and version,
  the QPS limit (``Throttling.User``), one fault draw (:class:`Faults`), ``Faults.global_error``,
  ``Faults.action_errors``, then the action itself (per-image ``SimImage.error`` applies to GetImage).
  Latency is added to every answer; injected timeouts and resets skip it.

Every answer of the API (errors included) carries ``x-acs-request-id`` and is counted once by
(action, code); injected timeouts, resets and malformed bodies are counted under the code the client
will see: ``Timeout``, ``ConnectionError``, ``InvalidResponse``.

Timed scripts (:mod:`ehpc_simulator.scripts`) are applied first, before anything else, in every
request: steps due by the simulator's ``clock`` change images and their copies before the answer reads them.

The admin API (``/_sim/...``: images, faults, counters, STS credentials, scripts) is
:mod:`ehpc_simulator.admin`; the ListImages selection is :mod:`ehpc_simulator.images`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import struct
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ehpc_simulator import admin
from ehpc_simulator.auth import AuthFailure, StsStore, Verified, Verifier
from ehpc_simulator.catalogue import (
    ACTIONS,
    API_VERSION,
    PERMISSION_CODES,
    PRODUCT,
    message_of,
    status_of,
)
from ehpc_simulator.counts import AnswerCounter
from ehpc_simulator.images import ImageTable, Listing
from ehpc_simulator.model import (
    IMAGE_CATEGORIES,
    IMAGE_TYPES,
    Faults,
    SimImage,
    render_image,
    render_list_item,
)
from ehpc_simulator.params import ParamError, enum_param, int_param, json_list, read_params
from ehpc_simulator.ratelimit import TokenBucket
from ehpc_simulator.scripts import AppliedStep, DueStep, Scheduler, ScriptStep

# Public demo credentials: documented, not secret, accepted only by the simulator.
DEMO_ACCESS_KEY_ID = "DEMO-EHPC-SIM-ACCESS-KEY"
DEMO_ACCESS_KEY_SECRET = "demo-ehpc-simulator-secret-not-a-real-key"  # noqa: S105 - public demo value

JSON_CONTENT_TYPE = "application/json;charset=utf-8"
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20
_ACTION_LABEL_MAX = 64  # unknown actions are counted under their (truncated) name


class _QpsLimit:
    """Server-side QPS limit: ``rate`` tokens a second, bursts of up to ``max(1, rate)``; a new rate
    starts a full bucket (the admin API may change it at any time)."""

    def __init__(self) -> None:
        self._bucket: TokenBucket | None = None

    def take(self, rate: float, now: float) -> bool:
        bucket = self._bucket
        if bucket is None or bucket.rate != rate:
            bucket = self._bucket = TokenBucket(rate, max(1.0, rate), now)
        return bucket.allow(now)


@dataclass(frozen=True, slots=True)
class _Answer:
    """An API answer before it is sent: status, JSON payload or raw body, and the code it is counted as."""

    code: str
    status: int
    payload: dict[str, Any] | None = None
    raw: bytes | None = None
    retry_after_ms: int | None = None


@contextlib.asynccontextmanager
async def serve_app(
    app: web.Application, host: str, port: int, ssl_context: Any | None
) -> AsyncIterator[str]:
    """Serve ``app`` on ``host:port`` (0: a free port), over TLS with ``ssl_context``; yields its base URL."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context, backlog=1024)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        yield f"{'https' if ssl_context is not None else 'http'}://{shown}:{bound_port}"
    finally:
        await runner.cleanup()


def _new_request_id() -> str:
    return str(uuid.uuid4()).upper()


def _abort_connection(request: web.BaseRequest) -> None:
    """Drop the connection without an answer; SO_LINGER 0 makes it a TCP reset the client notices."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class Simulator(AnswerCounter):
    """A fake E-HPC Instant endpoint with fault injection, exact answer counters and an admin API."""

    def __init__(
        self,
        *,
        images: Iterable[SimImage] = (),
        access_keys: Mapping[str, str] | None = None,
        faults: Faults | None = None,
        region_id: str = "cn-hangzhou",
        account_id: str | None = None,
        sts: StsStore | None = None,
        clock: Callable[[], float] = time.time,
        signing_clock: Callable[[], float] | None = None,
    ) -> None:
        # By id; change it like a dict (ListImages follows), or through the admin API.
        self.images = ImageTable(images)
        self.faults = faults if faults is not None else Faults()
        self.region_id = region_id
        # Set when this is one account's region of an estate (ehpc_simulator.estate): its STS
        # credentials then act for that account, and the region's gateway routes requests here.
        self.account_id = account_id
        self.host_id = f"ehpcinstant.{region_id}.aliyuncs.com"
        self.sts = sts if sts is not None else StsStore()
        # Epoch seconds; replace it (e.g. a fake clock) at any time. It dates the timed scripts, the STS
        # credentials and the signature checks. signing_clock, when given, is the one the x-acs-date
        # skew check reads instead: clients sign with their real clock (exporter.openapi does), so a test
        # moving a fake clock by hours keeps the scripts on it and the signatures on real time.
        self.clock = clock
        keys = dict(access_keys) if access_keys is not None else {DEMO_ACCESS_KEY_ID: DEMO_ACCESS_KEY_SECRET}
        self.verifier = Verifier(keys, self.sts, clock=self.now, date_clock=signing_clock)
        # Timed scripts (ehpc_simulator.scripts), applied lazily before every request.
        self.scripts = Scheduler(self.now)
        self.url: str | None = None  # set while serve() runs
        super().__init__()
        self._bucket = _QpsLimit()
        # Fault draws and jitter are simulations, not security: plain PRNGs, seedable for replays.
        self._rng = random.Random()  # noqa: S311
        self._rng_key: tuple[int, int | None] | None = None
        self._jitter_rng = random.Random()  # noqa: S311
        self._closing = asyncio.Event()
        self._listing = Listing()

    # ----- public helpers -------------------------------------------------------------------------

    def now(self) -> float:
        """The simulator's clock, read now (a stable callable, whatever ``clock`` becomes)."""
        return self.clock()

    @property
    def signing_clock(self) -> Callable[[], float] | None:
        """The clock the x-acs-date skew check reads instead of ``clock`` (None: ``clock``); settable."""
        return self.verifier.date_clock

    @signing_clock.setter
    def signing_clock(self, clock: Callable[[], float] | None) -> None:
        self.verifier.date_clock = clock

    def schedule(self, steps: Iterable[ScriptStep], start: float | None = None) -> list[DueStep]:
        """Schedule timed steps from ``start`` (default: the clock now); see :mod:`.scripts`.

        ValueError for a bad step list, :class:`~ehpc_simulator.scripts.UnknownImageError` for a
        step naming an image this simulator does not have.
        """
        return self.scripts.schedule(steps, self.images, start)

    def run_due(self) -> list[AppliedStep]:
        """Apply the steps due by the clock now (every request does it first); returns them."""
        return self.scripts.run_due(self.images)

    @property
    def pending_steps(self) -> list[DueStep]:
        """Scheduled steps not yet applied, in due order."""
        return self.scripts.pending

    @property
    def applied_steps(self) -> list[AppliedStep]:
        """Applied steps with their due times, in the order applied: the truth tests compare with."""
        return self.scripts.applied

    def cancel_steps(self) -> list[DueStep]:
        """Drop every pending step; returns them."""
        return self.scripts.cancel()

    @property
    def access_keys(self) -> dict[str, str]:
        """The long-term AccessKey pairs accepted (id -> secret); mutable."""
        return self.verifier.access_keys

    def issue_sts(self, ttl_seconds: int = 3600) -> tuple[str, str, str]:
        """Hand out STS credentials ``(access_key_id, secret, security_token)`` the API accepts."""
        cred = self.sts.issue(ttl_seconds, self.now(), self.account_id)
        return cred.access_key_id, cred.access_key_secret, cred.security_token

    def reindex(self) -> None:
        """Rebuild ListImages indexes; needed only after changing type/category/name/version/create_time
        of a stored image in place (the admin API and adding or removing images do it automatically)."""
        self._listing.invalidate()

    def app(self) -> web.Application:
        """The aiohttp application: the API on ``/`` and the admin API on ``/_sim/``."""
        app = web.Application()
        app.router.add_route("POST", "/", self._api)
        app.router.add_route("GET", "/", self._api)
        admin.add_routes(app.router, self)
        self.attach(app)
        return app

    def attach(self, app: web.Application) -> None:
        """Tie this simulator's lifecycle to ``app`` (an app calling :meth:`answer`, e.g. a gateway)."""
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)

    @contextlib.asynccontextmanager
    async def serve(
        self, host: str = "127.0.0.1", port: int = 0, ssl_context: Any | None = None
    ) -> AsyncIterator[str]:
        """Serve on ``host:port`` (port 0: a free one), over TLS with ``ssl_context``; yields the base URL."""
        async with serve_app(self.app(), host, port, ssl_context) as url:
            self.url = url
            try:
                yield url
            finally:
                self.url = None

    # ----- lifecycle ------------------------------------------------------------------------------

    async def _on_startup(self, _app: web.Application) -> None:
        self._closing = asyncio.Event()

    async def _on_shutdown(self, _app: web.Application) -> None:
        # Wakes stalled "timeout" handlers so shutdown does not wait for them.
        self._closing.set()

    # ----- the API --------------------------------------------------------------------------------

    def _error(self, action: str, code: str, detail: str = "", faults: Faults | None = None) -> _Answer:
        rid = _new_request_id()
        payload: dict[str, Any] = {
            "RequestId": rid,
            "HostId": self.host_id,
            "Code": code,
            "Message": message_of(code, detail),
            "Recommend": f"https://api.aliyun.com/troubleshoot?q={code}&product={PRODUCT}&requestId={rid}",
        }
        if code in PERMISSION_CODES:
            payload["AccessDeniedDetail"] = {
                "PolicyType": "AccountLevelIdentityBasedPolicy",
                "AuthPrincipalOwnerId": "1234567890123456",
                "EncodedDiagnosticMessage": "AQIBIAAAAOPdwKY2QLOvgMEc7SkkoJfj1kvZwsaRqNYMh10Tv0wT",
                "AuthPrincipalType": "SubUser",
                "AuthPrincipalDisplayName": "ehpc-image-exporter",
                "NoPermissionType": "ImplicitDeny",
                "AuthAction": f"ehpc:{action or 'Unknown'}",
            }
        retry_after = None
        if code.startswith("Throttling") and faults is not None:
            retry_after = faults.retry_after_ms
        return _Answer(code=code, status=status_of(code), payload=payload, retry_after_ms=retry_after)

    def _draw(self, faults: Faults) -> str | None:
        """One uniform draw choosing at most one injected fault (see :class:`Faults`)."""
        key = (id(faults), faults.seed)
        if key != self._rng_key:
            self._rng_key = key
            self._rng = random.Random(faults.seed)  # noqa: S311
        if not (faults.timeout_rate or faults.reset_rate or faults.malformed_rate or faults.error_rates):
            return None
        x = self._rng.random()
        for name, rate in (
            ("Timeout", faults.timeout_rate),
            ("ConnectionError", faults.reset_rate),
            ("InvalidResponse", faults.malformed_rate),
            *faults.error_rates.items(),
        ):
            if x < rate:
                return name
            x -= rate
        return None

    async def _delay(self, faults: Faults) -> None:
        if faults.latency_ms or faults.jitter_ms:
            jitter = self._jitter_rng.uniform(-faults.jitter_ms, faults.jitter_ms) if faults.jitter_ms else 0
            delay = max(0.0, faults.latency_ms + jitter) / 1000
            if delay > 0:
                await asyncio.sleep(delay)

    def _send(self, action: str, answer: _Answer) -> web.Response:
        self._count(action, answer.code, answer.status)
        headers = {"Content-Type": JSON_CONTENT_TYPE}
        if answer.payload is not None:
            headers["x-acs-request-id"] = answer.payload["RequestId"]
            body = json.dumps(answer.payload, ensure_ascii=False, separators=(",", ":")).encode()
        else:
            headers["x-acs-request-id"] = _new_request_id()
            body = answer.raw or b""
        if answer.retry_after_ms is not None:
            headers["x-acs-retry-after"] = str(answer.retry_after_ms)
        return web.Response(status=answer.status, body=body, headers=headers)

    async def _api(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        raw_query = request.rel_url.raw_query_string
        verified = self.verifier.verify(request.method, "/", raw_query, request.headers, body)
        return await self.answer(request, body, verified)

    async def answer(
        self, request: web.Request, body: bytes, verified: Verified | AuthFailure
    ) -> web.StreamResponse:
        """Answer an API request whose signature check gave ``verified`` (everything after that check)."""
        self.run_due()
        headers = request.headers
        action = headers.get("x-acs-action", "")[:_ACTION_LABEL_MAX]
        faults = self.faults
        raw_query = request.rel_url.raw_query_string
        answer: _Answer
        if isinstance(verified, AuthFailure):
            answer = self._error(action, verified.code, verified.detail, faults)
        elif action not in ACTIONS:
            answer = self._error(action, "InvalidAction.NotFound")
        elif headers.get("x-acs-version") != API_VERSION:
            answer = self._error(action, "InvalidAction.NotFound", "The version is not supported.")
        elif faults.qps_limit is not None and not self._bucket.take(faults.qps_limit, time.monotonic()):
            answer = self._error(action, "Throttling.User", faults=faults)
        else:
            fault = self._draw(faults)
            if fault == "Timeout":
                # Counted now: the client gives up before the stall ends and sees a timeout.
                self._count(action, "Timeout", 0)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), faults.timeout_seconds)
                _abort_connection(request)
                return web.Response(status=504)  # never reaches the client: the transport is gone
            if fault == "ConnectionError":
                self._count(action, "ConnectionError", 0)
                _abort_connection(request)
                return web.Response(status=500)  # never reaches the client: the transport is gone
            if fault == "InvalidResponse":
                rid = _new_request_id()
                raw = f'{{"RequestId":"{rid}","Success":true,"Image":{{"ImageType":"VM","Na'.encode()
                answer = _Answer(code="InvalidResponse", status=200, raw=raw)
            elif fault is not None:
                answer = self._error(action, fault, faults=faults)
            elif faults.global_error:
                answer = self._error(action, faults.global_error, faults=faults)
            elif action in faults.action_errors:
                answer = self._error(action, faults.action_errors[action], faults=faults)
            else:
                answer = self._business(action, raw_query, headers.get("Content-Type", ""), body, faults)
        await self._delay(faults)
        return self._send(action, answer)

    def _business(
        self, action: str, raw_query: str, content_type: str, body: bytes, faults: Faults
    ) -> _Answer:
        try:
            params = read_params(raw_query, content_type, body)
            if action == "GetImage":
                return self._get_image(params, faults)
            return self._list_images(params)
        except ParamError as exc:
            return self._error(action, "InvalidParams", exc.name)

    def _get_image(self, params: dict[str, str], faults: Faults) -> _Answer:
        image_id = params.get("ImageId", "")
        if not image_id:
            raise ParamError("ImageId")
        image_type = enum_param(params, "ImageType", IMAGE_TYPES)
        category = enum_param(params, "ImageCategory", IMAGE_CATEGORIES)
        regions = json_list(params, "AdditionalRegionIds")
        image = self.images.get(image_id)
        if (
            image is None
            or (image_type is not None and image.image_type != image_type)
            or (category is not None and image.category != category)
        ):
            return self._error("GetImage", "ImageNotFound")
        if image.error:
            return self._error("GetImage", image.error, image.error_detail, faults=faults)
        payload = {
            "RequestId": _new_request_id(),
            "Success": True,
            "TotalCount": 1,
            "Image": render_image(image, regions),
        }
        return _Answer(code="Success", status=200, payload=payload)

    def _list_images(self, params: dict[str, str]) -> _Answer:
        page_number = int_param(params, "PageNumber", 1, 1, None)
        page_size = int_param(params, "PageSize", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE)
        image_type = enum_param(params, "ImageType", IMAGE_TYPES)
        category = enum_param(params, "ImageCategory", IMAGE_CATEGORIES)
        mode = enum_param(params, "Mode", ("List", "Merge")) or "List"
        ids = json_list(params, "ImageIds")
        names = json_list(params, "ImageNames")
        selected = self._listing.select(self.images, image_type, category, mode, ids, names)
        start = (page_number - 1) * page_size
        payload = {
            "RequestId": _new_request_id(),
            "Success": True,
            "TotalCount": len(selected),
            "PageNumber": page_number,
            "PageSize": page_size,
            "Images": [render_list_item(i) for i in selected[start : start + page_size]],
        }
        return _Answer(code="Success", status=200, payload=payload)
