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
import tomllib
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
    # The layers contracts see the chains these imports close through the simulator; the exporter's own
    # test is below.
    assert set(sections) - {LAYERS_CONTRACT, OPENAPI_LAYERS_CONTRACT} == {
        SIMULATOR_CONTRACT,
        SEAM_CONTRACT,
    }, report
    assert sections[SIMULATOR_CONTRACT] == into_simulator, report
    assert sections[SEAM_CONTRACT] == into_exporter, report
    assert len(into_simulator) >= len(FORMS)  # every form, in both directions
    assert len(into_simulator) + len(into_exporter) >= 60


# ----- The exporter's layers ---------------------------------------------------------------------------
LAYERS_CONTRACT = "The exporter's layers: each imports only the layers below it"
OPENAPI_LAYERS_CONTRACT = "openapi: the client above what it reads answers, paces and signs with"
# Every link "a -> b (l.N)" of a chain, first or continuation, in any contract's section.
_LINK = re.compile(r"^-?\s+([\w.]+) -> ([\w.]+) \(l\.(\d+)(?:, l\.\d+)*\)$")


def _layers() -> list[list[str]]:
    """The layers of the contract as committed, top first: each a list of independent siblings."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    (contract,) = [c for c in config["tool"]["importlinter"]["contracts"] if c["name"] == LAYERS_CONTRACT]
    (container,) = contract["containers"]
    return [[f"{container}.{name.strip()}" for name in line.split("|")] for line in contract["layers"]]


def _place(module: str, layers: list[list[str]]) -> tuple[int, str] | None:
    """(layer index, sibling) of a module, or None for the container itself."""
    for index, siblings in enumerate(layers):
        for sibling in siblings:
            if module == sibling or module.startswith(sibling + "."):
                return index, sibling
    return None


def _runs_back_up(importer: str, imported: str, layers: list[list[str]]) -> bool:
    """An import from a lower layer into a higher one, or between two independent siblings."""
    low, high = _place(importer, layers), _place(imported, layers)
    if low is None or high is None:
        return False
    return high[0] < low[0] or (high[0] == low[0] and high[1] != low[1])


def _links(report: str, contract: str) -> set[Injected]:
    """Every import link named under one contract's section of the report."""
    _, _, broken = report.partition("Broken contracts")
    out: set[Injected] = set()
    inside = False
    lines = broken.splitlines()
    for n, line in enumerate(lines):
        if n + 1 < len(lines) and set(lines[n + 1]) == {"-"} and len(lines[n + 1]) == len(line):
            inside = line == contract
            continue
        found = _LINK.match(line)
        if found and inside:
            out.add(Injected(found[1], found[2], int(found[3])))
    return out


def test_every_module_of_the_exporter_has_its_layer() -> None:
    """The contract is exhaustive: each module is placed, so a new one must be given its layer."""
    layers = _layers()
    unplaced = [m for m in _modules(REPO, "exporter") if m != "exporter" and _place(m, layers) is None]
    assert unplaced == []
    assert len(layers) >= 8


def test_every_import_that_runs_back_up_is_reported_at_its_line(tree: Path) -> None:
    """Every exporter module below the top imports a module of a layer above it, and every module with
    independent siblings one of a sibling, in each form in turn: each is reported at its line under the
    layers contract, and no link the tree already has is."""
    layers = _layers()
    exporter = _modules(tree, "exporter")
    placed = {m: p for m in exporter if (p := _place(m, layers)) is not None}
    injected: set[Injected] = set()
    for n, (module, (index, sibling)) in enumerate(sorted(placed.items())):
        above = sorted(m for m, (i, _) in placed.items() if i < index)
        beside = sorted(m for m, (i, s) in placed.items() if i == index and s != sibling)
        for k, targets in enumerate((above, beside)):
            if targets:
                target = targets[(7 * n + k) % len(targets)]
                injected.add(_inject(exporter[module], module, target, FORMS[(n + k) % len(FORMS)]))
    assert all(_runs_back_up(i.importer, i.imported, layers) for i in injected)

    rc, report = _lint(tree, pythonpath=tree)
    assert rc != 0, report
    reported = _links(report, LAYERS_CONTRACT)
    assert {link for link in reported if _runs_back_up(link.importer, link.imported, layers)} == injected, (
        report
    )
    assert len(injected) >= 60
    assert {form(".")[0].split()[0] for form in FORMS} <= {"import", "from", "def"}  # every form was used


def test_a_module_outside_the_layers_breaks_the_contract(tree: Path) -> None:
    """A new module nobody placed is reported, not silently allowed to import anything."""
    (tree / "exporter" / "unplaced.py").write_text('"""Not in any layer."""\n', encoding="utf-8")
    rc, report = _lint(tree, pythonpath=tree)
    assert rc != 0, report
    assert "exporter.unplaced" in report, report
