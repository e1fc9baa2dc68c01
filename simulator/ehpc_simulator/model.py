"""The simulator's data: images of the fake cloud, fault settings, and how both render to JSON."""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from ehpc_simulator.catalogue import ACTIONS, is_known

IMAGE_TYPES = ("VM", "Container")
IMAGE_CATEGORIES = ("Public", "Custom")


@dataclass
class SimImage:
    """One image of the fake cloud; mutable so tests and the admin API can change it between calls."""

    image_id: str
    image_type: str = "VM"
    category: str = "Custom"
    name: str = ""
    version: str = "v1"
    description: str = ""
    app_id: str = ""
    status: str = "Available"
    size_gib: float = 40
    create_time: str = "2024-01-01T00:00:00Z"
    os_tag: str = ""
    platform: str = ""
    architecture: str = "x86_64"
    # Container images only. The password is answered in RegistryCredential like the real API does,
    # so tests can prove the exporter never repeats it.
    registry_url: str = ""
    registry_username: str = ""
    registry_password: str = field(default="", repr=False)
    # AdditionalRegionsInfo: region id -> status of the image's copy in that region.
    regions: dict[str, str] = field(default_factory=dict)
    # If set, GetImage of this image always answers this error code.
    error: str | None = None
    # Appended to that error's documented Message (real messages echo parameters back; tests plant
    # secrets here that only the exporter's output gate may keep out of its logs).
    error_detail: str = ""
    # Less interesting fields, rendered so the answers carry every documented key.
    update_time: str = ""
    document_id: int = 0
    document: str = ""
    encoding_mode: str = ""
    is_acr_registry: bool = True
    is_acr_enterprise: bool = False
    registry_cri_id: str = ""
    weight: int = 0

    def to_dict(self, *, redact: bool = True) -> dict[str, Any]:
        """JSON-ready fields; the registry password is replaced by a marker unless ``redact`` is False."""
        out = dataclasses.asdict(self)
        if redact and out["registry_password"]:
            out["registry_password"] = "<redacted>"  # noqa: S105 - a marker, not a secret
        return out


_IMAGE_FIELDS = {f.name: f for f in dataclasses.fields(SimImage)}


def _as_time(value: Any, where: str) -> str:
    """YAML turns unquoted timestamps into datetimes; the API speaks ``%Y-%m-%dT%H:%M:%SZ`` strings."""
    if isinstance(value, datetime):
        moment = value.astimezone(UTC) if value.tzinfo else value
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, date):
        return f"{value.isoformat()}T00:00:00Z"
    if not isinstance(value, str):
        raise ValueError(f"{where}: expected a time string")
    return str(value)


