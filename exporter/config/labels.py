"""Own labels: the ``labels:`` of a target and of an image entry, judged, and what each series gets of them.

E-HPC Instant images cannot be tagged, so the labels people route alerts by (team, environment, cost
centre) come from the config. A target's ``labels`` (the top level's in a file without ``targets:``) go
on every series of its account: each of its images' series, its per-(account, region) gauges and its
self-metrics. An image entry's ``labels`` are added on top of its target's: the image's value wins on a
name both set, and an empty value leaves that label off the image (Prometheus reads ``team=""`` as no
``team`` label). Discovered images carry their target's.

A family's label names are fixed: every family that carries own labels carries all the names the config
uses (:attr:`OwnLabels.names`, sorted), with ``""`` where an image or account has none of one.

Bounds, and why:

* a name follows Prometheus' rule (``[a-zA-Z_][a-zA-Z0-9_]*``), has at most 64 characters, does not start
  with ``__`` (Prometheus' own), and is none of :data:`RESERVED`: a label the exporter sets would make two
  series one or be overwritten, and one Prometheus sets on every scraped series (``job``, ``instance``)
  would be renamed ``exported_job``, which no route matches;
* a value is a string of at most 128 characters (a name, not a document: it is written on every series
  of the image) that the output gate leaves as it is: no control or bidi character, no credential of the
  file, no URL userinfo; YAML reads ``0042`` or ``yes`` as a number or a boolean, so those are refused
  rather than turned into ``42`` or ``True`` (quote them);
* at most :data:`MAX_LABELS` names on a target or an image, and as many distinct names in the whole file
  (the rule is :func:`exporter.config.rules.whole_file`'s): ``ehpc_image_info`` has 11 labels of its own,
  so with 10 own ones, ``job``, ``instance`` and the five a Prometheus Operator ServiceMonitor adds
  (namespace, service, pod, container, endpoint) a series has 28, under the 30 label names per series
  Cortex and Grafana Mimir accept by default.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from pydantic import GetCoreSchemaHandler
from pydantic_core import CoreSchema, InitErrorDetails, core_schema

from exporter.config.errors import fail, rule
from exporter.config.schema import BAD_CHARS_RE
from exporter.names import EXPORTER_LABELS
from exporter.redaction import generation, scrub

__all__ = [
    "EMPTY_LABELS",
    "MAX_LABELS",
    "MAX_NAME_CHARS",
    "MAX_VALUE_CHARS",
    "NO_LABELS",
    "PROMETHEUS_LABELS",
    "RESERVED",
    "Labels",
    "OwnLabels",
    "name_problem",
    "value_problem",
]

MAX_LABELS = 10
MAX_NAME_CHARS = 64
MAX_VALUE_CHARS = 128
NAME_PATTERN = r"^[a-zA-Z_][a-zA-Z0-9_]*$"
# Prometheus sets these on every series it scrapes; an exported one is renamed exported_<name>.
PROMETHEUS_LABELS = ("job", "instance")
RESERVED: frozenset[str] = frozenset((*EXPORTER_LABELS, *PROMETHEUS_LABELS))
_NAME_RE = re.compile(NAME_PATTERN)


def _hint(name: str) -> str:
    """`` (did you mean 'x'?)`` with ``name`` made a valid own label name, when that is plain."""
    if not name.isascii():
        return ""
    candidate = re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_")
    if candidate[:1].isdigit():
        candidate = f"_{candidate}"
    if not candidate or candidate == name or name_problem(candidate) is not None:
        return ""
    return f" (did you mean '{candidate}'?)"


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be an own label's name, as a config message (None: it can)."""
    if not name:
        return "a label name must not be empty"
    if len(name) > MAX_NAME_CHARS:
        return f"a label name must be at most {MAX_NAME_CHARS} characters"
    if not _NAME_RE.fullmatch(name):  # whole: "$" alone would take a name ending in a newline
        return "invalid label name (letters, digits and '_', not starting with a digit)" + _hint(name)
    if name.startswith("__"):
        return "label names starting with '__' are reserved for Prometheus' own use" + _hint(name)
    if name in PROMETHEUS_LABELS:
        return (
            "is a label Prometheus sets on every series it scrapes (this one would arrive renamed"
            f" 'exported_{name}'): choose another name"
        )
    if name in RESERVED:
        return "is a label the exporter sets itself: choose another name"
    return None


def value_problem(value: object) -> str | None:
    """Why ``value`` cannot be an own label's value, as a config message (None: it can)."""
    if not isinstance(value, str):
        return "a label value must be a string (quote one that YAML reads as a number or true/false)"
    if len(value) > MAX_VALUE_CHARS:
        return f"a label value must be at most {MAX_VALUE_CHARS} characters"
    if BAD_CHARS_RE.search(value):
        return "a label value must not contain control or bidi characters"
    if scrub(value) != value:
        return (
            "the output gate would mask this label value (it holds a credential of this file, or a URL's"
            " user:password@)"
        )
    return None


def _validated(value: Any) -> Labels:
    """A ``labels:`` mapping of the file as :class:`Labels`, or every problem of it at its name."""
    if isinstance(value, Labels):
        return value
    if not isinstance(value, Mapping):
        fail("labels", [rule((), "must be a mapping of label names to values, like {team: hpc}")])
    if len(value) > MAX_LABELS:
        fail("labels", [rule((), f"has {len(value)} labels; at most {MAX_LABELS}")])
    found: list[InitErrorDetails] = []
    for name, item in value.items():
        if not isinstance(name, str):
            found.append(rule((str(name),), "a label name must be a string"))
            continue
        found += [rule((name,), p) for p in (name_problem(name), value_problem(item)) if p is not None]
    if found:
        fail("labels", found)
    return Labels(value)


