"""The configuration file: YAML in, validated by a pydantic schema, out as the frozen ``exporter.config``.

Pipeline of :func:`load_config`: read the file and parse YAML through :mod:`exporter.config.yamlfile` (a
regular file of bounded size; duplicate keys, alias bombs and over-deep nesting refused before anything is
built), interpolate ``${VAR}`` / ``${VAR:-default}`` from the environment in every string value (within a
budget of characters), check every string (no control characters or lone surrogates, bounded length) and
integer (no thousands of digits), apply command-line overrides, validate each section against the schema
below (every number between sane bounds, every float finite), run the cross-field checks, build the
runtime ``Config``.

Every problem becomes one line ``<source>: <location>: <message>`` in :class:`ConfigError`'s ``errors``,
all problems of a file at once (the first 100, then one summary line: aliases can repeat a mistake a
million times). A file the gate refuses as a whole (unreadable, an alias bomb) is one line with its
``line:column``. Messages are written here from pydantic's location and error type; the offending input
is never echoed (pydantic's ``input_value``), and a value is quoted only when short and plain, so a
secret put in the wrong place cannot reach a terminal or a log. Secret values found in the file are
registered with :func:`exporter.logging.register_secret` so later log lines mask them too.

Decisions:

- ``status.healthy`` and ``status.replication_healthy`` are automatically part of ``status.vocabulary``
  (appended in order), so every state set carries the statuses the exporter calls healthy.
- A config without images and with discovery disabled is valid (the exporter still serves its own
  metrics and health endpoints); :func:`config_warnings` reports it and ``--check-config`` prints it.
- An empty section (``images:`` with nothing after it) means "use the defaults".
- ``$$`` writes a literal ``$``; ``${VAR:-default}`` uses the default when VAR is unset *or empty* (as in
  the shell); an unset ``${VAR}`` without a default is an error naming the variable and the field.


Why one module of over 400 lines: error collection, interpolation, the cross-field checks and building
the model are one pipeline over one problem list (each step adds located lines to it and the next step
sees what the previous refused); the schema it validates against is :mod:`exporter.config.schema`.
"""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, get_args, get_origin
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from exporter.config import yamlfile
from exporter.config.model import (
    RESERVED_PATHS,
    AdaptiveRateConfig,
    ApiConfig,
    AssumeRoleConfig,
    Config,
    CredentialsConfig,
    DiscoveryConfig,
    LimitsConfig,
    MetricsConfig,
    RefreshConfig,
    RetryConfig,
    ShardingConfig,
    StateConfig,
    StatusConfig,
    TargetConfig,
    WatchedImage,
    WebConfig,
    parse_listen_address,
)
from exporter.config.schema import (
    _BAD_CHARS_RE,
    _PLAIN_KEY_RE,
    _SURROGATE_RE,
    COMMAND_LINE,
    MAX_COLLECTED,
    MAX_IMAGES,
    MAX_PROBLEMS,
    MAX_STRING_CHARS,
    MAX_TARGETS,
    MAX_TOTAL_CHARS,
    REGION_KEYS,
    ApiIn,
    ConfigFile,
    CredentialsIn,
    DiscoveryIn,
    ImageIn,
    LimitsIn,
    MetricsIn,
    RefreshIn,
    StatusIn,
    TargetIn,
    _shown,
    config_json_schema,
    file_keys,
)
from exporter.exposition.families import EXPOSED_NAMES, pattern_matches
from exporter.logging import register_secret

__all__ = [
    "RESERVED_PATHS",
    "ConfigError",
    "ConfigFile",
    "config_json_schema",
    "config_warnings",
    "interpolate",
    "load_config",
    "parse_listen_address",
]

_ENV_RE = re.compile(
    r"\$(?:(?P<dollar>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}|(?P<bad>\{))"
)