def image_from_dict(data: Mapping[str, Any], where: str = "image") -> SimImage:
    """Build a SimImage from JSON/YAML fields (the SimImage field names); errors name the bad field."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected an object")
    unknown = sorted(set(data) - set(_IMAGE_FIELDS))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}")
    if not isinstance(data.get("image_id"), str) or not data["image_id"]:
        raise ValueError(f"{where}.image_id: a non-empty string is required")
    return apply_image_fields(SimImage(image_id=data["image_id"]), data, where)


def apply_image_fields(image: SimImage, data: Mapping[str, Any], where: str = "image") -> SimImage:
    """Validate ``data`` and set its fields on ``image`` (all or nothing); returns ``image``."""
    changes: dict[str, Any] = {}
    for key, value in data.items():
        if key not in _IMAGE_FIELDS:
            raise ValueError(f"{where}: unknown field {key}")
        changes[key] = _check_field(key, value, f"{where}.{key}")
    for key, value in changes.items():
        setattr(image, key, value)
    return image


def _check_field(key: str, value: Any, where: str) -> Any:
    if key in {"create_time", "update_time"}:
        return _as_time(value, where)
    if key == "image_type":
        if value not in IMAGE_TYPES:
            raise ValueError(f"{where}: must be one of {', '.join(IMAGE_TYPES)}")
        return value
    if key == "category":
        if value not in IMAGE_CATEGORIES:
            raise ValueError(f"{where}: must be one of {', '.join(IMAGE_CATEGORIES)}")
        return value
    if key == "regions":
        if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise ValueError(f"{where}: expected a mapping of region id to status string")
        return dict(value)
    if key == "error":
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{where}: expected an error code or null")
        return value or None
    if key == "size_gib":
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ValueError(f"{where}: expected a non-negative number")
        return value
    if key in {"document_id", "weight"}:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: expected an integer")
        return value
    if key in {"is_acr_registry", "is_acr_enterprise"}:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected a boolean")
        return value
    if not isinstance(value, str):
        raise ValueError(f"{where}: expected a string")
    return value


def format_size(size_gib: float) -> str:
    """``40`` -> ``"40 GiB"``, ``12.5`` -> ``"12.5 GiB"`` (the API's Size string)."""
    return f"{size_gib:g} GiB"


def region_image_id(image: SimImage, region: str) -> str:
    """The id of the image's copy in ``region``: a new ECS id for VM images, the same id for containers."""
    if image.image_type != "VM":
        return image.image_id
    digest = hashlib.blake2s(f"{image.image_id}/{region}".encode(), digest_size=10).hexdigest()
    return f"m-{digest}"


def registry_server(url: str) -> str:
    """The host part of a registry URL (``registry-vpc.cn-hangzhou.aliyuncs.com/ns/repo:tag``)."""
    return url.split("/", 1)[0]


def render_image(image: SimImage, asked_regions: list[str] | None) -> dict[str, Any]:
    """The ``Image`` object of a GetImage answer (alibaba-openapi.md §5.3).

    ``AdditionalRegionsInfo`` is present only when the caller asked for regions, and holds one entry
    per asked region the image has a copy in, in the order asked; a region without a copy is left out
    rather than invented as an entry with an empty status.
    """
    spec: dict[str, Any]
    out: dict[str, Any] = {
        "ImageType": image.image_type,
        "AppId": image.app_id,
        "Name": image.name,
        "Version": image.version,
        "Description": image.description,
        "Size": format_size(image.size_gib),
        "CreateTime": image.create_time,
        "Status": image.status,
    }
    if image.image_type == "Container":
        spec = {
            "RegistryUrl": image.registry_url,
            "IsACRRegistry": image.is_acr_registry,
            "IsACREnterprise": image.is_acr_enterprise,
            "RegistryCriId": image.registry_cri_id,
            "RegistryCredential": {
                "Server": registry_server(image.registry_url),
                "UserName": image.registry_username,
                "Password": image.registry_password,
            },
            "OsTag": image.os_tag,
            "Platform": image.platform,
            "Architecture": image.architecture,
        }
        out["ContainerImageSpec"] = spec
    else:
        out["VMImageSpec"] = {
            "ImageId": image.image_id,
            "OsTag": image.os_tag,
            "Platform": image.platform,
            "Architecture": image.architecture,
        }
    out["DocumentInfo"] = {
        "DocumentId": str(image.document_id) if image.document_id else "",
        "EncodingMode": image.encoding_mode,
        "Document": image.document,
    }
    if asked_regions is not None:
        out["AdditionalRegionsInfo"] = [
            {"RegionId": r, "ImageId": region_image_id(image, r), "Status": image.regions[r]}
            for r in asked_regions
            if r in image.regions
        ]
    return out


def render_list_item(image: SimImage) -> dict[str, Any]:
    """One ``Images[]`` entry of a ListImages answer (alibaba-openapi.md §5.4; no Status there)."""
    return {
        "ImageId": image.image_id,
        "ImageType": image.image_type,
        "Name": image.name,
        "Version": image.version,
        "Description": image.description,
        "AppId": image.app_id,
        "OsTag": image.os_tag,
        "CreateTime": image.create_time,
        "UpdateTime": image.update_time or image.create_time,
        "DocumentId": image.document_id,
        "Weight": image.weight,
    }


@dataclass
class Faults:
    """Probabilistic fault injection, drawn once per authenticated API request.

    One uniform draw picks at most one fault, in this order: timeout, reset, malformed, then each
    ``error_rates`` entry; rates whose sum exceeds 1 are cut at 1 in that order.
    """

    error_rates: dict[str, float] = field(default_factory=dict)
    timeout_rate: float = 0
    timeout_seconds: float = 30
    reset_rate: float = 0
    malformed_rate: float = 0
    latency_ms: float = 0
    jitter_ms: float = 0
    qps_limit: float | None = None
    retry_after_ms: int | None = None
    global_error: str | None = None
    # Every call of an action answers this code ({"ListImages": "InternalError"}: discovery fails while
    # GetImage works), checked after global_error.
    action_errors: dict[str, str] = field(default_factory=dict)
    seed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return dataclasses.asdict(self)


_FAULT_FIELDS = {f.name for f in dataclasses.fields(Faults)}


def _rate(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(f"{where}: expected a probability between 0 and 1")
    return float(value)


def _non_negative(value: Any, where: str, *, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or math.isnan(value):
        raise ValueError(f"{where}: expected a non-negative number")
    return float(value)


def faults_from_dict(data: Mapping[str, Any], base: Faults | None = None) -> Faults:
    """Validate JSON fields into a Faults (starting from ``base`` for a partial update)."""
    if not isinstance(data, Mapping):
        raise ValueError("faults: expected an object")
    unknown = sorted(set(data) - _FAULT_FIELDS)
    if unknown:
        raise ValueError(f"faults: unknown field(s) {', '.join(unknown)}")
    out = dataclasses.replace(base) if base is not None else Faults()
    if base is not None:
        out.error_rates = dict(base.error_rates)
        out.action_errors = dict(base.action_errors)
    for key, value in data.items():
        where = f"faults.{key}"
        if key == "error_rates":
            if not isinstance(value, Mapping):
                raise ValueError(f"{where}: expected a mapping of error code to probability")
            rates = {}
            for code, p in value.items():
                if not isinstance(code, str) or not is_known(code):
                    raise ValueError(f"{where}: unknown error code {code!r}")
                rates[code] = _rate(p, f"{where}.{code}")
            out.error_rates = rates
        elif key in {"timeout_rate", "reset_rate", "malformed_rate"}:
            setattr(out, key, _rate(value, where))
        elif key in {"timeout_seconds", "latency_ms", "jitter_ms"}:
            setattr(out, key, _non_negative(value, where))
        elif key == "qps_limit":
            limit = _non_negative(value, where, optional=True)
            if limit == 0:
                raise ValueError(f"{where}: must be positive (or null for no limit)")
            out.qps_limit = limit
        elif key in {"retry_after_ms", "seed"}:
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"{where}: expected a non-negative integer or null")
            setattr(out, key, value)
        elif key == "global_error":
            if value is not None and (not isinstance(value, str) or not is_known(value)):
                raise ValueError(f"{where}: unknown error code {value!r}")
            out.global_error = value or None
        elif key == "action_errors":
            if not isinstance(value, Mapping) or not all(
                isinstance(a, str) and a in ACTIONS and isinstance(c, str) and is_known(c)
                for a, c in value.items()
            ):
                raise ValueError(f"{where}: expected a mapping of action (GetImage/ListImages) to a code")
            out.action_errors = dict(value)
    return out
