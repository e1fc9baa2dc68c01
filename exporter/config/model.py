"""The configuration the exporter runs on, each key declared once: its type, default and bounds on one field.

These frozen dataclasses are what everything after start-up reads, and what the config file is validated
into (pydantic validates them directly, :mod:`exporter.config.load`): a field's bounds are the kinds of
:mod:`exporter.config.schema`, the file's spelling of a key is the field's alias, and a rule between
fields is a model validator of the class that holds them. Where the file's shape differs from the
runtime's, the class says how (``TargetConfig.file_form``, ``Config``'s whole-file validator).

Constructing one in code (tests, the demo, ``dataclasses.replace``) validates nothing: code is trusted as
code, and may use values a file may not (a 64-byte answer cap, a tenth of a second between refreshes) to
exercise a behaviour quickly. Only a file, or flags, go through the gate.

Why one module of over 400 lines: it is the whole configuration, one declaration per key, by design;
splitting it would spread a key out again.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, ClassVar, Literal, NamedTuple, cast

from pydantic import (
    Field,
    GetCoreSchemaHandler,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_core import CoreSchema, core_schema

from exporter.config import forms, rules
from exporter.config.errors import NOT_IN_FILE, fail, file_keys, relocated, rule, whole_line
from exporter.config.labels import EMPTY_LABELS, Labels, OwnLabels
from exporter.config.schema import (
    MAX_ERROR_CODES,
    MAX_IMAGES,
    MAX_REGIONS_PER_IMAGE,
    MAX_SERIES,
    MAX_TARGETS,
    MIN_QPS,
    PROBE_PATHS,
    RESERVED_PATHS,
    AccountName,
    Endpoint,
    ExternalId,
    FamilyPatterns,
    FilePath,
    HealthyStatuses,
    HttpUrl,
    ImageId,
    ImageIds,
    InfoLabels,
    Items,
    ListenAddress,
    NonEmptyStr,
    Qps,
    Regex,
    RegionId,
    RegionList,
    RoleArn,
    Secret,
    SessionName,
    SessionSeconds,
    StatePath,
    StatusNames,
    TelemetryPath,
    finite,
    parse_listen_address,
    unique,
    within,
)

__all__ = [
    "DEFAULT_ACCOUNT",
    "DEFAULT_LISTEN_ADDRESS",
    "DEFAULT_SCOPE",
    "DEFAULT_STATUS_VOCABULARY",
    "DEFAULT_TELEMETRY_PATH",
    "PROBE_PATHS",
    "RESERVED_PATHS",
    "STOP_TIMEOUT_SECONDS",
    "WEB_CONFIG_CHECK",
    "AdaptiveRateConfig",
    "ApiConfig",
    "AssumeRoleConfig",
    "Config",
    "CredentialType",
    "CredentialsConfig",
    "DiscoveryConfig",
    "ImageType",
    "Labels",
    "LimitsConfig",
    "MetricsConfig",
    "OwnLabels",
    "RefreshConfig",
    "RetryConfig",
    "Scope",
    "ShardingConfig",
    "StateConfig",
    "StatusConfig",
    "TargetConfig",
    "WatchedImage",
    "WebConfig",
    "copy_available",
    "parse_listen_address",
]

DEFAULT_LISTEN_ADDRESS = ":9765"  # the exporter's default port; see README "Ports"
DEFAULT_TELEMETRY_PATH = "/metrics"
# The one stop deadline: the process promises to stop within 5 s of SIGTERM; the service's shutdown
# gets 4.5 s of it, and the CLI adds nothing on top but exiting.
STOP_TIMEOUT_SECONDS = 4.5
# The account label of a config without ``targets:`` (the one-target form every older file has).
DEFAULT_ACCOUNT = "default"
DEFAULT_STATUS_VOCABULARY = ("Available", "Creating", "Waiting", "UnAvailable", "CreateFailed", "Deprecated")
# The validation context key of a callable that reads the web config file ``web.config_file`` names
# and returns its problems as lines (the CLI passes one; ``check`` does not serve, so it does not).
WEB_CONFIG_CHECK = "web_config_check"

CredentialType = Literal[
    "default", "access_key", "sts", "credentials_uri", "ecs_ram_role", "ram_role_arn", "oidc_role_arn"
]
ImageType = Literal["VM", "Container"]
ImageCategory = Literal["Public", "Custom"]


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """``api.retry``: one API call's retries, exponential backoff with full jitter, bounded twice."""

    __pydantic_config__ = forms.FILE
    max_attempts: Annotated[int, within(1, 20)] = 4
    base_delay_seconds: Annotated[float, finite(0, 60)] = 0.2
    max_delay_seconds: Annotated[float, finite(0, 600)] = 5.0
    max_elapsed_seconds: Annotated[float, finite(0.01, 3600)] = 30.0

    @model_validator(mode="after")
    def _delays_in_order(self) -> RetryConfig:
        if self.max_delay_seconds < self.base_delay_seconds:
            fail("retry", [rule(("max_delay_seconds",), "must be at least retry.base_delay_seconds")])
        return self


