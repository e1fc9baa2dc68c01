"""The estate file read by frozen pydantic models: every problem at once, one line each naming its field.

The format is :mod:`ehpc_simulator.estate`'s docstring. :func:`load` reads a file (YAML, or JSON for
``.json``) and :func:`read` already parsed data; both return an :class:`EstateFile` or raise
:class:`EstateFileError`, one line per problem in file order:
``estate.yaml:12:9: accounts[1].roles[0].name: 1-64 of letters, digits, '.', '_', '-'`` (the line and
column for YAML files). The models check each field; the rules that tie parts of the file together (ids
and names unique, an AccessKey owned once, trusts naming an account or provider of the file, regions from
the estate's list) are :func:`_rules`, judged on what the file says rather than on what validated, so a
mistake in one place hides none elsewhere. Images and faults keep the readers the admin API uses too
(:func:`ehpc_simulator.model.image_from_dict`, :func:`~ehpc_simulator.model.faults_from_dict`): each
image, and each region's ``faults``, reports its first problem.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Mapping
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    Strict,
    ValidationError,
    model_validator,
)
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError

from ehpc_simulator.fleet import generate_fleet
from ehpc_simulator.model import Faults, SimImage, faults_from_dict, image_from_dict
from ehpc_simulator.sts import (
    DEFAULT_CLIENT_IDS,
    DEFAULT_MAX_SESSION_SECONDS,
    MIN_DURATION_SECONDS,
    parse_oidc_provider_arn,
)

__all__ = ["ACCOUNT_ID", "MAX_SESSION_SECONDS", "RAM_NAME", "EstateFile", "EstateFileError", "load", "read"]

Loc = tuple[str | int, ...]
T = TypeVar("T")

ACCOUNT_ID = re.compile(r"^\d{12,16}$")
RAM_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")  # a RAM role's or an OIDC provider's name
RAM_NAME_RULE = "1-64 of letters, digits, '.', '_', '-'"
MAX_SESSION_SECONDS = 43200  # RAM's upper bound for a role's MaxSessionDuration
# A generated fleet is built in memory when the file is read: a typo of a few zeros must not eat the host.
MAX_GENERATED = 1_000_000
_RULE = "estate_rule"
_PLAIN = re.compile(r"^[\x21-\x7e]{1,64}$")  # what a message may quote of the file as it is


class EstateFileError(ValueError):
    """The estate file is invalid; ``lines`` holds one line per problem, each naming where it is."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        super().__init__("\n".join(lines))


def _matches(pattern: re.Pattern[str], rule: str) -> AfterValidator:
    def check(value: str) -> str:
        if not pattern.match(value):
            raise ValueError(rule)
        return value

    return AfterValidator(check)


def _digits(value: Any) -> Any:
    """Unquoted in YAML, a 16-digit id is an integer: taken as the digits it is."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _distinct(values: tuple[str, ...]) -> tuple[str, ...]:
    if len(set(values)) != len(values):
        raise ValueError("duplicate region id")
    return values


def _filled(values: tuple[T, ...]) -> tuple[T, ...]:
    # Not Field(min_length=1): pydantic would also judge a list whose items all failed to be empty.
    if not values:
        raise ValueError("must not be empty")
    return values


NonEmpty = AfterValidator(_filled)


def _problem(loc: Loc, message: str) -> InitErrorDetails:
    return {"type": PydanticCustomError(_RULE, "{message}", {"message": message}), "loc": loc, "input": None}


def _relocated(read_part: Callable[[Any, str], T], value: Any, where: str) -> T:
    """``read_part``'s ValueError (``<where>.field[n]: message``) raised as a problem at that field."""
    try:
        return read_part(value, where)
    except ValueError as exc:
        path, sep, message = str(exc).partition(": ")
        loc: Loc = ()
        if sep and path.startswith(where):
            rest = path[len(where) :]
            steps = re.findall(r"\.([^.\[\]]+)|\[(\d+)\]", rest)
            loc = tuple(int(index) if index else key for key, index in steps)
            if "".join(f".{k}" if k else f"[{i}]" for k, i in steps) != rest:
                loc = (rest,)  # not a path this reader writes: shown as it is
        else:
            message = str(exc)
        raise ValidationError.from_exception_data("estate", [_problem(loc, message)]) from None


