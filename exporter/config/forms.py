"""The shapes the file writes a config class in besides its own, derived from its fields, and merging.

A target overrides some top-level keys (``targets[].api``, ``targets[].refresh``): its overrides are the
class's own fields, each optional, None meaning "inherited". A region entry names a few keys of the API
config. Both are made from the class's annotated fields, so a key added to the class is a key here.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import field, make_dataclass
from typing import Any

from pydantic import ConfigDict, TypeAdapter

__all__ = ["FILE", "adapter", "dataclass_form", "merged", "overrides"]

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