@dataclass(frozen=True, slots=True)
class AdaptiveRateConfig:
    """``api.adaptive_rate``: AIMD of the QPS budget on throttling (``exporter.openapi.budget.AdaptiveRate``
    says why each)."""

    __pydantic_config__ = forms.FILE
    enabled: bool = True
    # 0.7, not TCP's 0.5: the server's bucket refunds a dip only up to its burst, and a gentler cut keeps
    # a refresh within ~15 % of the hidden limit (bench/adaptive.py). Below 0.1 one throttle would drop
    # the rate tenfold; 0.95 at most so a cut still cuts.
    decrease_factor: Annotated[float, finite(0.1, 0.95)] = 0.7
    # Of the configured qps, per second of throttle-free sending: back from one 30 % cut in 12 s. Slow
    # enough that crossing a hidden limit costs a few throttled calls (0.05 doubled them, bench/adaptive.py).
    increase_per_second: Annotated[float, finite(0.001, 1)] = 0.025
    min_qps: Annotated[float, finite(MIN_QPS, 10_000)] = 1.0  # at least a call a second (capped at qps)
    reaction_window_seconds: Annotated[float, finite(0.01, 60)] = 1.0  # one cut per window (limits are per s)


@dataclass(frozen=True, slots=True)
class ApiConfig:
    """``api``: where and how fast to call the E-HPC Instant API."""

    __pydantic_config__ = forms.FILE
    region_id: RegionId = "cn-hangzhou"
    # Overrides the host built from region_id: "host[:port]" or a full "http(s)://host[:port]" URL.
    endpoint: Endpoint | None = None
    network: Literal["public", "vpc"] = "public"
    protocol: Literal["https", "http"] = "https"
    # A CA trusted besides the system's, for the API and the target's STS and credentials URI (a private
    # CA: a TLS-inspecting proxy's, the simulator's throwaway one).
    ca_file: FilePath | None = None
    timeout_seconds: Annotated[float, finite(0.1, 600)] = 10.0  # one attempt, connect to last byte
    connect_timeout_seconds: Annotated[float, finite(0.1, 600)] = 5.0
    max_concurrency: Annotated[int, within(1, 1000)] = 50
    qps: Qps = 20.0  # 0 disables the budget
    max_response_bytes: Annotated[int, within(1024, 1024**3)] = 4 * 1024 * 1024
    retry: RetryConfig = field(default_factory=RetryConfig)
    adaptive_rate: AdaptiveRateConfig = field(default_factory=AdaptiveRateConfig)


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
    # Each of the three may come from the environment the ACK RRSA webhook sets instead (RRSA_ENV).
    "oidc_role_arn": ((), ("role_arn", "oidc_provider_arn", "oidc_token_file", "role_session_name", *_STS)),
}
# The environment variables alibabacloud-credentials reads for an oidc_role_arn field left out.
RRSA_ENV = {
    "role_arn": "ALIBABA_CLOUD_ROLE_ARN",
    "oidc_provider_arn": "ALIBABA_CLOUD_OIDC_PROVIDER_ARN",
    "oidc_token_file": "ALIBABA_CLOUD_OIDC_TOKEN_FILE",
}


