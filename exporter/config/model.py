"""The frozen runtime configuration the exporter runs on (and the listen-address parser it binds with).

``exporter.config.load`` validates the YAML file and CLI flags into these objects; everything after start-up
reads only these.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Literal, NamedTuple

__all__ = [
    "DEFAULT_ACCOUNT",
    "DEFAULT_LISTEN_ADDRESS",
    "DEFAULT_SCOPE",
    "DEFAULT_STATUS_VOCABULARY",
    "DEFAULT_TELEMETRY_PATH",
    "PROBE_PATHS",
    "RESERVED_PATHS",
    "STOP_TIMEOUT_SECONDS",
    "AdaptiveRateConfig",
    "ApiConfig",
    "AssumeRoleConfig",
    "Config",
    "CredentialType",
    "CredentialsConfig",
    "DiscoveryConfig",
    "ImageType",
    "LimitsConfig",
    "MetricsConfig",
    "RefreshConfig",
    "RetryConfig",
    "Scope",
    "ShardingConfig",
    "StateConfig",
    "StatusConfig",
    "TargetConfig",
    "WatchedImage",
    "WebConfig",
    "parse_listen_address",
]

DEFAULT_LISTEN_ADDRESS = ":9765"  # the exporter's default port; see README "Ports"
DEFAULT_TELEMETRY_PATH = "/metrics"
# Served without authentication (Kubernetes probes carry no credentials); with "/", the landing page,
# no telemetry path may shadow them.
PROBE_PATHS: frozenset[str] = frozenset({"/healthz", "/readyz"})
RESERVED_PATHS: frozenset[str] = PROBE_PATHS | {"/", "/-/reload"}  # /-/reload: the lifecycle API
# The one stop deadline: the process promises to stop within 5 s of SIGTERM; the service's shutdown
# gets 4.5 s of it, and the CLI adds nothing on top but exiting.
STOP_TIMEOUT_SECONDS = 4.5
# The account label of a config without ``targets:`` (the one-target form every older file has).
DEFAULT_ACCOUNT = "default"
DEFAULT_STATUS_VOCABULARY = ("Available", "Creating", "Waiting", "UnAvailable", "CreateFailed", "Deprecated")

CredentialType = Literal[
    "default", "access_key", "sts", "credentials_uri", "ecs_ram_role", "ram_role_arn", "oidc_role_arn"
]


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """Retry policy of one API call: exponential backoff with full jitter, bounded twice."""

    max_attempts: int = 4
    base_delay_seconds: float = 0.2
    max_delay_seconds: float = 5.0
    max_elapsed_seconds: float = 30.0


@dataclass(frozen=True, slots=True)
class AdaptiveRateConfig:
    """AIMD of the QPS budget on throttling (``exporter.openapi.budget.AdaptiveRate`` says why each)."""

    enabled: bool = True
    # 0.7, not TCP's 0.5: the server's bucket refunds a dip only up to its burst, and a gentler cut keeps
    # a refresh within ~15 % of the hidden limit (bench/adaptive.py).
    decrease_factor: float = 0.7
    # Of the configured qps, per second of throttle-free sending: back from one 30 % cut in 12 s. Slow
    # enough that crossing a hidden limit costs a few throttled calls (0.05 doubled them, bench/adaptive.py).
    increase_per_second: float = 0.025
    min_qps: float = 1.0  # at least one call a second, whatever the throttling (capped at qps)
    reaction_window_seconds: float = 1.0  # one cut per window (the API's limits are per second)


@dataclass(frozen=True, slots=True)
class ApiConfig:
    """Where and how fast to call the E-HPC Instant API."""

    region_id: str = "cn-hangzhou"
    # Overrides the host built from region_id: "host[:port]" or a full "http(s)://host[:port]" URL.
    endpoint: str | None = None
    network: Literal["public", "vpc"] = "public"
    protocol: Literal["https", "http"] = "https"
    ca_file: str | None = None  # extra CA bundle (e.g. the simulator's throwaway CA)
    timeout_seconds: float = 10.0  # one attempt, connect to last byte
    connect_timeout_seconds: float = 5.0
    max_concurrency: int = 50
    qps: float = 20.0  # 0 disables the budget
    max_response_bytes: int = 4 * 1024 * 1024
    retry: RetryConfig = field(default_factory=RetryConfig)
    adaptive_rate: AdaptiveRateConfig = field(default_factory=AdaptiveRateConfig)


@dataclass(frozen=True, slots=True)
class CredentialsConfig:
    """Explicit credentials; absent means the alibabacloud-credentials default chain."""

    type: CredentialType = "default"
    access_key_id: str | None = None
    access_key_secret: str | None = field(default=None, repr=False)
    security_token: str | None = field(default=None, repr=False)
    credentials_uri: str | None = None
    role_arn: str | None = None
    role_session_name: str | None = None
    oidc_provider_arn: str | None = None
    oidc_token_file: str | None = None
    role_name: str | None = None  # ecs_ram_role
    # ram_role_arn / oidc_role_arn, and the RRSA path of type default: the STS host[:port] to call
    # (the library's default is sts.aliyuncs.com), the session length and the role's external id.
    sts_endpoint: str | None = None
    duration_seconds: int | None = None
    external_id: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class AssumeRoleConfig:
    """A RAM role assumed (STS AssumeRole) with a target's credentials as the base."""

    role_arn: str
    external_id: str | None = field(default=None, repr=False)
    role_session_name: str = "ehpc-image-exporter"
    duration_seconds: int = 3600
    sts_endpoint: str | None = None  # host[:port]; None is the library's default, sts.aliyuncs.com


