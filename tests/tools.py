"""Where the tests find the real command-line tools that `make tools` installs."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def tool_path(name: str) -> str:
    """``$NAME`` if set, else ``.tools/bin/<name>``, else the PATH; a missing tool fails the test."""
    path = os.environ.get(name.upper()) or str(REPO / ".tools" / "bin" / name)
    if not Path(path).exists():
        path = shutil.which(name) or path
    assert Path(path).exists(), f"{name} not found at {path}: run scripts/tools/*.sh (make tools)"
    return path


@contextlib.contextmanager
def docker_daemon() -> Iterator[None]:
    """A Docker daemon for the block: scripts/image/dockerd.sh starts one if none answers and stops it
    (by its pid) afterwards, also when the block fails; a daemon that was already running stays."""
    dockerd = str(REPO / "scripts" / "image" / "dockerd.sh")
    started = subprocess.run(["bash", dockerd, "start"], capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        yield
    finally:
        if "started" in started.stdout:
            subprocess.run(["bash", dockerd, "stop"], timeout=60)
