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
- Processing order per request: signature (see :mod:`exporter.simulator.auth`), action and version,
  the QPS limit (``Throttling.User``), one fault draw (:class:`Faults`), ``Faults.global_error``, then
  the action itself (per-image ``SimImage.error`` applies to GetImage). Latency is added to every
  answer; injected timeouts and resets skip it.

Every answer of the API (errors included) carries ``x-acs-request-id`` and is counted once by
(action, code); injected timeouts, resets and malformed bodies are counted under the code the client
will see: ``Timeout``, ``ConnectionError``, ``InvalidResponse``.

Admin API (plain JSON, **not authenticated**: a test tool, bound to loopback by default), under /_sim/:

- ``GET /_sim/`` this list.
- ``GET /_sim/images`` -> ``{"images": [...]}``; ``POST /_sim/images`` one image object or
  ``{"images": [...]}`` (SimImage field names; creates or replaces) -> 201.
- ``GET / PATCH / DELETE /_sim/images/{id}``; PATCH takes any SimImage field but ``image_id``
  (typically ``status``, ``error``, ``regions``).
- ``PUT /_sim/images/{id}/regions/{region}`` ``{"status": "..."}``; ``DELETE`` removes the copy.
- ``GET /_sim/faults``; ``PUT /_sim/faults`` replaces all fault settings (absent fields take their
  defaults); ``PATCH /_sim/faults`` changes only the fields given.
- ``GET /_sim/counters`` -> ``{"responses": [{"action", "code", "http_status", "count"}]}``;
  ``POST /_sim/counters/reset``.
- ``GET /_sim/sts[?ttl_seconds=N]`` -> STS credentials in the alibabacloud-credentials
  credentials-URI format, accepted by the API until they expire.

Image listings show a registry password as ``<redacted>``; only the API's GetImage answer carries it.
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
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from exporter.simulator.auth import AuthFailure, StsStore, Verifier
from exporter.simulator.catalogue import (
    ACTIONS,
    API_VERSION,
    PERMISSION_CODES,
    PRODUCT,
    message_of,
    status_of,
)
from exporter.simulator.model import (
    IMAGE_CATEGORIES,
    IMAGE_TYPES,
    Faults,
    SimImage,
    apply_image_fields,
    faults_from_dict,
    image_from_dict,
    render_image,
    render_list_item,
)

# Public demo credentials: documented, not secret, accepted only by the simulator.
DEMO_ACCESS_KEY_ID = "DEMO-EHPC-SIM-ACCESS-KEY"
DEMO_ACCESS_KEY_SECRET = "demo-ehpc-simulator-secret-not-a-real-key"  # noqa: S105 - public demo value

JSON_CONTENT_TYPE = "application/json;charset=utf-8"
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20
_ACTION_LABEL_MAX = 64  # unknown actions are counted under their (truncated) name
_LIST_CACHE_MAX = 64


class _ImageTable(dict[str, SimImage]):
    """The image dict, counting structural changes so ListImages indexes know when to rebuild."""

    generation = 0

    def __setitem__(self, key: str, value: SimImage) -> None:
        self.generation += 1
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self.generation += 1
        super().__delitem__(key)

    def pop(self, key: str, *default: Any) -> Any:
        self.generation += 1
        return super().pop(key, *default)

    def popitem(self) -> tuple[str, SimImage]:
        self.generation += 1
        return super().popitem()

    def clear(self) -> None:
        self.generation += 1
        super().clear()

    def update(self, *args: Any, **kwargs: Any) -> None:
        self.generation += 1
        super().update(*args, **kwargs)

    def setdefault(self, key: str, default: SimImage) -> SimImage:
        self.generation += 1
        return super().setdefault(key, default)

    def __ior__(self, other: Any) -> _ImageTable:  # type: ignore[override,misc]
        self.generation += 1
        super().update(other)
        return self


