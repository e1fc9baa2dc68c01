"""Pytest plugin: reliability cases record (area, case, expected, observed, pass) and become a report.

A test asks for the ``reliability`` fixture and, per case::

    case = reliability.case("config", "negative interval", "exit 2, one line naming refresh.interval_seconds")
    ...
    case.observe(f"exit {rc}: {line}", ok=rc == 2 and "refresh.interval_seconds" in line)

``observe`` records and then asserts ``ok``. A case whose test fails before it observes anything is
recorded as failed with the error's first line, so the report never shows a case the run did not check.

``reliability.measure(area, name, value, unit)`` keeps a number that varies from run to run (a
latency, a rate) for people to read. It never fails a test: how fast something ran depends on how busy
the machine was, so the verdict of a commit would depend on the machine (the speed figures that are
targets live in ``bench/``). The report lists only what was measured, so regenerating it does not
change it; the numbers go to the terminal summary and, when ``RELIABILITY_MEASUREMENTS=path`` is set,
to that JSON file.

The report is deterministic: rows are ordered by area, then by module (``REPORT_MODULES``), then in the
order pytest collected the tests (and a test's cases in the order it made them), whatever order pytest was
given the files in and however pytest-xdist spread the tests over its workers: a test's records travel to
the controller on its reports (``user_properties``), and only the controller writes or compares the report.
With ``RELIABILITY_REPORT=path`` set, the session writes it there at its end. Without it, a session that
ran every test of every report module and saw them all pass compares what it would write with the
committed ``docs/reliability.md`` and fails (exit status 1, the command to regenerate it in the summary)
when they differ.
"""

from __future__ import annotations

import json
import os
from collections.abc import Generator, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPORT_ENV = "RELIABILITY_REPORT"
MEASUREMENTS_ENV = "RELIABILITY_MEASUREMENTS"
REPORT_PATH = Path(__file__).resolve().parent.parent / "docs" / "reliability.md"
# The modules whose cases make the report, in the order the report lists them within an area.
REPORT_MODULES = (
    "tests/test_bad_input.py",
    "tests/test_hostile.py",
    "tests/test_soak.py",
    "tests/test_e2e_paging.py",
    "tests/test_leaks.py",
    "tests/test_load.py",
    "tests/test_state.py",
)
GENERATE_COMMAND = "RELIABILITY_REPORT=docs/reliability.md .venv/bin/pytest " + " ".join(REPORT_MODULES)
# Areas in the order the report lists them; others follow alphabetically.
AREA_ORDER = (
    "paging",
    "soak",
    "config",
    "credentials",
    "api input",
    "hostile answers",
    "http methods",
    "http paths",
    "http headers",
    "slow clients",
    "web config",
    "security",
    "leaks",
    "load",
    "state file",
)

_STASH: pytest.StashKey[Recorder] = pytest.StashKey()


@dataclass
class CaseRecord:
    """One row of the report."""

    area: str
    case: str
    expected: str
    nodeid: str
    observed: str | None = None
    ok: bool | None = None
    test_failed: bool = False

    @property
    def passed(self) -> bool:
        """The case observed what it expected and its test did not fail."""
        return bool(self.ok) and not self.test_failed


@dataclass
class Measurement:
    """A number that varies from run to run (recorded, never judged)."""

    area: str
    name: str
    value: float
    unit: str
    nodeid: str = ""


@dataclass
class Recorder:
    """Everything the session recorded."""

    # What this process's tests record as they run (in a pytest-xdist worker: only its own tests).
    records: list[CaseRecord] = field(default_factory=list)
    measurements: list[Measurement] = field(default_factory=list)
    # What the reports delivered, per test (the last report of a test wins): the report is made of these.
    final_records: dict[str, list[CaseRecord]] = field(default_factory=dict)
    final_measurements: dict[str, list[Measurement]] = field(default_factory=dict)
    # Per report module: tests collected, deselected, and the outcome of each test that ran.
    collected: dict[str, set[str]] = field(default_factory=dict)
    order: dict[str, int] = field(default_factory=dict)  # node id -> position in collection order
    deselected: set[str] = field(default_factory=set)
    outcomes: dict[str, str] = field(default_factory=dict)

    def for_node(self, nodeid: str) -> Iterator[CaseRecord]:
        """The records a test made."""
        return (r for r in self.records if r.nodeid == nodeid)

    def note_collected(self, nodeids: Iterable[str]) -> None:
        """Remember the report tests of a collection, in its order."""
        for nodeid in nodeids:
            module = module_of(nodeid)
            if module in REPORT_MODULES:
                self.collected.setdefault(module, set()).add(nodeid)
                self.order.setdefault(nodeid, len(self.order))

    def report_records(self) -> list[CaseRecord]:
        """Every delivered record, in report order: module rank, collection order, order of making."""
        nodes = sorted(
            self.final_records, key=lambda n: (_module_rank(n), self.order.get(n, len(self.order)), n)
        )
        return [r for n in nodes for r in self.final_records[n]]

    def report_measurements(self) -> list[Measurement]:
        """Every delivered measurement."""
        return [m for ms in self.final_measurements.values() for m in ms]


