"""The chart's `deployment`-mode pod, run for real: the container spec from `helm template` (command,
env, ConfigMap env, the Ray token Secret as a file, emptyDirs, security context, CPU/memory limits)
translated one-to-one into `docker run` flags on the built image, in its own network namespace as a
pod would be. It must become ready, classify the cat, export app metrics on the port named `metrics`,
and stop gracefully on TERM (the command's trap runs `ray stop`) well within the grace period.

Needs Docker and the image (tests/test_image_container.py builds it; so does scripts/image/build.sh).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from conftest import CAT_LABELS

from test_k8s_chart import one, render

DOCKER = os.environ.get("DOCKER", "/usr/bin/docker")
REPO = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 240

pytestmark = pytest.mark.slow


def docker(*args: str, timeout: float = 120, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([DOCKER, *args], capture_output=True, timeout=timeout, check=check, **kw)


def in_pod(name: str, code: str, stdin: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return docker("exec", "-i", name, "python", "-c", code, input=stdin, timeout=timeout, check=False)


def to_bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(float(quantity[: -len(suffix)]) * factor)
    return int(quantity)


def docker_run_args(docs: list[dict], token_file: Path) -> tuple[list[str], dict]:
    """`docker run` flags equivalent to the rendered Deployment's pod (what the kubelet would do)."""
    deployment = one(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    ctx, pod_ctx = container["securityContext"], pod["securityContext"]
    args = ["--user", f"{ctx['runAsUser']}:{ctx['runAsGroup']}", "--network", "none"]
    if ctx["readOnlyRootFilesystem"]:
        args.append("--read-only")
    if "ALL" in ctx["capabilities"]["drop"]:
        args += ["--cap-drop", "ALL"]
    if ctx["allowPrivilegeEscalation"] is False:
        args += ["--security-opt", "no-new-privileges"]
    limits = container["resources"]["limits"]
    args += ["--cpus", str(limits["cpu"]), "--memory", str(to_bytes(limits["memory"]))]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "emptyDir" in volume:
            size = to_bytes(volume["emptyDir"]["sizeLimit"])
            if mount["mountPath"] == "/dev/shm":
                args += ["--shm-size", str(size)]
            else:
                args += ["--tmpfs", f"{mount['mountPath']}:rw,exec,mode=1777,size={size}"]
        elif "secret" in volume:
            [item] = volume["secret"]["items"]
            args += ["-v", f"{token_file}:{mount['mountPath']}/{item['path']}:ro"]
        else:
            raise AssertionError(f"unexpected volume {volume}")
    settings = one(docs, "ConfigMap")["data"]
    for name, value in settings.items():
        args += ["-e", f"{name}={value}"]
    for env in container["env"]:
        assert "value" in env, f"env {env['name']} needs a source the test does not emulate"
        args += ["-e", f"{env['name']}={env['value']}"]
    args += ["--entrypoint", container["command"][0]]
    return args + ["IMAGE"] + container["command"][1:], {"pod": pod, "container": container,
                                                          "fs_group": pod_ctx.get("fsGroup")}


def test_deployment_pod_serves_exports_metrics_and_stops_gracefully(cat_png, tmp_path):
    assert Path(DOCKER).exists(), f"{DOCKER} missing: run scripts/tools/docker.sh"
    started = subprocess.run(["bash", str(REPO / "scripts/image/dockerd.sh"), "start"], capture_output=True,
                             text=True, timeout=120)
    assert started.returncode == 0, started.stdout + started.stderr
    docs = render("deployment")
    container = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    image = container["image"]
    assert docker("image", "inspect", image, check=False).returncode == 0, (
        f"image {image} not built: run scripts/image/build.sh (or tests/test_image_container.py)")
    # The Secret volume as the kubelet writes it: group fsGroup, mode 0440.
    token_file = tmp_path / "auth_token"
    token_file.write_text("t" * 48)
    args, pod = docker_run_args(docs, token_file)
    os.chown(token_file, 0, pod["fs_group"])
    token_file.chmod(0o440)
    name = f"k8s-deployment-pod-{os.getpid()}"
    args[args.index("IMAGE")] = image
    docker("run", "-d", "--name", name, *args)
    try:
        serve_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "serve")
        metrics_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "metrics")
        probe = container["readinessProbe"]["httpGet"]["path"]
        begin = time.monotonic()
        while True:
            ready = in_pod(name, f"import urllib.request as u; u.urlopen('http://127.0.0.1:{serve_port}{probe}', "
                                 "timeout=4)")
            if ready.returncode == 0:
                break
            state = json.loads(docker("inspect", name).stdout)[0]["State"]
            logs = docker("logs", name, check=False)
            assert state["Running"], "pod exited:\n" + (logs.stdout + logs.stderr).decode()[-4000:]
            assert time.monotonic() - begin < READY_TIMEOUT_S, "never ready:\n" + logs.stderr.decode()[-4000:]
            time.sleep(2)
        print(f"\ndeployment-mode pod ready in {time.monotonic() - begin:.1f} s")
        predict = in_pod(name, "import sys, json, urllib.request as u; r = u.Request("
                               f"'http://127.0.0.1:{serve_port}/predict', data=sys.stdin.buffer.read(), "
                               "headers={'Content-Type': 'image/png'}); "
                               "print(u.urlopen(r, timeout=30).read().decode())", stdin=cat_png)
        assert predict.returncode == 0, predict.stderr.decode()
        assert json.loads(predict.stdout)["predictions"][0]["label"] in CAT_LABELS
        liveness = container["livenessProbe"]["httpGet"]["path"]
        assert in_pod(name, f"import urllib.request as u; u.urlopen('http://127.0.0.1:{serve_port}{liveness}')"
                      ).returncode == 0
        # App metrics appear on the named metrics port (Ray exports them every few seconds).
        deadline = time.monotonic() + 60
        text = ""
        while time.monotonic() < deadline and "ray_classifier_" not in text:
            time.sleep(3)
            scraped = in_pod(name, f"import urllib.request as u; print(u.urlopen('http://127.0.0.1:"
                                   f"{metrics_port}/metrics', timeout=10).read().decode())")
            text = scraped.stdout.decode()
        assert "ray_classifier_" in text, text[-2000:]
        # TERM (what the kubelet sends after preStop): the trap stops Ray and exits 0, within the grace.
        grace = one(docs, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        begin = time.monotonic()
        docker("stop", "-t", str(grace), name, timeout=grace + 30)
        stopped_in = time.monotonic() - begin
        state = json.loads(docker("inspect", name).stdout)[0]["State"]
        print(f"stopped in {stopped_in:.1f} s, exit code {state['ExitCode']}")
        assert state["ExitCode"] == 0, docker("logs", name, check=False).stderr.decode()[-3000:]
        assert stopped_in < grace - 5
    finally:
        docker("rm", "-f", name, check=False)
