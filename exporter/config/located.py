"""One located line per problem in a pydantic-model YAML file: errors translated, positions, file order.

The web config file's reader (its models are pydantic ``BaseModel``s); the pieces every file's errors
share (``Problem``, how a value or a location is shown, did-you-mean) are ``exporter.config.errors``'.
A mistake is reported as
``<file>:<line>:<column>: <field>: <message>`` (the position where the YAML text is known), every problem
at once, in the order of the file, a did-you-mean for an unknown key. Messages are written here from
pydantic's location, error type and context only; the offending input is never echoed, a value is
quoted only when short and plain (:func:`shown`), and a key only when it is a plain token, so a secret
put in the wrong place cannot reach a terminal or a log.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, cast, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from exporter.config import yamlfile
from exporter.config.errors import Loc, Problem, format_loc, message, ordered

__all__ = [
    "MAX_PROBLEMS",
    "Position",
    "collect",
    "describe",
    "file_keys",
    "locator",
    "ordered",
    "render",
    "yaml_error",
]

MAX_PROBLEMS = 100  # lines reported: a file with a million bad keys gets a summary, not a million lines

Position = tuple[int, int]  # 1-based line and column

# A quoted fragment of PyYAML's own problem text: a tag or an alias can be any text the file holds.
_QUOTED_RE = re.compile(r"'[^']{5,}'|\"[^\"]{5,}\"")
_TOKEN_NAME_RE = re.compile(r"^'<[a-z ]+>'$")


def file_keys(model: type[BaseModel]) -> dict[str, Any]:
    """A model's fields by the key the file spells them with (the alias where there is one)."""
    return {field.alias or name: field for name, field in model.model_fields.items()}


def _model_at(model: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """The model that holds the field at ``loc`` (to suggest a key for an unknown one)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = file_keys(current).get(part)
        if field is None:
            return None
        current = _unwrap_model(field.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap_model(annotation: Any) -> Any:
    """``list[X] | None`` -> ``X``: the model class inside containers and optionals, if any."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _unwrap_model(get_args(annotation)[0])
    if origin in (list, tuple, typing.Union, types.UnionType):
        for arg in get_args(annotation):
            found = _unwrap_model(arg)
            if isinstance(found, type) and issubclass(found, BaseModel):
                return found
        return None
    return annotation


def describe(err: ErrorDetails, model: type[BaseModel], loc: Loc) -> str:
    """One message for one pydantic error of ``model``'s file (the wording both YAML files share)."""
    return message(cast(ErrorDetails, {**err, "loc": loc}), lambda at: _model_at(model, at))


def collect(exc: ValidationError, model: type[BaseModel], base: Loc = ()) -> list[Problem]:
    """``exc``'s errors as problems located under ``base``.

    A refused mapping key (pydantic's ``[key]`` step) is reported at its mapping, pointing at the key:
    the message names it, so a key that cannot be shown plainly is still placed.
    """
    out = []
    for err in exc.errors(include_input=False, include_url=False):
        where: Loc = (*base, *err["loc"])
        if where and where[-1] == "[key]":
            out.append(Problem(where[:-2], describe(err, model, where), at=where[:-1]))
        else:
            out.append(Problem(where, describe(err, model, where)))
    return out


def locator(text: str) -> Callable[[Loc], Position | None]:
    """Where each location is written in the YAML ``text``: the key of a mapping entry, the item of a list
    (or the nearest enclosing one that is written). Composes the text again: call it on failure only."""
    loader = yamlfile.StrictLoader(text)
    try:
        root: yaml.Node | None = loader.get_single_node()
    except yaml.YAMLError:
        root = None
    finally:
        loader.dispose()
    entries: dict[int, dict[str, tuple[yaml.Node, yaml.Node]]] = {}

    def find(loc: Loc) -> Position | None:
        if root is None:
            return None
        node, mark = root, root.start_mark
        for part in loc:
            if isinstance(node, yaml.MappingNode):
                keys = entries.get(id(node))
                if keys is None:
                    pairs = reversed(node.value)  # the first of repeated keys wins, as in `ordered`
                    keys = entries[id(node)] = {str(k.value): (k, v) for k, v in pairs}
                if (pair := keys.get(str(part))) is None:
                    break
                mark, node = pair[0].start_mark, pair[1]
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
                mark = node.start_mark
            else:
                break
        return mark.line + 1, mark.column + 1

    return find


def render(source: str, problem: Problem, position: Position | None = None) -> str:
    """``<source>[:<line>:<column>]: <field>: <message>``, always one line."""
    prefix = f"{source}:{position[0]}:{position[1]}" if position is not None else source
    where = format_loc(problem.loc)
    line = f"{prefix}: {where}: {problem.message}" if where else f"{prefix}: {problem.message}"
    return " ".join(line.split())  # an OS or TLS library message may carry a line break


def _quiet(text: str) -> str:
    """PyYAML's text without the longer fragments it quotes from the file (a tag or an alias name)."""
    return _QUOTED_RE.sub(lambda m: m[0] if _TOKEN_NAME_RE.fullmatch(m[0]) else "'...'", text)


def yaml_error(source: str, exc: yaml.YAMLError) -> str:
    """The one line for a document the YAML gate refused, at its line and column where known."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return f"{source}: invalid YAML: {type(exc).__name__}"
    mark = exc.problem_mark or exc.context_mark
    where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
    if isinstance(exc, yamlfile.ExpansionError):
        # The first few steps of the path say where; nesting 200 deep would otherwise print 200 of them.
        field = (format_loc(exc.path[:8]) + ("..." if len(exc.path) > 8 else "")) or "the document"
        return f"{where}: {field}: {exc.problem}"
    problem = exc.problem or "invalid YAML"
    if not problem.startswith("duplicate key "):  # yamlfile's own words quote a short key only
        problem = _quiet(problem)
    context = f" ({_quiet(exc.context)})" if exc.context else ""
    return f"{where}: invalid YAML: {problem}{context}"
