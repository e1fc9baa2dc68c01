"""Print requirements-dev.lock: every distribution a venv holds beyond the runtime lock (the test and bench
tools and what they need), pinned, so that no release of a test tool can change a commit's verdict.

Usage: python scripts/devlock.py FREEZE_FILE RUNTIME_LOCK (FREEZE_FILE: `pip freeze --exclude-editable`).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

HEADER = (
    "# The test and bench tools and their dependencies, pinned (everything beyond requirements.lock).\n"
    "# Installed with -c by the Makefile's test and bench targets; make relock moves it to the newest.\n"
)
SKIP = {"ehpc-image-exporter", "ehpc-image-exporter-simulator", "pip", "setuptools", "wheel"}


def _name(line: str) -> str:
    return re.split(r"[=<>!~ ;@]", line.strip(), maxsplit=1)[0].lower().replace("_", "-").replace(".", "-")


def main(freeze: str, runtime: str) -> None:
    """Print the pins of ``freeze`` not already pinned by ``runtime``."""
    lines = [line.strip() for line in Path(runtime).read_text().splitlines()]
    locked = {_name(line) for line in lines if line and not line.startswith("#")}
    pins = [line.strip() for line in Path(freeze).read_text().splitlines() if "==" in line]
    out = sorted((p for p in pins if _name(p) not in locked | SKIP), key=_name)
    sys.stdout.write(HEADER + "".join(f"{p}\n" for p in out))


if __name__ == "__main__":
    main(*sys.argv[1:3])
