"""The self part: the exporter's own counters (API calls and latency, error codes, ignored values, reloads).

Rendered per scrape by ``prometheus_client`` from :class:`SelfMetrics` (a few hundred samples, after the
snapshot part, so the OpenMetrics ``# EOF`` it ends with is the only one). Names, help texts, types and
label names come from the family table (:data:`~exporter.exposition.families.SELF_SPECS`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from prometheus_client import CollectorRegistry, GCCollector, ProcessCollector
from prometheus_client.exposition import generate_latest as generate_text
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from exporter.buildinfo import BuildInfo
from exporter.config import Scope
from exporter.exposition.families import SPECS, MetricName
from exporter.exposition.lines import go_float
from exporter.exposition.reference import counter, gauge, histogram
from exporter.openapi.errors import KNOWN_CODES, LOCAL_CODES, OVERFLOW_CODE, ApiError
from exporter.redaction import scrub

__all__ = ["API_ACTIONS", "API_DURATION_BUCKETS", "IGNORED_FIELDS", "ScopeMetrics", "SelfMetrics"]

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
# The fields ehpc_api_ignored_values_total starts at 0 for (what exporter.models may leave out).
IGNORED_FIELDS: tuple[str, ...] = ("Image.Size", "Image.CreateTime", "Image.AdditionalRegionsInfo")

_M = MetricName


class _Histogram:
    __slots__ = ("counts", "sum")

    def __init__(self, n: int) -> None:
        self.counts = [0] * n  # per bucket, not cumulative; the last is +Inf
        self.sum = 0.0


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
        self._le = [go_float(b) for b in self._buckets] + ["+Inf"]
        self._scopes: dict[Scope, ScopeMetrics] = {}
        self._extra_codes: set[str] = set()
        self.reload_successful: bool | None = None
        self.reload_success_timestamp: float | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        if process_metrics:
            ProcessCollector(registry=self.registry)
            GCCollector(registry=self.registry)

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

    def collect(self) -> Iterable[Metric]:
        """Yield the self-metric families."""
        scopes = sorted(self._scopes.items())
        requests = counter(SPECS[_M.API_REQUESTS])
        errors = counter(SPECS[_M.API_ERRORS])
        ignored = counter(SPECS[_M.API_IGNORED_VALUES])
        latency = histogram(SPECS[_M.API_REQUEST_DURATION])
        rate_limit = gauge(SPECS[_M.API_RATE_LIMIT])
        overruns = counter(SPECS[_M.REFRESH_OVERRUNS])
        for scope, m in scopes:
            who = [scrub(scope.account), scrub(scope.region_id)]
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
                cumulative, buckets = 0, []
                for le, count in zip(self._le, list(hist.counts), strict=True):
                    cumulative += count
                    buckets.append((le, float(cumulative)))
                latency.add_metric([*who, action], buckets, hist.sum)
            if m.rate_limit is not None:
                rate_limit.add_metric(who, m.rate_limit())
            overruns.add_metric(who, m.overruns)
        yield requests
        yield errors
        yield ignored
        yield latency
        yield rate_limit
        yield overruns
        ok = gauge(SPECS[_M.CONFIG_RELOAD_SUCCESSFUL])
        if self.reload_successful is not None:
            ok.add_metric([], 1.0 if self.reload_successful else 0.0)
        yield ok
        ts = gauge(SPECS[_M.CONFIG_RELOAD_TIMESTAMP])
        if self.reload_success_timestamp is not None:
            ts.add_metric([], self.reload_success_timestamp)
        yield ts
        info = gauge(SPECS[_M.BUILD_INFO])
        b = self.build_info
        info.add_metric([b.version, b.revision, b.python_version], 1.0)
        yield info

    def render(self, openmetrics: bool) -> bytes:
        """The self part of one scrape (OpenMetrics ends with the answer's single ``# EOF``)."""
        if openmetrics:
            return bytes(generate_openmetrics(self.registry))  # type: ignore[no-untyped-call]  # untyped upstream
        return generate_text(self.registry)


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
        self.overruns = 0
        # Reads the effective QPS budget of this scope's client (set with the client; absent before).
        self.rate_limit: Callable[[], float] | None = None
        for action in API_ACTIONS:
            self._add_action(action)

    def _add_action(self, action: str) -> None:
        self._requests[action] = 0
        self._latency[action] = _Histogram(len(self._parent._le))
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
        hist = self._latency[action]
        hist.sum += duration_seconds
        i = 0
        for bound in self._parent._buckets:
            if duration_seconds <= bound:
                break
            i += 1
        hist.counts[i] += 1
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

    def record_overrun(self) -> None:
        """Count a refresh cycle that outlasted its interval."""
        self.overruns += 1

    def errors(self) -> dict[tuple[str, str, str], int]:
        """A copy of the error counters: (action, code, http_status) -> count."""
        return dict(self._errors)

    def requests(self) -> dict[str, int]:
        """A copy of the request counters: action -> count."""
        return dict(self._requests)