class Scope(NamedTuple):
    """The identity of one (account, region) the exporter watches: the labels every series of it carries."""

    account: str
    region_id: str


ImageType = Literal["VM", "Container"]


@dataclass(frozen=True, slots=True)
class WatchedImage:
    """One image to watch, as GetImage is asked about it."""

    image_id: str
    image_type: ImageType = "VM"
    image_category: Literal["Public", "Custom"] | None = None
    additional_region_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DiscoveryConfig:
    """Watch images found by ListImages as well as the static list."""

    enabled: bool = False
    image_type: ImageType | None = None
    image_category: Literal["Public", "Custom"] | None = None
    name_regex: str | None = None
    image_ids: tuple[str, ...] = ()
    additional_region_ids: tuple[str, ...] = ()  # asked of every discovered image
    page_size: int = 50
    # ListImages pages one discovery may read; more (or any page repeating an earlier one) fails it.
    max_pages: int = 1000


@dataclass(frozen=True, slots=True)
class RefreshConfig:
    """The refresh loop's cadence."""

    interval_seconds: float = 60.0
    jitter_ratio: float = 0.1  # each sleep is interval * (1 ± jitter_ratio)
    image_timeout_seconds: float = 30.0  # one image, retries included


@dataclass(frozen=True, slots=True)
class StatusConfig:
    """What the exporter calls healthy, and which statuses every state set always carries."""

    healthy: tuple[str, ...] = ("Available",)
    replication_healthy: tuple[str, ...] = ("Available",)
    vocabulary: tuple[str, ...] = DEFAULT_STATUS_VOCABULARY


@dataclass(frozen=True, slots=True)
class ShardingConfig:
    """Split the watched set across replicas: this one keeps the images rendezvous hashing gives ``shard``."""

    shards: int = 1
    shard: int = 0


@dataclass(frozen=True, slots=True)
class StateConfig:
    """The state file that carries each image's last good data and history across restarts (SQLite)."""

    path: str  # the database; its directory also holds the -wal / -shm files and moved-aside copies


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Bounds on what hostile or runaway API answers can make the exporter publish."""

    # Distinct error codes counted beyond the built-in catalogue (seed, gateway and local codes, which
    # are always kept); later new codes are counted under OVERFLOW_CODE (exporter.openapi.errors).
    max_error_codes: int = 50
    # AdditionalRegionsInfo entries one GetImage answer may carry, and regions one image may ask for;
    # an answer with more is an InvalidResponse.
    max_regions_per_image: int = 50


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """What ``/metrics`` carries: which families, which info labels, how much of each state set, how many
    series at most (see :func:`exporter.exposition.families.build_table`)."""

    # Shell-style globs over exposed family names (counters with _total); empty include: every family.
    # A family is exposed when it matches include (or include is empty) and no exclude entry.
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    info_labels: tuple[str, ...] | None = None  # ehpc_image_info's optional labels kept; None: all
    state_sets: Literal["full", "current"] = "full"  # current: only each state set's sample valued 1
    max_series: int = 0  # the snapshot part's series at most, whole images left out past it; 0: no cap


@dataclass(frozen=True, slots=True)
class WebConfig:
    """The exporter's own HTTP server."""

    listen_address: str = DEFAULT_LISTEN_ADDRESS
    telemetry_path: str = DEFAULT_TELEMETRY_PATH
    config_file: str | None = None  # Prometheus exporter-toolkit web config (TLS, basic auth)


