"""The self part's families: the exporter's own counters and gauges, rendered per scrape by
:mod:`exporter.exposition.selfmetrics` (the snapshot part's table is :mod:`exporter.exposition.families`).
"""

from __future__ import annotations

from exporter.exposition.spec import IDENTITY, MetricSpec
from exporter.names import MetricName

__all__ = ["SELF_SPECS"]

_M = MetricName

# The families of the self part in exposition order.
SELF_SPECS: tuple[MetricSpec, ...] = (
    MetricSpec(
        _M.API_REQUESTS,
        "counter",
        "E-HPC Instant API calls made, each retry attempt counted.",
        (*IDENTITY, "action"),
    ),
    MetricSpec(
        _M.API_ERRORS,
        "counter",
        "Failed E-HPC Instant API calls by error code and HTTP status (0: no HTTP answer).",
        (*IDENTITY, "action", "code", "http_status"),
    ),
    MetricSpec(
        _M.API_IGNORED_VALUES,
        "counter",
        "Values of accepted API answers the exporter could not use and left out (an unparseable size "
        "or time, a region entry that was not asked for, empty or repeated), by field.",
        (*IDENTITY, "action", "field"),
    ),
    MetricSpec(
        _M.API_REQUEST_DURATION,
        "histogram",
        "Latency of one E-HPC Instant API call attempt in seconds.",
        (*IDENTITY, "action"),
    ),
    MetricSpec(
        _M.API_RATE_LIMIT,
        "gauge",
        "The client's effective API call budget in calls per second: api.qps, lowered after throttling "
        "while api.adaptive_rate is on (0: unlimited).",
        IDENTITY,
    ),
    MetricSpec(
        _M.REFRESH_OVERRUNS,
        "counter",
        "Refresh cycles that outlasted the refresh interval (the next one then started at once).",
        IDENTITY,
    ),
    MetricSpec(
        _M.REFRESH_CYCLES,
        "counter",
        "Refresh cycles by result: success (every image answered, discovery too while on), partial (some "
        "failed), failure (no image answered, none watched and discovery failed, or the cycle crashed); "
        "ImageNotFound is an answer.",
        (*IDENTITY, "result"),
    ),
    MetricSpec(
        _M.CREDENTIALS_EXPIRY,
        "gauge",
        "Unix time the account's current temporary credentials expire (assumed role, RRSA/OIDC, ECS RAM "
        "role, credentials URI); absent for long-term AccessKeys and before the first fetch.",
        ("account",),
    ),
    MetricSpec(
        _M.CREDENTIALS_REFRESHES,
        "counter",
        "Fetches of the account's credentials (each one of a role chain's whole), failed ones included; "
        "absent for a configured AccessKey, which is never fetched.",
        ("account",),
    ),
    MetricSpec(
        _M.CREDENTIALS_REFRESH_ERRORS,
        "counter",
        "Failed fetches of the account's credentials (the held credential is served while still valid).",
        ("account",),
    ),
    MetricSpec(
        _M.REPLICATION_DURATION,
        "histogram",
        "Observed replication times in seconds: from the first answer showing a requested copy not "
        "available (or absent) to the first showing it available (one refresh interval of precision).",
        (*IDENTITY, "replication_region"),
    ),
    MetricSpec(
        _M.STATE_LAST_SAVE,
        "gauge",
        "Unix time the state file was last written (absent while state is off or before the first save).",
    ),
    MetricSpec(
        _M.STATE_SAVE_ERRORS,
        "counter",
        "Failed writes of the state file (the file keeps its previous content).",
    ),
    MetricSpec(
        _M.STATE_LOAD_ERRORS,
        "counter",
        "State files that could not be used at start-up, by reason; the exporter then started cold.",
        ("reason",),
    ),
    MetricSpec(
        _M.STATE_LOADED_IMAGES,
        "gauge",
        "Images loaded from the state file at start-up (0 on a cold start).",
    ),
    MetricSpec(
        _M.CONFIG_RELOAD_SUCCESSFUL,
        "gauge",
        "1 if the last configuration load or reload succeeded, 0 if it failed.",
    ),
    MetricSpec(
        _M.CONFIG_RELOAD_TIMESTAMP, "gauge", "Unix time of the last successful configuration load or reload."
    ),
    MetricSpec(
        _M.EXPOSITION_SERIES,
        "gauge",
        "Series in the snapshot part of the current exposition (everything but these self-metrics).",
    ),
    MetricSpec(
        _M.EXPOSITION_DROPPED_IMAGES,
        "gauge",
        "Watched images left out of the exposition, whole, because metrics.max_series was reached.",
    ),
    MetricSpec(
        _M.BUILD_INFO,
        "gauge",
        "Exporter build information, always 1.",
        ("version", "revision", "python_version"),
    ),
    # Always present (0 and 1 unsharded): "sum by (job) of watched images" and "which pod is missing"
    # queries need every replica to say where it stands; Prometheus adds job/instance/pod.
    MetricSpec(
        _M.SHARD_ORDINAL,
        "gauge",
        "The shard this replica watches, 0 <= ordinal < ehpc_exporter_total_shards (see docs/sharding.md).",
    ),
    MetricSpec(
        _M.TOTAL_SHARDS,
        "gauge",
        "How many shards split the watched images (1: unsharded).",
    ),
)
