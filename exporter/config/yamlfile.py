"""The one gate every YAML file the exporter reads passes: bounded reading, then bounded, strict parsing.

Shared by the config loader (``exporter.config.load``) and the web-config loader
(``exporter.http.toolkit``), so a hostile file gets the same treatment whichever flag names it:

- :func:`read_bytes` reads regular files only (a FIFO, a device or a directory is refused without
  blocking: the path is stat-ed first and opened with ``O_NONBLOCK``), at most ``max_bytes``, within a
  deadline: :mod:`exporter.files`, the reader the OIDC token file shares.
- :func:`load` composes the node graph (which shares aliased nodes, so it is as small as the text), then
  counts what construction and interpolation would make of it, aliases expanded, *before* building
  anything: an alias bomb of a few hundred bytes is refused in microseconds instead of being copied into
  gigabytes. Recursive aliases and nesting deeper than any setting needs are refused the same way.
- Duplicate mapping keys are errors (PyYAML silently keeps the last, so a second ``images:`` would win).
- Integers too long to be any setting become :class:`OversizedInt` (Python refuses to convert more than
  4,300 digits, with a ValueError that used to escape as a traceback); the loaders report it at its field.
- Any other value a constructor cannot build (``2001-13-01``, ``!!int 0x_``) is a ``ConstructorError``
  at its line, never a bare ValueError.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor

from exporter import files
from exporter.files import READ_SECONDS, ReadError

__all__ = [
    "MAX_DEPTH",
    "MAX_EXPANDED_CHARS",
    "MAX_EXPANDED_NODES",
    "MAX_FILE_BYTES",
    "MAX_INT_CHARS",
    "ExpansionError",
    "NodePath",
    "OversizedInt",
    "ReadError",
    "StrictLoader",
    "check_expansion",
    "load",
    "read_bytes",
]

# A 10,000-image config with two regions per image is about 0.9 MB and 120,000 nodes; with the most
# regions an image may have by default (50) about 4.5 MB and 520,000 nodes. The caps sit well above both,
# and low enough that a document just under them is still checked in seconds (aliases make 2,000,000
# nodes out of 170 kB).
MAX_FILE_BYTES = 32 * 1024 * 1024
MAX_EXPANDED_NODES = 2_000_000
MAX_EXPANDED_CHARS = 64 * 1024 * 1024  # scalar characters, aliases expanded
MAX_DEPTH = 32  # the config nests 6 deep, the web config 4
MAX_INT_CHARS = 100  # far beyond any setting, far below Python's 4,300-digit conversion limit

# libyaml's parser when PyYAML was built with it: about 6x faster on a 10,000-image config, which is
# read at start-up and on every SIGHUP reload.
_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


NodePath = tuple[str | int, ...]  # keys and indexes from the document root


class ExpansionError(yaml.MarkedYAMLError):
    """The document would expand past a limit (alias bomb, recursive alias, nesting too deep).

    ``path`` is where: the keys and indexes of the first way to the offending node (empty: the root).
    """

    def __init__(self, path: NodePath, *, problem: str, problem_mark: yaml.Mark | None = None) -> None:
        super().__init__(problem=problem, problem_mark=problem_mark)
        self.path = path


@dataclass(frozen=True, slots=True)
class OversizedInt:
    """An integer scalar too long to be any setting (only its length is kept, never its digits)."""

    chars: int

    def __str__(self) -> str:
        return f"<integer of {self.chars} characters>"


# --------------------------------------------------------------------------------------------------------
# Reading.


def read_bytes(path: str, *, max_bytes: int = MAX_FILE_BYTES, max_seconds: float = READ_SECONDS) -> bytes:
    """:func:`exporter.files.read_bytes`, capped at a YAML file's size unless told otherwise."""
    return files.read_bytes(path, max_bytes=max_bytes, max_seconds=max_seconds)


# --------------------------------------------------------------------------------------------------------
# Counting before constructing.