Text = Annotated[str, Strict(), Field(min_length=1)]
RamName = Annotated[str, Strict(), _matches(RAM_NAME, RAM_NAME_RULE)]
AccountId = Annotated[
    str, BeforeValidator(_digits), Strict(), _matches(ACCOUNT_ID, "a string of 12-16 digits")
]
AccountRef = Annotated[str, BeforeValidator(_digits), Strict()]  # an account's name or id
Image = Annotated[SimImage, PlainValidator(lambda v: _relocated(image_from_dict, v, "image"))]
FaultSet = Annotated[
    Faults, PlainValidator(lambda v: _relocated(lambda d, _: faults_from_dict(d), v, "faults"))
]


class _Part(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


def _null_is_empty(data: Any) -> Any:
    """``key:`` with nothing after it means the key's default, as a hand-written file often has it."""
    return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data


class ProviderFile(_Part):
    """An OIDC provider of an account."""

    name: RamName
    issuer: Text  # the tokens' iss
    client_ids: Annotated[tuple[Annotated[str, Strict()], ...], NonEmpty] = DEFAULT_CLIENT_IDS


class RoleFile(_Part):
    """A RAM role of an account; trusts name accounts (name or id) and providers (name or ARN)."""

    name: RamName
    trusted_accounts: tuple[AccountRef, ...] | None = None  # None: the role's own account, without OIDC
    trusted_oidc_providers: tuple[Annotated[str, Strict()], ...] = ()
    external_id: Annotated[str, Strict()] | None = None
    max_session_seconds: Annotated[int, Strict(), Field(ge=MIN_DURATION_SECONDS, le=MAX_SESSION_SECONDS)] = (
        DEFAULT_MAX_SESSION_SECONDS
    )


class GenerateFile(_Part):
    """Generated images (:func:`ehpc_simulator.fleet.generate_fleet`)."""

    count: Annotated[int, Strict(), Field(ge=0, le=MAX_GENERATED)] = 0
    regions: tuple[Annotated[str, Strict()], ...] = ()
    seed: Annotated[int, Strict()] = 0


class RegionFile(_Part):
    """One account's fleet and faults in one region."""

    images: tuple[Image, ...] = ()
    generate: GenerateFile | None = None
    faults: FaultSet | None = None

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        return {} if data is None else _null_is_empty(data)

    @cached_property
    def fleet(self) -> list[SimImage]:
        """The images, then the generated ones (built once)."""
        made = self.generate
        extra = generate_fleet(made.count, made.regions, seed=made.seed) if made else []
        return [*self.images, *extra]

    @model_validator(mode="after")
    def _unique_images(self) -> RegionFile:
        seen: set[str] = set()
        for n, image in enumerate(self.fleet):
            if image.image_id in seen:
                where: Loc = ("images", n) if n < len(self.images) else ("generate",)
                raise ValidationError.from_exception_data(
                    "estate", [_problem(where, f"duplicate image_id {image.image_id}")]
                )
            seen.add(image.image_id)
        return self


class AccountFile(_Part):
    """One account: its AccessKeys, OIDC providers, roles and regions."""

    name: Text
    id: AccountId
    access_keys: dict[Annotated[str, Strict()], Annotated[str, Strict()]] = Field(default_factory=dict)
    oidc_providers: tuple[ProviderFile, ...] = ()
    roles: tuple[RoleFile, ...] = ()
    regions: dict[Annotated[str, Strict()], RegionFile] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        return _null_is_empty(data)


class EstateFile(_Part):
    """A whole estate file, validated; :meth:`ehpc_simulator.estate.Estate.from_file` builds it."""

    regions: Annotated[
        tuple[Annotated[str, Strict(), Field(min_length=1)], ...], NonEmpty, AfterValidator(_distinct)
    ]
    sts_max_ttl_seconds: Annotated[float, Strict(), Field(gt=0)] | None = None
    accounts: Annotated[tuple[AccountFile, ...], NonEmpty]


# The model holding the fields below a field, and how many steps (an index, a key) lie between.
_CHILDREN: dict[tuple[type[BaseModel], str], tuple[type[BaseModel], int]] = {
    (EstateFile, "accounts"): (AccountFile, 1),
    (AccountFile, "oidc_providers"): (ProviderFile, 1),
    (AccountFile, "roles"): (RoleFile, 1),
    (AccountFile, "regions"): (RegionFile, 1),
    (RegionFile, "generate"): (GenerateFile, 0),
}
_SIMPLE = {
    "missing": "required",
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "finite_number": "must be a finite number",
    "string_type": "must be a string",
    "tuple_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "string_too_short": "must not be empty",
}
_BOUNDS = {
    "greater_than": ("must be greater than", "gt"),
    "greater_than_equal": ("must be at least", "ge"),
    "less_than_equal": ("must be at most", "le"),
}


def read(data: Any, *, source: str = "", node: yaml.Node | None = None) -> EstateFile:
    """``data`` (a parsed estate file) validated; ``source`` and ``node`` locate the error lines."""
    found: list[tuple[Loc, str]] = _rules(data)
    try:
        spec = EstateFile.model_validate(data)
    except ValidationError as exc:
        found += [(err["loc"], _message(err)) for err in exc.errors(include_url=False, include_input=False)]
    else:
        if not found:
            return spec
    found.sort(key=lambda problem: _position(data, problem[0]))
    raise EstateFileError([_line(source, node, loc, message) for loc, message in found])


def load(path: str | Path) -> EstateFile:
    """Read and validate an estate file (YAML, or JSON for ``.json``)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EstateFileError([f"{p}: cannot read: {exc}"]) from None
    if p.suffix == ".json":
        try:
            return read(json.loads(text), source=str(p))
        except ValueError as exc:
            if isinstance(exc, EstateFileError):
                raise
            raise EstateFileError([f"{p}: not valid JSON: {exc}"]) from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = None if node is None else loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{p}:{mark.line + 1}:{mark.column + 1}" if mark else str(p)
        raise EstateFileError([f"{where}: not valid YAML: {exc.problem or exc.context}"]) from None
    except yaml.YAMLError as exc:
        raise EstateFileError([f"{p}: not valid YAML: {exc}"]) from None
    finally:
        loader.dispose()
    return read(data, source=str(p), node=node)


def _rules(data: Any) -> list[tuple[Loc, str]]:
    """The problems between parts of the file, judged on whatever of them has the right shape."""
    accounts = data.get("accounts") if isinstance(data, dict) else None
    if not isinstance(accounts, list):
        return []
    regions = data.get("regions")
    # The regions' own problems are reported by the model; region keys are judged against a good list only.
    listed = isinstance(regions, list) and bool(regions) and all(isinstance(r, str) for r in regions)
    entries = [(n, a) for n, a in enumerate(accounts) if isinstance(a, dict)]
    found: list[tuple[Loc, str]] = []
    owner: dict[str, tuple[int, str]] = {}  # an account's name or id -> its index and name
    key_owner: dict[str, tuple[int, str]] = {}
    providers: dict[str, set[str]] = {}  # account id -> provider names
    for n, account in entries:
        name, ident = _text(account.get("name")), _text(_digits(account.get("id")))
        me = (n, name or f"accounts[{n}]")
        for field, value in (("id", ident), ("name", name)):
            if value is not None and owner.get(value, me)[0] != n:
                found.append(
                    (("accounts", n, field), f"{_shown(value)} is taken by account {owner[value][1]}")
                )
        owner.update({value: me for value in (ident, name) if value is not None and value not in owner})
        keys = account.get("access_keys")
        for key in keys if isinstance(keys, dict) else ():
            if isinstance(key, str) and key_owner.setdefault(key, me)[0] != n:
                found.append((("accounts", n, "access_keys", key), f"belongs to account {key_owner[key][1]}"))
        names = providers.setdefault(ident or "", set())
        for m, provider in enumerate(_items(account.get("oidc_providers"))):
            pname = _text(provider.get("name"))
            if pname in names:
                found.append(
                    (("accounts", n, "oidc_providers", m, "name"), f"{_shown(pname)} exists already")
                )
            names.add(pname or "")
        if listed and isinstance(account.get("regions"), dict):
            for region_id in account["regions"]:
                if region_id not in regions:
                    found.append(
                        (
                            ("accounts", n, "regions", str(region_id)),
                            f"not one of the estate's regions ({', '.join(regions)})",
                        )
                    )
    for n, account in entries:
        found += _role_rules(n, account, owner, providers)
    return found


def _role_rules(
    n: int, account: Mapping[str, Any], owner: Mapping[str, object], providers: Mapping[str, set[str]]
) -> list[tuple[Loc, str]]:
    """Role names unique in the account (as RAM, ignoring case); trusts naming what the file holds."""
    found: list[tuple[Loc, str]] = []
    own = providers.get(_text(_digits(account.get("id"))) or "", set())
    seen: set[str] = set()
    for m, role in enumerate(_items(account.get("roles"))):
        where: Loc = ("accounts", n, "roles", m)
        name = _text(role.get("name"))
        if name is not None and name.lower() in seen:
            found.append(((*where, "name"), f"{_shown(name)} exists already (role names ignore case)"))
        seen.add((name or "").lower())
        refs = role.get("trusted_accounts")
        for k, ref in enumerate(refs if isinstance(refs, list) else ()):
            ref = _digits(ref)
            if isinstance(ref, str) and ref not in owner:
                found.append(((*where, "trusted_accounts", k), f"no account {_shown(ref)}"))
        refs = role.get("trusted_oidc_providers")
        for k, ref in enumerate(refs if isinstance(refs, list) else ()):
            arn = parse_oidc_provider_arn(ref) if isinstance(ref, str) else None
            if (
                isinstance(ref, str)
                and ref not in own
                and (arn is None or arn[1] not in providers.get(arn[0], ()))
            ):
                found.append(((*where, "trusted_oidc_providers", k), f"no OIDC provider {_shown(ref)}"))
    return found


def _items(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _shown(value: Any) -> str:
    """``'value'`` when short and plain, else a neutral word: a message stays one readable line."""
    return repr(value) if isinstance(value, str) and _PLAIN.match(value) else "the value"


def _message(err: ErrorDetails) -> str:
    """One message for one pydantic error, from its type and context (never its input)."""
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind in _SIMPLE:
        return _SIMPLE[kind]
    if kind in _BOUNDS:
        words, key = _BOUNDS[kind]
        bound = ctx.get(key)
        return f"{words} {int(bound) if isinstance(bound, float) and bound.is_integer() else bound}"
    if kind == "extra_forbidden":
        holder, key = _holder(err["loc"][:-1]), str(err["loc"][-1])
        close = difflib.get_close_matches(key, list(holder.model_fields), n=1) if holder else []
        return f"unknown field (did you mean '{close[0]}'?)" if close else "unknown field"
    if kind == "value_error" and "error" in ctx:
        return str(ctx["error"])
    return err["msg"]  # a rule's own message, or pydantic's words (which never quote the input)


def _holder(loc: Loc) -> type[BaseModel] | None:
    """The model holding the fields at ``loc`` (for the did-you-mean of an unknown field)."""
    model: type[BaseModel] = EstateFile
    skip = 0
    for part in loc:
        if skip:
            skip -= 1
            continue
        child = _CHILDREN.get((model, str(part)))
        if child is None:
            return None
        model, skip = child
    return None if skip else model


def _position(data: Any, loc: Loc) -> tuple[int, ...]:
    """Where ``loc`` is in ``data``: problems sort in file order (a missing field after its siblings)."""
    out: list[int] = []
    for part in loc:
        if isinstance(data, dict) and part in data:
            out.append(list(data).index(part))
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            out.append(part)
            data = data[part]
        else:
            out.append(1 << 30)
            data = None
    return tuple(out)


def _line(source: str, node: yaml.Node | None, loc: Loc, message: str) -> str:
    """``file:line:column: field: message``, with as much of the head as is known."""
    field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    head = source
    if source and node is not None:
        mark = _mark(node, loc)
        head = f"{source}:{mark.line + 1}:{mark.column + 1}"
    return ": ".join(part for part in (head, field, message) if part)


def _mark(node: yaml.Node, loc: Loc) -> yaml.Mark:
    """Where the YAML text writes ``loc``: its key in a mapping, its item in a list, or the nearest parent."""
    mark = node.start_mark
    for part in loc:
        child = None
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                    child, mark = value, key.start_mark
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            child = node.value[part]
            mark = child.start_mark
        if child is None:
            break
        node = child
    return mark
