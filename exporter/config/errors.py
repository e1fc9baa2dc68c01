"""Config problems as lines: pydantic's errors translated into one located message each.

A message is written from the error's type and context only, never from its input (pydantic's
``input_value``), so a secret put in the wrong place cannot reach a terminal or a log; a value is quoted
only when short and plain (:func:`shown`). Validators that judge several fields at once (the cross-field
rules) report each problem at its own field with :func:`rule`, and raise them together with :func:`fail`.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Annotated, Any, NoReturn, get_args, get_origin

from pydantic import GetJsonSchemaHandler, ValidationError
from pydantic.fields import FieldInfo
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError, PydanticOmit, core_schema

from exporter.redaction import REDACTED

Loc = tuple[str | int, ...]
# Problems kept: past this a file gets a summary line, and a mistake repeated through aliases a million
# times costs no more to report than a thousand.
MAX_COLLECTED = 1000
_RULE = "config_rule"
_WHOLE_LINE = "whole_line"
_KNOWN_TYPES = frozenset(get_args(core_schema.ErrorType))
_FILE_KEYS: dict[type, dict[str, FieldInfo]] = {}
# What an error line may quote as it is (matched whole: "$" would also accept a value ending in "\n").
_PLAIN_RE = re.compile(r"[\x21-\x7e]{1,64}")
# What a location may show of a key: no ':', '[' or ']', so "<file>: <location>: <message>" stays parseable.
_PLAIN_KEY_RE = re.compile(r"[\x21-\x39\x3b-\x5a\x5c\x5e-\x7e]{1,64}")


class ConfigError(Exception):
    """The configuration is invalid; ``errors`` holds one line per problem, each naming where it is."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors: list[str] = list(errors)
        super().__init__("\n".join(self.errors))


@dataclass(frozen=True, slots=True)
class Problem:
    """One problem: where (keys and indexes from the document root) and what. A ``whole_line`` message is
    a complete line about another file (the web config named by ``web.config_file``), printed as it is."""

    loc: Loc
    message: str
    whole_line: bool = False
    at: Loc | None = None  # the node to point at in the text, when not ``loc`` (the key of a refused key)


def ordered(problems: Iterable[Problem], raw: Any) -> list[Problem]:
    """Problems in the order of the file (a missing field sorts after its siblings); stable otherwise."""
    key_index: dict[int, dict[str, int]] = {}  # id(mapping) -> key -> position, built once per mapping

    def position(loc: Loc) -> tuple[int, ...]:
        node: Any = raw
        out = []
        for part in loc:
            if isinstance(node, dict) and part in node:
                found = key_index.get(id(node))
                if found is None:
                    found = key_index[id(node)] = {k: i for i, k in enumerate(node)}
                out.append(found[str(part)])
                node = node[part]
            elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
                out.append(part)
                node = node[part]
            else:
                out.append(1 << 30)
                node = None
        return tuple(out)

    return sorted(problems, key=lambda p: position(p.at if p.at is not None else p.loc))


class NotInFile:
    """Marks a runtime field that is no key of the file (``Config.scopes()`` sets it): left out of the
    JSON schema and of :func:`file_keys`, refused when a file sets it."""

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        """Omit the field from the JSON schema."""
        raise PydanticOmit


NOT_IN_FILE = NotInFile()


# The file's secrets while it is validated and its lines written (:func:`withholding`): each with whether a
# value merely containing it is withheld too (a secret long enough to be real), or only one equal to it.
_WITHHELD: ContextVar[tuple[tuple[str, bool], ...]] = ContextVar("withheld", default=())


@contextmanager
def withholding(secrets: Iterable[tuple[str, bool]]) -> Iterator[None]:
    """Within the block no line quotes a secret: :func:`shown` and :func:`format_loc` leave out a value or
    key equal to one of ``secrets`` (``(secret, inside)`` pairs), or containing one whose ``inside`` is set.

    Left out where the line is written, not masked afterwards: masking a secret that is also a word
    ("key") would garble the lines' own words ("unknown [REDACTED]").
    """
    token = _WITHHELD.set(tuple((s, inside) for s, inside in secrets if s))
    try:
        yield
    finally:
        _WITHHELD.reset(token)


