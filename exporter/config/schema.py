"""The input schema of the config file: pydantic models with a bound on every field, and their validators.

Defaults come from the runtime dataclasses (:mod:`exporter.config.model`), so the two layers cannot drift;
messages never quote a value that could be a secret.
"""

from __future__ import annotations

import re
import typing
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import re2
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model

from exporter.config import yamlfile
from exporter.config.model import (
    RESERVED_PATHS,
    AdaptiveRateConfig,
    ApiConfig,
    AssumeRoleConfig,
    CredentialType,
    DiscoveryConfig,
    ImageType,
    LimitsConfig,
    MetricsConfig,
    RefreshConfig,
    RetryConfig,
    ShardingConfig,
    StatusConfig,
    WebConfig,
    parse_listen_address,
)
from exporter.exposition.families import INFO_LABELS
from exporter.redaction import BIDI_CONTROLS, SURROGATE_RE

COMMAND_LINE = "command line"

_REGION_RE = re.compile(r"^[a-z]{2,}-[a-z0-9-]+$")
_TELEMETRY_PATH_RE = re.compile(r"^/[A-Za-z0-9._~!$&'()*+,;=:@/-]*$")
_HOST_RE = re.compile(r"^[A-Za-z0-9._-]+$")
# No setting has a use for these, and each breaks something downstream: a control character splits a log
# or error line, a bidi control makes one read differently from what it says (as the API gate drops them),
# a lone surrogate (from ${VAR} of a non-UTF-8 environment) cannot be encoded into a URL, label or log.
# The output gate's controls, plus the Arabic letter mark (a setting has no use for it) and surrogates.
_BAD_CHARS_RE = re.compile(f"[\x00-\x1f\x7f-\x9f\u061c{BIDI_CONTROLS}\ud800-\udfff]")
_SURROGATE_RE = SURROGATE_RE
_PLAIN_RE = re.compile(r"^[\x21-\x7e]{1,64}$")  # what an error line may quote as it is
# What a location may show of a key: no ':', '[' or ']', so "<file>: <location>: <message>" stays parseable.
_PLAIN_KEY_RE = re.compile(r"^[\x21-\x39\x3b-\x5a\x5c\x5e-\x7e]{1,64}$")
MAX_STRING_CHARS = 16_384  # any one string, after interpolation (an STS token is about 1,500)
MAX_ID_CHARS = 128
MAX_REGEX_CHARS = 1024
MAX_TOTAL_CHARS = yamlfile.MAX_EXPANDED_CHARS  # all strings together, after interpolation
MAX_LIST_ITEMS = 100_000  # ids in discovery.ids; images are bounded by yamlfile's caps
MAX_PROBLEMS = 100  # lines reported: a file with a million bad keys gets a summary, not a million lines
# Problems collected: validating stops past this, so a mistake repeated through aliases a million times
# costs neither a million error objects nor the time to build them.
MAX_COLLECTED = 1000
MAX_IMAGES = 100_000
MAX_TARGETS = 1000
MIN_QPS = 0.01  # calls per second; below it (but above 0, "off") the budget would space calls for hours
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # RE2 would print the pattern to stderr, outside the one-line report


# --------------------------------------------------------------------------------------------------------
# Field validators. Messages never quote a value that could be a secret: ids, regions and patterns only,
# and those only when short and plain (see _shown).


def _shown(value: object) -> str:
    """``'value'`` when it is short printable ASCII, else nothing: never a part of a value (a cut secret)."""
    return f" {value!r}" if isinstance(value, str) and _PLAIN_RE.match(value) else ""


def _region_id(value: str) -> str:
    if len(value) > 64 or not _REGION_RE.match(value):
        raise ValueError(f"invalid region id{_shown(value)} (expected lower-case like 'cn-hangzhou')")
    return value


def _image_id(value: str) -> str:
    if not value:
        raise ValueError("must not be empty")
    if any(c.isspace() for c in value):
        raise ValueError("must not contain whitespace")
    if len(value) > MAX_ID_CHARS:
        raise ValueError(f"must be at most {MAX_ID_CHARS} characters")
    return value


_ACCOUNT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
# RAM role ARNs as STS reads them: acs:ram::<account id>:role/<name> (names are 1-64 of [A-Za-z0-9.-]).
_ROLE_ARN_RE = re.compile(r"^acs:ram::[0-9]{1,32}:role/[A-Za-z0-9.@_-]{1,64}$")


def _account(value: str) -> str:
    if not _ACCOUNT_RE.match(value):
        raise ValueError(
            f"invalid account name{_shown(value)} (1-63 letters, digits, '_', '.' or '-', starting with a"
            " letter or digit): it is the value of the account label"
        )
    return value