@dataclass(frozen=True, slots=True)
class CredentialsConfig:
    """``credentials``: explicit credentials; absent means the alibabacloud-credentials default chain."""

    __pydantic_config__ = forms.FILE
    type: CredentialType
    access_key_id: NonEmptyStr | None = None
    access_key_secret: Secret | None = field(default=None, repr=False)
    security_token: Secret | None = field(default=None, repr=False)
    credentials_uri: HttpUrl | None = None
    role_arn: NonEmptyStr | None = None
    role_session_name: NonEmptyStr | None = None
    oidc_provider_arn: NonEmptyStr | None = None
    oidc_token_file: FilePath | None = None
    role_name: NonEmptyStr | None = None  # ecs_ram_role
    # ram_role_arn / oidc_role_arn, and the RRSA path of type default: the STS host[:port] to call
    # (the library's default is sts.aliyuncs.com), the session length and the role's external id.
    sts_endpoint: Endpoint | None = None
    duration_seconds: SessionSeconds | None = None
    external_id: ExternalId | None = field(default=None, repr=False)

    @model_validator(mode="after")
    def _fields_of_its_type(self) -> CredentialsConfig:
        """The fields the type needs are set, and none it does not use."""
        required, optional = _CREDENTIAL_FIELDS[self.type]
        found = []
        for name in (f.name for f in dataclasses.fields(self) if f.name != "type"):
            value, env = getattr(self, name), RRSA_ENV.get(name)
            if name in required and not value:
                found.append(rule((name,), f"required for type '{self.type}'"))
            elif name not in required and name not in optional and value is not None:
                found.append(rule((name,), f"not used by type '{self.type}'"))
            elif self.type == "oidc_role_arn" and env and not value and not os.environ.get(env):
                found.append(rule((name,), f"required for type 'oidc_role_arn' (or set {env})"))
        if found:
            fail("credentials", found)
        return self


@dataclass(frozen=True, slots=True)
class AssumeRoleConfig:
    """``targets[].assume_role``: a RAM role assumed (STS AssumeRole) with the target's credentials."""

    __pydantic_config__ = forms.FILE
    role_arn: RoleArn
    external_id: Annotated[ExternalId, Field(min_length=2)] | None = field(default=None, repr=False)
    role_session_name: SessionName = "ehpc-image-exporter"
    duration_seconds: SessionSeconds = 3600
    sts_endpoint: Endpoint | None = None  # host[:port]; None is the library's default, sts.aliyuncs.com


class Scope(NamedTuple):
    """The identity of one (account, region) the exporter watches: the labels every series of it carries."""

    account: str
    region_id: str


@dataclass(frozen=True, slots=True)
class WatchedImage:
    """One entry of ``images``: an image to watch, as GetImage is asked about it."""

    __pydantic_config__ = forms.FILE
    image_id: Annotated[ImageId, Field(alias="id")]
    image_type: Annotated[ImageType, Field(alias="type")] = "VM"
    image_category: Annotated[ImageCategory | None, Field(alias="category")] = None
    additional_region_ids: Annotated[RegionList, Field(alias="additional_regions")] = ()
    # Added to its target's on every series of the image, its own winning (exporter.config.labels).
    labels: Labels = EMPTY_LABELS