def _json_schema(_schema: Any, _handler: Any) -> dict[str, Any]:
    """What an editor and the Helm chart check of a ``labels:`` mapping (the reserved names included)."""
    return {
        "type": "object",
        "description": "Own labels: name to value, added to every series of the target or image.",
        "maxProperties": MAX_LABELS,
        "propertyNames": {
            "type": "string",
            "pattern": NAME_PATTERN,
            "maxLength": MAX_NAME_CHARS,
            # A line end refused outright: "$" in the pattern would accept one at the very end in engines
            # (Python's) where it also matches before a final newline.
            "not": {"anyOf": [{"pattern": "^__"}, {"pattern": "\n"}, {"enum": sorted(RESERVED)}]},
        },
        "additionalProperties": {"type": "string", "maxLength": MAX_VALUE_CHARS},
    }


class Labels(Mapping[str, str]):
    """Label names to values, sorted by name: immutable and hashable, so the config classes that hold one
    stay frozen values. The file writes a mapping; it is judged by :func:`_validated`."""

    __slots__ = ("_items", "_map")

    def __init__(self, items: Mapping[str, str] | Iterable[tuple[str, str]] = (), /) -> None:
        self._map: dict[str, str] = dict(sorted(dict(items).items()))
        self._items = tuple(self._map.items())

    def __getitem__(self, name: str) -> str:
        return self._map[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._map)

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Labels):
            return self._items == other._items
        return super().__eq__(other)

    def __hash__(self) -> int:
        return hash(self._items)

    def __repr__(self) -> str:
        return f"Labels({self._map!r})"

    def over(self, own: Labels) -> Labels:
        """These labels with ``own``'s on top (an image's over its target's)."""
        return self if not own else Labels({**self._map, **own._map})

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        """Validated by :func:`_validated`; written back (and shown as a default) as a mapping."""
        return core_schema.no_info_plain_validator_function(
            _validated,
            ref="Labels",
            serialization=core_schema.plain_serializer_function_ser_schema(dict),
            metadata={"pydantic_js_functions": [_json_schema]},
        )


class OwnLabels:
    """What own labels give the series of one config: the label names every labelled family carries (the
    sorted union of the config's), and the values of each account (its target's labels) and of each
    listed image with labels of its own (its target's with its own on top), ``""`` where a name is unset.

    Values are read through the output gate, as the label values they become: a credential fetched after
    the config was loaded is masked too. The gated values are kept per gate generation (there are few
    distinct ones), so the cost of a lookup is a dictionary's.
    """

    __slots__ = ("_accounts", "_gated", "_generation", "_images", "names")

    def __init__(
        self,
        accounts: Mapping[str, Labels] | None = None,
        images: Mapping[tuple[str, str], Labels] | None = None,
    ) -> None:
        accounts, images = accounts or {}, images or {}
        names = tuple(sorted({n for labels in (*accounts.values(), *images.values()) for n in labels}))
        distinct: dict[tuple[str, ...], tuple[str, ...]] = {}

        def values(labels: Labels) -> tuple[str, ...]:
            found = tuple(labels.get(n, "") for n in names)
            return distinct.setdefault(found, found)  # one tuple per distinct combination

        self.names = names
        # Without names every value is (): kept out, so all configs without labels compare equal.
        self._accounts = {a: values(labels) for a, labels in accounts.items()} if names else {}
        self._images = {key: values(labels) for key, labels in images.items()} if names else {}
        self._gated: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._generation = -1

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, OwnLabels):
            return NotImplemented
        return (self.names, self._accounts, self._images) == (other.names, other._accounts, other._images)

    __hash__ = None  # type: ignore[assignment]  # compared by value, never a key

    def __repr__(self) -> str:
        return f"OwnLabels(names={self.names!r}, accounts={len(self._accounts)}, images={len(self._images)})"

    def _gate(self, values: tuple[str, ...]) -> tuple[str, ...]:
        now = generation()
        if now != self._generation:
            self._gated, self._generation = {}, now
        found = self._gated.get(values)
        if found is None:
            found = self._gated[values] = tuple(map(scrub, values))
        return found

    def account(self, account: str) -> tuple[str, ...]:
        """The values (in :attr:`names` order, through the output gate) of the series of ``account``."""
        found = self._accounts.get(account)
        return self._gate(found) if found is not None else ("",) * len(self.names)

    def image(self, account: str, image_id: str) -> tuple[str, ...]:
        """The values of the series of image ``image_id`` of ``account``: its entry's, or its account's."""
        found = self._images.get((account, image_id))
        return self._gate(found) if found is not None else self.account(account)

    def by_gated_account(self) -> dict[str, tuple[str, ...]]:
        """Each account's values by its account label value (the account name through the output gate)."""
        return {scrub(account): self._gate(values) for account, values in self._accounts.items()}

    def shown(self, values: tuple[str, ...]) -> list[tuple[str, str]]:
        """``(name, value)`` of the labels ``values`` (as :meth:`image` gives them) set, in name order."""
        return [(n, v) for n, v in zip(self.names, values, strict=True) if v]


EMPTY_LABELS = Labels()  # the default of every labels: field
NO_LABELS = OwnLabels()  # a config without own labels