def _role_arn(value: str) -> str:
    if not _ROLE_ARN_RE.match(value):
        raise ValueError(f"invalid role ARN{_shown(value)} (expected acs:ram::<account id>:role/<name>)")
    return value


def _non_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
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
        shown = " ".join(text.split())[:80]  # RE2 quotes at most the offending operator
        raise ValueError(f"invalid regular expression (RE2 syntax): {shown}") from None
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
    if not _TELEMETRY_PATH_RE.match(value):
        raise ValueError("must be a plain URL path (no spaces, query or fragment)")
    return value


def _finite(ge: float, le: float) -> Any:
    """A float field's bounds, inf and nan refused."""
    return Field(ge=ge, le=le, allow_inf_nan=False)


def _within(ge: int, le: int) -> Any:
    """An integer field's bounds."""
    return Field(ge=ge, le=le)


RegionId = Annotated[str, AfterValidator(_region_id)]
ImageId = Annotated[str, AfterValidator(_image_id)]
NonEmptyStr = Annotated[str, AfterValidator(_non_empty)]
StatusName = Annotated[str, Field(max_length=64), AfterValidator(_non_empty)]
MAX_REGIONS_PER_IMAGE = 1000  # the most limits.max_regions_per_image may allow
RegionList = Annotated[list[RegionId], Field(max_length=MAX_REGIONS_PER_IMAGE)]
FilePath = Annotated[str, Field(max_length=4096), AfterValidator(_non_empty)]
ImageCategory = Literal["Public", "Custom"]
AccountName = Annotated[str, AfterValidator(_account)]
RoleArn = Annotated[str, Field(max_length=256), AfterValidator(_role_arn)]
StsEndpoint = Annotated[str, Field(max_length=2048), AfterValidator(_endpoint)]
# STS session lengths: 900 s is the API's minimum, 43,200 s (12 h) the most a role may allow.
SessionSeconds = Annotated[int, Field(ge=900, le=43_200)]


# --------------------------------------------------------------------------------------------------------
# The input schema. Defaults come from the runtime dataclasses so the two layers cannot drift.

_RETRY = RetryConfig()
_ADAPTIVE = AdaptiveRateConfig()
_API = ApiConfig()
_DISCOVERY = DiscoveryConfig()
_REFRESH = RefreshConfig()
_STATUS = StatusConfig()
_SHARDING = ShardingConfig()
_WEB = WebConfig()
_LIMITS = LimitsConfig()
_METRICS = MetricsConfig()
_ASSUME = AssumeRoleConfig(role_arn="")


class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def file_keys(model: type[BaseModel]) -> dict[str, Any]:
    """A schema model's fields by the key the file spells them with (the alias where there is one)."""
    return {field.alias or name: field for name, field in model.model_fields.items()}


class RetryIn(_Schema):
    """``api.retry``: exponential backoff with full jitter, bounded by attempts and by elapsed time."""

    max_attempts: Annotated[int, _within(1, 20)] = _RETRY.max_attempts
    base_delay_seconds: Annotated[float, _finite(0, 60)] = _RETRY.base_delay_seconds
    max_delay_seconds: Annotated[float, _finite(0, 600)] = _RETRY.max_delay_seconds
    max_elapsed_seconds: Annotated[float, _finite(0.01, 3600)] = _RETRY.max_elapsed_seconds


class AdaptiveRateIn(_Schema):
    """``api.adaptive_rate``: cut the QPS budget on throttling, regrow it towards ``api.qps`` (AIMD)."""

    enabled: bool = _ADAPTIVE.enabled
    # Below 0.1 one throttle would drop the rate tenfold; 0.95 at most so a cut still cuts.
    decrease_factor: Annotated[float, _finite(0.1, 0.95)] = _ADAPTIVE.decrease_factor
    increase_per_second: Annotated[float, _finite(0.001, 1)] = _ADAPTIVE.increase_per_second
    min_qps: Annotated[float, _finite(MIN_QPS, 10_000)] = _ADAPTIVE.min_qps
    reaction_window_seconds: Annotated[float, _finite(0.01, 60)] = _ADAPTIVE.reaction_window_seconds


class ApiIn(_Schema):
    """``api``: where and how fast to call E-HPC Instant."""

    region_id: RegionId = _API.region_id
    endpoint: Annotated[str, Field(max_length=2048), AfterValidator(_endpoint)] | None = None
    network: Literal["public", "vpc"] = _API.network
    protocol: Literal["https", "http"] = _API.protocol
    ca_file: FilePath | None = None
    timeout_seconds: Annotated[float, _finite(0.1, 600)] = _API.timeout_seconds
    connect_timeout_seconds: Annotated[float, _finite(0.1, 600)] = _API.connect_timeout_seconds
    max_concurrency: Annotated[int, _within(1, 1000)] = _API.max_concurrency
    qps: Annotated[float, _finite(0, 10_000), AfterValidator(_qps)] = _API.qps
    max_response_bytes: Annotated[int, _within(1024, 1024**3)] = _API.max_response_bytes
    retry: RetryIn = RetryIn()
    adaptive_rate: AdaptiveRateIn = AdaptiveRateIn()


