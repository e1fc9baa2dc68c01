"""The fast snapshot renderer: the family table as byte parts, re-encoding only the images that changed.

Joined, the parts of a :class:`RenderedSnapshot` are byte-identical to ``generate_latest`` over the
reference collector (``SnapshotCollector`` in tests/reference.py, the oracle) with the same table, and
to the OpenMetrics generator without its ``# EOF``; the tests prove it. The parts are the header of each
family, then its sample lines in batches of :data:`PART_IMAGES` images (no multi-megabyte join), then the
snapshot-wide families. An unchanged image's lines are not kept apart: the renderer remembers where they
sit in the previous render's parts (which the server holds anyway) and copies that range; a batch whose
images are all unchanged and in place reuses the previous part object itself. Volatile families (a
timestamp that moves every cycle) are encoded afresh for every image.
"""

from __future__ import annotations

import asyncio
import threading
import time
from array import array
from collections.abc import Generator, Sequence
from dataclasses import dataclass

from exporter.config import OwnLabels
from exporter.config.labels import NO_LABELS
from exporter.exposition.deflate import Deflated, deflate
from exporter.exposition.families import TABLE, FamilyTable, ImageInput
from exporter.exposition.lines import LineEncoder, header
from exporter.snapshot import ImageKey, Snapshot

__all__ = ["PART_IMAGES", "RENDER_SLICE_SECONDS", "RenderedSnapshot", "SnapshotRenderer", "render_snapshot"]

# Images per joined part: big enough that a scrape writes few chunks, small enough that one join is short.
PART_IMAGES = 256
# The longest the renderer runs before yielding to the event loop (scrapes interleave with a render).
RENDER_SLICE_SECONDS = 0.002


class RenderedSnapshot:
    """The snapshot part rendered once, as parts to write in order (no ``# EOF``), and lazy gzip; with its
    series count, the images the series cap left out, and the own labels it was rendered with (what the
    health board shows)."""

    __slots__ = ("_deflated", "_lock", "_parts", "_sizes", "dropped_images", "labels", "series", "snapshot")

    def __init__(
        self,
        snapshot: Snapshot,
        text: tuple[bytes, ...],
        openmetrics: tuple[bytes, ...],
        *,
        series: int = 0,
        dropped_images: int = 0,
        labels: OwnLabels = NO_LABELS,
    ) -> None:
        self.snapshot = snapshot
        self.series = series
        self.dropped_images = dropped_images
        self.labels = labels
        self._parts = {False: text, True: openmetrics}
        self._sizes = {False: sum(map(len, text)), True: sum(map(len, openmetrics))}
        self._deflated: dict[bool, Deflated] = {}
        self._lock = threading.Lock()

    def parts(self, openmetrics: bool) -> tuple[bytes, ...]:
        """The uncompressed snapshot part of one format, as chunks to write in order."""
        return self._parts[openmetrics]

    def size(self, openmetrics: bool) -> int:
        """Bytes in :meth:`parts`."""
        return self._sizes[openmetrics]

    def body(self, openmetrics: bool) -> bytes:
        """The parts joined (a copy: for tests and tools; the server writes :meth:`parts`)."""
        return b"".join(self._parts[openmetrics])

    @property
    def text(self) -> bytes:
        """The text-format snapshot part, joined."""
        return self.body(False)

    @property
    def openmetrics(self) -> bytes:
        """The OpenMetrics snapshot part (without ``# EOF``), joined."""
        return self.body(True)

    def has_deflated(self, openmetrics: bool) -> bool:
        """Whether the compressed form of this format is already cached."""
        return openmetrics in self._deflated

    def deflated(self, openmetrics: bool) -> Deflated:
        """The compressed form of one format, computed once (thread-safe; zlib releases the GIL)."""
        cached = self._deflated.get(openmetrics)
        if cached is not None:
            return cached
        with self._lock:
            cached = self._deflated.get(openmetrics)
            if cached is None:
                cached = deflate(self._parts[openmetrics])
                self._deflated[openmetrics] = cached
        return cached