@dataclass(frozen=True, slots=True)
class DiscoveryConfig:
    """``discovery``: watch images found by ListImages as well as the static list."""

    __pydantic_config__ = forms.FILE
    enabled: bool = False
    image_type: Annotated[ImageType | None, Field(alias="type")] = None
    image_category: Annotated[ImageCategory | None, Field(alias="category")] = None
    name_regex: Regex | None = None
    image_ids: Annotated[ImageIds, Field(alias="ids")] = ()
    # Asked of every discovered image.
    additional_region_ids: Annotated[RegionList, Field(alias="additional_regions")] = ()
    page_size: Annotated[int, within(1, 100)] = 50
    # ListImages pages one discovery may read; more (or any page repeating an earlier one) fails it.
    # page_size x max_pages images count against MAX_WATCHED_IMAGE_REGIONS (the most discovery may find):
    # 5,000 images by default, so a dozen targets may discover at the defaults.
    max_pages: Annotated[int, within(1, 100_000)] = 100


@dataclass(frozen=True, slots=True)
class RefreshConfig:
    """``refresh``: the refresh loop's cadence."""

    __pydantic_config__ = forms.FILE
    # At least a second in a file: a tiny interval (5e-324) turns the loop into thousands of cycles a second.
    interval_seconds: Annotated[float, finite(1, 86_400)] = 60.0
    # Each sleep is interval * (1 ± jitter_ratio).
    jitter_ratio: Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)] = 0.1
    image_timeout_seconds: Annotated[float, finite(0.1, 3600)] = 30.0  # one image, retries included


@dataclass(frozen=True, slots=True)
class StatusConfig:
    """``status``: what the exporter calls healthy, and which statuses every state set always carries."""

    __pydantic_config__ = forms.FILE
    healthy: HealthyStatuses = ("Available",)
    replication_healthy: HealthyStatuses = ("Available",)
    vocabulary: StatusNames = DEFAULT_STATUS_VOCABULARY

    @model_validator(mode="after")
    def _healthy_in_vocabulary(self) -> StatusConfig:
        """The healthy statuses join the vocabulary (after it, in order): every state set carries them."""
        vocabulary = unique((*self.vocabulary, *self.healthy, *self.replication_healthy))
        return self if vocabulary == self.vocabulary else replace(self, vocabulary=vocabulary)


def copy_available(copy: str | None, replication_healthy: Collection[str]) -> bool:
    """Whether a region's copy is available: there is one, in a status of ``status.replication_healthy``.

    The one definition: the verdict (:mod:`exporter.view`) and the replication times
    (:mod:`exporter.history`) both ask it, so they cannot disagree on when a replication is complete.
    """
    return copy is not None and copy in replication_healthy


@dataclass(frozen=True, slots=True)
class ShardingConfig:
    """``sharding``: split the watched set across replicas; this one keeps the images rendezvous hashing
    gives ``shard``."""

    __pydantic_config__ = forms.FILE
    shards: Annotated[int, within(1, 1000)] = 1
    shard: Annotated[int, within(0, 999)] = 0

    @model_validator(mode="after")
    def _shard_among_shards(self) -> ShardingConfig:
        if self.shard >= self.shards:
            fail("sharding", [rule(("shard",), f"must be less than sharding.shards ({self.shards})")])
        return self


@dataclass(frozen=True, slots=True)
class StateConfig:
    """``state``: the SQLite file that carries each image's last good data and history across restarts."""

    __pydantic_config__ = forms.FILE
    path: StatePath  # the database; its directory also holds the -wal / -shm files and moved-aside copies


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """``limits``: bounds on what hostile or runaway API answers can make the exporter publish."""

    __pydantic_config__ = forms.FILE
    # Distinct error codes counted beyond the built-in catalogue (seed, gateway and local codes, which
    # are always kept); later new codes are counted under OVERFLOW_CODE (exporter.errors).
    max_error_codes: Annotated[int, within(0, MAX_ERROR_CODES)] = 50
    # AdditionalRegionsInfo entries one GetImage answer may carry, and regions one image may ask for;
    # an answer with more is an InvalidResponse.
    max_regions_per_image: Annotated[int, within(1, MAX_REGIONS_PER_IMAGE)] = 50


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """``metrics``: what ``/metrics`` carries: which families, which info labels, how much of each state
    set and sparse family, how many series at most (see :func:`exporter.exposition.families.build_table`)."""

    __pydantic_config__ = forms.FILE
    # Shell-style globs over exposed family names (counters with _total); empty include: every family.
    # A family is exposed when it matches include (or include is empty) and no exclude entry.
    include: FamilyPatterns = ()
    exclude: FamilyPatterns = ()
    info_labels: InfoLabels | None = None  # ehpc_image_info's optional labels kept; None: all
    # current: each state set's sample valued 1 only, and a copy's since-timestamp only while the copy is
    # not available (20 series per image at 5 regions); full: every sample (55), the exposition of old.
    state_sets: Literal["full", "current"] = "current"
    # The snapshot part's series at most, whole images left out past it; 0: no cap.
    max_series: Annotated[int, within(0, MAX_SERIES)] = 0