class CredentialsIn(_Schema):
    """``credentials``: explicit credentials; leave the block out for the default chain."""

    type: CredentialType
    access_key_id: NonEmptyStr | None = None
    access_key_secret: str | None = None
    security_token: str | None = None
    credentials_uri: Annotated[str, AfterValidator(_http_url)] | None = None
    role_arn: NonEmptyStr | None = None
    role_session_name: NonEmptyStr | None = None
    oidc_provider_arn: NonEmptyStr | None = None
    oidc_token_file: FilePath | None = None
    role_name: NonEmptyStr | None = None
    sts_endpoint: StsEndpoint | None = None
    duration_seconds: SessionSeconds | None = None
    external_id: Annotated[str, Field(max_length=1224)] | None = None


class AssumeRoleIn(_Schema):
    """``targets[].assume_role``: a role assumed with the target's credentials (STS AssumeRole)."""

    role_arn: RoleArn
    external_id: Annotated[str, Field(min_length=2, max_length=1224)] | None = None
    role_session_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9.@_-]{2,64}$")] = _ASSUME.role_session_name
    duration_seconds: SessionSeconds = _ASSUME.duration_seconds
    sts_endpoint: StsEndpoint | None = None


class ImageIn(_Schema):
    """One entry of ``images``: fields named as in :class:`~exporter.config.model.WatchedImage`, keys as in
    the file (the alias), so building the runtime object is mechanical."""

    image_id: ImageId = Field(alias="id")
    image_type: ImageType = Field("VM", alias="type")
    image_category: ImageCategory | None = Field(None, alias="category")
    additional_region_ids: RegionList = Field([], alias="additional_regions")


class DiscoveryIn(_Schema):
    """``discovery``: also watch what ListImages finds."""

    enabled: bool = _DISCOVERY.enabled
    image_type: ImageType | None = Field(None, alias="type")
    image_category: ImageCategory | None = Field(None, alias="category")
    name_regex: Annotated[str, AfterValidator(_regex)] | None = None
    image_ids: Annotated[list[ImageId], Field(max_length=MAX_LIST_ITEMS, alias="ids")] = []
    additional_region_ids: RegionList = Field([], alias="additional_regions")
    page_size: Annotated[int, _within(1, 100)] = _DISCOVERY.page_size
    max_pages: Annotated[int, _within(1, 100_000)] = _DISCOVERY.max_pages


class RefreshIn(_Schema):
    """``refresh``: the refresh loop's cadence."""

    # At least a second: a tiny interval (5e-324) turns the loop into thousands of cycles a second.
    interval_seconds: Annotated[float, _finite(1, 86_400)] = _REFRESH.interval_seconds
    jitter_ratio: Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)] = _REFRESH.jitter_ratio
    image_timeout_seconds: Annotated[float, _finite(0.1, 3600)] = _REFRESH.image_timeout_seconds


class StatusIn(_Schema):
    """``status``: which statuses are healthy and which every state set carries."""

    healthy: Annotated[list[StatusName], Field(min_length=1, max_length=100)] = list(_STATUS.healthy)
    replication_healthy: Annotated[list[StatusName], Field(min_length=1, max_length=100)] = list(
        _STATUS.replication_healthy
    )
    vocabulary: Annotated[list[StatusName], Field(max_length=100)] = list(_STATUS.vocabulary)


class ShardingIn(_Schema):
    """``sharding``: this replica keeps the images rendezvous hashing assigns to ``shard`` of ``shards``."""

    shards: Annotated[int, _within(1, 1000)] = _SHARDING.shards
    shard: Annotated[int, _within(0, 999)] = _SHARDING.shard


def _state_path(value: str) -> str:
    if value.endswith("/") or value in (".", ".."):
        raise ValueError("must name a file, not a directory")
    return value


class StateIn(_Schema):
    """``state``: the SQLite file that keeps last good data and history across restarts."""

    path: Annotated[str, Field(min_length=1, max_length=4096), AfterValidator(_state_path)]


class LimitsIn(_Schema):
    """``limits``: bounds on what API answers can make the exporter publish (see LimitsConfig)."""

    max_error_codes: Annotated[int, _within(0, 10_000)] = _LIMITS.max_error_codes
    max_regions_per_image: Annotated[int, _within(1, MAX_REGIONS_PER_IMAGE)] = _LIMITS.max_regions_per_image


