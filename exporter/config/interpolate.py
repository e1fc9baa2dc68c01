"""``${VAR}`` interpolation of the config file's strings, within a budget, before the schema sees them.

``$$`` writes a literal ``$``; ``${VAR:-default}`` uses the default when VAR is unset *or empty* (as in the
shell); an unset ``${VAR}`` without a default is a problem naming the variable and the field. Every string
is expanded, then checked for what no setting may hold (control and bidi characters, lone surrogates,
more than MAX_STRING_CHARS); integers too long to be any setting are named too. Each such problem is the
field's one line: its value becomes None, and the schema's complaint about that None is not reported.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from exporter.config import yamlfile
from exporter.config.errors import MAX_COLLECTED, Loc, Problem
from exporter.config.schema import BAD_CHARS_RE, MAX_STRING_CHARS
from exporter.redaction import SURROGATE_RE

__all__ = ["FileTooLong", "expand_tree", "interpolate"]

_ENV_RE = re.compile(
    r"\$(?:(?P<dollar>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}|(?P<bad>\{))"
)


class FileTooLong(Exception):
    """Interpolation takes the whole file past its budget; ``loc`` is the string where it did."""

    def __init__(self, loc: Loc = ()) -> None:
        self.loc = loc
        super().__init__()


class _StringTooLong(Exception):
    """One string's interpolation went past MAX_STRING_CHARS."""


@dataclass(slots=True)
class _Budget:
    """Characters all strings may still take after interpolation (``${VAR}`` can repeat a long value)."""

    left: int


def interpolate(text: str, env: Mapping[str, str]) -> tuple[str, list[str]]:
    """Expand ``${VAR}``, ``${VAR:-default}`` and ``$$`` in ``text``; also return the unset names."""
    return _expand(text, env, _Budget(1 << 62), 1 << 62)


def expand_tree(value: Any, env: Mapping[str, str], max_chars: int, problems: list[Problem]) -> Any:
    """``value`` with every string interpolated (``max_chars`` for all of them) and checked, every mapping
    key a string; each problem appended to ``problems``. Raises :class:`FileTooLong`."""
    return _tree(value, (), env, _Budget(max_chars), problems)


def _expand(text: str, env: Mapping[str, str], budget: _Budget, max_chars: int) -> tuple[str, list[str]]:
    """:func:`interpolate`, raising as soon as the result would pass ``max_chars`` or the budget."""
    missing: list[str] = []
    length = len(text)

    def repl(m: re.Match[str]) -> str:
        nonlocal length
        if m.group("dollar"):
            out = "$"
        elif m.group("bad"):
            missing.append("")  # a '${' that is not a well-formed reference
            out = m.group(0)
        else:
            name = m.group("name")
            default = m.group("default")
            value = env.get(name)
            if default is not None:
                out = value if value else default
            elif value is None:
                missing.append(name)
                out = ""
            else:
                out = value
        # Counted while substituting, so 10,000 references to a 100 kB variable never get joined.
        length += len(out) - len(m.group(0))
        _check_length(length, budget, max_chars)
        return out

    _check_length(length, budget, max_chars)
    expanded = _ENV_RE.sub(repl, text) if "$" in text else text
    budget.left -= len(expanded)
    return expanded, missing


def _check_length(length: int, budget: _Budget, max_chars: int) -> None:
    if length > budget.left:
        raise FileTooLong
    if length > max_chars:
        raise _StringTooLong


def _add(problems: list[Problem], problem: Problem) -> None:
    """Collect ``problem`` unless MAX_COLLECTED are in (an alias-multiplied mistake is one mistake)."""
    if len(problems) < MAX_COLLECTED:
        problems.append(problem)


def _tree(value: Any, loc: Loc, env: Mapping[str, str], budget: _Budget, problems: list[Problem]) -> Any:
    """Recursive, but yamlfile has already bounded the depth (32) and the expanded size of the tree."""
    if isinstance(value, str):
        return _string(value, loc, env, budget, problems)
    if isinstance(value, yamlfile.OversizedInt):
        _add(problems, Problem(loc, f"number too large ({value.chars} characters)"))
        return None
    if isinstance(value, dict):
        return {_key(k): _tree(v, (*loc, _key(k)), env, budget, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_tree(v, (*loc, i), env, budget, problems) for i, v in enumerate(value)]
    return value


def _string(value: str, loc: Loc, env: Mapping[str, str], budget: _Budget, problems: list[Problem]) -> Any:
    try:
        expanded, missing = _expand(value, env, budget, MAX_STRING_CHARS)
    except FileTooLong:
        raise FileTooLong(loc) from None
    except _StringTooLong:
        _add(problems, Problem(loc, f"must be at most {MAX_STRING_CHARS} characters"))
        return None
    for name in missing:
        if name:
            _add(problems, Problem(loc, f"environment variable '{name}' is not set and has no default"))
        else:
            _add(
                problems,
                Problem(loc, "malformed '${' reference (use ${NAME} or ${NAME:-default}; $$ for '$')"),
            )
    if BAD_CHARS_RE.search(expanded) is not None:
        if SURROGATE_RE.search(expanded):
            _add(problems, Problem(loc, "must be valid Unicode text (has a lone surrogate)"))
        else:
            _add(problems, Problem(loc, "must not contain control or bidi characters"))
        return None
    return expanded


def _key(key: Any) -> str:
    """A mapping key as a string (YAML allows numbers, booleans, null and dates as keys)."""
    return key if isinstance(key, str) else str(key)
