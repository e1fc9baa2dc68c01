"""The state file's rows: an image's state as JSON, read back through the ingestion gate's kinds.

Every string passes its kind exactly as the gate leaves it (:func:`exporter.models.unchanged`: length,
shape, Unicode, control and bidi characters, known secrets), creation times are those
:func:`exporter.models.parse_time` keeps, a registry URL has no userinfo, query or fragment, each list
holds a region at most once and at most ``limits.max_regions_per_image``; a discovered image id must
also be one the output gate leaves as it is, so two restored ids are never published as one. What does
not pass raises a ValueError (:class:`RowRefused` or pydantic's ValidationError) whose :func:`refusal`
names the field and why, never the value.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from exporter.config import LimitsConfig, Scope, WatchedImage
from exporter.config.schema import MAX_REGIONS_PER_IMAGE
from exporter.history import ImageHistory, ReplicaHistory
from exporter.models import (
    CODE,
    ID,
    MAX_SIZE_BYTES,
    REGION,
    STATUS,
    GatedLabel,
    GatedRequestId,
    GatedStatus,
    GatedUrl,
    Replica,
    parse_time,
    unchanged,
)
from exporter.redaction import scrub, split_userinfo
from exporter.snapshot import DiscoveryStatus, ImageError, ImageFacts, ImageState

__all__ = [
    "MAX_IGNORED",
    "RowRefused",
    "decode_discovery",
    "decode_row",
    "encode_row",
    "refusal",
    "wall_time",
]

_Time = Annotated[float, Field(allow_inf_nan=False, ge=0, le=1e11)]
# Non-empty kinds: the length bound first, so pydantic checks it before the gate's own validator.
_Region = Annotated[str, Field(min_length=1), AfterValidator(unchanged(REGION))]
_Code = Annotated[str, Field(min_length=1), AfterValidator(unchanged(CODE))]
_MAX_REGIONS = LimitsConfig().max_regions_per_image  # the default limit
MAX_IGNORED = 16  # the gate names at most a few fields it could not use (Size, CreateTime, regions)


def _created(value: float) -> float:
    """A creation time the gate would have kept (:func:`exporter.models.parse_time`'s range)."""
    if parse_time(datetime.fromtimestamp(value, UTC).isoformat()) is None:
        raise ValueError("is not a plausible creation time")
    return value


def _bare(url: str) -> str:
    """A registry URL as :func:`exporter.models.registry_url` leaves it: no userinfo, query or fragment.

    Checked, not cleaned: cleaning would register the userinfo as secrets, and what a tampered row
    holds must not become a secret that makes answers refused.
    """
    if split_userinfo(url)[1] or "?" in url or "#" in url:
        raise ValueError("is not a registry URL as the gate leaves it (userinfo, query or fragment)")
    return url


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class _WatchedRow(_Row):
    type: Literal["VM", "Container"]
    category: Literal["Public", "Custom"] | None
    regions: Annotated[list[_Region], Field(max_length=MAX_REGIONS_PER_IMAGE)]


class _FactsRow(_Row):
    image_type: Annotated[str, Field(min_length=1), AfterValidator(unchanged(STATUS))]
    name: GatedLabel
    version: GatedLabel
    app_id: GatedLabel
    status: GatedStatus
    size_bytes: Annotated[int, Field(ge=0, le=MAX_SIZE_BYTES)] | None
    create_time: Annotated[_Time, AfterValidator(_created)] | None
    os_tag: GatedLabel
    platform: GatedLabel
    architecture: GatedLabel
    registry_url: Annotated[GatedUrl, AfterValidator(_bare)]
    regions: Annotated[list[tuple[_Region, GatedStatus]], Field(max_length=MAX_REGIONS_PER_IMAGE)]
    ignored: Annotated[list[_Code], Field(max_length=MAX_IGNORED)]  # field names: the code shape


class _ErrorRow(_Row):
    code: _Code
    http_status: Annotated[int, Field(ge=0, le=999)]
    request_id: GatedRequestId | None
    since: _Time


class _HistoryRow(_Row):
    status: GatedStatus
    since: _Time
    changes: Annotated[int, Field(ge=0, le=2**53)]
    replicas: Annotated[
        list[tuple[_Region, GatedStatus | None, _Time, _Time | None]], Field(max_length=MAX_REGIONS_PER_IMAGE)
    ]


class _StateRow(_Row):
    watched: _WatchedRow
    facts: _FactsRow | None
    error: _ErrorRow | None
    history: _HistoryRow | None


class _DiscoveryRow(_Row):
    up: bool
    last_success: _Time | None
    discovered: Annotated[int, Field(ge=0, le=10**9)]
    error_code: _Code | None


class RowRefused(ValueError):
    """A stored row the gate does not let in; the message names the field and why, never the value."""


def refusal(exc: ValueError) -> str:
    """Where and why a row was refused, in one line that never quotes the row."""
    if isinstance(exc, ValidationError):
        first = exc.errors(include_url=False, include_input=False, include_context=False)[0]
        return f"{'.'.join(str(p) for p in first['loc']) or 'state'}: {first['msg']}"
    return str(exc)


def encode_row(state: ImageState) -> str:
    """The ``state`` column of one image: everything but the last success, which has its own."""
    w, f, e, h = state.watched, state.image, state.error, state.history
    row: dict[str, Any] = {
        "watched": {
            "type": w.image_type,
            "category": w.image_category,
            "regions": list(w.additional_region_ids),
        },
        "facts": None,
        "error": None
        if e is None
        else {
            "code": e.code,
            "http_status": e.http_status,
            "request_id": e.request_id,
            "since": e.since,
        },
        "history": None
        if h is None
        else {
            "status": h.status,
            "since": h.since,
            "changes": h.changes,
            "replicas": [list(r) for r in h.replicas],
        },
    }
    if f is not None:
        row["facts"] = {
            "image_type": f.image_type,
            "name": f.name,
            "version": f.version,
            "app_id": f.app_id,
            "status": f.status,
            "size_bytes": f.size_bytes,
            "create_time": None if f.create_time is None else f.create_time.timestamp(),
            "os_tag": f.os_tag,
            "platform": f.platform,
            "architecture": f.architecture,
            "registry_url": f.registry_url,
            "regions": [list(r) for r in f.additional_regions],
            "ignored": list(f.ignored),
        }
    return json.dumps(row, separators=(",", ":"), allow_nan=False)


_gated_id_kind = unchanged(ID)


def _gated_id(image_id: str) -> None:
    """Refuse an image id the ingestion gate would not let in, or that the output gate would change:
    two such ids could be published as one (a URL's userinfo, say, is masked to the same text)."""
    try:
        _gated_id_kind(image_id)
    except ValueError as exc:
        raise RowRefused(f"image_id {exc}") from None
    if not image_id:
        raise RowRefused("image_id is empty")
    if scrub(image_id) != image_id:
        raise RowRefused("image_id would be published as another value (it could collide with another id)")


def decode_row(
    scope: Scope,
    image_id: str,
    text: object,
    last_success: object,
    *,
    max_regions: int = _MAX_REGIONS,
    configured: bool = False,
) -> ImageState:
    """One stored image through the gate's kinds and limits; a ValueError (``RowRefused`` or pydantic's
    ValidationError) when it does not pass. ``configured``: the id is one the config file lists, which
    passed the config file's own gate."""
    if not configured:
        _gated_id(image_id)
    if not isinstance(text, str):
        raise RowRefused("state is not text")
    row = _StateRow.model_validate_json(text)
    last = wall_time(last_success)
    if last_success is not None and last is None:
        raise RowRefused("last_success is not a time")
    w, f, e, h = row.watched, row.facts, row.error, row.history
    for where, regions in (
        ("watched.regions", w.regions),
        ("facts.regions", [r for r, _ in f.regions] if f is not None else ()),
        ("history.replicas", [r[0] for r in h.replicas] if h is not None else ()),
    ):
        if len(regions) > max_regions:
            raise RowRefused(f"{where}: more than {max_regions} entries (limits.max_regions_per_image)")
        if len(set(regions)) != len(regions):  # the region's series would be published twice
            raise RowRefused(f"{where}: a region is listed twice")
    watched = WatchedImage(image_id, w.type, w.category, tuple(w.regions))
    facts = None
    if f is not None:
        facts = ImageFacts(
            image_type=f.image_type,
            name=f.name,
            version=f.version,
            app_id=f.app_id,
            status=f.status,
            size_bytes=f.size_bytes,
            create_time=None if f.create_time is None else datetime.fromtimestamp(f.create_time, UTC),
            os_tag=f.os_tag,
            platform=f.platform,
            architecture=f.architecture,
            registry_url=f.registry_url,
            additional_regions=tuple(Replica(r, s) for r, s in f.regions),
            ignored=tuple(f.ignored),
        )
    error = None if e is None else ImageError(e.code, e.http_status, e.request_id, e.since)
    history = None
    if h is not None:
        history = ImageHistory(h.status, h.since, h.changes, tuple(ReplicaHistory(*r) for r in h.replicas))
    return ImageState(watched, facts, last, error, scope, history)


def wall_time(value: object) -> float | None:
    """A stored wall time, or None when it is none or not one."""
    if isinstance(value, float) and math.isfinite(value) and 0 <= value <= 1e11:
        return value
    return None


def decode_discovery(text: object) -> DiscoveryStatus | None:
    """A stored discovery status, or None when it is none or does not pass."""
    if not isinstance(text, str):
        return None
    try:
        up, last_success, discovered, error_code = json.loads(text)
        row = _DiscoveryRow(up=up, last_success=last_success, discovered=discovered, error_code=error_code)
    except (ValueError, TypeError, ValidationError):
        return None
    return DiscoveryStatus(row.up, row.last_success, row.discovered, row.error_code)
