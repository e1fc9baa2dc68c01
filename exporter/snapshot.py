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

from exporter.config import DEFAULT_SCOPE, Scope, StatusConfig, WatchedImage
from exporter.history import ImageHistory
from exporter.models import Image, Replica
from exporter.view import HEALTH_ORDER, IMAGE_NOT_FOUND, Health, ImageView, image_view, status_label

__all__ = [
    "DiscoveryStatus",
    "ImageError",
    "ImageFacts",
    "ImageKey",
    "ImageState",
    "Replica",
    "ScopeStatus",
    "Snapshot",
    "status_label",
]


class ImageKey(NamedTuple):
    """The identity of one watched image: the same id in another account or region is another image."""

    account: str
    region_id: str
    image_id: str


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
            additional_regions=image.additional_regions,
            ignored=image.ignored,
        )


class ImageError(NamedTuple):
    """Why the last GetImage of an image failed: its code (a metric label) and its reason (never one).

    ``reason`` is the failure's message as :func:`exporter.view.error_reason` leaves it (through the output
    gate, one line, bounded): the page and ``check`` show it. It is not kept in the state file: a
    restored failing image shows its reason again from its next failure.
    """

    code: str
    http_status: int = 0
    request_id: str | None = None
    since: float = 0.0  # wall time of the first failure of this streak with this code
    reason: str = ""  # the message of the latest failure, gated (the streak keeps its first ``since``)


@dataclass(frozen=True, slots=True)
class ImageState:
    """One watched image after a refresh: its last good data, whether the last call succeeded, its history.

    ``image`` is the last successful answer and survives failures (so a failing image keeps serving
    its last known status, marked ``up 0``); it is ``None`` until the first success, and so is
    ``history``.
    """

    watched: WatchedImage
    image: ImageFacts | None = None
    last_success: float | None = None  # wall time of the last successful GetImage
    error: ImageError | None = None  # set while the last GetImage failed
    scope: Scope = DEFAULT_SCOPE  # the account and region it was asked in
    history: ImageHistory | None = None  # what successful answers showed over time (exporter.history)

    @property
    def image_id(self) -> str:
        """The watched image id."""
        return self.watched.image_id

    @property
    def key(self) -> ImageKey:
        """The image's identity: account, region and id (the identity labels of every series of it)."""
        return ImageKey(self.scope.account, self.scope.region_id, self.watched.image_id)

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
            self.key,
            self.watched.additional_region_ids,
            img.status if img is not None else None,
            [(r.region_id, r.status) for r in img.additional_regions] if img is not None else (),
            error,
            status,
            self.error.reason if self.error is not None else "",
        )


@dataclass(frozen=True, slots=True)
class DiscoveryStatus:
    """How ListImages discovery went in the last cycle (absent while discovery is off)."""

    up: bool  # the last discovery succeeded
    last_success: float | None  # wall time it last succeeded
    discovered: int  # images it found (the last good set while failing)
    error_code: str | None = None  # why the last one failed
    reason: str = ""  # its message, gated like an image's (exporter.view.error_reason); not saved


@dataclass(frozen=True, slots=True)
class ScopeStatus:
    """How the last refresh cycle of one (account, region) went."""

    refreshed_at: float | None  # wall time its last cycle ended
    duration_seconds: float | None  # how long that cycle took
    watched: int  # images in its watched set
    discovery: DiscoveryStatus | None = None  # absent while its discovery is off
    restored: bool = False  # loaded from the state file at start-up; no cycle of this process yet


def _views(
    states: Mapping[ImageKey, ImageState], status: StatusConfig, previous: Snapshot | None
) -> Mapping[ImageKey, ImageView]:
    """Every image's verdict; an image whose state is the previous one's keeps its previous verdict."""
    old_states = previous.images if previous is not None and previous.status == status else {}
    old_views = previous.views if previous is not None else {}
    out: dict[ImageKey, ImageView] = {}
    for image_id, state in states.items():
        old = old_states.get(image_id)
        kept = old_views.get(image_id) if old is not None and _inputs(old) == _inputs(state) else None
        out[image_id] = kept if kept is not None else state.view(status)
    return MappingProxyType(out)


