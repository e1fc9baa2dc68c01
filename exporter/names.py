"""Every metric family name the exporter exposes, and the image info labels: plain data, no project imports.

The family table (:mod:`exporter.exposition.families`) gives each name its spec and samples; the config
checks ``metrics:`` against these names without importing the renderer's table.
"""

from __future__ import annotations

from enum import StrEnum
from fnmatch import fnmatchcase

__all__ = [
    "CLIENT_FAMILIES",
    "EXPORTER_LABELS",
    "EXPOSED_NAMES",
    "INFO_LABELS",
    "MetricName",
    "pattern_matches",
]


class MetricName(StrEnum):
    """Every metric name the exporter exposes (exposition names, counters with ``_total``)."""

    IMAGE_INFO = "ehpc_image_info"
    IMAGE_STATUS = "ehpc_image_status"
    IMAGE_AVAILABLE = "ehpc_image_available"
    IMAGE_SIZE_BYTES = "ehpc_image_size_bytes"
    IMAGE_CREATED = "ehpc_image_created_timestamp_seconds"
    IMAGE_REPLICATION_STATUS = "ehpc_image_replication_status"
    IMAGE_REPLICATION_AVAILABLE = "ehpc_image_replication_available"
    IMAGE_UP = "ehpc_image_up"
    IMAGE_LAST_SUCCESS = "ehpc_image_last_success_timestamp_seconds"
    IMAGE_LAST_ERROR = "ehpc_image_last_error_info"
    IMAGE_STATUS_SINCE = "ehpc_image_status_since_timestamp_seconds"
    IMAGE_STATUS_CHANGES = "ehpc_image_status_changes_total"
    IMAGE_REPLICATION_SINCE = "ehpc_image_replication_since_timestamp_seconds"
    IMAGE_REPLICATION_COMPLETE = "ehpc_image_replication_complete"
    REPLICATION_DURATION = "ehpc_image_replication_duration_seconds"
    STATE_LAST_SAVE = "ehpc_state_last_save_timestamp_seconds"
    STATE_SAVE_ERRORS = "ehpc_state_save_errors_total"
    STATE_LOAD_ERRORS = "ehpc_state_load_errors_total"
    STATE_LOADED_IMAGES = "ehpc_state_loaded_images"
    WATCHED_IMAGES = "ehpc_watched_images"
    REFRESH_DURATION = "ehpc_refresh_duration_seconds"
    REFRESH_LAST_SUCCESS = "ehpc_refresh_last_success_timestamp_seconds"
    DISCOVERY_UP = "ehpc_discovery_up"
    DISCOVERY_LAST_SUCCESS = "ehpc_discovery_last_success_timestamp_seconds"
    DISCOVERED_IMAGES = "ehpc_discovered_images"
    API_REQUESTS = "ehpc_api_requests_total"
    API_ERRORS = "ehpc_api_errors_total"
    API_REQUEST_DURATION = "ehpc_api_request_duration_seconds"
    API_IGNORED_VALUES = "ehpc_api_ignored_values_total"
    REFRESH_OVERRUNS = "ehpc_refresh_overruns_total"
    REFRESH_CYCLES = "ehpc_refresh_cycles_total"
    CREDENTIALS_EXPIRY = "ehpc_credentials_expiry_timestamp_seconds"
    CREDENTIALS_REFRESHES = "ehpc_credentials_refreshes_total"
    CREDENTIALS_REFRESH_ERRORS = "ehpc_credentials_refresh_errors_total"
    API_RATE_LIMIT = "ehpc_api_rate_limit_qps"
    CONFIG_RELOAD_SUCCESSFUL = "ehpc_config_last_reload_successful"
    CONFIG_RELOAD_TIMESTAMP = "ehpc_config_last_reload_success_timestamp_seconds"
    EXPOSITION_SERIES = "ehpc_exposition_series"
    EXPOSITION_DROPPED_IMAGES = "ehpc_exposition_dropped_images"
    BUILD_INFO = "ehpc_exporter_build_info"
    SHARD_ORDINAL = "ehpc_exporter_shard_ordinal"
    TOTAL_SHARDS = "ehpc_exporter_total_shards"


# ehpc_image_info's labels besides the identity, in the order its samples give them (metrics.info_labels).
INFO_LABELS = (
    "name",
    "version",
    "image_type",
    "app_id",
    "os_tag",
    "platform",
    "architecture",
    "registry_url",
)

# Every label name the exporter sets on a family it serves: the table's and the self part's (histograms'
# ``le`` included; build info's ``version`` is an info label's name too) and prometheus_client's gc
# collector's ``generation``. A configured own label (``labels:``) may be none of them;
# tests/test_exposition_labels.py holds this list to the families.
EXPORTER_LABELS: tuple[str, ...] = (
    "account",
    "region_id",
    "image_id",
    *INFO_LABELS,
    "status",
    "replication_region",
    "code",
    "action",
    "http_status",
    "field",
    "reason",
    "result",
    "le",
    "revision",
    "python_version",
    "generation",
)

# The families prometheus_client's process and gc collectors add to the self part, by exposed name.
CLIENT_FAMILIES: tuple[str, ...] = (
    "process_virtual_memory_bytes",
    "process_resident_memory_bytes",
    "process_start_time_seconds",
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "python_gc_objects_collected_total",
    "python_gc_objects_uncollectable_total",
    "python_gc_collections_total",
)
# Every family name metrics.include / metrics.exclude may match.
EXPOSED_NAMES: tuple[str, ...] = (*map(str, MetricName), *CLIENT_FAMILIES)


def pattern_matches(pattern: str) -> tuple[str, ...]:
    """The exposed family names ``pattern`` (an exact name or a shell-style glob) matches."""
    return tuple(name for name in EXPOSED_NAMES if fnmatchcase(name, pattern))
