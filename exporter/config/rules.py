"""The rules over the whole config file, judged on what it says rather than on what validated.

``Config``'s whole-file validator runs them beside the field-by-field validation, so a mistake in one
place hides none of these: duplicate image ids and regions (even in an item with other errors), the
one-target sections and region keys that do not belong beside ``targets:``, accounts named twice, images
asking for more regions than ``limits.max_regions_per_image``, runtime-only keys a file tried to set,
a file larger than one exporter serves well (:func:`_sizes`), and more distinct own label names than
every labelled series may carry (:func:`_label_names`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from pydantic import TypeAdapter, ValidationError
from pydantic_core import InitErrorDetails

from exporter.config.errors import MAX_COLLECTED, Loc, format_loc, rule, shown
from exporter.config.labels import MAX_LABELS
from exporter.config.schema import MAX_REGIONS_PER_IMAGE, MAX_SCOPES, MAX_WATCHED_IMAGE_REGIONS

__all__ = ["ONE_TARGET_SECTIONS", "REGION_KEYS", "whole_file"]

# The api keys a region entry of a target sets; the target's ``api:`` overrides the others.
REGION_KEYS = ("region_id", "endpoint", "network")
# Top-level sections that describe the one target of a file without ``targets:``.
ONE_TARGET_SECTIONS = ("credentials", "images", "discovery", "labels")


def whole_file(
    data: Mapping[str, Any],
    runtime_only: Collection[str],
    max_regions: int | None,
    discovery_defaults: tuple[int, int] = (50, 1000),
) -> tuple[dict[str, Any], list[InitErrorDetails]]:
    """``data`` as the schema should see it, and the problems of these rules.

    An empty section (``images:`` with nothing after it) means its defaults, so it is left out; a
    ``runtime_only`` key is refused as unknown. ``max_regions`` is the valid ``limits.max_regions_per_image``
    (None when the limits are invalid: their own problem is reported, and the counts are not judged).
    ``discovery_defaults`` are ``discovery.page_size`` and ``max_pages`` when a file leaves them out.
    """
    found: list[InitErrorDetails] = []
    kept: dict[str, Any] = {}
    for key, value in data.items():
        if key in runtime_only:
            found.append({"type": "unexpected_keyword_argument", "loc": (key,), "input": None})
        elif value is not None:
            kept[key] = value
    found += _duplicates(kept)[:MAX_COLLECTED]
    found += _targets_shape(kept)[:MAX_COLLECTED]
    if max_regions is not None:
        found += _region_counts(kept, max_regions)[:MAX_COLLECTED]
    found += _sizes(kept, discovery_defaults)[:MAX_COLLECTED]
    found += _label_names(kept)
    return kept, found


def _scopes(data: Mapping[str, Any]) -> list[tuple[Loc, Mapping[str, Any]]]:
    """The top level and each target that is a mapping, with where it is."""
    out: list[tuple[Loc, Mapping[str, Any]]] = [((), data)]
    targets = data.get("targets")
    if isinstance(targets, list):
        out += [(("targets", i), t) for i, t in enumerate(targets) if isinstance(t, dict)]
    return out


def _strings(value: Any, key: str = "") -> list[str | None]:
    """The strings of a list (each item's ``key`` when given), None where there is none."""
    if not isinstance(value, list):
        return []
    if key:
        value = [item.get(key) if isinstance(item, dict) else None for item in value]
    return [v if isinstance(v, str) else None for v in value]


def _repeats(values: Sequence[str | None], base: Loc, what: str, field: str = "") -> list[InitErrorDetails]:
    """A problem at each value seen before in ``values`` (the list at ``base``), the first MAX_COLLECTED."""
    first: dict[str, int] = {}
    out: list[InitErrorDetails] = []
    for i, value in enumerate(values):
        if value is None:
            continue
        if value not in first:
            first[value] = i
        elif len(out) < MAX_COLLECTED:
            loc: Loc = (*base, i, field) if field else (*base, i)
            also = format_loc((*base, first[value]))
            out.append(rule(loc, f"duplicate {what}{shown(value)} (also {also})"))
        else:
            break
    return out


def _duplicates(data: Mapping[str, Any]) -> list[InitErrorDetails]:
    """Image ids and regions named twice, found on the file as written so other errors hide nothing."""
    out: list[InitErrorDetails] = []
    for base, node in _scopes(data):
        images = node.get("images")
        out += _repeats(_strings(images, "id"), (*base, "images"), "image id", "id")
        for i, item in enumerate(images if isinstance(images, list) else []):
            if isinstance(item, dict) and isinstance(item.get("additional_regions"), list):
                regions = (*base, "images", i, "additional_regions")
                out += _repeats(_strings(item["additional_regions"]), regions, "region")
        discovery = node.get("discovery")
        if isinstance(discovery, dict):
            out += _repeats(_strings(discovery.get("ids")), (*base, "discovery", "ids"), "image id")
            regions = (*base, "discovery", "additional_regions")
            out += _repeats(_strings(discovery.get("additional_regions")), regions, "region")
        if base:
            out += _repeats(
                _strings(node.get("regions"), "region_id"), (*base, "regions"), "region", "region_id"
            )
    return out


def _targets_shape(data: Mapping[str, Any]) -> list[InitErrorDetails]:
    """With ``targets:``, the one-target sections belong inside a target, and accounts are unique."""
    targets = data.get("targets")
    if targets is None:
        return []
    out = [
        rule((name,), "belongs inside a target when 'targets' is set (each target has its own)")
        for name in ONE_TARGET_SECTIONS
        if data.get(name) is not None
    ]
    api = data.get("api")
    if isinstance(api, dict):
        out += [
            rule(("api", key), "is set per region when 'targets' is set (targets[].regions[])")
            for key in REGION_KEYS
            if key in api
        ]
    return out + _repeats(_strings(targets, "account"), ("targets",), "account", "account")


def _region_counts(data: Mapping[str, Any], most: int) -> list[InitErrorDetails]:
    """No image asks for more regions than ``limits.max_regions_per_image`` (answers are held to it too)."""
    message = f"must have at most {most} item(s) (limits.max_regions_per_image)"
    out = []
    for base, node in _scopes(data):
        images = node.get("images")
        for i, item in enumerate(images if isinstance(images, list) else []):
            regions = item.get("additional_regions") if isinstance(item, dict) else None
            if isinstance(regions, list) and len(regions) > most:
                out.append(rule((*base, "images", i, "additional_regions"), message))
        discovery = node.get("discovery")
        regions = discovery.get("additional_regions") if isinstance(discovery, dict) else None
        if isinstance(regions, list) and len(regions) > most:
            out.append(rule((*base, "discovery", "additional_regions"), message))
    return out


_INT: TypeAdapter[int] = TypeAdapter(int)
_BOOL: TypeAdapter[bool] = TypeAdapter(bool)


def _number(value: Any, default: int) -> int:
    """``value`` as the schema reads an integer, ``default`` when absent or invalid (its own problem)."""
    if value is None:
        return default
    try:
        return max(0, _INT.validate_python(value))
    except ValidationError:
        return default


def _regions_of(item: Any) -> list[str | None]:
    return _strings(item.get("additional_regions")) if isinstance(item, dict) else []


def _image_regions(node: Mapping[str, Any], discovery_defaults: tuple[int, int]) -> int:
    """What one (account, region) of ``node`` may watch, in image-regions: each image once plus once per
    additional region; discovery as the most it may find (``page_size`` x ``max_pages`` images)."""
    images = node.get("images")
    total = sum(1 + len(_regions_of(item)) for item in (images if isinstance(images, list) else []))
    discovery = node.get("discovery")
    if isinstance(discovery, dict):
        try:
            enabled = _BOOL.validate_python(discovery.get("enabled", False))
        except ValidationError:
            enabled = False
        if enabled:
            size, pages = discovery_defaults
            found = _number(discovery.get("page_size"), size) * _number(discovery.get("max_pages"), pages)
            total += found * (1 + len(_regions_of(discovery)))
    return total


def _sizes(data: Mapping[str, Any], discovery_defaults: tuple[int, int]) -> list[InitErrorDetails]:
    """The file within what one exporter serves well (the limits in :mod:`exporter.config.schema`, measured
    by bench/limits.py): (account, region) pairs, image-regions watched (per replica when sharded), and the
    distinct additional regions
    of each target (each is a replication histogram of every one of its regions). Counted on the file as
    written; a part that is not a list or a number counts as nothing or its default (its own problem)."""
    targets = data.get("targets")
    nodes: list[tuple[Loc, int, Mapping[str, Any]]]
    if isinstance(targets, list):
        nodes = [
            (("targets", i), len(t["regions"]) if isinstance(t.get("regions"), list) else 0, t)
            for i, t in enumerate(targets)
            if isinstance(t, dict)
        ]
    else:
        nodes = [((), 1, data)]
    out: list[InitErrorDetails] = []
    pairs = sum(n for _, n, _ in nodes)
    if pairs > MAX_SCOPES:
        out.append(
            rule(
                ("targets",),
                f"has {pairs} (account, region) pairs in all (the regions of every target); "
                f"at most {MAX_SCOPES}: run another exporter for the rest",
            )
        )
    watched = sum(n * _image_regions(node, discovery_defaults) for _, n, node in nodes)
    sharding = data.get("sharding")
    shards = max(1, _number(sharding.get("shards") if isinstance(sharding, dict) else None, 1))
    if -(-watched // shards) > MAX_WATCHED_IMAGE_REGIONS:  # each replica watches an even share
        per = f", {-(-watched // shards)} per replica of {shards}" if shards > 1 else ""
        where: Loc = ("targets",) if isinstance(targets, list) else ("images",)
        out.append(
            rule(
                where,
                f"may watch {watched} image-regions in all{per} (each image in each region of its target, "
                f"once plus once per additional region; discovery as page_size x max_pages images); at most "
                f"{MAX_WATCHED_IMAGE_REGIONS} per replica: lower discovery.max_pages or add sharding.shards",
            )
        )
    for base, _, node in nodes:
        images = node.get("images")
        named = {r for item in (images if isinstance(images, list) else []) for r in _regions_of(item)}
        named |= set(_regions_of(node.get("discovery")))
        named.discard(None)
        if len(named) > MAX_REGIONS_PER_IMAGE:
            out.append(
                rule(
                    (*base, "images") if base or isinstance(images, list) else ("discovery",),
                    f"name {len(named)} distinct additional regions together with discovery; at most "
                    f"{MAX_REGIONS_PER_IMAGE} per target",
                )
            )
    return out


def _label_names(data: Mapping[str, Any]) -> list[InitErrorDetails]:
    """At most MAX_LABELS distinct own label names in the whole file: every family that carries own labels
    carries all of them (exporter.config.labels says why that many). Reported once, at the ``labels`` that
    names one too many."""
    seen: set[str] = set()
    for base, node in _scopes(data):
        images = node.get("images")
        places: list[tuple[Loc, Any]] = [((*base, "labels"), node.get("labels"))]
        places += [
            ((*base, "images", i, "labels"), item.get("labels"))
            for i, item in enumerate(images if isinstance(images, list) else [])
            if isinstance(item, dict)
        ]
        for loc, labels in places:
            if not isinstance(labels, dict) or len(labels) > MAX_LABELS:
                continue  # too many in one mapping is that mapping's own problem
            seen.update(name for name in labels if isinstance(name, str))
            if len(seen) > MAX_LABELS:
                message = (
                    f"brings the file to {len(seen)} distinct label names; at most {MAX_LABELS} in all, since"
                    " every labelled series carries every name"
                )
                return [rule(loc, message)]
    return []
