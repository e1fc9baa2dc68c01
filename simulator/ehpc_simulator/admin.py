"""The simulator's admin API under /_sim/: plain JSON, **not authenticated** (a test tool, bound to loopback
by default).

- ``GET /_sim/`` this list.
- ``GET /_sim/images`` -> ``{"images": [...]}``; ``POST /_sim/images`` one image object or
  ``{"images": [...]}`` (SimImage field names; creates or replaces) -> 201.
- ``GET / PATCH / DELETE /_sim/images/{id}``; PATCH takes any SimImage field but ``image_id``
  (typically ``status``, ``error``, ``regions``).
- ``PUT /_sim/images/{id}/regions/{region}`` ``{"status": "..."}``; ``DELETE`` removes the copy.
- ``GET /_sim/faults``; ``PUT /_sim/faults`` replaces all fault settings (absent fields take their
  defaults); ``PATCH /_sim/faults`` changes only the fields given; ``DELETE /_sim/faults`` resets
  every fault setting to its default (the same as ``PUT {}``). All four answer the settings in force.
- ``GET /_sim/counters`` -> ``{"responses": [{"action", "code", "http_status", "count"}]}``;
  ``POST /_sim/counters/reset``.
- ``GET /_sim/sts[?ttl_seconds=N]`` -> STS credentials in the alibabacloud-credentials
  credentials-URI format, accepted by the API until they expire.
- ``POST /_sim/scripts`` ``{"steps": [...], "start"?: <epoch seconds>}`` schedules timed steps
  (:mod:`ehpc_simulator.scripts`; each ``{"after_seconds", "image_id", "region"?, "status" | "error"}``,
  due ``after_seconds`` after ``start``, default the simulator's clock now) -> 201 ``{"scheduled": [...]}``,
  each with its ``id`` and ``due_at``; all or nothing. A step naming an image the simulator lacks is 404
  (the image is what is missing, as for ``/_sim/images/{id}``); every other problem 400, naming the step
  index and field (``steps[2].after_seconds: ...``).
- ``GET /_sim/scripts`` -> ``{"now", "pending": [...], "applied": [...]}``; applied steps add
  ``applied_at``, ``previous`` and ``result``.
- ``DELETE /_sim/scripts`` cancels every pending step -> ``{"cancelled": [...]}``.

Every admin request, like every API request, first applies the steps due by the simulator's clock.

An estate (:mod:`ehpc_simulator.estate`) serves these on each region port for the account named by
``?account=<name or id>``, and :data:`ESTATE_ENDPOINTS` on its STS port:

- ``GET /_sim/estate`` -> regions, ``sts_max_ttl_seconds``, accounts with their AccessKey ids, roles and
  OIDC providers (no secrets).
- ``PATCH /_sim/sts`` ``{"sts_max_ttl_seconds": N | null}``: cap issued lifetimes (null: no cap).
- ``GET /_sim/sts/counters`` -> ``{"responses": [{"action", "code", "http_status", "count"}]}``;
  ``POST /_sim/sts/counters/reset``.
- ``PUT /_sim/trust`` ``{"role_arn": "...", "trusted": false}`` revokes a role's trust policy
  (``true`` restores it) -> the role.
- ``POST /_sim/oidc/token`` ``{"provider": "<ARN or name>", "subject"?, "audience"?, "ttl_seconds"?}``
  -> ``{"token": "<JWT>"}`` signed by that provider's key.

Image listings show a registry password as ``<redacted>``; only the API's GetImage answer carries it.
Errors are ``{"error": "<one line>"}`` with 400 (bad input) or 404 (no such image or region).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ehpc_simulator.model import Faults, SimImage, apply_image_fields, faults_from_dict, image_from_dict
from ehpc_simulator.scripts import UnknownImageError, field_names, steps_from_data

if TYPE_CHECKING:
    from ehpc_simulator.estate import Estate
    from ehpc_simulator.server import Simulator

# What ``GET /_sim/`` answers and ``--help`` shows: one line per resource.
ENDPOINTS: tuple[str, ...] = (
    "GET /_sim/images",
    "POST /_sim/images",
    "GET|PATCH|DELETE /_sim/images/{id}",
    "PUT|DELETE /_sim/images/{id}/regions/{region}",
    "GET|PUT|PATCH|DELETE /_sim/faults",
    "GET /_sim/counters",
    "POST /_sim/counters/reset",
    "GET /_sim/sts?ttl_seconds=N",
    "GET|POST|DELETE /_sim/scripts",
)


ESTATE_ENDPOINTS: tuple[str, ...] = (
    "GET /_sim/estate",
    "PATCH /_sim/sts",
    "GET /_sim/sts/counters",
    "POST /_sim/sts/counters/reset",
    "PUT /_sim/trust",
    "POST /_sim/oidc/token",
)


def add_estate_routes(router: web.UrlDispatcher, estate: Estate) -> None:
    """Register the estate-wide admin API (STS, trust, OIDC tokens) of ``estate`` on ``router``."""
    handlers = _EstateAdmin(estate)
    router.add_get("/_sim", handlers.index)
    router.add_get("/_sim/", handlers.index)
    router.add_get("/_sim/estate", handlers.describe)
    router.add_patch("/_sim/sts", handlers.patch_sts)
    router.add_get("/_sim/sts/counters", handlers.counters)
    router.add_post("/_sim/sts/counters/reset", handlers.reset_counters)
    router.add_put("/_sim/trust", handlers.trust)
    router.add_post("/_sim/oidc/token", handlers.oidc_token)


class _EstateAdmin:
    """The estate admin handlers; they act through :class:`Estate`'s public methods."""

    def __init__(self, estate: Estate) -> None:
        self.estate = estate

    async def index(self, _request: web.Request) -> web.Response:
        return web.json_response({"endpoints": list(ESTATE_ENDPOINTS)})

    async def describe(self, _request: web.Request) -> web.Response:
        return web.json_response(self.estate.describe())

    async def patch_sts(self, request: web.Request) -> web.Response:
        data = await _json_body(request)
        if not isinstance(data, dict) or set(data) != {"sts_max_ttl_seconds"}:
            raise _bad_request('expected {"sts_max_ttl_seconds": <seconds> | null}')
        cap = data["sts_max_ttl_seconds"]
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int | float) or cap <= 0):
            raise _bad_request("sts_max_ttl_seconds: a positive number or null")
        self.estate.sts_max_ttl_seconds = cap
        return web.json_response({"sts_max_ttl_seconds": cap})

    async def counters(self, _request: web.Request) -> web.Response:
        return web.json_response({"responses": self.estate.sts.counter_rows()})

    async def reset_counters(self, _request: web.Request) -> web.Response:
        self.estate.sts.reset_counters()
        return web.json_response({"responses": []})

    async def trust(self, request: web.Request) -> web.Response:
        data = await _json_body(request)
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("role_arn"), str)
            or not isinstance(data.get("trusted"), bool)
        ):
            raise _bad_request('expected {"role_arn": "acs:ram::<account>:role/<name>", "trusted": <bool>}')
        try:
            role = self.estate.set_trust(data["role_arn"], data["trusted"])
        except KeyError:
            raise _not_found("no such role") from None
        return web.json_response(role.to_dict())

    async def oidc_token(self, request: web.Request) -> web.Response:
        data = await _json_body(request)
        if not isinstance(data, dict) or not isinstance(data.get("provider"), str):
            raise _bad_request('expected {"provider": "<ARN or name>", ...}')
        unknown = sorted(set(data) - {"provider", "subject", "audience", "ttl_seconds"})
        if unknown:
            raise _bad_request(f"unknown field(s) {', '.join(unknown)}")
        kwargs: dict[str, Any] = {}
        for key in ("subject", "audience"):
            if key in data:
                if not isinstance(data[key], str):
                    raise _bad_request(f"{key}: expected a string")
                kwargs[key] = data[key]
        if "ttl_seconds" in data:
            ttl = data["ttl_seconds"]
            if isinstance(ttl, bool) or not isinstance(ttl, int | float):
                raise _bad_request("ttl_seconds: expected a number")
            kwargs["ttl_seconds"] = ttl
        try:
            token = self.estate.issue_oidc_token(data["provider"], **kwargs)
        except KeyError:
            raise _not_found("no such OIDC provider") from None
        return web.json_response({"token": token})