def _withheld(text: str) -> bool:
    return any(text == secret or (inside and secret in text) for secret, inside in _WITHHELD.get())


def shown(value: object) -> str:
    """``'value'`` when it is short printable ASCII, else nothing: never a part of a value (a cut secret);
    ``'[REDACTED]'`` for a secret of the file being read (:func:`withholding`), which a value never shows."""
    if not isinstance(value, str) or not _PLAIN_RE.fullmatch(value):
        return ""
    return f" '{REDACTED}'" if _withheld(value) else f" {value!r}"


def format_loc(loc: Loc) -> str:
    """``("images", 0, "id")`` -> ``images[0].id``; a key that is long or unprintable is not shown."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            # The line stays one line, and a value pasted where a key belongs is not printed.
            if not _PLAIN_KEY_RE.fullmatch(part):
                name = "<unprintable or long key>"
            else:
                name = "<redacted key>" if _withheld(part) else part
            out += f".{name}" if out else name
    return out


def close_match(key: str, known: Iterable[str]) -> list[str]:
    """The known key ``key`` is probably a typo of (none for keys longer than any real one)."""
    if len(key) > 64:
        return []
    return difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)


def file_keys(cls: type) -> dict[str, FieldInfo]:
    """A config class's fields by the key the file spells them with (the alias where there is one).

    A class the file writes in another shape names it in ``file_form`` (``TargetConfig``); fields marked
    :data:`NOT_IN_FILE` are left out.
    """
    known = _FILE_KEYS.get(cls)
    if known is not None:
        return known
    form: type = getattr(cls, "file_form", cls)
    hints = typing.get_type_hints(form, include_extras=True)
    out = {}
    for field in dataclasses.fields(form):
        info = FieldInfo.from_annotation(hints[field.name])
        if not any(isinstance(m, NotInFile) for m in info.metadata):
            out[info.alias or field.name] = info
    _FILE_KEYS[cls] = out
    return out


def rule(loc: Loc, message: str) -> InitErrorDetails:
    """One problem a validator found at ``loc`` (relative to what it validates)."""
    return {"type": PydanticCustomError(_RULE, "{message}", {"message": message}), "loc": loc, "input": None}


def whole_line(line: str) -> InitErrorDetails:
    """A problem that is already a complete line (the web config file's), reported where it is raised."""
    return {
        "type": PydanticCustomError(_WHOLE_LINE, "{message}", {"message": line}),
        "loc": (),
        "input": None,
    }


def fail(title: str, found: Sequence[InitErrorDetails]) -> NoReturn:
    """Raise ``found`` from a validator: pydantic reports each at its own location under the validated one."""
    raise ValidationError.from_exception_data(title, list(found))


def relocated(failed: Iterable[tuple[Loc, ValidationError]], shift: int = 0) -> list[InitErrorDetails]:
    """Each error of each ValidationError under its prefix (a leading index moved by ``shift``), ready to
    raise again; repeats dropped (the same combination judged in every region of a target is one problem)."""
    out: dict[tuple[Loc, str], InitErrorDetails] = {}
    for prefix, exc in failed:
        for err in exc.errors(include_url=False)[:MAX_COLLECTED]:
            kind, loc = err["type"], err["loc"]
            if shift and loc and isinstance(loc[0], int):
                loc = (loc[0] + shift, *loc[1:])
            loc = (*prefix, *loc)
            known = kind in _KNOWN_TYPES
            again: InitErrorDetails = {
                "type": kind if known else PydanticCustomError(kind, "{message}", {"message": err["msg"]}),
                "loc": loc,
                "input": err["input"],
            }
            if known and "ctx" in err:
                again["ctx"] = err["ctx"]
            out.setdefault((loc, err["msg"]), again)
    return list(out.values())


def problems(exc: ValidationError, root: type) -> list[Problem]:
    """``exc``'s errors as problems, each message written for ``root``'s file (never quoting the input)."""
    out = []
    for err in exc.errors(include_url=False, include_input=False)[:MAX_COLLECTED]:
        whole = err["type"] == _WHOLE_LINE
        out.append(Problem(err["loc"], err["msg"] if whole else _describe(err, root), whole_line=whole))
    return out


def plain_number(value: Any) -> Any:
    """``0.0`` -> ``0``: bounds read as people write them."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _describe(err: ErrorDetails, root: type) -> str:
    """One message for one pydantic error, from its type and context only (never its input)."""
    return message(err, lambda loc: _holder_at(root, loc))


def message(err: ErrorDetails, holder_at: Callable[[Loc], type | None]) -> str:
    """One message for one pydantic error, from its type and context only (never its input).

    ``holder_at`` finds the class holding the fields at a location (a config dataclass, or a web-config
    model), for the did-you-mean of an unknown key. Shared by both YAML files' readers.
    """
    kind = err["type"]
    ctx: dict[str, Any] = dict(err.get("ctx") or {})
    simple = {
        "missing": "required",
        "int_type": "must be an integer",
        "int_parsing": "must be an integer",
        "int_from_float": "must be an integer",
        "float_type": "must be a number",
        "float_parsing": "must be a number",
        "finite_number": "must be a finite number",
        "bool_type": "must be true or false",
        "bool_parsing": "must be true or false",
        "string_type": "must be a string",
        "list_type": "must be a list",
        "tuple_type": "must be a list",
        "dataclass_type": "must be a mapping",
        "dataclass_args_type": "must be a mapping",
        "model_type": "must be a mapping",
        "model_attributes_type": "must be a mapping",
        "dict_type": "must be a mapping",
        "string_too_short": "must not be empty",
        "string_too_long": f"must be at most {ctx.get('max_length')} characters",
        "int_parsing_size": "must be an integer (too many digits)",
        "literal_error": f"must be {ctx.get('expected', 'one of the allowed values')}",
        "greater_than": f"must be greater than {plain_number(ctx.get('gt'))}",
        "greater_than_equal": f"must be at least {plain_number(ctx.get('ge'))}",
        "less_than": f"must be less than {plain_number(ctx.get('lt'))}",
        "less_than_equal": f"must be at most {plain_number(ctx.get('le'))}",
        "too_short": f"must have at least {ctx.get('min_length')} item(s)",
        "too_long": f"must have at most {ctx.get('max_length')} item(s)",
    }
    if kind in simple:
        return simple[kind]
    loc = err["loc"]
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        holder = holder_at(loc[:-1])
        key = loc[-1] if loc else None
        if holder is not None and isinstance(key, str):
            close = close_match(key, holder_keys(holder))
            if close:
                return f"unknown key (did you mean '{close[0]}'?)"
        return "unknown key"
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return str(ctx["error"])
    return err["msg"]  # a rule's own message (config_rule), written to be shown


def holder_keys(holder: type) -> Iterable[str]:
    """The keys a file may write in ``holder``: a pydantic model's aliases or names, else a config class's."""
    fields = getattr(holder, "model_fields", None)
    if isinstance(fields, dict):
        return [field.alias or name for name, field in fields.items()]
    return file_keys(holder)


def _holder_at(root: type, loc: Loc) -> type | None:
    """The config class that holds the field at ``loc`` (to suggest a key for an unknown one)."""
    current: Any = root
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and dataclasses.is_dataclass(current)):
            return None
        field = file_keys(current).get(part)
        if field is None:
            return None
        current = _unwrap(field.annotation)
    return current if isinstance(current, type) and dataclasses.is_dataclass(current) else None


def _unwrap(annotation: Any) -> Any:
    """``tuple[X, ...] | None`` -> ``X``: the config class inside containers and optionals, if any."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _unwrap(get_args(annotation)[0])
    if origin in (list, tuple, typing.Union, types.UnionType):
        for arg in get_args(annotation):
            found = _unwrap(arg)
            if isinstance(found, type) and dataclasses.is_dataclass(found):
                return found
        return None
    return annotation
