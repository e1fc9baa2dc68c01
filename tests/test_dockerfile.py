"""The Dockerfile as text: what the built image cannot show.

tests/test_image.py builds this Dockerfile with podman and runs the result, which proves its syntax, its
`.dockerignore` set, the stage hand-off and the runtime config. Two things stay here because the build
cannot see them: hadolint's rules, and the pin of the base image (the image test tags a stand-in with
whatever the FROM line names, so any tag would build there).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_image import dockerfile_bases

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"


@pytest.mark.process
def test_hadolint_is_clean() -> None:
    """hadolint (every rule, info level included) finds nothing."""
    proc = subprocess.run(
        [str(HADOLINT), "--no-color", "-f", "json", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout) == []


def test_base_images_are_pinned_and_identical() -> None:
    """Both stages use one exact python:X.Y.Z-slim-<debian> tag (optionally with a digest).

    One tag for both: the venv's interpreter symlink points into the base's /usr/local, so the runtime
    stage must carry the very Python the venv was built with.
    """
    bases = dockerfile_bases(DOCKERFILE.read_text())
    assert len(bases) == 2, bases
    assert len(set(bases)) == 1, bases
    pattern = r"python:\d+\.\d+\.\d+-slim-(bookworm|trixie)(@sha256:[0-9a-f]{64})?"
    assert re.fullmatch(pattern, bases[0]), f"base image {bases[0]!r} is not pinned to an exact slim tag"


def test_dockerfile_bases_reads_from_lines() -> None:
    """The FROM reader the image test relies on skips --platform and stage names, and only reads FROM."""
    text = "# FROM comment:1\nFROM --platform=linux/amd64 a:1 AS b\nRUN echo FROM x\nfrom c:2\n"
    assert dockerfile_bases(text) == ["a:1", "c:2"]