class Case:
    """One recorded case; ``observe`` completes it."""

    def __init__(self, record: CaseRecord) -> None:
        self.record = record

    def observe(self, observed: str, ok: bool, *, fail: bool = True) -> bool:
        """Record what happened and whether it is what was expected; fail the test if not (unless
        ``fail=False``: then return ``ok`` so a test can observe several cases before asserting)."""
        self.record.observed = " ".join(observed.split())
        self.record.ok = ok
        if fail:
            assert ok, self.message
        return ok

    @property
    def message(self) -> str:
        """One line: the case, what was expected and what was observed."""
        r = self.record
        return f"[{r.area}] {r.case}: expected {r.expected}; observed {r.observed}"


class Reliability:
    """The fixture's face: open cases and keep measurements for the current test."""

    def __init__(self, recorder: Recorder, nodeid: str) -> None:
        self._recorder = recorder
        self._nodeid = nodeid

    def case(self, area: str, case: str, expected: str) -> Case:
        """Open a case; call ``observe`` on the result."""
        record = CaseRecord(area, case, expected, self._nodeid)
        self._recorder.records.append(record)
        return Case(record)

    def check(self, area: str, case: str, expected: str, observed: str, ok: bool) -> None:
        """Open and observe a case in one call."""
        self.case(area, case, expected).observe(observed, ok)

    def measure(self, area: str, name: str, value: float, unit: str) -> None:
        """Keep a run-dependent number for the terminal summary (and ``RELIABILITY_MEASUREMENTS``)."""
        self._recorder.measurements.append(Measurement(area, name, value, unit, self._nodeid))


def recorder_of(config: pytest.Config) -> Recorder:
    """The session's recorder (created on first use)."""
    rec = config.stash.get(_STASH, None)
    if rec is None:
        rec = config.stash[_STASH] = Recorder()
    return rec


@pytest.fixture
def reliability(request: pytest.FixtureRequest) -> Reliability:
    """Record reliability cases of this test into the session's report."""
    return Reliability(recorder_of(request.config), request.node.nodeid)


_PAYLOAD = "reliability"  # the user_properties key a report carries its test's records under


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """Mark the unobserved cases of a failed test as failed, with the error's first line, and put the
    test's records and measurements on the report (how they reach a pytest-xdist controller)."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    recorder = recorder_of(item.config)
    if report.failed:
        message = ""
        if call.excinfo is not None:
            text = str(call.excinfo.value).strip().splitlines()
            message = f"{call.excinfo.typename}: {text[0] if text else ''}".strip()
        for record in recorder.for_node(item.nodeid):
            if record.observed is None:  # observed cases keep their own verdict (observe asserts it)
                record.test_failed = True
                record.observed = f"test failed ({report.when}): {message}"[:300]
    records = [asdict(r) for r in recorder.for_node(item.nodeid)]
    measurements = [asdict(m) for m in recorder.measurements if m.nodeid == item.nodeid]
    if records or measurements:
        # A new list: the report shares item.user_properties, which must not grow with every phase.
        payload = {"records": records, "measurements": measurements}
        report.user_properties = [*report.user_properties, (_PAYLOAD, payload)]


class _Delivery:
    """Takes each test's outcome and delivered records from its reports (plugin registered at configure).

    pytest_runtest_logreport runs where the report is made: in a plain session, and in a pytest-xdist
    controller for the reports its workers send.
    """

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Take the outcome and the records of one report."""
        if _is_worker(self.config):
            return
        recorder = recorder_of(self.config)
        if module_of(report.nodeid) in REPORT_MODULES:
            previous = recorder.outcomes.get(report.nodeid)
            if report.failed or previous == "failed":
                recorder.outcomes[report.nodeid] = "failed"
            elif report.skipped:
                recorder.outcomes[report.nodeid] = "skipped"
            elif report.when == "call":
                recorder.outcomes[report.nodeid] = "passed"
        for key, payload in report.user_properties:
            if key == _PAYLOAD and isinstance(payload, dict):
                recorder.final_records[report.nodeid] = [CaseRecord(**r) for r in payload["records"]]
                recorder.final_measurements[report.nodeid] = [
                    Measurement(**m) for m in payload["measurements"]
                ]


