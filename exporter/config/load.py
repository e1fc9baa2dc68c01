"""The configuration file: YAML in, the frozen ``exporter.config.Config`` out, or one line per problem.

Pipeline of :func:`load_config`: read the file and parse YAML through :mod:`exporter.config.yamlfile` (a
regular file of bounded size; duplicate keys, alias bombs and over-deep nesting refused before anything is
built), interpolate ``${VAR}`` in every string and check every string and integer for what no setting may
hold (:mod:`exporter.config.interpolate`), apply command-line overrides, then validate the whole document
in one pass into the runtime model (:mod:`exporter.config.model`: every field's bounds, every rule between
fields, the web config file ``web.config_file`` names when the caller asks).

Every problem becomes one line ``<source>: <location>: <message>`` in :class:`ConfigError`'s ``errors``,
all problems of a file at once, in the order of the file (the first 100, then one summary line: aliases
can repeat a mistake a million times). A file the gate refuses as a whole (unreadable, an alias bomb) is
one line with its ``line:column``. Messages come from :mod:`exporter.config.errors` and never echo the
input; no line quotes a secret of the file (``errors.withholding``), and the secrets long enough to be
real are registered with :func:`exporter.logging.register_secret` so later log lines mask them too (a
shorter one is refused). Valid but probably unintended settings (a config without images and with
discovery disabled, an undocumented region) are :func:`config_warnings`, and a state directory this
machine cannot use is :func:`state_path_problems` (both in :mod:`exporter.config.checks`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import yaml
from pydantic import ValidationError

from exporter.config import forms, yamlfile
from exporter.config.checks import config_warnings, state_path_problems
from exporter.config.errors import (
    MAX_COLLECTED,
    ConfigError,
    Loc,
    Problem,
    format_loc,
    ordered,
    problems,
    withholding,
)
from exporter.config.interpolate import FileTooLong, expand_tree, interpolate
from exporter.config.model import RESERVED_PATHS, WEB_CONFIG_CHECK, Config, parse_listen_address
from exporter.config.schema import MAX_TOTAL_CHARS
from exporter.logging import register_secret
from exporter.redaction import MIN_SECRET_CHARS

__all__ = [
    "COMMAND_LINE",
    "RESERVED_PATHS",
    "ConfigError",
    "config_json_schema",
    "config_warnings",
    "file_key_names",
    "interpolate",
    "load_config",
    "parse_listen_address",
    "state_path_problems",
]

COMMAND_LINE = "command line"
MAX_PROBLEMS = 100  # lines reported: a file with a million bad keys gets a summary, not a million lines
_SECRET_FIELDS = ("access_key_secret", "security_token")


def config_json_schema() -> dict[str, Any]:
    """The JSON Schema of the configuration file (for editors and the Helm chart)."""
    return forms.adapter(Config).json_schema()


def load_config(
    path: str | os.PathLike[str] | None,
    overrides: Mapping[str, Any] | None = None,
    *,
    web_config_check: Callable[[str], list[str]] | None = None,
) -> Config:
    """Load, interpolate, override and validate a config file (``None``: defaults and overrides only).

    ``overrides`` maps dotted keys (``"web.listen_address"``) to values that replace the file's; ``None``
    values are ignored, so unset command-line flags can be passed straight through. ``web_config_check``
    reads the web config file the result names and returns its problems as lines; they are reported with
    the config's own. Raises ConfigError.
    """
    source = os.fspath(path) if path is not None else COMMAND_LINE
    raw: Any = _read_yaml(source) if path is not None else None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([f"{source}: the top level must be a mapping of sections (api, images, ...)"])

    # Problems with single values found before validation (unset variables, control characters, huge
    # numbers): each is that field's one line, not also the schema's complaint about what is left.
    early: list[Problem] = []
    try:
        raw = expand_tree(raw, os.environ, MAX_TOTAL_CHARS, early)
    except FileTooLong as exc:
        where = format_loc(exc.loc)
        raise ConfigError(
            [f"{source}: {where}: ${{VAR}} expansion takes the file past {MAX_TOTAL_CHARS} characters"]
        ) from None
    overridden = _apply_overrides(raw, overrides or {})
    secrets = _secret_values(raw)
    # A shorter one is refused below (schema.Secret) and never masked: masking a word would garble every
    # later output (and a reload's refused file would leave it masked for the life of the process).
    real = [secret for secret in secrets if len(secret) >= MIN_SECRET_CHARS]
    for secret in real:
        register_secret(secret, pin=True)

    found: list[Problem] = []
    with withholding(_withheld(secrets)):
        try:
            config: Config = forms.adapter(Config).validate_python(
                raw, context={WEB_CONFIG_CHECK: web_config_check}
            )
        except ValidationError as exc:
            found = problems(exc, Config)
        early_locs = {p.loc for p in early}
        found = early + [p for p in found if p.loc not in early_locs]
        if found:
            in_order = ordered(found, raw)
            lines = [_render(p, source, overridden, real) for p in in_order[:MAX_PROBLEMS]]
            if len(in_order) >= MAX_COLLECTED:
                lines.append(f"{source}: more problems not shown (the first {MAX_PROBLEMS} are)")
            elif len(in_order) > MAX_PROBLEMS:
                lines.append(f"{source}: {len(in_order) - MAX_PROBLEMS} more problems not shown")
            raise ConfigError(lines)
    return config


def _read_yaml(path: str) -> Any:
    try:
        text = yamlfile.read_bytes(path).decode("utf-8")
    except yamlfile.ReadError as exc:
        raise ConfigError([f"{path}: cannot read config file: {exc.reason}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: cannot read config file: not UTF-8 text"]) from None
    try:
        return yamlfile.load(text)
    except yamlfile.ExpansionError as exc:
        mark = exc.problem_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
        # The first few steps of the path say where; nesting 200 deep would otherwise print 200 of them.
        field = (format_loc(exc.path[:8]) + ("..." if len(exc.path) > 8 else "")) or "the document"
        raise ConfigError([f"{where}: {field}: {exc.problem}"]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
        problem = exc.problem or "invalid YAML"
        context = f" ({exc.context})" if exc.context else ""
        raise ConfigError([f"{where}: invalid YAML: {problem}{context}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: invalid YAML: {type(exc).__name__}"]) from None


def _apply_overrides(raw: dict[str, Any], overrides: Mapping[str, Any]) -> list[Loc]:
    """Set each dotted key of ``overrides`` (``None`` values skipped) in ``raw``; return their locations."""
    applied: list[Loc] = []
    for dotted, value in overrides.items():
        if value is None:
            continue
        *parents, leaf = dotted.split(".")
        node: Any = raw
        for part in parents:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                break  # the file's own error for this section is reported
            node = child
        else:
            node[leaf] = value
            applied.append((*parents, leaf))
    return applied


def _secret_values(raw: Mapping[str, Any]) -> list[str]:
    """Every secret the file holds: the top-level credentials' and each target's."""
    blocks = [raw.get("credentials")]
    targets = raw.get("targets")
    if isinstance(targets, list):
        blocks += [t.get("credentials") for t in targets if isinstance(t, dict)]
    return [
        v
        for creds in blocks
        if isinstance(creds, dict)
        for k in _SECRET_FIELDS
        if isinstance(v := creds.get(k), str) and v
    ]


def _withheld(secrets: Sequence[str]) -> list[tuple[str, bool]]:
    """What no line may quote (:func:`exporter.config.errors.withholding`): a value equal to a secret of
    the file, or containing one long enough to be real. A short one that is also a key of the file
    ("images") is left alone: its lines name that key, and the file is refused for the secret anyway."""
    keys = file_key_names()
    return [
        (secret, len(secret) >= MIN_SECRET_CHARS)
        for secret in secrets
        if len(secret) >= MIN_SECRET_CHARS or secret not in keys
    ]


@functools.cache
def file_key_names() -> frozenset[str]:
    """Every key a config file may write, at any depth (as the JSON schema spells them)."""
    names: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            properties = node.get("properties")
            if isinstance(properties, dict):
                names.update(properties)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config_json_schema())
    return frozenset(names)


def _render(problem: Problem, source: str, overridden: Sequence[Loc], secrets: Sequence[str]) -> str:
    if problem.whole_line:
        line = problem.message  # names its own file (the web config) and field
    else:
        from_flag = any(problem.loc[: len(loc)] == loc for loc in overridden)
        where = format_loc(problem.loc)
        prefix = COMMAND_LINE if from_flag else source
        line = f"{prefix}: {where}: {problem.message}" if where else f"{prefix}: {problem.message}"
    # Belt and braces: no message quotes a secret (errors.withholding), and a real one (``secrets``, each
    # long enough never to be a word of the line) would be masked should one be quoted anyway.
    for secret in secrets:
        line = line.replace(secret, "[REDACTED]")
    return line