@dataclass(frozen=True, slots=True)
class WebConfig:
    """``web``: the exporter's own HTTP server."""

    __pydantic_config__ = forms.FILE
    listen_address: ListenAddress = DEFAULT_LISTEN_ADDRESS
    telemetry_path: TelemetryPath = DEFAULT_TELEMETRY_PATH
    config_file: FilePath | None = None  # Prometheus exporter-toolkit web config (TLS, basic auth)

    @field_validator("config_file", mode="after")
    @classmethod
    def _web_config_readable(cls, value: str | None, info: ValidationInfo) -> str | None:
        """The file it names is checked in the same pass, when the caller passes WEB_CONFIG_CHECK."""
        check = (info.context or {}).get(WEB_CONFIG_CHECK)
        if value is not None and check is not None and (lines := check(value)):
            fail("web", [whole_line(line) for line in lines])
        return value


# The identity of a default Config(): its account and ApiConfig's default region.
DEFAULT_SCOPE = Scope(DEFAULT_ACCOUNT, "cn-hangzhou")


@dataclass(frozen=True, slots=True)
class TargetConfig:
    """``targets[]``: one account of the estate, how to authenticate, which regions to call, what to watch.

    The file writes its regions as entries (``region_id``, ``endpoint``, ``network``) and may override
    the top-level ``api`` and ``refresh`` for all of them: that shape is :attr:`file_form` (derived from
    these fields below), and ``Config`` resolves it into one whole ``ApiConfig`` per region.
    """

    file_form: ClassVar[type]
    account: AccountName = DEFAULT_ACCOUNT
    credentials: CredentialsConfig | None = None
    assume_role: AssumeRoleConfig | None = None
    regions: tuple[ApiConfig, ...] = (ApiConfig(),)  # one resolved API config per region
    refresh: RefreshConfig = field(default_factory=RefreshConfig)
    images: Annotated[tuple[WatchedImage, ...], Items(MAX_IMAGES)] = ()  # in every region
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    labels: Labels = EMPTY_LABELS  # on every series of the account (exporter.config.labels)
    # A budget shared by every region of the account, on top of each region's own (0 / None: none).
    account_qps: Qps = 0.0
    account_max_concurrency: Annotated[int, within(1, 10_000)] | None = None

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        """Validated in the file's shape (:attr:`file_form`), then resolved against the top level."""
        return core_schema.with_info_after_validator_function(
            _resolved, handler.generate_schema(cls.file_form)
        )


# The target as the file writes it, derived from the fields above (so a key added there is a key here).
TargetConfig.file_form = forms.target_entry(TargetConfig, ApiConfig, RefreshConfig)


def _resolved(entry: Any, info: ValidationInfo) -> Any:
    return forms.resolved_target(entry, info, TargetConfig, ApiConfig, RefreshConfig)


