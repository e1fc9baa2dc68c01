"""The self part: the exporter's own counters (API calls and latency, error codes, ignored values, refresh
cycles, credential refreshes, reloads, sharding).

Rendered per scrape by ``prometheus_client`` from :class:`SelfMetrics` (a few hundred samples, after the
snapshot part, so the OpenMetrics ``# EOF`` it ends with is the only one). Names, help texts, types and
label names come from the family table (:data:`~exporter.exposition.selfspecs.SELF_SPECS`); the families
per (account, region) carry the account's own labels, as the snapshot part's do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from prometheus_client import CollectorRegistry, GCCollector, ProcessCollector
from prometheus_client.exposition import generate_latest as generate_text
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from exporter.buildinfo import BuildInfo
from exporter.config import OwnLabels, Scope
from exporter.config.labels import NO_LABELS
from exporter.errors import KNOWN_CODES, LOCAL_CODES, OVERFLOW_CODE, ApiError
from exporter.exposition.families import SPECS, MetricName
from exporter.exposition.lines import go_float
from exporter.exposition.spec import MetricSpec, with_own_labels
from exporter.redaction import scrub

__all__ = [
    "API_ACTIONS",
    "API_DURATION_BUCKETS",
    "CYCLE_RESULTS",
    "IGNORED_FIELDS",
    "REPLICATION_BUCKETS",
    "STATE_LOAD_REASONS",
    "CredentialMetrics",
    "ScopeMetrics",
    "SelfMetrics",
    "StateMetrics",
    "counter",
    "gauge",
    "histogram",
]


def _checked(spec: MetricSpec, kind: str) -> MetricSpec:
    if spec.type != kind:
        raise TypeError(f"{spec.name} is a {spec.type} in the table, not a {kind}")
    return spec


def gauge(spec: MetricSpec) -> GaugeMetricFamily:
    """An empty gauge family for ``spec``."""
    _checked(spec, "gauge")
    return GaugeMetricFamily(spec.name, spec.help, labels=spec.labels)


def counter(spec: MetricSpec) -> CounterMetricFamily:
    """An empty counter family for ``spec`` (its name with ``_total``, as exposed)."""
    _checked(spec, "counter")
    return CounterMetricFamily(spec.name, spec.help, labels=spec.labels)


def histogram(spec: MetricSpec) -> HistogramMetricFamily:
    """An empty histogram family for ``spec``."""
    _checked(spec, "histogram")
    return HistogramMetricFamily(spec.name, spec.help, labels=spec.labels)


API_ACTIONS: tuple[str, ...] = ("GetImage", "ListImages")
# Per-attempt latency: loopback simulator calls take milliseconds, real ones 50-500 ms, timeouts 10 s.
API_DURATION_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
# Replication times: copying an image to another region takes minutes for a few GiB and hours for
# hundreds or across borders; the edges are one refresh interval (60 s) up to a day, about doubling.
REPLICATION_BUCKETS: tuple[float, ...] = (
    60.0,
    120.0,
    300.0,
    600.0,
    900.0,
    1800.0,
    2700.0,
    3600.0,
    5400.0,
    7200.0,
    10800.0,
    14400.0,
    21600.0,
    43200.0,
    86400.0,
)
# Why a state file could not be used at start-up (ehpc_state_load_errors_total{reason}), and "row": each
# row the gate refused (that image started cold); see exporter.state.
STATE_LOAD_REASONS: tuple[str, ...] = ("corrupt", "foreign", "locked", "unreadable", "row")
# How a refresh cycle ended (ehpc_refresh_cycles_total{result}); the refresher decides which
# (exporter.refresher.cycle_result).
CYCLE_RESULTS: tuple[str, ...] = ("success", "partial", "failure")
# The fields ehpc_api_ignored_values_total starts at 0 for (what exporter.models may leave out).
IGNORED_FIELDS: tuple[str, ...] = ("Image.Size", "Image.CreateTime", "Image.AdditionalRegionsInfo")

_M = MetricName


class _Histogram:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # per bucket, not cumulative; the last is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.sum += value
        i = 0
        for bound in self.bounds:
            if value <= bound:
                break
            i += 1
        self.counts[i] += 1

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative ``(le, count)`` pairs, +Inf last, as prometheus_client takes them."""
        cumulative, out = 0, []
        for le, count in zip([*map(go_float, self.bounds), "+Inf"], list(self.counts), strict=True):
            cumulative += count
            out.append((le, float(cumulative)))
        return out


