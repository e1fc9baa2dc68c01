"""pip-audit of the locked runtime dependencies (requirements.lock), failing loudly when it cannot audit.

What this network allows (checked when the test was written): OSV (api.osv.dev) and the other
vulnerability services do not resolve, and PyPI's per-release JSON API (``/pypi/<name>/<version>/json``,
which ``pip-audit --vulnerability-service pypi`` queries) answers 404, so plain pip-audit *skips* every
dependency and still prints "No known vulnerabilities found". PyPI's per-project JSON API
(``/pypi/<name>/json``) does answer, with the vulnerabilities of the project's latest release. So the
test runs the real pip-audit CLI (``-s pypi``) with one adaptation, installed by this file's ``pip-audit``
entry point: when the per-release API is not found, the per-project answer is used, but only if its
latest release *is* the pinned version; otherwise the dependency stays skipped, with a reason saying so.

The test fails when: pip-audit cannot run or reach PyPI at all; any pinned dependency has a known
vulnerability; any dependency is skipped that is not in :data:`CANNOT_AUDIT_HERE` (for example because
a newer release came out: upgrade and re-lock); or a dependency listed there has become auditable
(so the list stays honest). Nothing is ever skipped silently.

requirements.lock is the runtime closure of ``pip install .`` (no test or bench tools), exactly what
the Docker image installs. ``python tests/test_audit.py lock > requirements.lock`` regenerates it from
the installed venv; the test checks it matches what is installed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
LOCK = REPO / "requirements.lock"
PROJECT = "ehpc-image-exporter"
LOCK_HEADER = (
    "# Runtime dependencies of ehpc-image-exporter, pinned (the closure of `pip install .`, no test tools).\n"
    "# Regenerate from the venv: .venv/bin/python tests/test_audit.py lock > requirements.lock\n"
    "# Audited by tests/test_audit.py (pip-audit against PyPI's vulnerability data).\n"
)

# Pinned below their latest release by another dependency, so PyPI's per-project answer (the only
# vulnerability data this network reaches) does not describe the pinned version.
CANNOT_AUDIT_HERE = {
    "aiofiles": "alibabacloud-credentials 1.0.12 requires aiofiles<25",
}


def runtime_closure(project: str = PROJECT) -> dict[str, str]:
    """Every installed distribution ``project`` needs at run time (markers evaluated, no extras)."""
    found: dict[str, tuple[str, str]] = {}
    todo = [project]
    while todo:
        dist = metadata.distribution(todo.pop())
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
            assert sep, f"requirements.lock: not pinned: {line!r}"
            out[name.strip()] = version.strip()
    return out


def test_lock_matches_the_installed_runtime() -> None:
    """requirements.lock pins exactly the runtime closure installed in the venv, at the same versions."""
    installed = {canonicalize_name(k): v for k, v in runtime_closure().items()}
    locked = {canonicalize_name(k): v for k, v in read_lock().items()}
    assert locked == installed, (
        f"requirements.lock is stale: only locked {sorted(set(locked.items()) - set(installed.items()))},"
        f" only installed {sorted(set(installed.items()) - set(locked.items()))};"
        " regenerate it with: .venv/bin/python tests/test_audit.py lock > requirements.lock"
    )


def run_pip_audit() -> tuple[int, dict[str, Any], str]:
    """pip-audit on requirements.lock through this file's entry point; (exit code, JSON report, stderr)."""
    proc = subprocess.run(
        [
            sys.executable,
            __file__,
            "pip-audit",
            "--requirement",
            str(LOCK),
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


def test_pip_audit_finds_no_vulnerability() -> None:
    """pip-audit against PyPI: no known vulnerability, and nothing skipped but the documented exceptions."""
    rc, report, stderr = run_pip_audit()
    deps = report["dependencies"]
    vulnerable = {d["name"]: [v["id"] for v in d.get("vulns", [])] for d in deps if d.get("vulns")}
    skipped = {canonicalize_name(d["name"]): d["skip_reason"] for d in deps if "skip_reason" in d}
    audited = [d["name"] for d in deps if "skip_reason" not in d]
    assert not vulnerable, f"known vulnerabilities in the locked runtime dependencies: {vulnerable}"
    assert rc == 0, stderr[-3000:]
    unexpected = {k: v for k, v in skipped.items() if k not in CANNOT_AUDIT_HERE}
    assert not unexpected, (
        f"pip-audit could not audit (upgrade and re-lock, or no service reached): {unexpected}"
    )
    stale = sorted(set(CANNOT_AUDIT_HERE) - set(skipped))
    assert not stale, f"now auditable, remove from CANNOT_AUDIT_HERE: {stale}"
    assert len(audited) == len(read_lock()) - len(CANNOT_AUDIT_HERE), (audited, skipped)


class _FakeResponse:
    """Just enough of a requests.Response for PyPIService."""

    def __init__(self, status: int, payload: dict[str, Any] | None = None) -> None:
        self.status_code = status
        self._payload = payload or {}

    def raise_for_status(self) -> None:
        import requests

        if self.status_code >= 400:
            raise requests.HTTPError(response=self)

    def json(self) -> dict[str, Any]:
        return self._payload


def test_fallback_reports_vulnerabilities_and_refuses_other_versions(monkeypatch: Any) -> None:
    """The adaptation finds a vulnerability listed for the pinned latest release, and skips an older pin."""
    from packaging.version import Version
    from pip_audit._service import pypi
    from pip_audit._service.interface import ResolvedDependency, SkippedDependency

    monkeypatch.setattr(pypi.PyPIService, "query", pypi.PyPIService.query)  # restored after the test
    install_project_fallback()
    project = {
        "info": {"version": "2.0"},
        "vulnerabilities": [
            {"id": "PYSEC-0000-1", "aliases": ["CVE-0000-1"], "fixed_in": ["2.1"], "summary": "bad"}
        ],
    }

    def fake_get(url: str, timeout: Any = None) -> _FakeResponse:
        return _FakeResponse(200, project) if url.endswith("/demo/json") else _FakeResponse(404)

    service = pypi.PyPIService()
    monkeypatch.setattr(service.session, "get", fake_get)
    spec, vulns = service.query(ResolvedDependency(name="demo", version=Version("2.0")))
    assert [v.id for v in vulns] == ["PYSEC-0000-1"]
    assert not isinstance(spec, SkippedDependency)
    spec, vulns = service.query(ResolvedDependency(name="demo", version=Version("1.0")))
    assert isinstance(spec, SkippedDependency)
    assert "latest release (2.0)" in spec.skip_reason
    assert vulns == []


# ------------------------------------------------------------------------------------- entry points


def install_project_fallback() -> None:
    """Make pip-audit's PyPI service fall back to the per-project JSON API for the latest release."""
    from packaging.version import Version
    from pip_audit._service import pypi
    from pip_audit._service.interface import SkippedDependency

    original = pypi.PyPIService.query
    if getattr(original, "project_fallback", False):
        return

    def query(self: Any, spec: Any) -> tuple[Any, list[Any]]:
        result, vulns = original(self, spec)
        if not isinstance(result, SkippedDependency) or "not found on PyPI" not in result.skip_reason:
            return result, list(vulns)
        version = getattr(spec, "version", None)
        url = f"https://pypi.org/pypi/{spec.canonical_name}/json"
        response = self.session.get(url=url, timeout=self.timeout)
        response.raise_for_status()  # an unreachable or broken PyPI fails the audit, loudly
        latest = Version(response.json()["info"]["version"])
        if latest != version:
            reason = (
                f"{spec.canonical_name} {version}: PyPI's per-release API is not reachable here and its"
                f" per-project answer describes only the latest release ({latest})"
            )
            return SkippedDependency(name=spec.name, skip_reason=reason), []
        # The per-project answer describes exactly the pinned release: parse it as pip-audit would.
        session_get = self.session.get
        self.session.get = lambda *_args, **_kwargs: response
        try:
            found, found_vulns = original(self, spec)
            return found, list(found_vulns)
        finally:
            self.session.get = session_get

    query.project_fallback = True  # type: ignore[attr-defined]
    pypi.PyPIService.query = query


def _pip_audit() -> None:
    from pip_audit._cli import audit

    install_project_fallback()
    sys.argv = ["pip-audit", *sys.argv[2:]]
    audit()


def _print_lock() -> None:
    print(LOCK_HEADER, end="")
    for name, version in runtime_closure().items():
        print(f"{name}=={version}")


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "pip-audit":
        _pip_audit()
    elif command == "lock":
        _print_lock()
    else:
        sys.exit("usage: python tests/test_audit.py lock | pip-audit [pip-audit arguments]")
