"""Typed models of the E-HPC Instant API responses, parsed strictly from JSON bodies.

Registry credentials (``ContainerImageSpec.RegistryCredential``) are deliberately never parsed into a
model: what is not held cannot leak into a label, a log line or a page.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from exporter.openapi.errors import INVALID_RESPONSE, ApiError

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*GiB\s*$")
GIB = 1024**3


def parse_size(value: str) -> int | None:
    """``"40 GiB"`` to bytes; ``None`` for an empty or unparseable size."""
    m = _SIZE_RE.match(value)
    return round(float(m.group(1)) * GIB) if m else None


def parse_time(value: str) -> datetime | None:
    """ISO 8601 UTC (``2022-12-23T09:51:39Z``) to an aware datetime; ``None`` when empty or malformed."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class RegionReplica:
    """One ``AdditionalRegionsInfo`` entry: the image's copy in another region."""

    region_id: str
    image_id: str
    status: str


@dataclass(frozen=True, slots=True)
class Image:
    """The fields of a GetImage answer the exporter uses (never the registry credential)."""

    image_id: str
    image_type: str
    name: str
    version: str
    description: str
    app_id: str
    status: str
    size_bytes: int | None
    create_time: datetime | None
    os_tag: str
    platform: str
    architecture: str
    registry_url: str
    is_acr_registry: bool | None
    is_acr_enterprise: bool | None
    registry_cri_id: str
    document_id: str
    additional_regions: tuple[RegionReplica, ...]
    request_id: str


@dataclass(frozen=True, slots=True)
class ImageSummary:
    """One item of a ListImages page."""

    image_id: str
    image_type: str
    name: str
    version: str
    description: str
    app_id: str
    os_tag: str
    create_time: datetime | None
    update_time: datetime | None


@dataclass(frozen=True, slots=True)
class ImagePage:
    """One page of ListImages."""

    images: tuple[ImageSummary, ...]
    total_count: int
    page_number: int
    page_size: int
    request_id: str


def _invalid(action: str, what: str, request_id: str | None) -> ApiError:
    return ApiError(
        code=INVALID_RESPONSE,
        message=f"{action}: {what}",
        http_status=200,
        request_id=request_id,
        action=action,
    )


class _Reader:
    """Typed access to a JSON object that turns every shape mismatch into ``InvalidResponse``."""

    def __init__(self, action: str, obj: Any, where: str, request_id: str | None) -> None:
        if not isinstance(obj, Mapping):
            raise _invalid(action, f"{where or 'body'} is not an object", request_id)
        self.action, self.obj, self.where, self.request_id = action, obj, where, request_id

    def _path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def text(self, key: str) -> str:
        value = self.obj.get(key)
        if value is None:
            return ""
        if not isinstance(value, str):
            raise _invalid(self.action, f"{self._path(key)} is not a string", self.request_id)
        return value

    def flag(self, key: str) -> bool | None:
        value = self.obj.get(key)
        if value is None or isinstance(value, bool):
            return value
        raise _invalid(self.action, f"{self._path(key)} is not a boolean", self.request_id)

    def integer(self, key: str, default: int) -> int:
        value = self.obj.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise _invalid(self.action, f"{self._path(key)} is not an integer", self.request_id)
        return value

    def child(self, key: str, *, required: bool = False) -> _Reader | None:
        value = self.obj.get(key)
        if value is None:
            if required:
                raise _invalid(self.action, f"{self._path(key)} is missing", self.request_id)
            return None
        return _Reader(self.action, value, self._path(key), self.request_id)

    def children(self, key: str) -> list[_Reader]:
        value = self.obj.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise _invalid(self.action, f"{self._path(key)} is not an array", self.request_id)
        return [
            _Reader(self.action, v, f"{self._path(key)}[{i}]", self.request_id) for i, v in enumerate(value)
        ]


def _request_id(body: Any) -> str | None:
    rid = body.get("RequestId") if isinstance(body, Mapping) else None
    return rid if isinstance(rid, str) else None


def parse_get_image(body: Any, requested_id: str) -> Image:
    """Parse a GetImage 200 body; any shape the API does not document raises ``InvalidResponse``."""
    rid = _request_id(body)
    root = _Reader("GetImage", body, "", rid)
    if root.flag("Success") is False:
        raise _invalid("GetImage", "Success is false", rid)
    img = root.child("Image", required=True)
    assert img is not None  # required=True raised otherwise
    vm = img.child("VMImageSpec")
    ct = img.child("ContainerImageSpec")
    spec = vm if vm is not None else ct
    doc = img.child("DocumentInfo")
    regions = tuple(
        RegionReplica(region_id=r.text("RegionId"), image_id=r.text("ImageId"), status=r.text("Status"))
        for r in img.children("AdditionalRegionsInfo")
    )
    image_type = img.text("ImageType")
    if not image_type:
        raise _invalid("GetImage", "Image.ImageType is missing", rid)
    return Image(
        # The watched id is the identity of the series; the VM spec repeats it for VM images.
        image_id=requested_id or (vm.text("ImageId") if vm is not None else ""),
        image_type=image_type,
        name=img.text("Name"),
        version=img.text("Version"),
        description=img.text("Description"),
        app_id=img.text("AppId"),
        status=img.text("Status"),
        size_bytes=parse_size(img.text("Size")),
        create_time=parse_time(img.text("CreateTime")),
        os_tag=spec.text("OsTag") if spec is not None else "",
        platform=spec.text("Platform") if spec is not None else "",
        architecture=spec.text("Architecture") if spec is not None else "",
        registry_url=ct.text("RegistryUrl") if ct is not None else "",
        is_acr_registry=ct.flag("IsACRRegistry") if ct is not None else None,
        is_acr_enterprise=ct.flag("IsACREnterprise") if ct is not None else None,
        registry_cri_id=ct.text("RegistryCriId") if ct is not None else "",
        document_id=doc.text("DocumentId") if doc is not None else "",
        additional_regions=regions,
        request_id=rid or "",
    )


def parse_list_images(body: Any) -> ImagePage:
    """Parse one ListImages 200 body."""
    rid = _request_id(body)
    root = _Reader("ListImages", body, "", rid)
    if root.flag("Success") is False:
        raise _invalid("ListImages", "Success is false", rid)
    items = tuple(
        ImageSummary(
            image_id=i.text("ImageId"),
            image_type=i.text("ImageType"),
            name=i.text("Name"),
            version=i.text("Version"),
            description=i.text("Description"),
            app_id=i.text("AppId"),
            os_tag=i.text("OsTag"),
            create_time=parse_time(i.text("CreateTime")),
            update_time=parse_time(i.text("UpdateTime")),
        )
        for i in root.children("Images")
    )
    return ImagePage(
        images=items,
        total_count=root.integer("TotalCount", len(items)),
        page_number=root.integer("PageNumber", 1),
        page_size=root.integer("PageSize", 20),
        request_id=rid or "",
    )
