"""Where the tests find the real command-line tools that `make tools` installs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def tool_path(name: str) -> str:
    """``$NAME`` if set, else ``.tools/bin/<name>``, else the PATH; a missing tool fails the test."""
    path = os.environ.get(name.upper()) or str(REPO / ".tools" / "bin" / name)
    if not Path(path).exists():
        path = shutil.which(name) or path
    assert Path(path).exists(), f"{name} not found at {path}: run scripts/tools/*.sh (make tools)"
    return path