class StateMetrics:
    """What the state file did (exporter.state): saves, their failures, what the start-up load found."""

    def __init__(self) -> None:
        self.last_save: float | None = None
        self.save_errors = 0
        self.load_errors = dict.fromkeys(STATE_LOAD_REASONS, 0)
        self.loaded_images = 0


class CredentialMetrics:
    """One account's credential refreshes: the observer of its credential source (kept across reloads,
    which give the account a new source, so the counters never restart)."""

    def __init__(self) -> None:
        self.refreshes = 0
        self.refresh_errors = 0
        self.expires_at: float | None = None  # of the last credential fetched; None: not temporary

    def on_refresh(self, expires_at: float | None) -> None:
        """Count a successful fetch; its credential expires at ``expires_at`` (None: a long-term key)."""
        self.refreshes += 1
        self.expires_at = expires_at

    def on_refresh_failed(self) -> None:
        """Count a failed fetch; the expiry stays that of the credential still held."""
        self.refreshes += 1
        self.refresh_errors += 1


def _error_status(error: ApiError) -> str:
    # Local failures have no API answer: always "0", whatever status a malformed body came with, so
    # the pre-registered series is the one that moves.
    return "0" if error.code in LOCAL_CODES else str(error.http_status)


class SelfMetrics:
    """The exporter's own counters, per (account, region) through :meth:`scope`, and their collector.

    Every (account, region) starts, for every API action, with requests 0, every known error code at 0
    (with the HTTP status it is normally answered with) and an empty histogram, so ``rate()`` and
    ``increase()`` work from the first failure. Codes outside the catalogue get their own series up to
    ``max_error_codes`` distinct ones in all; later new codes are counted under ``OVERFLOW_CODE``, so a
    server inventing codes cannot grow ``/metrics`` without bound. Mutated only from the event loop;
    :meth:`collect` copies what it reads.
    """

    def __init__(
        self,
        build_info: BuildInfo | None = None,
        *,
        process_metrics: bool = True,
        buckets: Sequence[float] = API_DURATION_BUCKETS,
        max_error_codes: int = 50,
    ) -> None:
        self.build_info = build_info or BuildInfo.current()
        self.max_error_codes = max_error_codes
        self._buckets = tuple(buckets)
        self._scopes: dict[Scope, ScopeMetrics] = {}
        self._credentials: dict[str, CredentialMetrics] = {}  # by account: the sources that fetch
        self._extra_codes: set[str] = set()
        self.reload_successful: bool | None = None
        self.reload_success_timestamp: float | None = None
        self.state: StateMetrics | None = None  # set while a state file is configured
        self.shard_ordinal = 0
        self.total_shards = 1
        # The snapshot part's series and the images metrics.max_series left out (set at each publish).
        self.exposition_series: int | None = None
        self.exposition_dropped_images = 0
        # Which families the self part exposes, by exposed name (metrics.include / exclude).
        self.allow: Callable[[str], bool] = _everything
        # The own labels of the config in force: each (account, region)'s families carry its account's.
        self.labels: OwnLabels = NO_LABELS
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Allowed(self, process_metrics))

    def scope(self, scope: Scope) -> ScopeMetrics:
        """The counters of one (account, region), created (at zero) on first use."""
        found = self._scopes.get(scope)
        if found is None:
            found = self._scopes[scope] = ScopeMetrics(self, scope)
        return found

    def retain(self, scopes: Iterable[Scope]) -> None:
        """Forget the counters of every (account, region) not in ``scopes`` (a reload removed them)."""
        keep = set(scopes)
        for scope in [s for s in self._scopes if s not in keep]:
            del self._scopes[scope]

    def credentials(self, account: str) -> CredentialMetrics:
        """The credential counters of ``account`` (a source that fetches), created (at zero) on first use."""
        found = self._credentials.get(account)
        if found is None:
            found = self._credentials[account] = CredentialMetrics()
        return found

    def retain_credentials(self, accounts: Iterable[str]) -> None:
        """Forget the credential counters of every account not in ``accounts`` (removed by a reload, or
        now on a long-term key, whose last expiry must not linger)."""
        keep = set(accounts)
        for account in [a for a in self._credentials if a not in keep]:
            del self._credentials[account]

    def _code(self, code: str) -> str:
        """The label value ``code`` is counted under: itself, or the overflow code past the cap."""
        if code in KNOWN_CODES or code in self._extra_codes:
            return code
        if len(self._extra_codes) >= self.max_error_codes:
            return OVERFLOW_CODE
        self._extra_codes.add(code)
        return code

    def record_reload(self, ok: bool, at: float) -> None:
        """Record the outcome of a configuration load or reload at wall time ``at``."""
        self.reload_successful = ok
        if ok:
            self.reload_success_timestamp = at

    def set_sharding(self, shard: int, total: int) -> None:
        """Record the sharding of the running config (``ehpc_exporter_shard_ordinal`` / ``_total_shards``)."""
        self.shard_ordinal, self.total_shards = shard, total

    def collect(self) -> Iterable[Metric]:
        """Yield the self-metric families."""
        scopes = sorted(self._scopes.items())
        own = self.labels

        def spec(name: MetricName) -> MetricSpec:
            return with_own_labels(SPECS[name], own.names)  # own label names first on per-account families

        requests = counter(spec(_M.API_REQUESTS))
        errors = counter(spec(_M.API_ERRORS))
        ignored = counter(spec(_M.API_IGNORED_VALUES))
        latency = histogram(spec(_M.API_REQUEST_DURATION))
        rate_limit = gauge(spec(_M.API_RATE_LIMIT))
        overruns = counter(spec(_M.REFRESH_OVERRUNS))
        cycles = counter(spec(_M.REFRESH_CYCLES))
        replication = histogram(spec(_M.REPLICATION_DURATION))
        for scope, m in scopes:
            # Own label values first, as with_own_labels puts their names.
            who = [*own.account(scope.account), scrub(scope.account), scrub(scope.region_id)]
            for action, n in sorted(m._requests.items()):
                requests.add_metric([*who, action], n)
            # Codes pass the output gate here; two codes it maps to one label value are added up, so
            # the family never holds the same series twice.
            gated: dict[tuple[str, str, str], int] = {}
            for (action, code, status), n in m._errors.items():
                key = (action, scrub(code), status)
                gated[key] = gated.get(key, 0) + n
            for key, n in sorted(gated.items()):
                errors.add_metric([*who, *key], n)
            for (action, field), n in sorted(m._ignored.items()):
                ignored.add_metric([*who, action, field], n)
            for action, hist in sorted(m._latency.items()):
                latency.add_metric([*who, action], hist.buckets(), hist.sum)
            if m.rate_limit is not None:
                rate_limit.add_metric(who, m.rate_limit())
            overruns.add_metric(who, m.overruns)
            for result in CYCLE_RESULTS:
                cycles.add_metric([*who, result], m.cycles[result])
            # Region ids pass the output gate; two that it maps to one label value share a series.
            gated_hist: dict[str, list[_Histogram]] = {}
            for region, hist in m._replication.items():
                gated_hist.setdefault(scrub(region), []).append(hist)
            for region, hists in sorted(gated_hist.items()):
                merged = _Histogram(REPLICATION_BUCKETS)
                for h in hists:
                    merged.sum += h.sum
                    merged.counts = [a + b for a, b in zip(merged.counts, h.counts, strict=True)]
                replication.add_metric([*who, region], merged.buckets(), merged.sum)
        yield requests
        yield errors
        yield ignored
        yield latency
        yield rate_limit
        yield overruns
        yield cycles
        yield from self._credential_families()
        yield replication
        yield from self._state_families()
        ok = self.reload_successful
        yield _scalar(_M.CONFIG_RELOAD_SUCCESSFUL, None if ok is None else float(ok))
        yield _scalar(_M.CONFIG_RELOAD_TIMESTAMP, self.reload_success_timestamp)
        yield _scalar(_M.EXPOSITION_SERIES, self.exposition_series)
        yield _scalar(_M.EXPOSITION_DROPPED_IMAGES, self.exposition_dropped_images)
        info = gauge(SPECS[_M.BUILD_INFO])
        b = self.build_info
        info.add_metric([b.version, b.revision, b.python_version], 1.0)
        yield info
        yield _scalar(_M.SHARD_ORDINAL, self.shard_ordinal)
        yield _scalar(_M.TOTAL_SHARDS, self.total_shards)

    def _credential_families(self) -> Iterable[Metric]:
        own = self.labels
        expiry = gauge(with_own_labels(SPECS[_M.CREDENTIALS_EXPIRY], own.names))
        refreshes = counter(with_own_labels(SPECS[_M.CREDENTIALS_REFRESHES], own.names))
        errors = counter(with_own_labels(SPECS[_M.CREDENTIALS_REFRESH_ERRORS], own.names))
        for account, c in sorted(self._credentials.items()):
            who = [*own.account(account), scrub(account)]  # own label values first, as their names
            if c.expires_at is not None:
                expiry.add_metric(who, c.expires_at)
            refreshes.add_metric(who, c.refreshes)
            errors.add_metric(who, c.refresh_errors)
        yield expiry
        yield refreshes
        yield errors

    def _state_families(self) -> Iterable[Metric]:
        state = self.state
        if state is None:  # no state file configured: no state families at all
            return
        yield _scalar(_M.STATE_LAST_SAVE, state.last_save)
        yield _scalar(_M.STATE_SAVE_ERRORS, state.save_errors)
        load_errors = counter(SPECS[_M.STATE_LOAD_ERRORS])
        for reason, n in sorted(state.load_errors.items()):
            load_errors.add_metric([reason], n)
        yield load_errors
        yield _scalar(_M.STATE_LOADED_IMAGES, state.loaded_images)

    def render(self, openmetrics: bool) -> bytes:
        """The self part of one scrape (OpenMetrics ends with the answer's single ``# EOF``)."""
        if openmetrics:
            return bytes(generate_openmetrics(self.registry))  # type: ignore[no-untyped-call]  # untyped upstream
        return generate_text(self.registry)