_RenderSteps = Generator[None, None, RenderedSnapshot]
_Entry = int | tuple[bytes, ...]  # an image's position in the previous render, or its fresh lines


@dataclass(frozen=True, slots=True)
class _Previous:
    """Where the last render put each image's lines: no second copy of the exposition is kept."""

    parts: tuple[tuple[bytes, ...], ...]  # per image family, its batches of PART_IMAGES images (b"" kept)
    ends: tuple[array[int], ...]  # per image family, per image: end offset of its lines in its batch part
    count: int  # images rendered


class SnapshotRenderer:
    """Renders snapshots to both formats, reusing the bytes of every image unchanged since the last render.

    With ``table.max_series`` set, images are taken in key order while their series (cached and
    volatile lines, after the snapshot-wide families) fit; the first that would not, and every later
    one, is left out whole, so a dropped image never shows half its series.

    An image is unchanged when its :class:`~exporter.exposition.families.ImageInput`, volatile part left
    out, equals the previous one by value (object identity plays no part). :meth:`render_async` does
    the work in slices of about 2 ms on the event loop, which keeps scrape latency flat where a worker
    thread would hold the GIL against the loop. One render at a time (refresh cycles never overlap).
    """

    def __init__(self, table: FamilyTable = TABLE) -> None:
        self._table = table
        self._image_encoders = tuple(LineEncoder(f.spec) for f in table.images)
        self._snapshot_encoders = tuple(LineEncoder(f.spec) for f in table.snapshot)
        self._text_headers = tuple(header(spec, False) for spec in table.specs)
        self._om_headers = tuple(header(spec, True) for spec in table.specs)
        # image key -> (what its cached lines depend on, its position in the previous render, their count)
        self._cache: dict[ImageKey, tuple[ImageInput, int, int]] = {}
        n = len(table.images)
        self._previous = _Previous(((),) * n, tuple(array("Q") for _ in range(n)), 0)

    def render(self, snapshot: Snapshot) -> RenderedSnapshot:
        """Render ``snapshot`` in one go."""
        steps = self._steps(snapshot)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                rendered: RenderedSnapshot = done.value
                return rendered

    async def render_async(
        self, snapshot: Snapshot, slice_seconds: float = RENDER_SLICE_SECONDS
    ) -> RenderedSnapshot:
        """Render ``snapshot`` on the event loop, yielding to it every ``slice_seconds``."""
        steps = self._steps(snapshot)
        clock = time.perf_counter
        deadline = clock() + slice_seconds
        while True:
            try:
                next(steps)
            except StopIteration as done:
                result: RenderedSnapshot = done.value
                return result
            if clock() >= deadline:
                await asyncio.sleep(0)
                deadline = clock() + slice_seconds

    def _lines(self, image: ImageInput) -> tuple[bytes, ...]:
        """The cached lines of one image, one (possibly empty) chunk per image family, b"" where volatile."""
        # A tuple of bytes: the garbage collector stops tracking it, so a big cache costs collections nothing.
        return tuple(
            b"" if family.volatile else encoder.lines(family.samples(image)).encode()
            for family, encoder in zip(self._table.images, self._image_encoders, strict=True)
        )

    def _steps(self, snapshot: Snapshot) -> _RenderSteps:
        """The render as a generator that yields between small pieces of work."""
        families = self._table.images
        volatile = [(i, f.samples, self._image_encoders[i]) for i, f in enumerate(families) if f.volatile]
        cap = self._table.max_series
        # The snapshot-wide families first: a few per (account, region), they count before any image.
        wide = [
            encoder.lines(family.samples(snapshot)).encode()
            for family, encoder in zip(self._table.snapshot, self._snapshot_encoders, strict=True)
        ]
        series = sum(lines.count(b"\n") for lines in wide)  # one line per series (values escape newlines)
        cache: dict[ImageKey, tuple[ImageInput, int, int]] = {}
        old = self._cache
        prev = self._previous
        states = list(snapshot.images.values())
        count = 0  # images rendered: a prefix of states in key order (the cap leaves out the rest)
        capped = False
        batches: list[list[bytes]] = [[] for _ in families]
        family_ends = tuple(array("Q") for _ in families)
        # Batch by batch, so at most one batch of freshly rendered lines is alive besides the parts.
        for start in range(0, len(states), PART_IMAGES):
            entries: list[_Entry] = []
            fresh: list[list[bytes]] = [[] for _ in volatile]
            for n in range(start, min(start + PART_IMAGES, len(states))):
                state = states[n]
                image = ImageInput.of(state, snapshot, self._table.labels)
                # What its cached lines depend on, compared by value: its input without the volatile part
                # (a field added to ImageInput joins the key by itself).
                key = image._replace(last_success=None)
                hit = old.get(state.key)
                entry: _Entry
                if hit is not None and hit[0] == key:
                    entry, cached = hit[1], hit[2]
                else:
                    entry = self._lines(image)
                    cached = sum(chunk.count(b"\n") for chunk in entry)
                chunks = [encoder.lines(samples(image)).encode() for _, samples, encoder in volatile]
                total = cached + sum(chunk.count(b"\n") for chunk in chunks)
                if cap and series + total > cap:
                    capped = True
                    break
                series += total
                entries.append(entry)
                cache[state.key] = (key, n, cached)
                for out, chunk in zip(fresh, chunks, strict=True):
                    out.append(chunk)
                if n % 16 == 15:
                    yield
            count += len(entries)
            if entries:
                joined = {i: b"".join(chunks) for chunks, (i, _, _) in zip(fresh, volatile, strict=True)}
                for i in range(len(families)):
                    batches[i].append(joined[i] if i in joined else _batch(entries, i, prev, family_ends[i]))
                    yield
            if capped:
                break

        parts: list[bytes] = []
        header_at: list[int] = []
        headers = iter(self._text_headers)
        for batch in batches:
            header_at.append(len(parts))
            parts.append(next(headers))
            parts.extend(part for part in batch if part)
        for lines in wide:
            header_at.append(len(parts))
            parts.append(next(headers))
            if lines:
                parts.append(lines)
        self._cache = cache
        self._previous = _Previous(tuple(map(tuple, batches)), family_ends, count)
        text = tuple(parts)
        if self._om_headers == self._text_headers:  # no help text needs OpenMetrics' extra escaping
            om = text
        else:
            for at, om_header in zip(header_at, self._om_headers, strict=True):
                parts[at] = om_header
            om = tuple(parts)
        return RenderedSnapshot(
            snapshot, text, om, series=series, dropped_images=len(states) - count, labels=self._table.labels
        )