def add_routes(
    router: web.UrlDispatcher,
    sim: Simulator | None = None,
    *,
    resolve: Callable[[web.Request], Simulator] | None = None,
) -> None:
    """Register the admin API of ``sim`` on ``router``; or, with ``resolve``, of the simulator it picks
    for each request (an estate's region gateway picks by ``?account=``)."""
    if resolve is None:
        if sim is None:
            raise TypeError("add_routes needs sim or resolve")
        fixed = sim

        def resolve(_request: web.Request) -> Simulator:
            return fixed

    admin = _Admin(resolve)
    router.add_get("/_sim", admin.index)
    router.add_get("/_sim/", admin.index)
    router.add_get("/_sim/images", admin.list_images)
    router.add_post("/_sim/images", admin.add_images)
    router.add_get("/_sim/images/{id}", admin.get_image)
    router.add_patch("/_sim/images/{id}", admin.patch_image)
    router.add_delete("/_sim/images/{id}", admin.delete_image)
    router.add_put("/_sim/images/{id}/regions/{region}", admin.put_region)
    router.add_delete("/_sim/images/{id}/regions/{region}", admin.delete_region)
    router.add_get("/_sim/faults", admin.get_faults)
    router.add_put("/_sim/faults", admin.put_faults)
    router.add_patch("/_sim/faults", admin.patch_faults)
    router.add_delete("/_sim/faults", admin.delete_faults)
    router.add_get("/_sim/counters", admin.counters)
    router.add_post("/_sim/counters/reset", admin.reset_counters)
    router.add_get("/_sim/sts", admin.sts)
    router.add_get("/_sim/scripts", admin.get_scripts)
    router.add_post("/_sim/scripts", admin.post_scripts)
    router.add_delete("/_sim/scripts", admin.delete_scripts)


