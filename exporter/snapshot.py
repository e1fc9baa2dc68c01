"""The immutable result of one refresh cycle: what the exporter knows about every watched image.

A :class:`Snapshot` is built once per cycle and swapped in whole; scrapes, the landing page and the
``check`` command only ever read one. Nothing here is mutated after construction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import NamedTuple

from exporter.config import StatusConfig, WatchedImage
from exporter.models import Image

IMAGE_NOT_FOUND = "ImageNotFound"
# The state-set label value used when the API answers an empty Status.
UNKNOWN_STATUS = "Unknown"


def status_label(status: str) -> str:
    """The ``status`` label value for an API status: itself, or ``Unknown`` when empty."""
    return status or UNKNOWN_STATUS


class Replica(NamedTuple):
    """The image's copy in one additional region."""

    region_id: str
    status: str


class ImageFacts(NamedTuple):
    """What the exporter keeps of a GetImage answer.

    A tuple of plain values that passed the ingestion gate (no registry credential, and the registry URL
    already without userinfo):
    CPython's garbage collector stops tracking such tuples, so ten thousand of them cost the periodic
    full collections nothing; frozen dataclasses would be traversed on every one (a pause of 100 ms
    and more at that size, felt by every scrape in flight).
    """

    image_type: str
    name: str
    version: str
    app_id: str
    status: str
    size_bytes: int | None
    create_time: datetime | None
    os_tag: str
    platform: str
    architecture: str
    registry_url: str
    additional_regions: tuple[Replica, ...]
    ignored: tuple[str, ...] = ()  # fields of the answer the exporter could not use

    @classmethod
    def from_image(cls, image: Image) -> ImageFacts:
        """The facts of a parsed GetImage answer."""
        return cls(
            image_type=image.image_type,
            name=image.name,
            version=image.version,
            app_id=image.app_id,
            status=image.status,
            size_bytes=image.size_bytes,
            create_time=image.create_time,
            os_tag=image.os_tag,
            platform=image.platform,
            architecture=image.architecture,
            registry_url=image.registry_url,
            additional_regions=tuple(Replica(r.region_id, r.status) for r in image.additional_regions),
            ignored=image.ignored,
        )


class ImageError(NamedTuple):
    """Why the last GetImage of an image failed (never a message: it is shown on pages and in labels)."""

    code: str
    http_status: int = 0
    request_id: str | None = None
    since: float = 0.0  # wall time of the first failure of this streak with this code


@dataclass(frozen=True, slots=True)
class ImageState:
    """One watched image after a refresh: its last good data and whether the last call succeeded.

    ``image`` is the last successful answer and survives failures (so a failing image keeps serving
    its last known status, marked ``up 0``); it is ``None`` until the first success.
    """

    watched: WatchedImage
    image: ImageFacts | None = None
    last_success: float | None = None  # wall time of the last successful GetImage
    error: ImageError | None = None  # set while the last GetImage failed

    @property
    def image_id(self) -> str:
        """The watched image id (the identity of every series of this image)."""
        return self.watched.image_id

    @property
    def up(self) -> bool:
        """The last GetImage for this image succeeded."""
        return self.error is None and self.image is not None

    @property
    def missing(self) -> bool:
        """The API said the image does not exist (``ImageNotFound``) on the last call."""
        return self.error is not None and self.error.code == IMAGE_NOT_FOUND


def _frozen(images: Iterable[ImageState]) -> Mapping[str, ImageState]:
    return MappingProxyType({s.image_id: s for s in sorted(images, key=lambda s: s.image_id)})


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one refresh cycle learnt, ordered by image id; the unit that is swapped atomically."""

    images: Mapping[str, ImageState] = field(default_factory=lambda: MappingProxyType({}))
    status: StatusConfig = field(default_factory=StatusConfig)
    refreshed_at: float | None = None  # wall time the cycle ended; None before the first cycle
    duration_seconds: float | None = None  # how long the cycle took
    sequence: int = 0  # 0 for the empty start-up snapshot, then 1, 2, ...

    @classmethod
    def build(
        cls,
        images: Iterable[ImageState],
        *,
        status: StatusConfig,
        refreshed_at: float | None,
        duration_seconds: float | None,
        sequence: int,
    ) -> Snapshot:
        """A snapshot of ``images`` (any order; stored sorted by id, read-only)."""
        return cls(_frozen(images), status, refreshed_at, duration_seconds, sequence)

    @property
    def completed(self) -> bool:
        """At least one refresh cycle has completed."""
        return self.refreshed_at is not None

    @property
    def ok_count(self) -> int:
        """Images whose last GetImage succeeded."""
        return sum(1 for s in self.images.values() if s.up)

    @property
    def missing_count(self) -> int:
        """Images the API says do not exist."""
        return sum(1 for s in self.images.values() if s.missing)

    @property
    def failed_count(self) -> int:
        """Images whose last GetImage failed for any other reason."""
        return sum(1 for s in self.images.values() if not s.up and not s.missing)
