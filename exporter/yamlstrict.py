"""YAML loading that refuses duplicate mapping keys, shared by the config and web-config loaders.

PyYAML silently keeps the last of two equal keys, so a second ``images:`` or ``alice:`` would quietly
win; both loaders make that an error naming the key and the line of its first definition.
"""

from __future__ import annotations

from typing import Any

import yaml

# libyaml's parser when PyYAML was built with it: about 6x faster on a 10,000-image config, which is
# read at start-up and on every SIGHUP reload.
_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class StrictLoader(_SafeLoader):  # type: ignore[valid-type,misc]  # the base is chosen at import time
    """A safe loader (no Python object tags) that rejects duplicate mapping keys."""


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
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {str(key)[:64]!r} (first defined on line {seen[key].start_mark.line + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node
    mapping: dict[Any, Any] = loader.construct_mapping(node, deep=True)
    return mapping


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load(text: str) -> Any:
    """Parse one YAML document safely; duplicate keys raise ``yaml.constructor.ConstructorError``."""
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - StrictLoader is a safe loader
