"""The simulator's image table, and the ListImages selection (filters, Merge mode, cached indexes)."""

from __future__ import annotations

from collections.abc import ItemsView, Iterable, Iterator, KeysView, Mapping, MutableMapping, ValuesView
from typing import Self

from ehpc_simulator.model import SimImage

_LIST_CACHE_MAX = 64


class ImageTable(MutableMapping[str, SimImage]):
    """Images by id, in insertion order, with a ``generation`` that changes with every add or removal.

    A MutableMapping over a private dict rather than a dict subclass: the ABC derives ``pop``,
    ``clear``, ``update`` and ``setdefault`` from ``__setitem__`` and ``__delitem__``, and the two
    added for dict parity (``popitem`` newest-first, ``|=``) call those too, so every change passes
    the two counting methods; a dict subclass had to override nine, since dict's C methods skip
    ``__setitem__``.
    """

    def __init__(self, images: Iterable[SimImage] = ()) -> None:
        self._by_id: dict[str, SimImage] = {i.image_id: i for i in images}
        self.generation = 0

    def __getitem__(self, image_id: str) -> SimImage:
        return self._by_id[image_id]

    def __setitem__(self, image_id: str, image: SimImage) -> None:
        self.generation += 1
        self._by_id[image_id] = image

    def __delitem__(self, image_id: str) -> None:
        del self._by_id[image_id]
        self.generation += 1

    def popitem(self) -> tuple[str, SimImage]:
        """Remove and return the newest entry, as ``dict.popitem`` does (the ABC's takes the oldest)."""
        if not self._by_id:
            raise KeyError("popitem(): the image table is empty")
        image_id = next(reversed(self._by_id))
        image = self._by_id[image_id]
        del self[image_id]
        return image_id, image

    def __ior__(self, other: Mapping[str, SimImage]) -> Self:
        """``table |= {...}``, as on a dict (the ABC has no ``|=``); goes through ``update``."""
        self.update(other)
        return self

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_id)

    def __len__(self) -> int:
        return len(self._by_id)

    def __repr__(self) -> str:
        return f"ImageTable({list(self._by_id.values())!r})"

    # Read-only views of the dict itself: the ABC's would call __getitem__ per image (10,000-image fleets).
    def __contains__(self, image_id: object) -> bool:
        return image_id in self._by_id

    def keys(self) -> KeysView[str]:
        return self._by_id.keys()

    def values(self) -> ValuesView[SimImage]:
        return self._by_id.values()

    def items(self) -> ItemsView[str, SimImage]:
        return self._by_id.items()


class Listing:
    """Answers which images a ListImages call selects: O(k) for id/name filters, cached per filter otherwise.

    The caches follow the table given and its ``generation``; an in-place change of a field they read
    (type, category, name, version, create_time) needs :meth:`invalidate`.
    """

    def __init__(self) -> None:
        self._cache: dict[tuple[str | None, str | None, str], list[SimImage]] = {}
        self._names: dict[str, list[str]] | None = None
        self._table: ImageTable | None = None
        self._generation = -1

    def invalidate(self) -> None:
        """Forget every cached selection."""
        self._table = None

    def select(
        self,
        images: ImageTable,
        image_type: str | None,
        category: str | None,
        mode: str,
        ids: list[str] | None,
        names: list[str] | None,
    ) -> list[SimImage]:
        """The images answered, in table order (``ids`` order when given), merged for ``Mode=Merge``."""
        if images is not self._table or images.generation != self._generation:
            self._cache.clear()
            self._names = None
            self._table, self._generation = images, images.generation

        def keep(i: SimImage) -> bool:
            return (image_type is None or i.image_type == image_type) and (
                category is None or i.category == category
            )

        if ids is not None or names is not None:
            if ids is not None:
                found = [images[i] for i in ids if i in images]
                if names is not None:
                    wanted = set(names)
                    found = [i for i in found if i.name in wanted]
            else:
                index = self._name_index(images)
                found = [images[i] for n in names or () for i in index.get(n, ())]
            found = [i for i in found if keep(i)]
            return merge(found) if mode == "Merge" else found
        key = (image_type, category, mode)
        cached = self._cache.get(key)
        if cached is None:
            cached = [i for i in images.values() if keep(i)]
            if mode == "Merge":
                cached = merge(cached)
            if len(self._cache) >= _LIST_CACHE_MAX:
                self._cache.clear()
            self._cache[key] = cached
        return cached

    def _name_index(self, images: ImageTable) -> dict[str, list[str]]:
        if self._names is None:
            index: dict[str, list[str]] = {}
            for image in images.values():
                index.setdefault(image.name, []).append(image.image_id)
            self._names = index
        return self._names


def merge(images: list[SimImage]) -> list[SimImage]:
    """ListImages ``Mode=Merge``: the newest image of each (type, name), in first-seen order."""
    best: dict[tuple[str, str], SimImage] = {}
    for image in images:
        key = (image.image_type, image.name or image.image_id)
        current = best.get(key)
        if current is None or (image.create_time, image.version) > (current.create_time, current.version):
            best[key] = image
    return list(best.values())