def _scalar(name: MetricName, value: float | None) -> Metric:
    """An unlabelled family of the table with one sample, or none while ``value`` is None."""
    spec = SPECS[name]
    family = counter(spec) if spec.type == "counter" else gauge(spec)
    if value is not None:
        family.add_metric([], float(value))
    return family


def _everything(_name: str) -> bool:
    return True


def _exposed_name(metric: Metric) -> str:
    """A family's name as the text format shows it (prometheus_client names a counter without _total)."""
    return f"{metric.name}_total" if metric.type == "counter" else metric.name


class _Allowed:
    """The self part's one collector: :meth:`SelfMetrics.collect` and the process and gc collectors,
    each family only if ``metrics.allow`` lets its name through."""

    def __init__(self, metrics: SelfMetrics, process_metrics: bool) -> None:
        self._metrics = metrics
        # Registered in a registry of their own, never read: this collector decides what of theirs is shown.
        aside = CollectorRegistry(auto_describe=False)
        self._extra = (
            (ProcessCollector(registry=aside), GCCollector(registry=aside)) if process_metrics else ()
        )

    def collect(self) -> Iterable[Metric]:
        """Yield the allowed self-metric families, prometheus_client's after the exporter's."""
        allow = self._metrics.allow
        for source in (self._metrics, *self._extra):
            for metric in source.collect():
                if allow(_exposed_name(metric)):
                    yield metric