# The identity of a default Config(): its account and ApiConfig's default region.
DEFAULT_SCOPE = Scope(DEFAULT_ACCOUNT, "cn-hangzhou")


@dataclass(frozen=True, slots=True)
class TargetConfig:
    """One account of the estate: how to authenticate, which regions to call, what to watch in each."""

    account: str = DEFAULT_ACCOUNT
    credentials: CredentialsConfig | None = None
    assume_role: AssumeRoleConfig | None = None
    regions: tuple[ApiConfig, ...] = (ApiConfig(),)  # one resolved API config per region
    refresh: RefreshConfig = field(default_factory=RefreshConfig)
    images: tuple[WatchedImage, ...] = ()  # watched in every region of the target
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    # A budget shared by every region of the account, on top of each region's own (0 / None: none).
    account_qps: float = 0.0
    account_max_concurrency: int | None = None


@dataclass(frozen=True, slots=True)
class Config:
    """The whole runtime configuration.

    Without ``targets`` the top-level ``api``, ``credentials``, ``images`` and ``discovery`` are the one
    target, account :data:`DEFAULT_ACCOUNT` (every older file). With ``targets``, each (account, region)
    is watched as that same one-target shape: :meth:`scopes` derives it, so everything below the service
    (refresher, client) sees one account in one region.
    """

    api: ApiConfig = field(default_factory=ApiConfig)
    credentials: CredentialsConfig | None = None
    images: tuple[WatchedImage, ...] = ()
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    refresh: RefreshConfig = field(default_factory=RefreshConfig)
    status: StatusConfig = field(default_factory=StatusConfig)
    sharding: ShardingConfig = field(default_factory=ShardingConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    web: WebConfig = field(default_factory=WebConfig)
    targets: tuple[TargetConfig, ...] = ()
    state: StateConfig | None = None  # off when absent
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    # Set on the per-scope configs :meth:`scopes` derives (and on a one-target config, the default).
    account: str = DEFAULT_ACCOUNT
    assume_role: AssumeRoleConfig | None = None
    account_qps: float = 0.0
    account_max_concurrency: int | None = None

    @property
    def scope(self) -> Scope:
        """The identity of a one-target config: its account and region."""
        return Scope(self.account, self.api.region_id)

    def scopes(self) -> tuple[Config, ...]:
        """One one-target config per (account, region) watched, in configuration order."""
        if not self.targets:
            return (self,)
        return tuple(
            replace(
                self,
                api=api,
                credentials=t.credentials,
                images=t.images,
                discovery=t.discovery,
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

    @property
    def account_settings(self) -> tuple[object, ...]:
        """What a one-target config's credentials and account budget depend on (shared per account)."""
        return (
            self.account,
            self.credentials,
            self.assume_role,
            self.account_qps,
            self.account_max_concurrency,
        )


_HOST_RE = re.compile(r"^[A-Za-z0-9._-]+$")


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
            if require_host and value and _HOST_RE.match(value):
                return value, 0  # host alone: the scheme's default port
            raise ValueError("must be host:port, like ':9765' or '127.0.0.1:9765'")
        if ":" in host:
            raise ValueError("an IPv6 host must be in brackets, like [::1]:9765")
        if host and not _HOST_RE.match(host):
            raise ValueError("invalid host")
    if require_host and not host:
        raise ValueError("must name a host")
    # ASCII digits only, and few of them: int() takes '٣' and raises on 5,000 digits.
    if not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5) or int(port_text) > 65535:
        raise ValueError("port must be a number from 0 to 65535")
    return host, int(port_text)