class _TokenBucket:
    """Server-side QPS limit: ``rate`` tokens a second, bursts of up to ``max(1, rate)``."""

    def __init__(self) -> None:
        self.rate: float | None = None
        self.tokens = 0.0
        self.stamp = 0.0

    def take(self, rate: float, now: float) -> bool:
        capacity = max(1.0, rate)
        if rate != self.rate:
            self.rate, self.tokens, self.stamp = rate, capacity, now
        self.tokens = min(capacity, self.tokens + (now - self.stamp) * rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class _ParamError(Exception):
    """A request parameter failed validation (answered ``InvalidParams``)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


@dataclass(frozen=True, slots=True)
class _Answer:
    """An API answer before it is sent: status, JSON payload or raw body, and the code it is counted as."""

    code: str
    status: int
    payload: dict[str, Any] | None = None
    raw: bytes | None = None
    retry_after_ms: int | None = None


def _new_request_id() -> str:
    return str(uuid.uuid4()).upper()


def _json_list(params: Mapping[str, str], name: str) -> list[str] | None:
    """A JSON-array-of-strings parameter (``["a","b"]``); None when absent."""
    raw = params.get(name)
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        raise _ParamError(name) from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _ParamError(name)
    return list(dict.fromkeys(value))  # de-duplicated, order kept


def _int_param(params: Mapping[str, str], name: str, default: int, low: int, high: int | None) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _ParamError(name) from None
    if value < low or (high is not None and value > high):
        raise _ParamError(name)
    return value


def _enum_param(params: Mapping[str, str], name: str, allowed: Iterable[str]) -> str | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if value not in allowed:
        raise _ParamError(name)
    return value


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


class Simulator:
    """A fake E-HPC Instant endpoint with fault injection, exact answer counters and an admin API."""

    def __init__(
        self,
        *,
        images: Iterable[SimImage] = (),
        access_keys: Mapping[str, str] | None = None,
        faults: Faults | None = None,
        region_id: str = "cn-hangzhou",
    ) -> None:
        self.images: dict[str, SimImage] = _ImageTable((i.image_id, i) for i in images)
        self.faults = faults if faults is not None else Faults()
        self.region_id = region_id
        self.host_id = f"ehpcinstant.{region_id}.aliyuncs.com"
        self.sts = StsStore()
        keys = dict(access_keys) if access_keys is not None else {DEMO_ACCESS_KEY_ID: DEMO_ACCESS_KEY_SECRET}
        self.verifier = Verifier(keys, self.sts)
        self.url: str | None = None  # set while serve() runs
        self._counts: dict[tuple[str, str, int], int] = {}
        self._bucket = _TokenBucket()
        # Fault draws and jitter are simulations, not security: plain PRNGs, seedable for replays.
        self._rng = random.Random()  # noqa: S311
        self._rng_key: tuple[int, int | None] | None = None
        self._jitter_rng = random.Random()  # noqa: S311
        self._closing = asyncio.Event()
        self._list_cache: dict[tuple[Any, ...], list[SimImage]] = {}
        self._name_index: dict[str, list[str]] | None = None
        self._indexed_generation = -1

    # ----- public helpers -------------------------------------------------------------------------

    @property
    def access_keys(self) -> dict[str, str]:
        """The long-term AccessKey pairs accepted (id -> secret); mutable."""
        return self.verifier.access_keys

    def counters(self) -> dict[tuple[str, str], int]:
        """(action, code) -> answers sent, ``Success`` for 200s; transport faults under the client's code."""
        out: dict[tuple[str, str], int] = {}
        for (action, code, _status), n in self._counts.items():
            out[action, code] = out.get((action, code), 0) + n
        return out

    def counter_rows(self) -> list[dict[str, Any]]:
        """The counters with the HTTP status of each (0 when no answer was sent), sorted."""
        return [
            {"action": a, "code": c, "http_status": s, "count": n}
            for (a, c, s), n in sorted(self._counts.items())
        ]

    def reset_counters(self) -> None:
        """Forget every count."""
        self._counts.clear()

    def issue_sts(self, ttl_seconds: int = 3600) -> tuple[str, str, str]:
        """Hand out STS credentials ``(access_key_id, secret, security_token)`` the API accepts."""
        cred = self.sts.issue(ttl_seconds, self.verifier.clock())
        return cred.access_key_id, cred.access_key_secret, cred.security_token

    def reindex(self) -> None:
        """Rebuild ListImages indexes; needed only after changing type/category/name/version/create_time
        of a stored image in place (the admin API and adding or removing images do it automatically)."""
        self._indexed_generation = -1

    def app(self) -> web.Application:
        """The aiohttp application: the API on ``/`` and the admin API on ``/_sim/``."""
        app = web.Application()
        app.router.add_route("POST", "/", self._api)
        app.router.add_route("GET", "/", self._api)
        r = app.router
        r.add_get("/_sim", self._admin_index)
        r.add_get("/_sim/", self._admin_index)
        r.add_get("/_sim/images", self._admin_list_images)
        r.add_post("/_sim/images", self._admin_add_images)
        r.add_get("/_sim/images/{id}", self._admin_get_image)
        r.add_patch("/_sim/images/{id}", self._admin_patch_image)
        r.add_delete("/_sim/images/{id}", self._admin_delete_image)
        r.add_put("/_sim/images/{id}/regions/{region}", self._admin_put_region)
        r.add_delete("/_sim/images/{id}/regions/{region}", self._admin_delete_region)
        r.add_get("/_sim/faults", self._admin_get_faults)
        r.add_put("/_sim/faults", self._admin_put_faults)
        r.add_patch("/_sim/faults", self._admin_patch_faults)
        r.add_get("/_sim/counters", self._admin_counters)
        r.add_post("/_sim/counters/reset", self._admin_reset_counters)
        r.add_get("/_sim/sts", self._admin_sts)
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)
        return app

    @contextlib.asynccontextmanager
    async def serve(
        self, host: str = "127.0.0.1", port: int = 0, ssl_context: Any | None = None
    ) -> AsyncIterator[str]:
        """Serve on ``host:port`` (port 0: a free one), over TLS with ``ssl_context``; yields the base URL."""
        runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port, ssl_context=ssl_context, backlog=1024)
            await site.start()
            bound_host, bound_port = runner.addresses[0][:2]
            shown = f"[{bound_host}]" if ":" in bound_host else bound_host
            self.url = f"{'https' if ssl_context is not None else 'http'}://{shown}:{bound_port}"
            yield self.url
        finally:
            self.url = None
            await runner.cleanup()

    # ----- lifecycle ------------------------------------------------------------------------------

    async def _on_startup(self, _app: web.Application) -> None:
        self._closing = asyncio.Event()

    async def _on_shutdown(self, _app: web.Application) -> None:
        # Wakes stalled "timeout" handlers so shutdown does not wait for them.
        self._closing.set()

    # ----- the API --------------------------------------------------------------------------------

    def _count(self, action: str, code: str, status: int) -> None:
        key = (action, code, status)
        self._counts[key] = self._counts.get(key, 0) + 1

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
        headers = request.headers
        action = headers.get("x-acs-action", "")[:_ACTION_LABEL_MAX]
        faults = self.faults
        raw_query = request.rel_url.raw_query_string
        answer: _Answer
        verified = self.verifier.verify(request.method, "/", raw_query, headers, body)
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
            else:
                answer = self._business(action, raw_query, headers.get("Content-Type", ""), body, faults)
        await self._delay(faults)
        return self._send(action, answer)

    def _business(
        self, action: str, raw_query: str, content_type: str, body: bytes, faults: Faults
    ) -> _Answer:
        params = dict(parse_qsl(raw_query, keep_blank_values=True))
        if body and content_type.split(";", 1)[0].strip().lower() == "application/x-www-form-urlencoded":
            try:
                form = body.decode("utf-8")
            except UnicodeDecodeError:
                return self._error(action, "InvalidParams", "Body")
            params.update(parse_qsl(form, keep_blank_values=True))
        try:
            if action == "GetImage":
                return self._get_image(params, faults)
            return self._list_images(params)
        except _ParamError as exc:
            return self._error(action, "InvalidParams", exc.name)

    def _get_image(self, params: dict[str, str], faults: Faults) -> _Answer:
        image_id = params.get("ImageId", "")
        if not image_id:
            raise _ParamError("ImageId")
        image_type = _enum_param(params, "ImageType", IMAGE_TYPES)
        category = _enum_param(params, "ImageCategory", IMAGE_CATEGORIES)
        regions = _json_list(params, "AdditionalRegionIds")
        image = self.images.get(image_id)
        if (
            image is None
            or (image_type is not None and image.image_type != image_type)
            or (category is not None and image.category != category)
        ):
            return self._error("GetImage", "ImageNotFound")
        if image.error:
            return self._error("GetImage", image.error, faults=faults)
        payload = {
            "RequestId": _new_request_id(),
            "Success": True,
            "TotalCount": 1,
            "Image": render_image(image, regions),
        }
        return _Answer(code="Success", status=200, payload=payload)

    def _list_images(self, params: dict[str, str]) -> _Answer:
        page_number = _int_param(params, "PageNumber", 1, 1, None)
        page_size = _int_param(params, "PageSize", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE)
        image_type = _enum_param(params, "ImageType", IMAGE_TYPES)
        category = _enum_param(params, "ImageCategory", IMAGE_CATEGORIES)
        mode = _enum_param(params, "Mode", ("List", "Merge")) or "List"
        ids = _json_list(params, "ImageIds")
        names = _json_list(params, "ImageNames")
        selected = self._select(image_type, category, mode, ids, names)
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

    def _refresh_indexes(self) -> None:
        generation = self.images.generation if isinstance(self.images, _ImageTable) else -2
        if generation != self._indexed_generation or generation == -2:
            self._list_cache.clear()
            self._name_index = None
            self._indexed_generation = generation

    def _select(
        self,
        image_type: str | None,
        category: str | None,
        mode: str,
        ids: list[str] | None,
        names: list[str] | None,
    ) -> list[SimImage]:
        """The images ListImages answers, O(k) for id/name filters and cached per filter otherwise."""
        self._refresh_indexes()

        def keep(i: SimImage) -> bool:
            return (image_type is None or i.image_type == image_type) and (
                category is None or i.category == category
            )

        if ids is not None or names is not None:
            if ids is not None:
                found = [self.images[i] for i in ids if i in self.images]
                if names is not None:
                    wanted = set(names)
                    found = [i for i in found if i.name in wanted]
            else:
                index = self._names()
                found = [self.images[i] for n in names or () for i in index.get(n, ())]
            found = [i for i in found if keep(i)]
            return _merge(found) if mode == "Merge" else found
        key = (image_type, category, mode)
        cached = self._list_cache.get(key)
        if cached is None:
            cached = [i for i in self.images.values() if keep(i)]
            if mode == "Merge":
                cached = _merge(cached)
            if len(self._list_cache) >= _LIST_CACHE_MAX:
                self._list_cache.clear()
            self._list_cache[key] = cached
        return cached

    def _names(self) -> dict[str, list[str]]:
        if self._name_index is None:
            index: dict[str, list[str]] = {}
            for image in self.images.values():
                index.setdefault(image.name, []).append(image.image_id)
            self._name_index = index
        return self._name_index

    # ----- admin API ------------------------------------------------------------------------------

    async def _admin_index(self, _request: web.Request) -> web.Response:
        return web.json_response({"endpoints": list(_admin_endpoints())})

    async def _admin_list_images(self, _request: web.Request) -> web.Response:
        return web.json_response({"images": [i.to_dict() for i in self.images.values()]})

    async def _admin_add_images(self, request: web.Request) -> web.Response:
        data = await _json_body(request)
        items = data.get("images") if isinstance(data, dict) and "images" in data else [data]
        if not isinstance(items, list):
            raise _bad_request("images: expected a list")
        try:
            new = [image_from_dict(d, f"images[{n}]") for n, d in enumerate(items)]
        except ValueError as exc:
            raise _bad_request(str(exc)) from None
        for image in new:
            self.images[image.image_id] = image
        return web.json_response({"images": [i.to_dict() for i in new]}, status=201)

    def _image_or_404(self, request: web.Request) -> SimImage:
        image = self.images.get(request.match_info["id"])
        if image is None:
            raise web.HTTPNotFound(
                text=json.dumps({"error": "no such image"}), content_type="application/json"
            )
        return image

    async def _admin_get_image(self, request: web.Request) -> web.Response:
        return web.json_response(self._image_or_404(request).to_dict())

    async def _admin_patch_image(self, request: web.Request) -> web.Response:
        image = self._image_or_404(request)
        data = await _json_body(request)
        if not isinstance(data, dict) or "image_id" in data:
            raise _bad_request("expected an object of SimImage fields other than image_id")
        try:
            apply_image_fields(image, data, "image")
        except ValueError as exc:
            raise _bad_request(str(exc)) from None
        self.reindex()
        return web.json_response(image.to_dict())

    async def _admin_delete_image(self, request: web.Request) -> web.Response:
        self._image_or_404(request)
        del self.images[request.match_info["id"]]
        return web.Response(status=204)

    async def _admin_put_region(self, request: web.Request) -> web.Response:
        image = self._image_or_404(request)
        data = await _json_body(request)
        if not isinstance(data, dict) or not isinstance(data.get("status"), str):
            raise _bad_request('expected {"status": "<region status>"}')
        image.regions[request.match_info["region"]] = data["status"]
        return web.json_response(image.to_dict())

    async def _admin_delete_region(self, request: web.Request) -> web.Response:
        image = self._image_or_404(request)
        if image.regions.pop(request.match_info["region"], None) is None:
            raise web.HTTPNotFound(
                text=json.dumps({"error": "no such region"}), content_type="application/json"
            )
        return web.Response(status=204)

    async def _admin_get_faults(self, _request: web.Request) -> web.Response:
        return web.json_response(self.faults.to_dict())

    async def _admin_put_faults(self, request: web.Request) -> web.Response:
        return await self._set_faults(request, base=None)

    async def _admin_patch_faults(self, request: web.Request) -> web.Response:
        return await self._set_faults(request, base=self.faults)

    async def _set_faults(self, request: web.Request, base: Faults | None) -> web.Response:
        data = await _json_body(request)
        try:
            self.faults = faults_from_dict(data, base)
        except ValueError as exc:
            raise _bad_request(str(exc)) from None
        return web.json_response(self.faults.to_dict())

    async def _admin_counters(self, _request: web.Request) -> web.Response:
        return web.json_response({"responses": self.counter_rows()})

    async def _admin_reset_counters(self, _request: web.Request) -> web.Response:
        self.reset_counters()
        return web.json_response({"responses": []})

    async def _admin_sts(self, request: web.Request) -> web.Response:
        try:
            ttl = int(request.query.get("ttl_seconds", "3600"))
        except ValueError:
            raise _bad_request("ttl_seconds: expected an integer") from None
        if ttl <= 0:
            raise _bad_request("ttl_seconds: must be positive")
        cred = self.sts.issue(ttl, self.verifier.clock())
        expiration = datetime.fromtimestamp(cred.expires_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return web.json_response(
            {
                "Code": "Success",
                "AccessKeyId": cred.access_key_id,
                "AccessKeySecret": cred.access_key_secret,
                "SecurityToken": cred.security_token,
                "Expiration": expiration,
            }
        )


def _merge(images: list[SimImage]) -> list[SimImage]:
    """ListImages ``Mode=Merge``: the newest image of each (type, name), in first-seen order."""
    best: dict[tuple[str, str], SimImage] = {}
    for image in images:
        key = (image.image_type, image.name or image.image_id)
        current = best.get(key)
        if current is None or (image.create_time, image.version) > (current.create_time, current.version):
            best[key] = image
    return list(best.values())


def _admin_endpoints() -> Iterator[str]:
    yield "GET /_sim/images"
    yield "POST /_sim/images"
    yield "GET|PATCH|DELETE /_sim/images/{id}"
    yield "PUT|DELETE /_sim/images/{id}/regions/{region}"
    yield "GET|PUT|PATCH /_sim/faults"
    yield "GET /_sim/counters"
    yield "POST /_sim/counters/reset"
    yield "GET /_sim/sts?ttl_seconds=N"


def _bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": message}), content_type="application/json")


async def _json_body(request: web.Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        raise _bad_request("the body is not JSON") from None
