"""Where the tests find the real command-line tools that `make tools` installs."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The reference CRDs (KubeRay, prometheus-operator, Gateway API) beside the checkout.
CRDS_DIR = Path(os.environ.get("SHARED_CRDS_DIR", REPO.parent / "shared" / "crds"))


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


IMAGE_BUILD_TIMEOUT_S = 1500


def build_image(image: str, **env: str) -> str:
    """Build ``image`` the CI way (scripts/image/build.sh, IMAGE_PROFILE=offline; ``env`` adds to it, e.g.
    EXTRA_CA_CERTS) inside a ``docker_daemon()`` block; Docker's cache makes an unchanged rebuild quick.
    Returns build.sh's last line."""
    full_env = {**os.environ, "IMAGE_PROFILE": "offline", "IMAGE": image, "BUILD_PROGRESS": "plain", **env}
    build = subprocess.run(
        ["bash", str(REPO / "scripts" / "image" / "build.sh")],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=IMAGE_BUILD_TIMEOUT_S,
    )
    assert build.returncode == 0, (build.stdout + build.stderr)[-6000:]
    return build.stdout.strip().splitlines()[-1]
