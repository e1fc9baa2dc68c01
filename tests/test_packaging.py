"""The two distributions of this repository, built as wheels: the exporter carries only the product.

``pip wheel --no-deps .`` (the exporter, what the image installs) must hold no simulator code, no
``/_sim/`` route, no test oracle and no ``cryptography`` requirement; ``pip wheel --no-deps ./simulator``
holds the simulator, its example files and its ``cryptography``. The two share no file.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
# An aiohttp route registered under /_sim (router.add_get("/_sim/...", ...), web.post("/_sim", ...)).
SIM_ROUTE = re.compile(rb"""(?:add_\w+|web\.\w+)\(\s*["']/_sim""")


class Wheel:
    """One built wheel: its file names, its metadata, the text of its files."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with zipfile.ZipFile(path) as z:
            self.files = {name: z.read(name) for name in z.namelist()}
        meta_name = next(n for n in self.files if n.endswith(".dist-info/METADATA"))
        self.metadata = Parser().parsestr(self.files[meta_name].decode())

    @property
    def requires(self) -> set[str]:
        """Names of the runtime requirements (no extras)."""
        found: set[str] = set()
        for raw in self.metadata.get_all("Requires-Dist") or []:
            req = Requirement(raw)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                found.add(canonicalize_name(req.name))
        return found

    @property
    def packages(self) -> set[str]:
        """Top-level names of the wheel's files, metadata aside."""
        return {n.split("/")[0] for n in self.files if ".dist-info/" not in n}

    def routes(self) -> list[str]:
        """Files that register a /_sim route."""
        return [n for n, data in self.files.items() if n.endswith(".py") and SIM_ROUTE.search(data)]


def _build(sources: list[Path], into: Path) -> Wheel:
    """Build from a clean copy of ``sources``: setuptools reuses a source tree's build/ directory, where
    files of a package as it once was would still be found."""
    tree, out = into / "src", into / "wheel"
    tree.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "build", "*.egg-info", "build_info.json")
    for source in sources:
        if source.is_dir():
            shutil.copytree(source, tree / source.name, ignore=ignore)
        else:
            shutil.copy(source, tree / source.name)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(out), str(tree)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = out.glob("*.whl")
    return Wheel(path)


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> tuple[Wheel, Wheel]:
    """(the exporter's wheel, the simulator's wheel), built from the working tree."""
    # What the Dockerfile copies for the exporter; the simulator's whole directory.
    exporter = _build(
        [REPO / "pyproject.toml", REPO / "README.md", REPO / "exporter"], tmp_path_factory.mktemp("exporter")
    )
    sim = REPO / "simulator"
    sources = [sim / "pyproject.toml", sim / "README.md", sim / "ehpc_simulator"]
    simulator = _build(sources, tmp_path_factory.mktemp("simulator"))
    return exporter, simulator


def test_the_exporter_wheel_holds_only_the_product(wheels: tuple[Wheel, Wheel]) -> None:
    """No simulator package or module, no /_sim/ route, no oracle, no cryptography requirement."""
    exporter, _ = wheels
    assert exporter.metadata["Name"] == "ehpc-image-exporter"
    assert exporter.packages == {"exporter"}
    names = sorted(n for n in exporter.files if ".dist-info/" not in n)
    assert "exporter/cli/__init__.py" in names  # the listing is the package's
    assert [n for n in names if "simulator" in n or n.endswith(".yaml")] == []
    assert [n for n in names if n.startswith("exporter/exposition/reference")] == []
    assert exporter.routes() == []
    assert "cryptography" not in exporter.requires
    assert canonicalize_name("ehpc-image-exporter-simulator") not in exporter.requires
    assert {"aiohttp", "prometheus-client", "alibabacloud-credentials"} <= exporter.requires


def test_the_simulator_wheel_is_the_simulator(wheels: tuple[Wheel, Wheel]) -> None:
    """Its own package with its routes and example files, cryptography among its requirements, and
    nothing of the exporter in it or required by it."""
    exporter, simulator = wheels
    assert simulator.metadata["Name"] == "ehpc-image-exporter-simulator"
    assert simulator.packages == {"ehpc_simulator"}
    assert {
        "ehpc_simulator/server.py",
        "ehpc_simulator/sts.py",
        "ehpc_simulator/py.typed",
        "ehpc_simulator/example-fleet.yaml",
        "ehpc_simulator/example-estate.yaml",
    } <= set(simulator.files)
    assert "ehpc_simulator/admin.py" in simulator.routes()  # the route pattern finds what it looks for
    assert "cryptography" in simulator.requires
    assert canonicalize_name("ehpc-image-exporter") not in simulator.requires
    shared = {n for n in exporter.files if ".dist-info/" not in n} & set(simulator.files)
    assert shared == set()