class ScopeMetrics:
    """The counters of one (account, region): the :class:`~exporter.openapi.client.ApiObserver` of its
    client, and what its refresher records."""

    def __init__(self, parent: SelfMetrics, scope: Scope) -> None:
        self.scope = scope
        self._parent = parent
        self._requests: dict[str, int] = {}
        self._errors: dict[tuple[str, str, str], int] = {}
        self._latency: dict[str, _Histogram] = {}
        self._ignored: dict[tuple[str, str], int] = {}
        self._replication: dict[str, _Histogram] = {}  # by replication region
        self.overruns = 0
        self.cycles = dict.fromkeys(CYCLE_RESULTS, 0)
        # Reads the effective QPS budget of this scope's client (set with the client; absent before).
        self.rate_limit: Callable[[], float] | None = None
        for action in API_ACTIONS:
            self._add_action(action)

    def _add_action(self, action: str) -> None:
        self._requests[action] = 0
        self._latency[action] = _Histogram(self._parent._buckets)
        for code, status in KNOWN_CODES.items():
            self._errors.setdefault((action, code, str(status)), 0)
        if action == "GetImage":
            for field in IGNORED_FIELDS:
                self._ignored.setdefault((action, field), 0)

    def _count_error(self, action: str, error: ApiError) -> None:
        code = self._parent._code(error.code)
        key = (action, code, "0" if code == OVERFLOW_CODE else _error_status(error))
        self._errors[key] = self._errors.get(key, 0) + 1

    def on_attempt(self, action: str, duration_seconds: float, error: ApiError | None) -> None:
        """Count one HTTP attempt (every retry counts) and its latency."""
        if action not in self._requests:
            self._add_action(action)
        self._requests[action] += 1
        self._latency[action].observe(duration_seconds)
        if error is not None:
            self._count_error(action, error)

    def on_failure(self, action: str, error: ApiError) -> None:
        """Count a failed call whose attempts each succeeded (it made no request of its own)."""
        if action not in self._requests:
            self._add_action(action)
        self._count_error(action, error)

    def record_ignored(self, action: str, fields: Iterable[str]) -> None:
        """Count the values of one accepted answer that were left out, by field."""
        for field in fields:
            key = (action, field)
            self._ignored[key] = self._ignored.get(key, 0) + 1

    def track_replication(self, regions: Iterable[str]) -> None:
        """Start the replication histogram of each of ``regions`` at zero, so ``rate()`` sees its first."""
        for region in regions:
            if region not in self._replication:
                self._replication[region] = _Histogram(REPLICATION_BUCKETS)

    def record_replication(self, region: str, seconds: float) -> None:
        """Observe one completed replication to ``region``."""
        self.track_replication((region,))
        self._replication[region].observe(seconds)

    def record_overrun(self) -> None:
        """Count a refresh cycle that outlasted its interval."""
        self.overruns += 1

    def record_cycle(self, result: str) -> None:
        """Count a refresh cycle that ended with ``result`` (one of ``CYCLE_RESULTS``)."""
        self.cycles[result] += 1

    def errors(self) -> dict[tuple[str, str, str], int]:
        """A copy of the error counters: (action, code, http_status) -> count."""
        return dict(self._errors)

    def requests(self) -> dict[str, int]:
        """A copy of the request counters: action -> count."""
        return dict(self._requests)
