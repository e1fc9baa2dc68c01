"""pip-audit of the locked runtime dependencies (requirements.lock): red on a known vulnerability.

What this network allows (checked when the test was written): OSV (api.osv.dev) and the other
vulnerability services do not resolve, and PyPI's per-release JSON API (``/pypi/<name>/<version>/json``,
which ``pip-audit --vulnerability-service pypi`` queries) answers 404, so plain pip-audit *skips* every
dependency and still prints "No known vulnerabilities found". PyPI's per-project JSON API
(``/pypi/<name>/json``) does answer, with the vulnerabilities of the project's newest release. So the
test runs the real pip-audit CLI (``-s pypi``) with one adaptation, installed by this file's ``pip-audit``
entry point: when the per-release API is not found, the per-project answer is used, but only if its
newest release *is* the locked version. Where the per-release API answers, pip-audit runs as shipped.

A release coming out upstream does not change the verdict: a locked version that is a release PyPI
lists, but not its newest one, cannot be audited here, and that alone does not fail the suite. Each such
dependency gets one :class:`UnauditedDependencyWarning` line (name, locked version, newest release),
which pytest prints in its warnings summary, with or without pytest-xdist; ``make relock`` moves the
lock to the newest releases. Those lines are the audit's blind spot here (a vulnerability fixed by the
newer release is not seen until the relock), so they are loud. The test fails when: any locked
dependency has a known vulnerability; pip-audit cannot run or reach PyPI; PyPI's per-project answer is
missing or unusable; or a dependency is skipped for any other reason (say a version PyPI does not list).
Nothing is skipped silently.

The adaptation is tested on recorded answers (``tests/fixtures/pypi/``): ``idna.json`` is this
network's per-project answer for idna, trimmed (each release to one file); ``idna-3.6.json`` is the
same answer cut at 3.6, as if 3.6 were the newest release, carrying PyPI's entry for PYSEC-2024-60
(CVE-2024-3651, its details shortened), which affects 3.6. They are served at the process's network
edge (requests' transport, :class:`RecordedPyPI`), so everything above it, pip-audit included, runs
for real.

requirements.lock is the runtime closure of ``pip install .`` (no test or bench tools), exactly what
the Docker image installs; the test checks it matches what is installed. ``python tests/test_audit.py
lock [SITE_PACKAGES]`` prints it from a venv (by default the one running it); ``make relock`` prints it
from a throwaway venv where ``pip install .`` (with the dependency groups) ran without constraints.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

pytestmark = pytest.mark.process  # most tests here start real processes (make test-fast skips the file)

REPO = Path(__file__).resolve().parent.parent
LOCK = REPO / "requirements.lock"
PROJECT = "ehpc-image-exporter"
LOCK_HEADER = (
    "# Runtime dependencies of ehpc-image-exporter, pinned (the closure of `pip install .`, no test tools).\n"
    "# Move to the newest releases: make relock. From the venv: .venv/bin/python tests/test_audit.py lock\n"
    "# Audited by tests/test_audit.py (pip-audit against PyPI's vulnerability data).\n"
)
RECORDED = REPO / "tests" / "fixtures" / "pypi"


class UnauditedDependencyWarning(UserWarning):
    """A locked dependency this network cannot audit because a newer release exists."""


_NEWER_RELEASE = re.compile(
    r"(?P<name>\S+) (?P<locked>\S+) is not audited here: a newer release \((?P<newest>[^\s()]+)\) exists,"
    r" and this network's PyPI describes only the newest release"
)


@dataclass(frozen=True)
class Unaudited:
    """A locked version that is a release on PyPI, but not its newest one."""

    name: str
    locked: str
    newest: str

    def skip_reason(self) -> str:
        """The reason the adaptation gives pip-audit; :meth:`parse` reads it back from the report."""
        reason = (
            f"{self.name} {self.locked} is not audited here: a newer release ({self.newest}) exists,"
            " and this network's PyPI describes only the newest release"
        )
        assert _NEWER_RELEASE.fullmatch(reason)
        return reason

    @classmethod
    def parse(cls, skip_reason: str) -> Unaudited | None:
        """The dependency a skip reason names, if the reason is a newer release and nothing else."""
        found = _NEWER_RELEASE.fullmatch(skip_reason)
        return cls(found["name"], found["locked"], found["newest"]) if found else None

    def line(self) -> str:
        """The loud line: what is not audited, and what would make it auditable."""
        return (
            f"NOT AUDITED: requirements.lock pins {self.name} {self.locked}, below its newest release"
            f" {self.newest}, and this network's PyPI describes only the newest release;"
            " `make relock` moves the lock to the newest releases its dependents allow"
        )


def runtime_closure(project: str = PROJECT, path: list[str] | None = None) -> dict[str, str]:
    """Every installed distribution ``project`` needs at run time (markers evaluated, no extras).

    ``path``: the directories to look in (another venv's site-packages), instead of ``sys.path``.
    """
    found: dict[str, tuple[str, str]] = {}
    todo = [project]
    while todo:
        wanted = todo.pop()
        dist = next(iter(metadata.distributions(name=wanted, path=path or sys.path)), None)
        if dist is None:
            raise metadata.PackageNotFoundError(f"{wanted} (needed by {project}) is not installed in {path}")
        key = canonicalize_name(dist.metadata["Name"])
        if key in found:
            continue
        found[key] = (dist.metadata["Name"], dist.version)
        for raw in dist.requires or []:
            req = Requirement(raw)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    found.pop(canonicalize_name(project))
    return dict(sorted(found.values(), key=lambda nv: canonicalize_name(nv[0])))


def read_lock(path: Path = LOCK) -> dict[str, str]:
    """``name -> version`` of a ``name==version`` lock file (comments and blank lines skipped)."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"{path.name}: not pinned: {line!r}"
            out[name.strip()] = version.strip()
    return out


def write_lock(path: Path, pins: Mapping[str, str]) -> Path:
    """A lock file pinning ``pins``; returns ``path``."""
    path.write_text("".join(f"{name}=={version}\n" for name, version in pins.items()))
    return path


def test_lock_matches_the_installed_runtime() -> None:
    """requirements.lock pins exactly the runtime closure installed in the venv, at the same versions."""
    installed = {canonicalize_name(k): v for k, v in runtime_closure().items()}
    locked = {canonicalize_name(k): v for k, v in read_lock().items()}
    assert locked == installed, (
        f"requirements.lock is stale: only locked {sorted(set(locked.items()) - set(installed.items()))},"
        f" only installed {sorted(set(installed.items()) - set(locked.items()))};"
        " install the lock (make .venv/.run-installed) or move it to the newest releases (make relock)"
    )


# ----------------------------------------------------------------------------------------- the verdict


def audit_verdict(
    rc: int, report: Mapping[str, Any], stderr: str, lock: Mapping[str, str]
) -> list[Unaudited]:
    """Fail unless every locked dependency is audited clean or only a newer release keeps it from that.

    Returns the dependencies a newer release keeps from being audited, in the report's order.
    """
    deps = report["dependencies"]
    vulnerable = {d["name"]: [v["id"] for v in d["vulns"]] for d in deps if d.get("vulns")}
    assert not vulnerable, f"known vulnerabilities in the locked runtime dependencies: {vulnerable}"
    assert rc == 0, f"pip-audit exited {rc}: {stderr[-3000:]}"
    unaudited: list[Unaudited] = []
    unexplained: dict[str, str] = {}
    for dep in deps:
        if "skip_reason" in dep:
            found = Unaudited.parse(dep["skip_reason"])
            if found is None:
                unexplained[dep["name"]] = dep["skip_reason"]
            else:
                unaudited.append(found)
    assert not unexplained, (
        f"pip-audit could not audit, and not because a newer release exists: {unexplained}"
    )
    locked = {canonicalize_name(name): version for name, version in lock.items()}
    reported = sorted(canonicalize_name(d["name"]) for d in deps)
    assert reported == sorted(locked), f"pip-audit reported {reported}, the lock pins {sorted(locked)}"
    for dep in unaudited:
        assert (canonicalize_name(dep.name), Version(dep.locked)) in {
            (name, Version(version)) for name, version in locked.items()
        }, f"pip-audit skipped {dep}, which the lock does not pin"
    return unaudited


def warn_unaudited(unaudited: list[Unaudited]) -> None:
    """One loud line per dependency a newer release keeps from being audited.

    A warning, not a print: pytest shows its warnings summary by default, and under pytest-xdist the
    workers send their warnings to the controller, which prints them, while the output of a test that
    passes is dropped (captured, or lost in the worker).
    """
    for dep in unaudited:
        warnings.warn(UnauditedDependencyWarning(dep.line()), stacklevel=2)


def pip_audit_args(lock: Path, cache_dir: Path | None = None) -> list[str]:
    """The pip-audit arguments of the audit: the lock, pinned and complete, against PyPI's data."""
    return [
        "--requirement",
        str(lock),
        "--no-deps",  # the lock is the full closure, pinned
        "--disable-pip",
        "--vulnerability-service",
        "pypi",
        "--format",
        "json",
        "--progress-spinner",
        "off",
        "--timeout",
        "30",
        *(["--cache-dir", str(cache_dir)] if cache_dir else []),
    ]


def run_pip_audit(
    lock: Path = LOCK, *, recorded: Path | None = None, cache_dir: Path | None = None
) -> tuple[int, dict[str, Any], str]:
    """pip-audit on ``lock`` through this file's entry point; (exit code, JSON report, stderr).

    ``recorded``: a file of recorded answers (:meth:`RecordedPyPI.from_file`) the child takes for PyPI.
    """
    proc = subprocess.run(
        [
            sys.executable,
            __file__,
            "pip-audit",
            *(["--recorded-pypi", str(recorded)] if recorded else []),
            *pip_audit_args(lock, cache_dir),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        check=False,
    )
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(
            f"pip-audit did not produce a report (exit {proc.returncode}); is PyPI reachable?\n"
            f"{proc.stderr[-3000:]}"
        ) from None
    return proc.returncode, report, proc.stderr


@pytest.mark.filterwarnings(f"always::{__name__}.UnauditedDependencyWarning")
def test_pip_audit_finds_no_vulnerability() -> None:
    """pip-audit against PyPI: no known vulnerability; a pin below the newest release is loud, not red."""
    rc, report, stderr = run_pip_audit()
    warn_unaudited(audit_verdict(rc, report, stderr, read_lock()))


# ------------------------------------------------------------------------- recorded answers: end to end


def recorded_answer(name: str = "idna") -> dict[str, Any]:
    """A recorded per-project answer from tests/fixtures/pypi/."""
    answer: dict[str, Any] = json.loads((RECORDED / f"{name}.json").read_text())
    return answer


def test_a_vulnerability_listed_for_the_locked_version_turns_the_audit_red(tmp_path: Path) -> None:
    """The real entry point on a recorded answer listing PYSEC-2024-60 for the locked idna 3.6: red."""
    lock = write_lock(tmp_path / "requirements.lock", {"idna": "3.6"})
    routes = tmp_path / "routes.json"
    routes.write_text(json.dumps({"/pypi/idna/json": recorded_answer("idna-3.6")}))
    rc, report, stderr = run_pip_audit(lock, recorded=routes, cache_dir=tmp_path / "cache")
    assert rc == 1, stderr[-3000:]
    with pytest.raises(AssertionError, match=r"known vulnerabilities .*'idna': \['PYSEC-2024-60'\]"):
        audit_verdict(rc, report, stderr, read_lock(lock))


def test_a_pin_below_the_newest_release_is_loud_and_the_audit_passes(tmp_path: Path) -> None:
    """The real entry point on this network's answer for idna (newest 3.21) with idna 3.20 locked."""
    lock = write_lock(tmp_path / "requirements.lock", {"idna": "3.20"})
    routes = tmp_path / "routes.json"
    routes.write_text(json.dumps({"/pypi/idna/json": recorded_answer("idna")}))
    rc, report, stderr = run_pip_audit(lock, recorded=routes, cache_dir=tmp_path / "cache")
    unaudited = audit_verdict(rc, report, stderr, read_lock(lock))
    assert unaudited == [Unaudited("idna", "3.20", "3.21")]
    with pytest.warns(UnauditedDependencyWarning) as caught:
        warn_unaudited(unaudited)
    assert [str(w.message) for w in caught] == [unaudited[0].line()]
    assert "idna 3.20, below its newest release 3.21" in unaudited[0].line()


def test_a_project_pypi_does_not_answer_for_fails_loudly(tmp_path: Path) -> None:
    """No per-project answer either (404 for both APIs): no report at all, and the test says why."""
    lock = write_lock(tmp_path / "requirements.lock", {"idna": "3.20"})
    routes = tmp_path / "routes.json"
    routes.write_text("{}")
    with pytest.raises(AssertionError, match=r"(?s)did not produce a report.*answered HTTP 404 for idna"):
        run_pip_audit(lock, recorded=routes, cache_dir=tmp_path / "cache")


# ---------------------------------------------------------------------- recorded answers: the families

FAMILY = settings(max_examples=25, deadline=None)
RECORDED_RELEASES = sorted(Version(v) for v in recorded_answer()["releases"])
PROJECT_NAMES = st.from_regex(r"[a-z][a-z0-9]{0,8}(-[a-z0-9]{1,6})?", fullmatch=True)


def answer_as_of(newest: Version, vulnerabilities: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The recorded idna answer cut at ``newest``, as if it were the newest release."""
    answer = recorded_answer()
    answer["releases"] = {v: files for v, files in answer["releases"].items() if Version(v) <= newest}
    (answer["info"]["version"],) = (v for v in answer["releases"] if Version(v) == newest)
    answer["urls"] = answer["releases"][answer["info"]["version"]]
    answer["vulnerabilities"] = vulnerabilities or []
    return answer


def audit_in_process(pins: Mapping[str, str], recorded: RecordedPyPI) -> tuple[int, dict[str, Any]]:
    """The pip-audit CLI, adapted as the entry point does, in this process with ``recorded`` as PyPI."""
    from pip_audit._cli import audit
    from pip_audit._service import pypi
    from requests.adapters import HTTPAdapter

    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as patch:
        lock = write_lock(Path(tmp, "requirements.lock"), pins)
        out = Path(tmp, "report.json")
        patch.setattr(pypi.PyPIService, "query", pypi.PyPIService.query)  # restored on exit
        install_project_fallback()
        patch.setattr(HTTPAdapter, "send", recorded.transport())
        patch.setattr(sys, "argv", ["pip-audit", *pip_audit_args(lock, Path(tmp, "cache")), "-o", str(out)])
        try:
            audit()
            rc = 0
        except SystemExit as stop:
            rc = int(stop.code or 0)
        report: dict[str, Any] = json.loads(out.read_text())
        return rc, report


VULNERABILITY = st.fixed_dictionaries(
    {
        "id": st.builds("PYSEC-{}-{}".format, st.integers(2015, 2030), st.integers(1, 9999)),
        "aliases": st.lists(st.builds("CVE-{}-{}".format, st.integers(2015, 2030), st.integers(1000, 99999))),
        "fixed_in": st.lists(st.sampled_from(["3.22", "4.0", "3.21.1"]), unique=True),
        "details": st.one_of(st.none(), st.text(max_size=200)),
        "summary": st.one_of(st.none(), st.text(max_size=80)),
        "link": st.just("https://osv.dev/vulnerability/PYSEC-0000-0"),
        "source": st.just("osv"),
        "withdrawn": st.one_of(st.none(), st.just("2026-01-02T03:04:05Z")),
    }
)


@FAMILY
@given(
    newest=st.sampled_from(RECORDED_RELEASES),
    vulnerabilities=st.lists(VULNERABILITY, max_size=4, unique_by=lambda v: v["id"]),
)
def test_vulnerabilities_listed_for_the_locked_newest_release_turn_the_audit_red(
    newest: Version, vulnerabilities: list[dict[str, Any]]
) -> None:
    """Every vulnerability PyPI lists (and has not withdrawn) for the locked version fails the audit."""
    pins = {"idna": str(newest)}
    answer = answer_as_of(newest, vulnerabilities)
    rc, report = audit_in_process(pins, RecordedPyPI.from_answers({"idna": answer}))
    listed = [v["id"] for v in vulnerabilities if v["withdrawn"] is None]
    if listed:
        with pytest.raises(AssertionError, match="known vulnerabilities") as failed:
            audit_verdict(rc, report, "", pins)
        assert all(vid in str(failed.value) for vid in listed)
    else:
        assert audit_verdict(rc, report, "", pins) == []


@FAMILY
@given(
    data=st.data(),
    projects=st.lists(PROJECT_NAMES, min_size=1, max_size=4, unique_by=canonicalize_name),
)
def test_pins_below_the_newest_release_are_loud_and_the_audit_passes(
    data: st.DataObject, projects: list[str]
) -> None:
    """Any mix of pins at and below their newest release: exactly the ones below are reported, each once."""
    pins: dict[str, str] = {}
    answers: dict[str, Any] = {}
    expected: list[Unaudited] = []
    for name in projects:
        newest = data.draw(st.sampled_from(RECORDED_RELEASES[1:]), label=f"{name} newest")
        locked = data.draw(st.sampled_from([v for v in RECORDED_RELEASES if v <= newest]), label=name)
        answers[name] = answer_as_of(newest)
        answers[name]["info"]["name"] = name
        pins[name] = str(locked)
        if locked < newest:
            expected.append(Unaudited(canonicalize_name(name), str(locked), answers[name]["info"]["version"]))
    rc, report = audit_in_process(pins, RecordedPyPI.from_answers(answers))
    unaudited = audit_verdict(rc, report, "", pins)
    assert sorted(unaudited, key=lambda u: u.name) == sorted(expected, key=lambda u: u.name)
    with pytest.raises(AssertionError, match="the lock pins"):  # a locked dependency left out of the report
        audit_verdict(rc, {**report, "dependencies": report["dependencies"][1:]}, "", pins)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_unaudited(unaudited)
    assert [str(w.message) for w in caught] == [u.line() for u in unaudited]
    assert all(w.category is UnauditedDependencyWarning for w in caught)


LISTED = {str(v) for v in RECORDED_RELEASES}
UNLISTED_VERSIONS = st.one_of(
    st.builds("{}.{}.{}".format, st.integers(0, 5), st.integers(0, 30), st.integers(1, 9)),
    st.builds("{}.{}".format, st.integers(4, 99), st.integers(0, 9)),
    st.builds("3.{}.post{}".format, st.integers(0, 21), st.integers(1, 9)),
    st.builds("3.{}rc{}".format, st.integers(0, 21), st.integers(1, 9)),
).filter(lambda v: all(Version(v) != Version(listed) for listed in LISTED))


@FAMILY
@given(locked=UNLISTED_VERSIONS)
def test_a_locked_version_pypi_does_not_list_fails_the_audit(locked: str) -> None:
    """A version that is not a release of the project (or is above its newest) is never just "loud"."""
    pins = {"idna": locked}
    rc, report = audit_in_process(pins, RecordedPyPI.from_answers({"idna": recorded_answer()}))
    with pytest.raises(AssertionError, match=r"could not audit, and not because a newer release exists"):
        audit_verdict(rc, report, "", pins)


def _broken(answer: dict[str, Any], where: str, junk: Any) -> Any:
    """``answer`` with one part replaced by ``junk`` (``where``: a key path, or "" for the whole)."""
    if not where:
        return junk
    *parents, last = where.split(".")
    node = answer
    for key in parents:
        node = node[key]
    node[last] = junk
    return answer


JSON_JUNK = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
NOT_A_VERSION = st.text(max_size=30).filter(lambda s: not _is_version(s)) | JSON_JUNK.filter(
    lambda j: not isinstance(j, str)
)


def _is_version(text: str) -> bool:
    try:
        Version(text)
    except InvalidVersion:
        return False
    return True


UNUSABLE_ANSWERS = st.one_of(
    st.tuples(st.sampled_from([s.value for s in HTTPStatus if s.value >= 201]), st.just(b'{"message": "x"}')),
    st.tuples(st.just(200), st.binary(max_size=64)),
    st.tuples(
        st.just(200),
        st.one_of(
            st.builds(_broken, st.builds(recorded_answer), st.just(""), JSON_JUNK),
            st.builds(_broken, st.builds(recorded_answer), st.sampled_from(["info", "releases"]), JSON_JUNK),
            st.builds(_broken, st.builds(recorded_answer), st.just("info.version"), NOT_A_VERSION),
        ).map(lambda answer: json.dumps(answer).encode()),
    ),
)


@FAMILY
@given(answer=UNUSABLE_ANSWERS)
def test_an_unusable_per_project_answer_fails_loudly(answer: tuple[int, bytes]) -> None:
    """Any other status, or a body that is not a per-project answer: the audit fails, naming the project.

    pip-audit stops on the answer, or (a well-formed answer whose ``releases`` lost the locked version)
    reports idna skipped for a reason the verdict does not accept.
    """
    from pip_audit._service.interface import ServiceError

    recorded = RecordedPyPI({"/pypi/idna/json": answer})
    pins = {"idna": "3.20"}
    with pytest.raises((ServiceError, AssertionError)) as failed:
        audit_verdict(*audit_in_process(pins, recorded), "", pins)
    assert re.search(
        r"PyPI's per-project (API answered HTTP \d+|answer) for idna"
        r"|not because a newer release exists: \{'idna': 'idna 3.20 cannot be audited: PyPI lists no such",
        str(failed.value),
    ), failed.value
    assert "/pypi/idna/json" in recorded.asked


def test_without_the_adaptation_nothing_would_be_audited_here() -> None:
    """Why the adaptation exists: pip-audit as shipped skips a dependency whose per-release API is 404."""
    from pip_audit._service import pypi
    from pip_audit._service.interface import ResolvedDependency, SkippedDependency
    from requests.adapters import HTTPAdapter

    recorded = RecordedPyPI.from_answers({"idna": recorded_answer()})
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as patch:
        patch.setattr(HTTPAdapter, "send", recorded.transport())
        service = pypi.PyPIService(cache_dir=Path(tmp))
        spec, vulns = service.query(ResolvedDependency(name="idna", version=Version("3.21")))
    assert isinstance(spec, SkippedDependency)
    assert "not found on PyPI" in spec.skip_reason
    assert vulns == []
    assert recorded.asked == ["/pypi/idna/3.21/json"]


# ------------------------------------------------------------------------------------- entry points


class RecordedPyPI:
    """PyPI as this network answers it, from recorded answers: the network edge of a test process.

    ``routes`` maps a pypi.org path to (HTTP status, body). Every other pypi.org path answers 404, as the
    per-release API does here; any other host is unreachable.
    """

    def __init__(self, routes: Mapping[str, tuple[int, bytes]]) -> None:
        self.routes = dict(routes)
        self.asked: list[str] = []

    @classmethod
    def from_answers(cls, answers: Mapping[str, Any]) -> RecordedPyPI:
        """Each per-project answer at ``/pypi/<name>/json``, status 200."""
        return cls(
            {
                f"/pypi/{canonicalize_name(name)}/json": (200, json.dumps(answer).encode())
                for name, answer in answers.items()
            }
        )

    @classmethod
    def from_file(cls, path: Path) -> RecordedPyPI:
        """A JSON file mapping pypi.org paths to the answers served there, status 200."""
        routes = json.loads(path.read_text())
        return cls({route: (200, json.dumps(answer).encode()) for route, answer in routes.items()})

    def transport(self) -> Callable[..., Any]:
        """A replacement for ``requests.adapters.HTTPAdapter.send`` answering from the recordings.

        Everything above the transport (the caching adapter, redirects, ``raise_for_status``, JSON
        decoding) stays the real code.
        """
        import requests
        import urllib3

        def send(adapter: Any, request: Any, *_args: Any, **_kwargs: Any) -> Any:
            url = urlsplit(request.url)
            if url.scheme != "https" or url.hostname != "pypi.org":
                raise requests.ConnectionError(f"only recorded pypi.org answers here, not {request.url}")
            self.asked.append(url.path)
            status, body = self.routes.get(url.path, (404, b'{"message": "Not Found"}'))
            if status in (HTTPStatus.NO_CONTENT, HTTPStatus.NOT_MODIFIED):
                body = b""  # a real server sends none, and urllib3 refuses one
            raw = urllib3.HTTPResponse(
                body=io.BytesIO(body),
                headers={"Content-Type": "application/json"},
                status=status,
                reason=HTTPStatus(status).phrase,
                preload_content=False,
                request_method=request.method,
                request_url=request.url,
            )
            return adapter.build_response(request, raw)

        return send


def _versions(keys: Any) -> set[Version]:
    """The valid release versions among a per-project answer's ``releases`` keys."""
    found = set()
    for key in keys:
        try:
            found.add(Version(key))
        except InvalidVersion:
            continue  # PyPI keeps pre-PEP 440 releases under their original names
    return found


def install_project_fallback() -> None:
    """Make pip-audit's PyPI service fall back to the per-project JSON API, for the newest release only."""
    from pip_audit._service import pypi
    from pip_audit._service.interface import ResolvedDependency, ServiceError, SkippedDependency

    original = pypi.PyPIService.query
    if getattr(original, "project_fallback", False):
        return

    def project_answer(self: Any, name: str) -> tuple[Any, Version, set[Version]]:
        url = f"https://pypi.org/pypi/{name}/json"
        response = self.session.get(url=url, timeout=self.timeout)
        if response.status_code != 200:  # an unreachable or broken PyPI fails the audit, loudly
            raise ServiceError(
                f"PyPI's per-project API answered HTTP {response.status_code} for {name} ({url})"
            )
        try:
            answer = response.json()
            newest = Version(answer["info"]["version"])
            releases = answer["releases"]
            if not isinstance(releases, dict):
                raise TypeError(f"releases is a {type(releases).__name__}, not an object")
        except (ValueError, LookupError, TypeError) as error:  # InvalidVersion, JSON errors are ValueErrors
            raise ServiceError(
                f"PyPI's per-project answer for {name} ({url}) is not usable: {type(error).__name__}:"
                f" {str(error)[:200]}"
            ) from None
        return response, newest, _versions(releases)

    def query(self: Any, spec: Any) -> tuple[Any, list[Any]]:
        result, vulns = original(self, spec)
        if (
            not isinstance(spec, ResolvedDependency)
            or not isinstance(result, SkippedDependency)
            or "not found on PyPI" not in result.skip_reason
        ):
            return result, list(vulns)
        name, version = spec.canonical_name, spec.version
        response, newest, releases = project_answer(self, name)
        if version == newest:
            # The per-project answer describes exactly the locked release: parse it as pip-audit would.
            session_get = self.session.get
            self.session.get = lambda *_args, **_kwargs: response
            try:
                found, found_vulns = original(self, spec)
                return found, list(found_vulns)
            finally:
                self.session.get = session_get
        if version in releases and version < newest:
            reason = Unaudited(name, str(version), str(newest)).skip_reason()
        else:
            reason = (
                f"{name} {version} cannot be audited: PyPI lists no such release (its newest is {newest})"
            )
        return SkippedDependency(name=spec.name, skip_reason=reason), []

    query.project_fallback = True  # type: ignore[attr-defined]
    pypi.PyPIService.query = query


def _pip_audit(args: list[str]) -> None:
    from pip_audit._cli import audit
    from requests.adapters import HTTPAdapter

    if args[:1] == ["--recorded-pypi"]:
        HTTPAdapter.send = RecordedPyPI.from_file(Path(args[1])).transport()  # type: ignore[method-assign]
        args = args[2:]
    install_project_fallback()
    sys.argv = ["pip-audit", *args]
    audit()


def _print_lock(path: list[str]) -> None:
    print(LOCK_HEADER, end="")
    for name, version in runtime_closure(path=path or None).items():
        print(f"{name}=={version}")


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "pip-audit":
        _pip_audit(sys.argv[2:])
    elif command == "lock":
        _print_lock(sys.argv[2:])
    else:
        sys.exit(
            "usage: python tests/test_audit.py lock [SITE_PACKAGES...]"
            " | pip-audit [--recorded-pypi ROUTES] [pip-audit arguments]"
        )