def pytest_configure(config: pytest.Config) -> None:
    """Register the report taker."""
    config.pluginmanager.register(_Delivery(config), "reliability-delivery")


def _is_worker(config: pytest.Config) -> bool:
    """A pytest-xdist worker: it runs tests and sends its reports; it writes and compares nothing."""
    return hasattr(config, "workerinput")


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _area_key(area: str) -> tuple[int, str]:
    return (AREA_ORDER.index(area), "") if area in AREA_ORDER else (len(AREA_ORDER), area)


def module_of(nodeid: str) -> str:
    """``tests/test_x.py`` of a node id."""
    return nodeid.split("::", 1)[0]


def _module_rank(nodeid: str) -> int:
    module = module_of(nodeid)
    return REPORT_MODULES.index(module) if module in REPORT_MODULES else len(REPORT_MODULES)


def render_report(recorder: Recorder) -> str:
    """The markdown report (content depends only on the outcomes, not on timings or file order)."""
    records = recorder.report_records()
    passed = sum(r.passed for r in records)
    lines = [
        "# Reliability report",
        "",
        "<!-- Generated from test results; do not edit by hand. -->",
        "Generated by running:",
        "",
        "```",
        GENERATE_COMMAND,
        "```",
        "",
        "Each row is one case of a reliability test (recorder: `tests/reliability.py`): what was expected,",
        "what the run observed, and whether they match. Observations are worded so that a healthy run",
        "always produces the same text. No case judges speed: a verdict must not depend on how busy the",
        "machine was. Run-dependent numbers (latencies) are measured, never judged, and this file only",
        "names them; the speed figures that are targets live in `bench/` (`bench/RESULTS.md`).",
        "",
        "Modes:",
        "",
        "- `make test` runs these tests with the short soak (`SOAK_SECONDS` unset: about a minute).",
        "- Release check: `scripts/soak.sh [SECONDS]` (default 1800) runs the fault soak and the leak",
        "  checks for that long and writes its own report to `soak-report.md` (not committed).",
        "- Exact numbers of a run: add `RELIABILITY_MEASUREMENTS=measurements.json`; pytest's terminal",
        "  summary shows them too.",
        "- A run of every test of these modules that all pass compares this file with what it would",
        "  write and fails when they differ (regenerate it with the command above).",
        "",
        "Where each area comes from: paging `tests/test_e2e_paging.py` (simulator, exporter, real Prometheus",
        "with the shipped rules, Alertmanager, webhook); soak `tests/test_soak.py` (1,000 images under",
        "injected faults, simulator killed and restarted, error counts compared exactly with the",
        "simulator's); config, credentials, api input, http *, slow clients `tests/test_bad_input.py`;",
        "hostile answers `tests/test_hostile.py` (a hostile gateway, `tests/hostile_gateway.py`, answering",
        "raw bytes: every field of GetImage, error and ListImages bodies x value families, one row per",
        "family; every case asserts, with the exporter running: `/metrics` 200 and parsing with",
        "prometheus_client and `promtool check metrics`, the control images still refreshing, no known",
        "secret and no raw control character on `/metrics`, `/` or the log, no traceback, the outcome its",
        "family allows (InvalidResponse keeping the last good data, up, or ignored and counted), and",
        "recovery once the answer is good again);",
        "security and leaks `tests/test_leaks.py` (plus the soak's own leak scan); load `tests/test_load.py`",
        "(wrk: zero errors, every answer whole and parseable with every image in it; its latency and",
        "throughput are `bench/scrape.py`'s). Everything runs the real `ehpc-image-exporter` as a",
        "subprocess on loopback.",
        "",
        f"**{passed} of {len(records)} cases passed.**",
        "",
    ]
    areas = sorted({r.area for r in records}, key=_area_key)
    for area in areas:
        lines += [f"## {area}", "", "| case | expected | observed | pass |", "| --- | --- | --- | --- |"]
        for r in (r for r in records if r.area == area):
            mark = "yes" if r.passed else "**NO**"
            observed = r.observed if r.observed is not None else "(not observed)"
            lines.append(f"| {_cell(r.case)} | {_cell(r.expected)} | {_cell(observed)} | {mark} |")
        lines.append("")
    measurements = recorder.report_measurements()
    if measurements:
        lines += [
            "## Measurements (recorded, never judged: the numbers are in the run's terminal summary)",
            "",
            "| area | measurement | unit |",
            "| --- | --- | --- |",
        ]
        for m in sorted(measurements, key=lambda m: (_area_key(m.area), m.name)):
            lines.append(f"| {_cell(m.area)} | {_cell(m.name)} | {_cell(m.unit)} |")
        lines.append("")
    return "\n".join(lines)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Note which tests of the report modules this session runs (to know whether the report is whole)."""
    recorder_of(config).note_collected(item.nodeid for item in items)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node: Any, ids: list[str]) -> None:
    """Under pytest-xdist the controller collects nothing itself: every worker reports the same ids."""
    recorder_of(node.config).note_collected(ids)


def pytest_deselected(items: list[pytest.Item]) -> None:
    """A deselected report test (``-k``, ``-m``) makes the session's report partial."""
    for item in items:
        if module_of(item.nodeid) in REPORT_MODULES:
            recorder_of(item.config).deselected.add(item.nodeid)