def _inputs(state: ImageState) -> tuple[object, ...]:
    """What an image's verdict depends on (besides the status config)."""
    error = state.error
    return (state.watched, state.image, None if error is None else (error.code, error.since, error.reason))


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the refresh cycles learnt, ordered by image key; the unit that is swapped atomically.

    A refresher builds the snapshot of its one (account, region) with :meth:`build`; the service
    publishes the union of the latest one of every (account, region) with :meth:`merge`.
    """

    images: Mapping[ImageKey, ImageState] = field(default_factory=lambda: MappingProxyType({}))
    status: StatusConfig = field(default_factory=StatusConfig)
    refreshed_at: float | None = None  # wall time the latest cycle ended; None before the first
    duration_seconds: float | None = None  # how long the longest of the latest cycles took
    sequence: int = 0  # 0 for the empty start-up snapshot, then 1, 2, ...
    # The verdict on each image, decided here once; every view reads it.
    views: Mapping[ImageKey, ImageView] = field(default_factory=lambda: MappingProxyType({}))
    # Every (account, region) that has completed a cycle, in key order.
    scopes: Mapping[Scope, ScopeStatus] = field(default_factory=lambda: MappingProxyType({}))
    # Every (account, region) watched, complete or not (what "ready" waits for).
    expected: tuple[Scope, ...] = ()

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
        scope: Scope = DEFAULT_SCOPE,
        restored: bool = False,
    ) -> Snapshot:
        """The snapshot of one (account, region) cycle over ``images`` (any order; stored sorted).

        ``previous`` lets unchanged images keep their verdict instead of deciding it again;
        ``restored`` marks one rebuilt from the state file rather than refreshed.
        """
        states = MappingProxyType({s.key: s for s in sorted(images, key=lambda s: s.key)})
        views = _views(states, status, previous)
        scopes = {scope: ScopeStatus(refreshed_at, duration_seconds, len(states), discovery, restored)}
        return cls(
            states,
            status,
            refreshed_at,
            duration_seconds,
            sequence,
            views,
            MappingProxyType(scopes),
            (scope,),
        )

    @classmethod
    def merge(
        cls, parts: Iterable[Snapshot], *, status: StatusConfig, expected: Iterable[Scope], sequence: int
    ) -> Snapshot:
        """The union of per-(account, region) snapshots (their verdicts kept, not decided again)."""
        parts = list(parts)
        images = sorted((item for p in parts for item in p.images.items()), key=lambda item: item[0])
        views = {key: view for p in parts for key, view in p.views.items()}
        scopes = sorted((item for p in parts for item in p.scopes.items()), key=lambda item: item[0])
        ends = [p.refreshed_at for p in parts if p.refreshed_at is not None]
        durations = [p.duration_seconds for p in parts if p.duration_seconds is not None]
        return cls(
            MappingProxyType(dict(images)),
            status,
            max(ends) if ends else None,
            max(durations) if durations else None,
            sequence,
            MappingProxyType({key: views[key] for key, _ in images}),
            MappingProxyType(dict(scopes)),
            tuple(expected),
        )

    @property
    def completed(self) -> bool:
        """Every (account, region) watched has completed at least one refresh cycle."""
        return self.refreshed_at is not None and all(s in self.scopes for s in self.expected)

    def find(self, image_id: str) -> ImageState:
        """The one image with id ``image_id`` (KeyError when none, or several accounts or regions have it)."""
        found = [s for k, s in self.images.items() if k.image_id == image_id]
        if len(found) != 1:
            raise KeyError(image_id)
        return found[0]

    def view_of(self, image_id: str) -> ImageView:
        """The verdict on the one image with id ``image_id`` (see :meth:`find`)."""
        return self.views[self.find(image_id).key]

    @property
    def discovery(self) -> DiscoveryStatus | None:
        """Discovery across every (account, region): up while all are, counts added (None while off)."""
        found = [s.discovery for s in self.scopes.values() if s.discovery is not None]
        if not found:
            return None
        if len(found) == 1:
            return found[0]
        failing = [d for d in found if not d.up]
        successes = [d.last_success for d in found if d.last_success is not None]
        return DiscoveryStatus(
            up=not failing,
            last_success=min(successes) if successes and len(successes) == len(found) else None,
            discovered=sum(d.discovered for d in found),
            error_code=failing[0].error_code if failing else None,
            reason=failing[0].reason if failing else "",
        )

    def health_counts(self) -> dict[Health, int]:
        """Images per health class, every class present, worst first."""
        counts = dict.fromkeys(HEALTH_ORDER, 0)
        for view in self.views.values():
            counts[view.health] += 1
        return counts

    @property
    def discovery_failed(self) -> bool:
        """Discovery is on somewhere and its last run there failed."""
        return any(s.discovery is not None and not s.discovery.up for s in self.scopes.values())