def check_expansion(
    root: yaml.Node,
    *,
    max_nodes: int = MAX_EXPANDED_NODES,
    max_chars: int = MAX_EXPANDED_CHARS,
    max_depth: int = MAX_DEPTH,
) -> None:
    """Refuse ``root`` if, aliases expanded, it has too many nodes, scalar characters or levels.

    One memoised post-order walk of the composed graph (iterative: the graph may be deeper than the
    interpreter's stack), linear in the size of the text however many times an alias is used.
    Raises :class:`ExpansionError` at the smallest node past a limit, or at a node that contains itself.
    """
    done: dict[int, tuple[int, int, int]] = {}  # id(node) -> (nodes, chars, depth), aliases expanded
    on_path: set[int] = set()
    if isinstance(root, yaml.ScalarNode):
        if len(root.value) > max_chars:
            _refuse(root, (), f"expands to more than {max_chars} characters (through aliases)")
        return
    # Only collections go on the stack (scalars are counted by their parent), each with the first path
    # that reached it, for the error line.
    stack: list[tuple[yaml.Node, bool, NodePath]] = [(root, False, ())]
    while stack:
        node, finished, path = stack.pop()
        key = id(node)
        if finished:
            on_path.discard(key)
            nodes, chars, depth = 1, 0, 1
            for _, child in _children(node):
                if isinstance(child, yaml.ScalarNode):
                    nodes += 1
                    chars += len(child.value)
                    depth = max(depth, 2)
                else:
                    n, c, d = done[id(child)]
                    nodes += n
                    chars += c
                    depth = max(depth, d + 1)
            done[key] = (nodes, chars, depth)
            if nodes > max_nodes:
                _refuse(node, path, f"expands to more than {max_nodes} nodes (through aliases)")
            if chars > max_chars:
                _refuse(node, path, f"expands to more than {max_chars} characters (through aliases)")
            if depth > max_depth:
                _refuse(node, path, f"nests deeper than {max_depth} levels")
            continue
        if key in done:
            continue  # an alias of a node already counted
        if key in on_path:
            _refuse(node, path, "an alias refers to a node that contains it (a recursive structure)")
        on_path.add(key)
        stack.append((node, True, path))
        stack.extend(  # reversed, so the path kept for a shared node is the first in document order
            (child, False, (*path, label))
            for label, child in reversed(_children(node))
            if not isinstance(child, yaml.ScalarNode) and id(child) not in done
        )


def _children(node: yaml.Node) -> list[tuple[str | int, yaml.Node]]:
    """Each child with its place: an index, or the (scalar) key both a key node and its value sit under."""
    if isinstance(node, yaml.SequenceNode):
        return list(enumerate(node.value))
    if isinstance(node, yaml.MappingNode):
        out: list[tuple[str | int, yaml.Node]] = []
        for k, v in node.value:
            label = str(k.value) if isinstance(k, yaml.ScalarNode) else "<key>"
            out += [(label, k), (label, v)]
        return out
    return []


def _refuse(node: yaml.Node, path: NodePath, problem: str) -> None:
    raise ExpansionError(path, problem=problem, problem_mark=node.start_mark)


# --------------------------------------------------------------------------------------------------------
# Constructing.


class StrictLoader(_SafeLoader):  # type: ignore[valid-type,misc]  # the base is chosen at import time
    """A safe loader (no Python object tags) that rejects duplicate keys and never raises a bare error."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        """Construct ``node``; a value its constructor cannot build is a ConstructorError at its line."""
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError, TypeError, RecursionError):
            tag = str(node.tag).rpartition(":")[2] or "scalar"
            raise ConstructorError(None, None, f"invalid {tag} value", node.start_mark) from None


def _construct_mapping(loader: StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
        except TypeError:  # an unhashable key; construct_mapping below reports it
            continue
        if duplicate:
            raise ConstructorError(
                None,
                None,
                f"duplicate key {str(key)[:64]!r} (first defined on line {seen[key].start_mark.line + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node
    mapping: dict[Any, Any] = loader.construct_mapping(node, deep=True)
    return mapping


def _construct_int(loader: StrictLoader, node: yaml.ScalarNode) -> int | OversizedInt:
    text = loader.construct_scalar(node)
    if len(text) > MAX_INT_CHARS:
        return OversizedInt(len(text))
    value: int = SafeConstructor.construct_yaml_int(loader, node)
    return value


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
StrictLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def load(
    text: str,
    *,
    max_nodes: int = MAX_EXPANDED_NODES,
    max_chars: int = MAX_EXPANDED_CHARS,
    max_depth: int = MAX_DEPTH,
) -> Any:
    """Parse one YAML document safely, refusing it before construction if it would expand past a limit.

    Raises only ``yaml.YAMLError`` subclasses: ``MarkedYAMLError`` (with a line) for syntax errors,
    duplicate keys, unbuildable values and :class:`ExpansionError`.
    """
    loader = StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        check_expansion(node, max_nodes=max_nodes, max_chars=max_chars, max_depth=max_depth)
        return loader.construct_document(node)
    except RecursionError:  # the pure-Python composer on a deeply nested flow (libyaml stops at 1000)
        raise ExpansionError((), problem=f"nests deeper than {max_depth} levels") from None
    finally:
        loader.dispose()
