"""The import contracts of pyproject.toml ([tool.importlinter]) catch every kind of import they forbid.

`make lint` runs ``lint-imports`` on the tree as it is. These tests run the same contracts on a copy of
both packages into which a family of forbidden imports has been written (every module of the simulator
importing the exporter, every exporter module but the one seam importing the simulator, in every form an
import takes), and check that each one is reported at its line, and nothing else is.

What the contracts cannot see: an import spelled as a string (``importlib.import_module("exporter...")``),
since import-linter reads import statements. Nothing in either package imports by name.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
SEAM = "exporter.demo"  # the one exporter module allowed to import the simulator
SIMULATOR_CONTRACT = "The simulator imports nothing of the exporter"
SEAM_CONTRACT = "The exporter imports the simulator only in exporter.demo"
# "-   a.b -> c.d (l.12)" or a chain's continuation "    c.d -> e.f (l.3)" in lint-imports' report.
_REPORTED = re.compile(r"^-?\s+([\w.]+) -> ([\w.]+) \(l\.(\d+)(?:, l\.\d+)*\)$")


def _plain(m: str) -> tuple[str, int]:
    return f"import {m}", 0


def _aliased(m: str) -> tuple[str, int]:
    return f"import {m} as _aliased", 0


def _from_parent(m: str) -> tuple[str, int]:
    parent, _, leaf = m.rpartition(".")
    return (f"from {parent} import {leaf}", 0) if parent else (f"from {m} import *  # noqa: F403", 0)


def _star(m: str) -> tuple[str, int]:
    return f"from {m} import *  # noqa: F403", 0


def _in_a_function(m: str) -> tuple[str, int]:
    return f"def _late() -> None:\n    import {m}  # noqa: F401", 1


def _type_checking_only(m: str) -> tuple[str, int]:
    return f"import typing\n\nif typing.TYPE_CHECKING:\n    import {m}", 3


FORMS: tuple[Callable[[str], tuple[str, int]], ...] = (
    _plain,
    _aliased,
    _from_parent,
    _star,
    _in_a_function,
    _type_checking_only,
)


@dataclass(frozen=True)
class Injected:
    """One forbidden import written into the copy: who imports what, at which line."""

    importer: str
    imported: str
    line: int


def _modules(root: Path, package: str) -> dict[str, Path]:
    """Dotted name -> file, for every module of ``package`` under ``root``."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _inject(path: Path, module: str, target: str, form: Callable[[str], tuple[str, int]]) -> Injected:
    text = path.read_text(encoding="utf-8")
    snippet, offset = form(target)
    path.write_text(text + "\n" + snippet + "\n", encoding="utf-8")
    return Injected(module, target, len(text.splitlines()) + 2 + offset)


def _lint(root: Path, *, pythonpath: Path | None) -> tuple[int, str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    proc = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],  # the pyproject.toml of cwd
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    return proc.returncode, proc.stdout + proc.stderr


def _sections(report: str) -> dict[str, set[Injected]]:
    """Contract name -> every import from one package into the other that its section reports (the
    links of a chain inside one package are how the report reaches it, not the forbidden import)."""
    out: dict[str, set[Injected]] = {}
    _, _, broken = report.partition("Broken contracts")
    current: set[Injected] | None = None
    lines = broken.splitlines()
    for n, line in enumerate(lines):
        if n + 1 < len(lines) and set(lines[n + 1]) == {"-"} and len(lines[n + 1]) == len(line):
            current = out.setdefault(line, set())
            continue
        found = _REPORTED.match(line)
        if found and current is not None and found[1].split(".")[0] != found[2].split(".")[0]:
            current.add(Injected(found[1], found[2], int(found[3])))
    return out


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of both packages and pyproject.toml (the contracts as committed)."""
    root = tmp_path
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "exporter", root / "exporter", ignore=ignore)
    shutil.copytree(REPO / "simulator" / "ehpc_simulator", root / "ehpc_simulator", ignore=ignore)
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


def test_the_tree_as_committed_keeps_every_contract() -> None:
    """What `make lint` runs: the repository's own packages, every contract kept."""
    rc, report = _lint(REPO, pythonpath=None)
    assert rc == 0, report
    assert re.search(r"Contracts: (\d+) kept, 0 broken\.", report), report


def test_every_forbidden_import_is_reported_at_its_line(tree: Path) -> None:
    """Each simulator module imports an exporter module, and each exporter module but the seam a
    simulator module, in each form in turn (plain, aliased, from-import, star, in a function, only under
    TYPE_CHECKING): every one is reported at its line, under its contract, and nothing else is. The
    seam importing more of the simulator stays allowed."""
    simulator = _modules(tree, "ehpc_simulator")
    exporter = _modules(tree, "exporter")
    assert len(simulator) >= 20, simulator  # the copy holds the packages
    assert len(exporter) >= 40, exporter
    exporter_targets = sorted(exporter)
    simulator_targets = sorted(simulator)

    into_simulator = {
        _inject(path, module, exporter_targets[(7 * n) % len(exporter_targets)], FORMS[n % len(FORMS)])
        for n, (module, path) in enumerate(sorted(simulator.items()))
    }
    into_exporter = {
        _inject(path, module, simulator_targets[(5 * n) % len(simulator_targets)], FORMS[n % len(FORMS)])
        for n, (module, path) in enumerate(sorted(exporter.items()))
        if module != SEAM
    }
    _inject(exporter[SEAM], SEAM, "ehpc_simulator.server", _plain)  # allowed: the seam

    rc, report = _lint(tree, pythonpath=tree)
    assert rc != 0, report
    sections = _sections(report)
    assert set(sections) == {SIMULATOR_CONTRACT, SEAM_CONTRACT}, report
    assert sections[SIMULATOR_CONTRACT] == into_simulator, report
    assert sections[SEAM_CONTRACT] == into_exporter, report
    assert len(into_simulator) >= len(FORMS)  # every form, in both directions
    assert len(into_simulator) + len(into_exporter) >= 60