class ConfigError(Exception):
    """The configuration is invalid; ``errors`` holds one line per problem, each naming where it is."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors: list[str] = list(errors)
        super().__init__("\n".join(self.errors))


# --------------------------------------------------------------------------------------------------------
# Error collection.

Loc = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class _Problem:
    loc: Loc
    message: str


def _format_loc(loc: Loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            # A key is shown only when it is short and printable: the line stays one line, and a value
            # pasted where a key belongs is not printed.
            name = part if _PLAIN_KEY_RE.match(part) else "<unprintable or long key>"
            out += f".{name}" if out else name
    return out


def _close_match(key: str, known: list[str]) -> list[str]:
    """The known key ``key`` is probably a typo of (none for keys longer than any real one)."""
    if len(key) > 64:
        return []
    return difflib.get_close_matches(key, known, n=1, cutoff=0.6)


def _model_at(model: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """The schema model that holds the field at ``loc`` (to suggest a key for an unknown one)."""
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


def _num(value: Any) -> Any:
    """``0.0`` -> ``0``: bounds read as people write them."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _describe(err: ErrorDetails, model: type[BaseModel], loc: Loc) -> str:
    """One message for one pydantic error, from its type and context only (never its input)."""
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
        "model_type": "must be a mapping",
        "model_attributes_type": "must be a mapping",
        "dict_type": "must be a mapping",
        "string_too_short": "must not be empty",
        "string_too_long": f"must be at most {ctx.get('max_length')} characters",
        "int_parsing_size": "must be an integer (too many digits)",
        "literal_error": f"must be {ctx.get('expected', 'one of the allowed values')}",
        "greater_than": f"must be greater than {_num(ctx.get('gt'))}",
        "greater_than_equal": f"must be at least {_num(ctx.get('ge'))}",
        "less_than": f"must be less than {_num(ctx.get('lt'))}",
        "less_than_equal": f"must be at most {_num(ctx.get('le'))}",
        "too_short": f"must have at least {ctx.get('min_length')} item(s)",
        "too_long": f"must have at most {ctx.get('max_length')} item(s)",
    }
    if kind in simple:
        return simple[kind]
    if kind == "extra_forbidden":
        holder = _model_at(model, loc[:-1])
        key = loc[-1]
        if holder is not None and isinstance(key, str):
            close = _close_match(key, list(file_keys(holder)))
            if close:
                return f"unknown key (did you mean '{close[0]}'?)"
        return "unknown key"
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return str(ctx["error"])
    return err["msg"]


def _validate(
    adapter: TypeAdapter[Any], model: type[BaseModel], value: Any, loc: Loc, problems: list[_Problem]
) -> Any:
    """Validate ``value``; on failure add its problems (located under ``loc``) and return None."""
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        for err in exc.errors(include_input=False, include_url=False):
            where = (*loc, *err["loc"])
            problems.append(_Problem(where, _describe(err, model, where)))
        return None


# --------------------------------------------------------------------------------------------------------
# Environment interpolation.


class _TooLong(Exception):
    """Interpolation went past its budget: the whole file's (``whole_file``) or the one string's."""

    def __init__(self, whole_file: bool, loc: Loc = ()) -> None:
        self.whole_file = whole_file
        self.loc = loc
        super().__init__()


@dataclass(slots=True)
class _Budget:
    """Characters all strings may still take after interpolation (``${VAR}`` can repeat a long value)."""

    left: int


def interpolate(text: str, env: Mapping[str, str]) -> tuple[str, list[str]]:
    """Expand ``${VAR}``, ``${VAR:-default}`` and ``$$`` in ``text``; also return the unset names."""
    return _expand(text, env, _Budget(1 << 62), 1 << 62)


def _expand(text: str, env: Mapping[str, str], budget: _Budget, max_chars: int) -> tuple[str, list[str]]:
    """:func:`interpolate`, raising _TooLong as soon as the result would pass ``max_chars`` or the budget."""
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