def _batch(entries: Sequence[_Entry], family: int, prev: _Previous, ends: array[int]) -> bytes:
    """One family's part for one batch of images; appends their end offsets within it to ``ends``."""
    prev_parts, prev_ends = prev.parts[family], prev.ends[family]
    n = len(entries)
    first = entries[0]
    if (
        isinstance(first, int)
        and first % PART_IMAGES == 0
        and min(prev.count - first, PART_IMAGES) == n
        and entries == list(range(first, first + n))
    ):
        # The whole previous batch, unchanged and in place (the usual case): share its part object.
        ends.extend(prev_ends[first : first + n])
        return prev_parts[first // PART_IMAGES]
    pieces: list[bytes] = []
    offset = 0
    for entry in entries:
        if isinstance(entry, int):
            begin = prev_ends[entry - 1] if entry % PART_IMAGES else 0
            piece = prev_parts[entry // PART_IMAGES][begin : prev_ends[entry]]
        else:
            piece = entry[family]
        pieces.append(piece)
        offset += len(piece)
        ends.append(offset)
    return b"".join(pieces)


def render_snapshot(snapshot: Snapshot, table: FamilyTable = TABLE) -> RenderedSnapshot:
    """Render ``snapshot`` from scratch (see :class:`SnapshotRenderer` to reuse unchanged images)."""
    return SnapshotRenderer(table).render(snapshot)
