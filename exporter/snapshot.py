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
from exporter.view import HEALTH_ORDER, IMAGE_NOT_FOUND, Health, ImageView, image_view, status_label

__all__ = [
    "DiscoveryStatus",
    "ImageError",
    "ImageFacts",
    "ImageState",
    "Replica",
    "Snapshot",
    "status_label",
]


class Replica(NamedTuple):
    """The image's copy in one additional region."""

    region_id: str
    status: str


class ImageFacts(NamedTuple):
    """What the exporter keeps of a GetImage answer.

    Plain values that passed the ingestion gate (no registry credential, and the registry URL already
    without userinfo), immutable and compared by value. (CPython untracks only exact tuples, so the
    garbage collector still traverses these; what keeps full collections rare while serving is the
    raised threshold in ``service._gc_ctx``.)
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

    def view(self, status: StatusConfig) -> ImageView:
        """The verdict on this image under ``status`` (what :class:`Snapshot` keeps for it)."""
        img = self.image
        error = (self.error.code, self.error.since) if self.error is not None else None
        return image_view(
            self.image_id,
            self.watched.additional_region_ids,
            img.status if img is not None else None,
            [(r.region_id, r.status) for r in img.additional_regions] if img is not None else (),
            error,
            status,
        )


@dataclass(frozen=True, slots=True)
class DiscoveryStatus:
    """How ListImages discovery went in the last cycle (absent while discovery is off)."""

    up: bool  # the last discovery succeeded
    last_success: float | None  # wall time it last succeeded
    discovered: int  # images it found (the last good set while failing)
    error_code: str | None = None  # why the last one failed


def _views(
    states: Mapping[str, ImageState], status: StatusConfig, previous: Snapshot | None
) -> Mapping[str, ImageView]:
    """Every image's verdict; an image whose state is the previous one's keeps its previous verdict."""
    old_states = previous.images if previous is not None and previous.status == status else {}
    old_views = previous.views if previous is not None else {}
    out: dict[str, ImageView] = {}
    for image_id, state in states.items():
        old = old_states.get(image_id)
        kept = old_views.get(image_id) if old is not None and _inputs(old) == _inputs(state) else None
        out[image_id] = kept if kept is not None else state.view(status)
    return MappingProxyType(out)


def _inputs(state: ImageState) -> tuple[object, ...]:
    """What an image's verdict depends on (besides the status config)."""
    error = state.error
    return (state.watched, state.image, None if error is None else (error.code, error.since))


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one refresh cycle learnt, ordered by image id; the unit that is swapped atomically."""

    images: Mapping[str, ImageState] = field(default_factory=lambda: MappingProxyType({}))
    status: StatusConfig = field(default_factory=StatusConfig)
    refreshed_at: float | None = None  # wall time the cycle ended; None before the first cycle
    duration_seconds: float | None = None  # how long the cycle took
    sequence: int = 0  # 0 for the empty start-up snapshot, then 1, 2, ...
    # The verdict on each image, decided here once; every view reads it.
    views: Mapping[str, ImageView] = field(default_factory=lambda: MappingProxyType({}))
    discovery: DiscoveryStatus | None = None

    @classmethod
    def build(
        cls,
        images: Iterable[ImageState],
        *,
        status: StatusConfig,
        refreshed_at: float | None,
        duration_seconds: float | None,
        sequence: int,
        discovery: DiscoveryStatus | None = None,
        previous: Snapshot | None = None,
    ) -> Snapshot:
        """A snapshot of ``images`` (any order; stored sorted by id, read-only), with their verdicts.

        ``previous`` lets unchanged images keep their verdict instead of deciding it again.
        """
        states = MappingProxyType({s.image_id: s for s in sorted(images, key=lambda s: s.image_id)})
        views = _views(states, status, previous)
        return cls(states, status, refreshed_at, duration_seconds, sequence, views, discovery)

    @property
    def completed(self) -> bool:
        """At least one refresh cycle has completed."""
        return self.refreshed_at is not None

    def health_counts(self) -> dict[Health, int]:
        """Images per health class, every class present, worst first."""
        counts = dict.fromkeys(HEALTH_ORDER, 0)
        for view in self.views.values():
            counts[view.health] += 1
        return counts

    @property
    def discovery_failed(self) -> bool:
        """Discovery is on and its last run failed."""
        return self.discovery is not None and not self.discovery.up
