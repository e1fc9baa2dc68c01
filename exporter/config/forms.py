"""The shapes the file writes a config class in besides its own, derived from its fields, and merging.

A target overrides some top-level keys (``targets[].api``, ``targets[].refresh``): its overrides are the
class's own fields, each optional, None meaning "inherited". A region entry names a few keys of the API
config. Both are made from the class's annotated fields, so a key added to the class is a key here. The
runtime classes are passed in (they live in :mod:`exporter.config.model`, which imports this module).
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import field, make_dataclass
from typing import Annotated, Any

from pydantic import ConfigDict, TypeAdapter, ValidationError, ValidationInfo

from exporter.config import rules
from exporter.config.errors import fail, relocated
from exporter.config.schema import MAX_REGIONS_PER_TARGET, Items

__all__ = ["FILE", "adapter", "dataclass_form", "merged", "overrides", "resolved_target", "target_entry"]

FILE = ConfigDict(extra="forbid")  # every config class: a key the file misspells is an error, never ignored


@functools.cache
def adapter(cls: type) -> TypeAdapter[Any]:
    """The validator of ``cls``, built on first use."""
    return TypeAdapter(cls)


def dataclass_form(name: str, doc: str, fields: list[tuple[str, Any, Any]]) -> type:
    """A frozen dataclass part of the file is validated into; ``fields``: (name, type, default or MISSING)."""
    spec = [(n, a, field(default=d) if d is not dataclasses.MISSING else field()) for n, a, d in fields]
    made = make_dataclass(name, spec, frozen=True, slots=True, kw_only=True, namespace={"__doc__": doc})
    made.__pydantic_config__ = FILE  # type: ignore[attr-defined]  # read by pydantic, as on the others
    made.__module__ = "exporter.config.model"
    return made


@functools.cache
def overrides(
    cls: type, name: str, doc: str = "", keep: tuple[str, ...] | None = None, required: tuple[str, ...] = ()
) -> type:
    """``cls``'s fields (``keep`` of them) as optional overrides, None meaning "as inherited" (``required``
    ones excepted); a nested config class becomes overrides too, so ``api: {retry: {max_attempts: 2}}``
    keeps the other retry keys."""
    hints = typing.get_type_hints(cls, include_extras=True)
    fields: list[tuple[str, Any, Any]] = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if keep is not None and f.name not in keep:
            continue
        if f.name in required:
            fields.append((f.name, hint, dataclasses.MISSING))
        else:
            nested = dataclasses.is_dataclass(hint)
            inner = overrides(hint, hint.__name__.removesuffix("Config") + "Overrides") if nested else hint
            fields.append((f.name, inner | None, None))
    return dataclass_form(
        name, f"Per-target overrides of ``{cls.__name__}``; unset keys are inherited.", fields
    )


def merged(base: Any, changes: Any, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """``base`` as data with the keys the overrides ``changes`` set (one level of nesting merged) and
    ``extra``: the input of the validator that judges the combination."""
    out = dataclasses.asdict(base)
    for key, value in _set(changes).items():
        nested = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = {**out[key], **value} if nested else value
    return out | (extra or {})


def _set(changes: Any) -> dict[str, Any]:
    """The keys an overrides object sets (None: inherited), nested overrides as mappings of theirs."""
    if changes is None:
        return {}
    values = ((f.name, getattr(changes, f.name)) for f in dataclasses.fields(changes))
    return {k: _set(v) if dataclasses.is_dataclass(v) else v for k, v in values if v is not None}


def target_entry(target: type, api_config: type, refresh_config: type) -> type:
    """The target class as the file writes it: an account and region entries required, and the target's
    overrides of the top-level ``api`` (but its region keys) and ``refresh``."""
    hints = typing.get_type_hints(target, include_extras=True)
    region = (
        "``targets[].regions[]``: one region of a target, with its endpoint and network when not inherited."
    )
    entry = overrides(api_config, "RegionEntry", region, rules.REGION_KEYS, required=("region_id",))
    api_keys = tuple(f.name for f in dataclasses.fields(api_config) if f.name not in rules.REGION_KEYS)
    api = overrides(
        api_config, "ApiOverrides", "``targets[].api``: overrides of the top-level api.", api_keys
    )
    refresh = overrides(refresh_config, "RefreshOverrides", "``targets[].refresh``: overrides of refresh.")
    fields: list[tuple[str, Any, Any]] = []
    for f in dataclasses.fields(target):
        if f.name == "account":
            fields.append((f.name, hints[f.name], dataclasses.MISSING))
        elif f.name == "regions":
            entries = Annotated[tuple[entry, ...], Items(MAX_REGIONS_PER_TARGET, min_length=1)]  # type: ignore[valid-type]
            fields += [(f.name, entries, dataclasses.MISSING), ("api", api | None, None)]
        elif f.name == "refresh":
            fields.append((f.name, refresh | None, None))
        else:
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            fields.append((f.name, hints[f.name], default))
    doc = "``targets[]``: one account, its credentials and regions, what to watch there, its overrides."
    return dataclass_form("TargetEntry", doc, fields)


def resolved_target(
    entry: Any, info: ValidationInfo, target: type, api_config: type, refresh_config: type
) -> Any:
    """A valid target entry as a ``target``: each region a whole API config (the top-level api, the
    target's overrides with one level of nesting merged, the region entry's keys), its refresh likewise.
    Validated again: a combination can break a rule neither part does (an override's max_delay below the
    top level's base delay). Each target is judged on its own, so one invalid target hides no other's."""
    api, refresh = info.data.get("api"), info.data.get("refresh")
    if api is None or refresh is None:
        return entry  # the top level's own problems are reported; there is nothing to resolve against
    regions, failed = [], []
    for region in entry.regions:
        keys = {k: v for k in rules.REGION_KEYS if (v := getattr(region, k)) is not None}
        try:
            regions.append(adapter(api_config).validate_python(merged(api, entry.api, keys)))
        except ValidationError as exc:
            failed.append((("api",), exc))
    try:
        own_refresh = adapter(refresh_config).validate_python(merged(refresh, entry.refresh))
    except ValidationError as exc:
        failed.append((("refresh",), exc))
    if failed:
        fail("target", relocated(failed))
    same = {f.name: getattr(entry, f.name) for f in dataclasses.fields(target)}
    return target(**{**same, "regions": tuple(regions), "refresh": own_refresh})