_FAMILY_PATTERN_RE = re.compile(r"^[A-Za-z0-9_:*?\[\]!-]+$")
MAX_SERIES = 1_000_000_000  # the most metrics.max_series may be (far past what any Prometheus ingests)


def _family_pattern(value: str) -> str:
    if not _FAMILY_PATTERN_RE.match(value):
        raise ValueError("must be a metric family name or a shell-style glob of one (like ehpc_image_*)")
    return value


FamilyPattern = Annotated[str, Field(max_length=200), AfterValidator(_family_pattern)]
FamilyPatterns = Annotated[list[FamilyPattern], Field(max_length=1000)]
InfoLabel = Literal[INFO_LABELS]  # type: ignore[valid-type]  # the table's tuple, unpacked by pydantic


class MetricsIn(_Schema):
    """``metrics``: which families /metrics carries, with which labels, how many series at most."""

    include: FamilyPatterns = list(_METRICS.include)
    exclude: FamilyPatterns = list(_METRICS.exclude)
    info_labels: Annotated[list[InfoLabel], Field(max_length=len(INFO_LABELS))] | None = None
    state_sets: Literal["full", "current"] = _METRICS.state_sets
    max_series: Annotated[int, _within(0, MAX_SERIES)] = _METRICS.max_series


class WebIn(_Schema):
    """``web``: the exporter's own HTTP server."""

    listen_address: Annotated[str, Field(max_length=300), AfterValidator(_listen_address)] = (
        _WEB.listen_address
    )
    telemetry_path: Annotated[str, AfterValidator(_telemetry_path)] = _WEB.telemetry_path
    config_file: FilePath | None = None


# The api keys a region entry sets; a target's ``api:`` overrides the others.
REGION_KEYS = ("region_id", "endpoint", "network")


def _constrained(field: Any) -> Any:
    """A field's type with its constraints (bounds, validators), which pydantic keeps in its metadata."""
    return Annotated[field.annotation, *field.metadata] if field.metadata else field.annotation


def _overrides(model: type[_Schema], name: str, without: tuple[str, ...] = ()) -> type[_Schema]:
    """``model`` with every field optional and unset by default: the keys a target overrides."""
    fields: dict[str, Any] = {
        key: (typing.Optional[_constrained(field)], Field(None, alias=field.alias))  # noqa: UP045
        for key, field in model.model_fields.items()
        if key not in without
    }
    made: type[_Schema] = create_model(
        name, __base__=_Schema, __doc__=f"Per-target overrides of {name}.", **fields
    )
    return made


ApiOverridesIn = _overrides(ApiIn, "ApiOverridesIn", REGION_KEYS)
RefreshOverridesIn = _overrides(RefreshIn, "RefreshOverridesIn")


class RegionIn(_Schema):
    """``targets[].regions[]``: one region of a target, with its endpoint when not the derived one."""

    region_id: RegionId
    endpoint: Annotated[str, Field(max_length=2048), AfterValidator(_endpoint)] | None = None
    network: Literal["public", "vpc"] | None = None


class TargetIn(_Schema):
    """``targets[]``: one account, its credentials and regions, what to watch there, its overrides."""

    account: AccountName
    credentials: CredentialsIn | None = None
    assume_role: AssumeRoleIn | None = None
    regions: Annotated[list[RegionIn], Field(min_length=1, max_length=100)]
    api: ApiOverridesIn | None = None  # type: ignore[valid-type]  # a model made at import
    refresh: RefreshOverridesIn | None = None  # type: ignore[valid-type]
    account_qps: Annotated[float, _finite(0, 10_000), AfterValidator(_qps)] = 0.0
    account_max_concurrency: Annotated[int, _within(1, 10_000)] | None = None
    images: list[ImageIn] = []
    discovery: DiscoveryIn = DiscoveryIn.model_validate({})


class ConfigFile(_Schema):
    """The whole file. Validation runs section by section (so one bad section hides nothing else)."""

    api: ApiIn = ApiIn()
    credentials: CredentialsIn | None = None
    images: list[ImageIn] = []
    discovery: DiscoveryIn = DiscoveryIn.model_validate({})  # by alias: the file's keys
    refresh: RefreshIn = RefreshIn()
    status: StatusIn = StatusIn()
    sharding: ShardingIn = ShardingIn()
    limits: LimitsIn = LimitsIn()
    web: WebIn = WebIn()
    targets: Annotated[list[TargetIn], Field(max_length=MAX_TARGETS)] | None = None
    state: StateIn | None = None
    metrics: MetricsIn = MetricsIn()


def config_json_schema() -> dict[str, Any]:
    """The JSON Schema of the configuration file (for editors and the Helm chart)."""
    return ConfigFile.model_json_schema()