@dataclass(frozen=True, slots=True)
class Config:
    """The whole runtime configuration, and the whole file.

    Without ``targets`` the top-level ``api``, ``credentials``, ``images`` and ``discovery`` are the one
    target, account :data:`DEFAULT_ACCOUNT` (every older file). With ``targets``, each (account, region)
    of each target is a scope, watched through a config of that same one-region shape: :meth:`scopes`
    derives them, so everything below the service (refresher, client) sees one account in one region.
    """

    __pydantic_config__ = forms.FILE
    api: ApiConfig = field(default_factory=ApiConfig)
    credentials: CredentialsConfig | None = None
    images: Annotated[tuple[WatchedImage, ...], Items(MAX_IMAGES)] = ()
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    labels: Labels = EMPTY_LABELS  # the one target's (exporter.config.labels)
    refresh: RefreshConfig = field(default_factory=RefreshConfig)
    status: StatusConfig = field(default_factory=StatusConfig)
    sharding: ShardingConfig = field(default_factory=ShardingConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    web: WebConfig = field(default_factory=WebConfig)
    targets: Annotated[tuple[TargetConfig, ...], Items(MAX_TARGETS)] = ()
    state: StateConfig | None = None  # off when absent
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    # Set on the per-scope configs :meth:`scopes` derives (a file without ``targets`` keeps the defaults);
    # no file sets them.
    account: Annotated[str, NOT_IN_FILE] = DEFAULT_ACCOUNT
    assume_role: Annotated[AssumeRoleConfig | None, NOT_IN_FILE] = None
    account_qps: Annotated[float, NOT_IN_FILE] = 0.0
    account_max_concurrency: Annotated[int | None, NOT_IN_FILE] = None

    @property
    def scope(self) -> Scope:
        """The scope of a per-scope config: its account and region."""
        return Scope(self.account, self.api.region_id)

    def scopes(self) -> tuple[Config, ...]:
        """One per-scope config for each (account, region) watched, in configuration order."""
        if not self.targets:
            return (self,)
        return tuple(
            replace(
                self,
                api=api,
                credentials=t.credentials,
                images=t.images,
                discovery=t.discovery,
                labels=t.labels,
                refresh=t.refresh,
                targets=(),
                account=t.account,
                assume_role=t.assume_role,
                account_qps=t.account_qps,
                account_max_concurrency=t.account_max_concurrency,
            )
            for t in self.targets
            for api in t.regions
        )

    def own_labels(self) -> OwnLabels:
        """What the configured own labels give each series: each account its target's labels, each listed
        image with labels of its own those on top of its target's."""
        accounts: dict[str, Labels] = {}
        images: dict[tuple[str, str], Labels] = {}
        for scope in self.scopes():
            accounts[scope.account] = scope.labels
            for image in scope.images:
                if image.labels:
                    images[(scope.account, image.image_id)] = scope.labels.over(image.labels)
        return OwnLabels(accounts, images)

    @property
    def account_settings(self) -> tuple[object, ...]:
        """What a per-scope config's credentials and account budget depend on (shared per account)."""
        return (
            self.account,
            self.credentials,
            self.assume_role,
            self.api.ca_file,  # the STS's trust
            self.account_qps,
            self.account_max_concurrency,
        )

    @model_validator(mode="wrap")
    @classmethod
    def _whole_file(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Config:
        """The rules over the whole file (:mod:`exporter.config.rules`), judged beside the fields' own
        validation, so that neither hides the other's problems."""
        if not isinstance(data, dict):
            return cast(Config, handler(data))
        runtime_only = {f.name for f in dataclasses.fields(cls)} - set(file_keys(cls))
        discovery = DiscoveryConfig()
        defaults = (discovery.page_size, discovery.max_pages)
        data, found = rules.whole_file(data, runtime_only, _max_regions(data.get("limits")), defaults)
        try:
            config = cast(Config, handler(data))
        except ValidationError as exc:
            if not found:
                raise
            fail("Config", [*relocated([((), exc)]), *found])
        if found:
            fail("Config", found)
        return config


def _max_regions(limits: Any) -> int | None:
    """The file's ``limits.max_regions_per_image`` when its limits are valid (their default when absent)."""
    try:
        found: LimitsConfig = forms.adapter(LimitsConfig).validate_python({} if limits is None else limits)
    except ValidationError:
        return None
    return found.max_regions_per_image