def report_is_whole(recorder: Recorder) -> bool:
    """Every test of every report module ran in this session and passed."""
    if recorder.deselected or set(recorder.collected) != set(REPORT_MODULES):
        return False
    if not recorder.final_records:
        return False
    ran = [n for tests in recorder.collected.values() for n in tests]
    return all(recorder.outcomes.get(n) == "passed" for n in ran)


_STALE: pytest.StashKey[str] = pytest.StashKey()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Write the report (``RELIABILITY_REPORT``) and the exact measurements (``RELIABILITY_MEASUREMENTS``);
    without ``RELIABILITY_REPORT``, fail a whole, passing run whose report differs from the committed one."""
    if _is_worker(session.config):
        return
    recorder = recorder_of(session.config)
    report_path = os.environ.get(REPORT_ENV)
    if report_path and recorder.final_records:
        path = Path(report_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render_report(recorder))
    elif report_is_whole(recorder) and not _selected_by_expression(session.config):
        committed = REPORT_PATH.read_text() if REPORT_PATH.exists() else ""
        if committed != render_report(recorder):
            session.config.stash[_STALE] = stale_message(committed, render_report(recorder))
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
    measurements_path = os.environ.get(MEASUREMENTS_ENV)
    if measurements_path and recorder.final_measurements:
        Path(measurements_path).write_text(
            json.dumps([asdict(m) for m in recorder.report_measurements()], indent=2) + "\n"
        )


def _selected_by_expression(config: pytest.Config) -> bool:
    """``-k`` or ``-m`` chose the tests: the run may be partial though the controller saw no deselection."""
    return bool(config.getoption("keyword", "") or config.getoption("markexpr", ""))


def stale_message(committed: str, generated: str) -> str:
    """Why the run failed: the committed report is not this run's, the first differing line, the fix."""
    old, new = committed.splitlines(), generated.splitlines()
    first = next(
        (i for i, (a, b) in enumerate(zip(old, new, strict=False)) if a != b), min(len(old), len(new))
    )
    return (
        f"docs/reliability.md is not what this run generates (first difference at line {first + 1}:"
        f" committed {old[first] if first < len(old) else '<end>'!r},"
        f" generated {new[first] if first < len(new) else '<end>'!r}).\n"
        f"Regenerate it with: {GENERATE_COMMAND}"
    )


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Show the exact measurements of this run (the report only names them), and a stale report."""
    recorder = recorder_of(config)
    stale = config.stash.get(_STALE, None)
    if stale is not None:
        terminalreporter.section("reliability report is stale", red=True)
        for line in stale.splitlines():
            terminalreporter.write_line(line)
    measurements = recorder.report_measurements()
    if not measurements:
        return
    terminalreporter.section("reliability measurements (recorded, never judged)")
    for m in measurements:
        terminalreporter.write_line(f"{m.area}: {m.name} = {m.value:.6g} {m.unit}")
