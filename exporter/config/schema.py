"""The kinds of value a config field may hold: each a type with its bounds and its validator, declared once.

The runtime model (:mod:`exporter.config.model`) declares every field with one of these (or a bound of its
own), so a key's type, default and bounds sit on the one line that declares it. Messages never quote a
value that could be a secret: ids, regions and patterns only, and those only when short and plain.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import re2
from pydantic import (
    AfterValidator,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    ValidationError,
    ValidatorFunctionWrapHandler,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, InitErrorDetails, core_schema

from exporter.config import yamlfile
from exporter.config.errors import MAX_COLLECTED, close_match, fail, relocated, shown
from exporter.names import EXPOSED_NAMES, INFO_LABELS, pattern_matches
from exporter.redaction import BIDI_CONTROLS, MIN_SECRET_CHARS

# Served without authentication (Kubernetes probes carry no credentials); with "/", the landing page,
# no telemetry path may shadow them.
PROBE_PATHS: frozenset[str] = frozenset({"/healthz", "/readyz"})
RESERVED_PATHS: frozenset[str] = PROBE_PATHS | {"/", "/-/reload"}  # /-/reload: the lifecycle API
# No setting has a use for these, and each breaks something downstream: a control character splits a log
# or error line, a bidi control makes one read differently from what it says (as the API gate drops them),
# a lone surrogate (from ${VAR} of a non-UTF-8 environment) cannot be encoded into a URL, label or log.
# The output gate's controls, plus the Arabic letter mark (a setting has no use for it) and surrogates.
BAD_CHARS_RE = re.compile(f"[\x00-\x1f\x7f-\x9f\u061c{BIDI_CONTROLS}\ud800-\udfff]")
MAX_STRING_CHARS = 16_384  # any one string, after interpolation (an STS token is about 1,500)
MAX_TOTAL_CHARS = yamlfile.MAX_EXPANDED_CHARS  # all strings together, after interpolation
MAX_ID_CHARS = 128
MAX_REGEX_CHARS = 1024
MAX_LIST_ITEMS = 100_000  # ids in discovery.ids; images are bounded by yamlfile's caps
MAX_IMAGES = 100_000
# What one exporter serves well: its largest allowed configuration, built from these by bench/limits.py
# (16 (account, region) x 73 images x (1 + 50 replica regions), 100 invented error codes counted in each),
# served an 82 MB /metrics (2.0 MB gzip) at p99 0.68 s (two scrapers back to back, refresh every 10 s) in
# 289 MB RSS on this 2-core machine under load. The cost per scrape is the snapshot part's deflate after
# every swap (one per (account, region) cycle; ehpc_image_replication_status, 6 samples per image-region,
# is 70 % of it) plus the self part rendered anew (~100 samples per (account, region), 62 of them
# ehpc_api_errors_total's catalogue at 0, 18 per replica region, 2 per invented code). The 1,000 targets
# x 100 regions allowed before served 111 MB in 18.8 s at 100 x 100 with one image each.
MAX_SCOPES = 16  # (account, region) pairs in all, the regions of every target
MAX_TARGETS = MAX_SCOPES
MAX_REGIONS_PER_TARGET = MAX_SCOPES
# The most limits.max_regions_per_image may allow, and the distinct additional regions one target's images
# and discovery name together (each is a replication histogram in every region of the target).
MAX_REGIONS_PER_IMAGE = 50
MAX_ERROR_CODES = 100  # the most limits.max_error_codes may allow (each is 2 series per (account, region))
# Per replica: each watched image once in each region of its target, plus once per additional region;
# discovery counts as page_size x max_pages images. 10,000 images x 6 regions (bench/scrape.py).
MAX_WATCHED_IMAGE_REGIONS = 60_000
MAX_SERIES = 1_000_000_000  # the most metrics.max_series may be (far past what any Prometheus ingests)
_CHUNK = 1000  # items of a long list validated at a time (Items)
MIN_QPS = 0.01  # calls per second; below it (but above 0, "off") the budget would space calls for hours

# Each shape is matched whole (fullmatch): "$" alone also accepts a value ending in a newline.
_REGION_RE = re.compile(r"^[a-z]{2,}-[a-z0-9-]+$")
_TELEMETRY_PATH_RE = re.compile(r"^/[A-Za-z0-9._~!$&'()*+,;=:@/-]*$")
_HOST_RE = re.compile(r"^[A-Za-z0-9._-]+$")
_ACCOUNT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
# RAM role ARNs as STS reads them: acs:ram::<account id>:role/<name> (names are 1-64 of [A-Za-z0-9.-]).
_ROLE_ARN_RE = re.compile(r"^acs:ram::[0-9]{1,32}:role/[A-Za-z0-9.@_-]{1,64}$")
_FAMILY_PATTERN_RE = re.compile(r"^[A-Za-z0-9_:*?\[\]!-]+$")
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # RE2 would print the pattern to stderr, outside the one-line report


def parse_listen_address(value: str, *, require_host: bool = False) -> tuple[str, int]:
    """Split ``host:port`` (``:9765``, ``0.0.0.0:9765``, ``[::1]:9765``) into ``(host, port)``.

    An empty host means every interface. Raises ValueError with a one-line message.
    """
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or not rest.startswith(":") or ":" not in host:
            raise ValueError("must be host:port, with an IPv6 host in brackets like [::1]:9765")
        port_text = rest[1:]
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep:
            if require_host and value and _HOST_RE.fullmatch(value):
                return value, 0  # host alone: the scheme's default port
            raise ValueError("must be host:port, like ':9765' or '127.0.0.1:9765'")
        if ":" in host:
            raise ValueError("an IPv6 host must be in brackets, like [::1]:9765")
        if host and not _HOST_RE.fullmatch(host):
            raise ValueError("invalid host")
    if require_host and not host:
        raise ValueError("must name a host")
    # ASCII digits only, and few of them: int() takes '٣' and raises on 5,000 digits.
    if not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5) or int(port_text) > 65535:
        raise ValueError("port must be a number from 0 to 65535")
    return host, int(port_text)


# --------------------------------------------------------------------------------------------------------
# Validators.


def _region_id(value: str) -> str:
    if len(value) > 64 or not _REGION_RE.fullmatch(value):
        raise ValueError(f"invalid region id{shown(value)} (expected lower-case like 'cn-hangzhou')")
    return value


def _image_id(value: str) -> str:
    if not value:
        raise ValueError("must not be empty")
    if any(c.isspace() for c in value):
        raise ValueError("must not contain whitespace")
    if len(value) > MAX_ID_CHARS:
        raise ValueError(f"must be at most {MAX_ID_CHARS} characters")
    return value


def _account(value: str) -> str:
    if not _ACCOUNT_RE.fullmatch(value):
        raise ValueError(
            f"invalid account name{shown(value)} (1-63 letters, digits, '_', '.' or '-', starting with a"
            " letter or digit): it is the value of the account label"
        )
    return value


def _role_arn(value: str) -> str:
    if not _ROLE_ARN_RE.fullmatch(value):
        raise ValueError(f"invalid role ARN{shown(value)} (expected acs:ram::<account id>:role/<name>)")
    return value


def _non_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def _secret(value: str) -> str:
    # Empty is left to the credential type's own rule ("required for type ..."), which says it better.
    if value and len(value) < MIN_SECRET_CHARS:
        raise ValueError(
            f"too short to be a real credential (at least {MIN_SECRET_CHARS} characters; Alibaba Cloud's"
            " AccessKey secrets have 30): a placeholder or a value cut short"
        )
    return value


def _regex(value: str) -> str:
    """A pattern RE2 compiles: the runtime matches names with RE2, in linear time, so no pattern can
    backtrack catastrophically; what RE2 lacks (backreferences, lookaround) is refused here, not later."""
    if len(value) > MAX_REGEX_CHARS:
        raise ValueError(f"must be at most {MAX_REGEX_CHARS} characters")
    try:
        re2.compile(value, options=_RE2_OPTIONS)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else b""
        text = reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason)
        brief = " ".join(text.split())[:80]  # RE2 quotes at most the offending operator
        raise ValueError(f"invalid regular expression (RE2 syntax): {brief}") from None
    except (UnicodeError, TypeError):  # cannot be UTF-8 encoded; the string check names it first
        raise ValueError("invalid regular expression (RE2 syntax)") from None
    return value


def _qps(value: float) -> float:
    if value != 0 and value < MIN_QPS:
        # A tiny budget spaces calls 1/qps apart: 1e-300 would stall the refresh for ever.
        raise ValueError(f"must be 0 (no budget) or at least {MIN_QPS}")
    return value


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL")
    return value


def _endpoint(value: str) -> str:
    if "://" in value:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be host[:port] or an http(s)://host[:port] URL")
        if parts.username is not None or parts.password is not None:
            raise ValueError("must not carry credentials (user:password@)")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError("must not have a path, query or fragment")
        try:
            _ = parts.port
        except ValueError:
            raise ValueError("invalid port") from None
        return value
    parse_listen_address(value, require_host=True)
    return value


def _listen_address(value: str) -> str:
    parse_listen_address(value)
    return value


def _telemetry_path(value: str) -> str:
    if len(value) > 1024:
        raise ValueError("must be at most 1024 characters")
    if not value.startswith("/"):
        raise ValueError("must start with '/'")
    if value in RESERVED_PATHS:
        raise ValueError(f"must not be {value!r}, which the exporter serves itself")
    if not _TELEMETRY_PATH_RE.fullmatch(value):
        raise ValueError("must be a plain URL path (no spaces, query or fragment)")
    return value


def _state_path(value: str) -> str:
    if value.endswith("/") or value in (".", ".."):
        raise ValueError("must name a file, not a directory")
    return value


def _family_pattern(value: str) -> str:
    """A family name or glob that matches an exposed family: a typo that matched nothing would silently
    export everything (include) or nothing less (exclude)."""
    if not _FAMILY_PATTERN_RE.fullmatch(value):
        raise ValueError("must be a metric family name or a shell-style glob of one (like ehpc_image_*)")
    if not pattern_matches(value):
        close = close_match(value, EXPOSED_NAMES)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ValueError(f"entry{shown(value)} matches no metric family{hint}")
    return value


def unique(values: tuple[str, ...]) -> tuple[str, ...]:
    """``values`` in order, each once."""
    return tuple(dict.fromkeys(values))


@dataclass(frozen=True, slots=True)
class Items:
    """A list of ``min_length`` to ``max_length`` items, its length judged before its items; a long one is
    validated a thousand items at a time until MAX_COLLECTED problems are in. Pydantic would build an error
    for every item, so a mistake repeated a million times through aliases would cost a million of them."""

    max_length: int
    min_length: int = 0

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        """The list's own schema, validated through :meth:`_validate`."""
        return core_schema.no_info_wrap_validator_function(self._validate, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        """The list's JSON schema with its bounds."""
        bounds = {"maxItems": self.max_length} | ({"minItems": self.min_length} if self.min_length else {})
        return {**handler(schema), **bounds}

    def _validate(self, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        if isinstance(value, list | tuple) and not self.min_length <= len(value) <= self.max_length:
            short = len(value) < self.min_length
            bound = {"min_length": self.min_length} if short else {"max_length": self.max_length}
            ctx = {"field_type": "List", "actual_length": len(value), **bound}
            fail(
                "items",
                [{"type": "too_short" if short else "too_long", "loc": (), "input": None, "ctx": ctx}],
            )
        if not isinstance(value, list) or len(value) <= _CHUNK:
            return handler(value)
        out: list[Any] = []
        found: list[InitErrorDetails] = []
        for start in range(0, len(value), _CHUNK):
            try:
                out.extend(handler(value[start : start + _CHUNK]))
            except ValidationError as exc:
                found += relocated([((), exc)], shift=start)
                if len(found) >= MAX_COLLECTED:
                    break
        if found:
            fail("items", found)
        return tuple(out)


def finite(ge: float, le: float) -> Any:
    """A float field's bounds, inf and nan refused."""
    return Field(ge=ge, le=le, allow_inf_nan=False)


def within(ge: int, le: int) -> Any:
    """An integer field's bounds."""
    return Field(ge=ge, le=le)


# --------------------------------------------------------------------------------------------------------
# The kinds.

RegionId = Annotated[str, AfterValidator(_region_id)]
RegionList = Annotated[tuple[RegionId, ...], Items(MAX_REGIONS_PER_IMAGE)]
ImageId = Annotated[str, AfterValidator(_image_id)]
ImageIds = Annotated[tuple[ImageId, ...], Items(MAX_LIST_ITEMS)]
NonEmptyStr = Annotated[str, AfterValidator(_non_empty)]
StatusName = Annotated[str, Field(max_length=64), AfterValidator(_non_empty)]
FilePath = Annotated[str, Field(max_length=4096), AfterValidator(_non_empty)]
StatePath = Annotated[str, Field(min_length=1, max_length=4096), AfterValidator(_state_path)]
AccountName = Annotated[str, AfterValidator(_account)]
RoleArn = Annotated[str, Field(max_length=256), AfterValidator(_role_arn)]
Endpoint = Annotated[str, Field(max_length=2048), AfterValidator(_endpoint)]
HttpUrl = Annotated[str, AfterValidator(_http_url)]
Regex = Annotated[str, AfterValidator(_regex)]
Qps = Annotated[float, finite(0, 10_000), AfterValidator(_qps)]
ListenAddress = Annotated[str, Field(max_length=300), AfterValidator(_listen_address)]
TelemetryPath = Annotated[str, AfterValidator(_telemetry_path)]
# STS session lengths: 900 s is the API's minimum, 43,200 s (12 h) the most a role may allow.
SessionSeconds = Annotated[int, Field(ge=900, le=43_200)]
ExternalId = Annotated[str, Field(max_length=1224)]
Secret = Annotated[str, AfterValidator(_secret)]  # an AccessKey secret or an STS token
SessionName = Annotated[str, Field(pattern=r"^[A-Za-z0-9.@_-]{2,64}$")]
FamilyPattern = Annotated[str, Field(max_length=200), AfterValidator(_family_pattern)]
# Repeats are dropped: the filter reads the same either way, and the runtime keeps each entry once.
FamilyPatterns = Annotated[tuple[FamilyPattern, ...], Items(1000), AfterValidator(unique)]
InfoLabel = Literal[INFO_LABELS]  # type: ignore[valid-type]  # the names' tuple, unpacked by pydantic
InfoLabels = Annotated[tuple[InfoLabel, ...], Items(len(INFO_LABELS)), AfterValidator(unique)]
StatusNames = Annotated[tuple[StatusName, ...], Items(100), AfterValidator(unique)]
HealthyStatuses = Annotated[tuple[StatusName, ...], Items(100, min_length=1), AfterValidator(unique)]
