"""What build this is: version, revision, build date and Python version, for ``--version`` and build_info.

The revision and build date come from ``exporter/build_info.json`` when the build wrote one (the
Dockerfile does, from its ``REVISION`` and ``BUILD_DATE`` arguments), else from git when the package runs
from a checkout (``make demo``, the tests), else they are ``unknown``: an exporter must start whatever its
packaging forgot.
"""

from __future__ import annotations

import functools
import json
import platform
import subprocess
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path

__all__ = ["UNKNOWN", "BuildInfo"]

UNKNOWN = "unknown"
BUILD_FILE = "build_info.json"


@dataclass(frozen=True, slots=True)
class BuildInfo:
    """The labels of ``ehpc_exporter_build_info`` and what ``--version`` prints."""

    version: str
    python_version: str
    revision: str = UNKNOWN
    build_date: str = UNKNOWN

    @classmethod
    def current(cls) -> BuildInfo:
        """This installation's build."""
        try:
            version = metadata.version("ehpc-image-exporter")
        except metadata.PackageNotFoundError:
            version = UNKNOWN
        revision, build_date = _revision_and_date()
        return cls(version, platform.python_version(), revision, build_date)


@functools.cache
def _revision_and_date() -> tuple[str, str]:
    try:
        data = json.loads(resources.files("exporter").joinpath(BUILD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = None
    if isinstance(data, dict):
        revision, date = data.get("revision"), data.get("build_date")
        if isinstance(revision, str) and revision and isinstance(date, str) and date:
            return revision, date
    return _from_git(Path(__file__).resolve().parent)


def _from_git(directory: Path) -> tuple[str, str]:
    """HEAD's full hash and commit date (ISO 8601) when ``directory`` is in a git checkout."""
    try:
        out = subprocess.run(  # noqa: S603 - a fixed argv; the directory is this package's own
            ["git", "-C", str(directory), "log", "-1", "--format=%H %cI"],  # noqa: S607 - git from PATH
            capture_output=True,
            text=True,
            timeout=2,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return UNKNOWN, UNKNOWN
    return (out[0], out[1]) if len(out) == 2 else (UNKNOWN, UNKNOWN)