def _add(problems: list[_Problem], problem: _Problem) -> None:
    """Collect ``problem`` unless MAX_COLLECTED are in (an alias-multiplied mistake is one mistake)."""
    if len(problems) < MAX_COLLECTED:
        problems.append(problem)


def _check_length(length: int, budget: _Budget, max_chars: int) -> None:
    if length > budget.left:
        raise _TooLong(whole_file=True)
    if length > max_chars:
        raise _TooLong(whole_file=False)


def _check_tree(
    value: Any, loc: Loc, env: Mapping[str, str], budget: _Budget, problems: list[_Problem]
) -> Any:
    """Interpolate every string value and check every scalar the schema cannot judge on its own.

    Recursive, but yamlfile has already bounded the depth (32) and the expanded size of the tree.
    """
    if isinstance(value, str):
        return _check_string(value, loc, env, budget, problems)
    if isinstance(value, yamlfile.OversizedInt):
        _add(problems, _Problem(loc, f"number too large ({value.chars} characters)"))
        return None
    if isinstance(value, dict):
        return {_key(k): _check_tree(v, (*loc, _key(k)), env, budget, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_check_tree(v, (*loc, i), env, budget, problems) for i, v in enumerate(value)]
    return value


def _check_string(
    value: str, loc: Loc, env: Mapping[str, str], budget: _Budget, problems: list[_Problem]
) -> Any:
    try:
        expanded, missing = _expand(value, env, budget, MAX_STRING_CHARS)
    except _TooLong as exc:
        if exc.whole_file:
            raise _TooLong(whole_file=True, loc=loc) from None  # the file's one line (load_config)
        _add(problems, _Problem(loc, f"must be at most {MAX_STRING_CHARS} characters"))
        return None
    for name in missing:
        if name:
            _add(problems, _Problem(loc, f"environment variable '{name}' is not set and has no default"))
        else:
            _add(
                problems,
                _Problem(loc, "malformed '${' reference (use ${NAME} or ${NAME:-default}; $$ for '$')"),
            )
    bad = _BAD_CHARS_RE.search(expanded)
    if bad is not None:
        if _SURROGATE_RE.search(expanded):
            _add(problems, _Problem(loc, "must be valid Unicode text (has a lone surrogate)"))
        else:
            _add(problems, _Problem(loc, "must not contain control or bidi characters"))
        return None
    return expanded


def _key(key: Any) -> str:
    """A mapping key as a string (YAML allows numbers, booleans, null and dates as keys)."""
    return key if isinstance(key, str) else str(key)


# --------------------------------------------------------------------------------------------------------
# YAML reading.


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
        field = (_format_loc(exc.path[:8]) + ("..." if len(exc.path) > 8 else "")) or "the document"
        raise ConfigError([f"{where}: {field}: {exc.problem}"]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
        problem = exc.problem or "invalid YAML"
        context = f" ({exc.context})" if exc.context else ""
        raise ConfigError([f"{where}: invalid YAML: {problem}{context}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: invalid YAML: {type(exc).__name__}"]) from None


# --------------------------------------------------------------------------------------------------------
# Cross-field checks, each on one validated section.


# Per credential type: the fields it needs, and the other fields it may use.
_STS = ("sts_endpoint", "duration_seconds")
_CREDENTIAL_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # sts_endpoint: where the RRSA step (ALIBABA_CLOUD_ROLE_ARN and friends set) assumes the role.
    "default": ((), _STS),
    "access_key": (("access_key_id", "access_key_secret"), ()),
    "sts": (("access_key_id", "access_key_secret", "security_token"), ()),
    "credentials_uri": (("credentials_uri",), ()),
    "ecs_ram_role": ((), ("role_name",)),
    "ram_role_arn": (
        ("access_key_id", "access_key_secret", "role_arn"),
        ("security_token", "role_session_name", "external_id", *_STS),
    ),
    # Each of the three may come from the environment the ACK RRSA webhook sets instead (_RRSA_ENV).
    "oidc_role_arn": ((), ("role_arn", "oidc_provider_arn", "oidc_token_file", "role_session_name", *_STS)),
}
# The environment variables alibabacloud-credentials reads for an oidc_role_arn field left out.
RRSA_ENV = {
    "role_arn": "ALIBABA_CLOUD_ROLE_ARN",
    "oidc_provider_arn": "ALIBABA_CLOUD_OIDC_PROVIDER_ARN",
    "oidc_token_file": "ALIBABA_CLOUD_OIDC_TOKEN_FILE",
}


def _check_credentials(creds: CredentialsIn, loc: Loc = ("credentials",)) -> list[_Problem]:
    required, optional = _CREDENTIAL_FIELDS[creds.type]
    out = []
    for name in CredentialsIn.model_fields:
        if name == "type":
            continue
        value = getattr(creds, name)
        if name in required and not value:
            out.append(_Problem((*loc, name), f"required for type '{creds.type}'"))
        elif name not in required and name not in optional and value is not None:
            out.append(_Problem((*loc, name), f"not used by type '{creds.type}'"))
        elif (
            creds.type == "oidc_role_arn"
            and name in RRSA_ENV
            and not value
            and not os.environ.get(RRSA_ENV[name])
        ):
            message = f"required for type 'oidc_role_arn' (or set {RRSA_ENV[name]})"
            out.append(_Problem((*loc, name), message))
    return out


def _check_section(name: str, value: Any) -> list[_Problem]:
    out: list[_Problem] = []
    if name == "api":
        retry = value.retry
        if retry.max_delay_seconds < retry.base_delay_seconds:
            out.append(
                _Problem(("api", "retry", "max_delay_seconds"), "must be at least retry.base_delay_seconds")
            )
    elif name == "credentials" and value is not None:
        out += _check_credentials(value)
    elif name == "sharding" and value.shard >= value.shards:
        out.append(_Problem(("sharding", "shard"), f"must be less than sharding.shards ({value.shards})"))
    elif name == "metrics":
        out += _check_metrics(value)
    return out


def _check_metrics(metrics: MetricsIn) -> list[_Problem]:
    """Every include and exclude entry matches a family: a typo that matched nothing would silently
    export everything (include) or nothing less (exclude)."""
    out: list[_Problem] = []
    for key in ("include", "exclude"):
        for i, pattern in enumerate(getattr(metrics, key)):
            if not pattern_matches(pattern):
                close = _close_match(pattern, list(EXPOSED_NAMES))
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                out.append(
                    _Problem(("metrics", key, i), f"entry{_shown(pattern)} matches no metric family{hint}")
                )
    return out


def _metrics(metrics: MetricsIn) -> MetricsConfig:
    labels = metrics.info_labels
    return MetricsConfig(
        include=tuple(dict.fromkeys(metrics.include)),
        exclude=tuple(dict.fromkeys(metrics.exclude)),
        info_labels=None if labels is None else tuple(dict.fromkeys(labels)),
        state_sets=metrics.state_sets,
        max_series=metrics.max_series,
    )


def _check_target(i: int, target: TargetIn) -> list[_Problem]:
    """One validated target: its credentials, its regions named once each."""
    out: list[_Problem] = []
    if target.credentials is not None:
        out += _check_credentials(target.credentials, ("targets", i, "credentials"))
    seen: dict[str, int] = {}
    for j, region in enumerate(target.regions):
        if region.region_id in seen:
            out.append(
                _Problem(
                    ("targets", i, "regions", j, "region_id"),
                    f"duplicate region{_shown(region.region_id)}"
                    f" (also targets[{i}].regions[{seen[region.region_id]}])",
                )
            )
        seen.setdefault(region.region_id, j)
    return out


# Top-level sections that describe the one target of a file without ``targets:``.
_ONE_TARGET_SECTIONS = ("credentials", "images", "discovery")


def _check_targets_shape(raw: Mapping[str, Any]) -> list[_Problem]:
    """With ``targets:``, the one-target sections belong inside a target, and accounts are unique."""
    targets = raw.get("targets")
    if targets is None:
        return []
    out = [
        _Problem((name,), "belongs inside a target when 'targets' is set (each target has its own)")
        for name in _ONE_TARGET_SECTIONS
        if raw.get(name) is not None
    ]
    api = raw.get("api")
    if isinstance(api, dict):
        out += [
            _Problem(("api", key), "is set per region when 'targets' is set (targets[].regions[])")
            for key in REGION_KEYS
            if key in api
        ]
    if isinstance(targets, list):
        first: dict[str, int] = {}
        for i, item in enumerate(targets):
            account = item.get("account") if isinstance(item, dict) else None
            if not isinstance(account, str):
                continue
            if account in first:
                out.append(
                    _Problem(
                        ("targets", i, "account"),
                        f"duplicate account{_shown(account)} (also targets[{first[account]}])",
                    )
                )
            first.setdefault(account, i)
    return out


def _check_region_counts(sections: Mapping[str, Any]) -> list[_Problem]:
    """No image asks for more regions than ``limits.max_regions_per_image`` (answers are held to it too)."""
    limits: LimitsIn = sections.get("limits") or LimitsIn()
    most = limits.max_regions_per_image
    message = f"must have at most {most} item(s) (limits.max_regions_per_image)"
    watched: list[tuple[Loc, list[ImageIn], DiscoveryIn | None]] = [
        ((), sections.get("images") or [], sections.get("discovery"))
    ]
    watched += [(("targets", i), t.images, t.discovery) for i, t in enumerate(sections.get("targets") or [])]
    out = []
    for base, images, discovery in watched:
        out += [
            _Problem((*base, "images", i, "additional_regions"), message)
            for i, image in enumerate(images)
            if len(image.additional_region_ids) > most
        ]
        if discovery is not None and len(discovery.additional_region_ids) > most:
            out.append(_Problem((*base, "discovery", "additional_regions"), message))
    return out


def _raw_duplicates(raw: Mapping[str, Any]) -> list[_Problem]:
    """Duplicate image ids and regions, found on the raw data so other errors in an item hide nothing."""

    def strings(value: Any) -> list[str | None]:
        return [v if isinstance(v, str) else None for v in value] if isinstance(value, list) else []

    def dups(values: Sequence[str | None], base: Loc, what: str, field: str = "") -> list[_Problem]:
        first: dict[str, int] = {}
        out = []
        for i, value in enumerate(values):
            if value is None:
                continue
            if value in first:
                loc: Loc = (*base, i, field) if field else (*base, i)
                out.append(
                    _Problem(
                        loc, f"duplicate {what}{_shown(value)} (also {_format_loc((*base, first[value]))})"
                    )
                )
            else:
                first[value] = i
        return out

    out: list[_Problem] = []
    scopes: list[tuple[Loc, Mapping[str, Any]]] = [((), raw)]
    targets = raw.get("targets")
    if isinstance(targets, list):
        scopes += [(("targets", i), t) for i, t in enumerate(targets) if isinstance(t, dict)]
    for base, node in scopes:
        images = node.get("images")
        if isinstance(images, list):
            ids = [
                item.get("id") if isinstance(item, dict) and isinstance(item.get("id"), str) else None
                for item in images
            ]
            out += dups(ids, (*base, "images"), "image id", "id")
            for i, item in enumerate(images):
                if isinstance(item, dict):
                    regions = (*base, "images", i, "additional_regions")
                    out += dups(strings(item.get("additional_regions")), regions, "region")
        discovery = node.get("discovery")
        if isinstance(discovery, dict):
            out += dups(strings(discovery.get("ids")), (*base, "discovery", "ids"), "image id")
            out += dups(
                strings(discovery.get("additional_regions")),
                (*base, "discovery", "additional_regions"),
                "region",
            )
    return out


# --------------------------------------------------------------------------------------------------------
# Building the runtime objects.


def _merge_vocabulary(status: StatusIn) -> StatusConfig:
    vocabulary = dict.fromkeys([*status.vocabulary, *status.healthy, *status.replication_healthy])
    return StatusConfig(
        healthy=tuple(dict.fromkeys(status.healthy)),
        replication_healthy=tuple(dict.fromkeys(status.replication_healthy)),
        vocabulary=tuple(vocabulary),
    )


def _fields(section: BaseModel) -> dict[str, Any]:
    """A validated section as runtime constructor arguments: the schema's field names are the runtime
    model's (file keys are aliases), and lists become the tuples the frozen model holds."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in section.model_dump().items()}


def _api(api: ApiIn) -> ApiConfig:
    return ApiConfig(
        **{
            **_fields(api),
            "retry": RetryConfig(**_fields(api.retry)),
            "adaptive_rate": AdaptiveRateConfig(**_fields(api.adaptive_rate)),
        }
    )


def _credentials(creds: CredentialsIn | None) -> CredentialsConfig | None:
    return None if creds is None else CredentialsConfig(**_fields(creds))


def _merged(base: BaseModel, overrides: BaseModel | None, extra: Mapping[str, Any] = {}) -> dict[str, Any]:
    """``base`` as data with the keys ``overrides`` sets (one level of nesting merged) and ``extra``."""
    out = base.model_dump()
    for key, value in (overrides.model_dump(exclude_unset=True) if overrides is not None else {}).items():
        nested = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = {**out[key], **value} if nested else value
    out.update({k: v for k, v in extra.items() if v is not None})
    return out


def _resolve_targets(sections: Mapping[str, Any], problems: list[_Problem]) -> list[TargetConfig]:
    """Each target's regions as full API configs (its overrides over the top level), validated again:
    a combination can be invalid where neither part is (an override's max_delay below the base delay)."""
    top_api: ApiIn = sections["api"]
    top_refresh: RefreshIn = sections["refresh"]
    out = []
    for i, t in enumerate(sections.get("targets") or []):
        regions = []
        for r in t.regions:
            merged = _merged(top_api, t.api, {k: getattr(r, k) for k in REGION_KEYS})
            api = _validate(_API_ADAPTER, ConfigFile, merged, ("targets", i, "api"), problems)
            if api is not None:
                problems += [_Problem(("targets", i, *p.loc), p.message) for p in _check_section("api", api)]
                regions.append(_api(api))
        refresh = _validate(
            _REFRESH_ADAPTER, ConfigFile, _merged(top_refresh, t.refresh), ("targets", i, "refresh"), problems
        )
        if refresh is None or len(regions) != len(t.regions):
            continue
        role = t.assume_role
        out.append(
            TargetConfig(
                account=t.account,
                credentials=_credentials(t.credentials),
                assume_role=None if role is None else AssumeRoleConfig(**_fields(role)),
                regions=tuple(regions),
                refresh=RefreshConfig(**_fields(refresh)),
                images=tuple(WatchedImage(**_fields(image)) for image in t.images),
                discovery=DiscoveryConfig(**_fields(t.discovery)),
                account_qps=t.account_qps,
                account_max_concurrency=t.account_max_concurrency,
            )
        )
    return out


def _build(sections: Mapping[str, Any], targets: Sequence[TargetConfig]) -> Config:
    images: list[ImageIn] = sections["images"]
    return Config(
        api=_api(sections["api"]),
        credentials=_credentials(sections["credentials"]),
        images=tuple(WatchedImage(**_fields(i)) for i in images),
        discovery=DiscoveryConfig(**_fields(sections["discovery"])),
        refresh=RefreshConfig(**_fields(sections["refresh"])),
        status=_merge_vocabulary(sections["status"]),
        sharding=ShardingConfig(**_fields(sections["sharding"])),
        limits=LimitsConfig(**_fields(sections["limits"])),
        web=WebConfig(**_fields(sections["web"])),
        targets=tuple(targets),
        state=StateConfig(**_fields(sections["state"])) if sections["state"] is not None else None,
        metrics=_metrics(sections["metrics"]),
    )


# --------------------------------------------------------------------------------------------------------
# The entry point.

_SECTION_ADAPTERS: dict[str, TypeAdapter[Any]] = {
    name: TypeAdapter(typing.cast(Any, field.annotation)) for name, field in ConfigFile.model_fields.items()
}
_IMAGE_ADAPTER: TypeAdapter[ImageIn] = TypeAdapter(ImageIn)
_TARGET_ADAPTER: TypeAdapter[TargetIn] = TypeAdapter(TargetIn)
_API_ADAPTER: TypeAdapter[ApiIn] = TypeAdapter(ApiIn)
_REFRESH_ADAPTER: TypeAdapter[RefreshIn] = TypeAdapter(RefreshIn)
# Sections validated item by item, so one bad image or target hides none of the others.
_ITEM_ADAPTERS: dict[str, TypeAdapter[Any]] = {"images": _IMAGE_ADAPTER, "targets": _TARGET_ADAPTER}
_ITEM_LIMITS = {"images": MAX_IMAGES, "targets": MAX_TARGETS}
_SECRET_FIELDS = ("access_key_secret", "security_token")


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


def load_config(path: str | os.PathLike[str] | None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Load, interpolate, override and validate a config file (``None``: defaults and overrides only).

    ``overrides`` maps dotted keys (``"web.listen_address"``) to values that replace the file's; ``None``
    values are ignored, so unset command-line flags can be passed straight through. Raises ConfigError.
    """
    source = os.fspath(path) if path is not None else COMMAND_LINE
    raw: Any = _read_yaml(source) if path is not None else None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([f"{source}: the top level must be a mapping of sections (api, images, ...)"])

    # Problems with single values found before validation (unset variables, control characters, huge
    # numbers): each is that field's one line, not also the schema's complaint about what is left.
    early: list[_Problem] = []
    try:
        raw = _check_tree(raw, (), os.environ, _Budget(MAX_TOTAL_CHARS), early)
    except _TooLong as exc:
        where = _format_loc(exc.loc)
        raise ConfigError(
            [f"{source}: {where}: ${{VAR}} expansion takes the file past {MAX_TOTAL_CHARS} characters"]
        ) from None
    overridden = _apply_overrides(raw, overrides or {})
    secrets = _secret_values(raw)
    for secret in secrets:
        register_secret(secret, pin=True)

    problems: list[_Problem] = []
    sections: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in ConfigFile.model_fields:
            close = _close_match(name, list(ConfigFile.model_fields))
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            problems.append(_Problem((name,), f"unknown key{hint}"))
            continue
        if value is None:
            continue  # an empty section means its defaults
        if name in _ITEM_ADAPTERS:
            if not isinstance(value, list):
                problems.append(_Problem((name,), "must be a list"))
                continue
            if len(value) > _ITEM_LIMITS[name]:
                problems.append(_Problem((name,), f"must have at most {_ITEM_LIMITS[name]} item(s)"))
                continue
            items = []
            for i, item in enumerate(value):
                if len(problems) >= MAX_COLLECTED:
                    break
                valid = _validate(_ITEM_ADAPTERS[name], ConfigFile, item, (name, i), problems)
                if valid is not None:
                    items.append(valid)
                    if name == "targets":
                        problems += _check_target(i, valid)
            sections[name] = items
            continue
        result = _validate(_SECTION_ADAPTERS[name], ConfigFile, value, (name,), problems)
        if result is not None:
            sections[name] = result
            problems += _check_section(name, result)

    if len(problems) < MAX_COLLECTED:
        problems += _raw_duplicates(raw)[:MAX_COLLECTED]
        problems += _check_targets_shape(raw)[:MAX_COLLECTED]
    early_locs = {p.loc for p in early}
    problems = early + [p for p in problems if p.loc not in early_locs]
    if "limits" in sections or raw.get("limits") is None:  # judged by valid (or default) limits only
        problems += _check_region_counts(sections)[:MAX_COLLECTED]
    defaults = ConfigFile()
    resolved = {name: sections.get(name, getattr(defaults, name)) for name in ConfigFile.model_fields}
    targets: list[TargetConfig] = []
    if not problems:  # the merge is judged only over valid parts, so each mistake is reported once
        targets = _resolve_targets(resolved, problems)
    if problems:
        ordered = _ordered(problems, raw)
        lines = [_render(p, source, overridden, secrets) for p in ordered[:MAX_PROBLEMS]]
        if len(ordered) >= MAX_COLLECTED:
            lines.append(f"{source}: more problems not shown (the first {MAX_PROBLEMS} are)")
        elif len(ordered) > MAX_PROBLEMS:
            lines.append(f"{source}: {len(ordered) - MAX_PROBLEMS} more problems not shown")
        raise ConfigError(lines)
    return _build(resolved, targets)


def _ordered(problems: list[_Problem], raw: Mapping[str, Any]) -> list[_Problem]:
    """Problems in the order of the file (a missing field sorts after its siblings); stable otherwise."""
    key_index: dict[int, dict[str, int]] = {}  # id(mapping) -> key -> position, built once per mapping

    def index(node: dict[str, Any], key: str) -> int:
        found = key_index.get(id(node))
        if found is None:
            found = key_index[id(node)] = {k: i for i, k in enumerate(node)}
        return found[key]

    def position(loc: Loc) -> tuple[int, ...]:
        node: Any = raw
        out = []
        for part in loc:
            if isinstance(node, dict) and part in node:
                out.append(index(node, str(part)))
                node = node[part]
            elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
                out.append(part)
                node = node[part]
            else:
                out.append(1 << 30)
                node = None
        return tuple(out)

    return sorted(problems, key=lambda p: position(p.loc))


def _render(problem: _Problem, source: str, overridden: Sequence[Loc], secrets: Sequence[str]) -> str:
    from_flag = any(problem.loc[: len(loc)] == loc for loc in overridden)
    where = _format_loc(problem.loc)
    prefix = COMMAND_LINE if from_flag else source
    line = f"{prefix}: {where}: {problem.message}" if where else f"{prefix}: {problem.message}"
    # Belt and braces: no message quotes a secret field's value, but a secret pasted into the wrong
    # field (say, as a region id) must not be printed either.
    for secret in secrets:
        line = line.replace(secret, "[REDACTED]")
    return line


def config_warnings(config: Config) -> list[str]:
    """Valid but probably unintended settings, one line each (printed by --check-config, logged at start)."""
    out: list[str] = []
    for scope in config.scopes():
        # Named only when there are targets: a one-target file's lines read as they always did.
        where = f"account {scope.account}, region {scope.api.region_id}: " if config.targets else ""
        if not scope.images and not scope.discovery.enabled:
            out.append(
                f"{where}images: no images to watch and discovery is disabled; only the exporter's own"
                " metrics are served"
                if not config.targets
                else f"{where}images: no images to watch and discovery is disabled"
            )
        if scope.api.protocol == "http" and not _is_loopback_endpoint(scope.api.endpoint):
            out.append(
                f"{where}api.protocol: 'http' sends requests (and any STS token) unencrypted; use it only"
                " for testing"
            )
        if scope.refresh.image_timeout_seconds > scope.refresh.interval_seconds:
            out.append(
                f"{where}refresh.image_timeout_seconds: longer than refresh.interval_seconds, so a slow image"
                " can make a cycle overrun the next one"
            )
    return list(dict.fromkeys(out))


def _is_loopback_endpoint(endpoint: str | None) -> bool:
    if endpoint is None:
        return False
    host = urlsplit(endpoint if "://" in endpoint else f"//{endpoint}").hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")