class _Admin:
    """The handlers; they change the simulator only through its public attributes and methods."""

    def __init__(self, resolve: Callable[[web.Request], Simulator]) -> None:
        self._pick = resolve

    def _resolve(self, request: web.Request) -> Simulator:
        sim = self._pick(request)
        # What an admin request reads or changes must already show the steps due by now.
        sim.run_due()
        return sim

    async def index(self, _request: web.Request) -> web.Response:
        return web.json_response({"endpoints": list(ENDPOINTS)})

    async def list_images(self, request: web.Request) -> web.Response:
        return web.json_response({"images": [i.to_dict() for i in self._resolve(request).images.values()]})

    async def add_images(self, request: web.Request) -> web.Response:
        data = await _json_body(request)
        items = data.get("images") if isinstance(data, dict) and "images" in data else [data]
        if not isinstance(items, list):
            raise _bad_request("images: expected a list")
        try:
            new = [image_from_dict(d, f"images[{n}]") for n, d in enumerate(items)]
        except ValueError as exc:
            raise _bad_request(str(exc)) from None
        for image in new:
            self._resolve(request).images[image.image_id] = image
        return web.json_response({"images": [i.to_dict() for i in new]}, status=201)

    def _image_or_404(self, request: web.Request) -> SimImage:
        image = self._resolve(request).images.get(request.match_info["id"])
        if image is None:
            raise _not_found("no such image")
        return image

    async def get_image(self, request: web.Request) -> web.Response:
        return web.json_response(self._image_or_404(request).to_dict())

    async def patch_image(self, request: web.Request) -> web.Response:
        image = self._image_or_404(request)
        data = await _json_body(request)
        if not isinstance(data, dict) or "image_id" in data:
            raise _bad_request("expected an object of SimImage fields other than image_id")
        try:
            apply_image_fields(image, data, "image")
        except ValueError as exc:
            raise _bad_request(str(exc)) from None
        self._resolve(request).reindex()  # the patch may change a field ListImages filters on
        return web.json_response(image.to_dict())

    async def delete_image(self, request: web.Request) -> web.Response:
        self._image_or_404(request)
        del self._resolve(request).images[request.match_info["id"]]
        return web.Response(status=204)

    async def put_region(self, request: web.Request) -> web.Response:
        image = self._image_or_404(request)
        data = await _json_body(request)
        if not isinstance(data, dict) or not isinstance(data.get("status"), str):
            raise _bad_request('expected {"status": "<region status>"}')
        image.regions[request.match_info["region"]] = data["status"]
        return web.json_response(image.to_dict())

    async def delete_region(self, request: web.Request) -> web.Response:
        image = self._image_or_404(request)
        if image.regions.pop(request.match_info["region"], None) is None:
            raise _not_found("no such region")
        return web.Response(status=204)

    async def get_faults(self, request: web.Request) -> web.Response:
        return web.json_response(self._resolve(request).faults.to_dict())

    async def put_faults(self, request: web.Request) -> web.Response:
        return await self._set_faults(request, base=None)

    async def patch_faults(self, request: web.Request) -> web.Response:
        return await self._set_faults(request, base=self._resolve(request).faults)

    async def delete_faults(self, request: web.Request) -> web.Response:
        sim = self._resolve(request)
        sim.faults = Faults()
        return web.json_response(sim.faults.to_dict())

    async def _set_faults(self, request: web.Request, base: Faults | None) -> web.Response:
        data = await _json_body(request)
        sim = self._resolve(request)
        try:
            sim.faults = faults_from_dict(data, base)
        except ValueError as exc:
            raise _bad_request(str(exc)) from None
        return web.json_response(sim.faults.to_dict())

    async def counters(self, request: web.Request) -> web.Response:
        return web.json_response({"responses": self._resolve(request).counter_rows()})

    async def reset_counters(self, request: web.Request) -> web.Response:
        self._resolve(request).reset_counters()
        return web.json_response({"responses": []})

    async def sts(self, request: web.Request) -> web.Response:
        try:
            ttl = int(request.query.get("ttl_seconds", "3600"))
        except ValueError:
            raise _bad_request("ttl_seconds: expected an integer") from None
        if ttl <= 0:
            raise _bad_request("ttl_seconds: must be positive")
        sim = self._resolve(request)
        cred = sim.sts.issue(ttl, sim.now(), sim.account_id)
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

    async def get_scripts(self, request: web.Request) -> web.Response:
        sim = self._resolve(request)
        return web.json_response(
            {
                "now": sim.now(),
                "pending": [d.to_dict() for d in sim.pending_steps],
                "applied": [a.to_dict() for a in sim.applied_steps],
            }
        )

    async def post_scripts(self, request: web.Request) -> web.Response:
        data = await _json_body(request)
        if not isinstance(data, dict):
            raise _bad_request('expected {"steps": [...], "start"?: <epoch seconds>}')
        unknown = set(data) - {"steps", "start"}
        if unknown:
            raise _bad_request(f"unknown field(s) {field_names(unknown)}")
        if "steps" not in data:
            raise _bad_request("steps: required")
        sim = self._resolve(request)
        try:
            steps = steps_from_data(data["steps"])
            due = sim.schedule(steps, data.get("start"))
        except UnknownImageError as exc:
            raise _not_found(str(exc)) from None
        except ValueError as exc:
            raise _bad_request(str(exc)) from None
        return web.json_response({"scheduled": [d.to_dict() for d in due]}, status=201)

    async def delete_scripts(self, request: web.Request) -> web.Response:
        cancelled = self._resolve(request).cancel_steps()
        return web.json_response({"cancelled": [d.to_dict() for d in cancelled]})


def bad_request(message: str) -> web.HTTPBadRequest:
    """A 400 answer of the admin API: ``{"error": message}``."""
    return _bad_request(message)


def not_found(message: str) -> web.HTTPNotFound:
    """A 404 answer of the admin API: ``{"error": message}``."""
    return _not_found(message)


def _bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": message}), content_type="application/json")


def _not_found(message: str) -> web.HTTPNotFound:
    return web.HTTPNotFound(text=json.dumps({"error": message}), content_type="application/json")


async def _json_body(request: web.Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        raise _bad_request("the body is not JSON") from None
