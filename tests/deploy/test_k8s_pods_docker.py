"""The chart's pods, run for real in Docker: each container spec from `helm template` (command, env,
ConfigMap env, Secret files, emptyDirs, security context, CPU/memory limits) translated one-to-one into
`docker run` flags on the built image, each pod in its own network namespace.

* `deployment` mode: the pod becomes ready, classifies the cat, exports app metrics on the port named
  `metrics`, and stops gracefully on TERM (the command's trap runs `ray stop`) well within the grace period.
* `rayservice` mode: the head and worker pod templates, started the way KubeRay starts them
  (`ray start` with the group's rayStartParams, CPU/memory from the limits, the token in RAY_AUTH_TOKEN)
  on a private Docker network, form a Ray cluster under the same restrictions; the rendered serveConfigV2
  PUT to the head's dashboard (what the operator does) runs every replica on the worker (head
  `num-cpus: "0"`), the worker's proxy classifies the cat, both pods export metrics on port `metrics`, and the
  worker's preStop hook drains it.

Needs Docker; the image is built here (scripts/image/build.sh) unless one from this tree's\nserve_config.yaml is there already (tests/deploy/test_image_container.py builds it too).
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from harness.charts import CHART, RELEASE, one, render, run_helm
from harness.images import CAT_LABELS
from harness.tools import build_image, docker_daemon

DOCKER = os.environ.get("DOCKER", "/usr/bin/docker")
REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 240

pytestmark = pytest.mark.slow


def docker(*args: str, timeout: float = 120, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([DOCKER, *args], capture_output=True, timeout=timeout, check=check, **kw)


def in_pod(
    name: str, code: str, stdin: bytes | None = None, timeout: float = 60
) -> subprocess.CompletedProcess:
    return docker("exec", "-i", name, "python", "-c", code, input=stdin, timeout=timeout, check=False)


def http_get(name: str, url: str, token: str | None = None) -> subprocess.CompletedProcess:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return in_pod(
        name,
        f"import urllib.request as u; print(u.urlopen(u.Request({url!r}, headers={headers!r}), "
        "timeout=10).read().decode())",
    )


def logs(name: str) -> str:
    out = docker("logs", name, check=False)
    return (out.stdout + out.stderr).decode(errors="replace")[-4000:]


def to_bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(float(quantity[: -len(suffix)]) * factor)
    return int(quantity)


def pod_run_args(
    pod: dict,
    container: dict,
    settings: dict,
    secret_files: dict[str, Path],
    network: str,
    config_dirs: dict[str, Path] | None = None,
) -> list[str]:
    """`docker run` flags equivalent to one pod's container (what the kubelet would set up)."""
    ctx = container["securityContext"]
    args = ["--user", f"{ctx['runAsUser']}:{ctx['runAsGroup']}", "--network", network]
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
        elif "configMap" in volume:
            args += ["-v", f"{(config_dirs or {})[volume['configMap']['name']]}:{mount['mountPath']}:ro"]
        elif "secret" in volume:
            [item] = volume["secret"]["items"]
            args += [
                "-v",
                f"{secret_files[volume['secret']['secretName']]}:{mount['mountPath']}/{item['path']}:ro",
            ]
        else:
            raise AssertionError(f"unexpected volume {volume}")
    for name, value in settings.items():
        args += ["-e", f"{name}={value}"]
    for env in container["env"]:
        assert "value" in env, f"env {env['name']} needs a source the test does not emulate"
        args += ["-e", f"{env['name']}={env['value']}"]
    return args


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    assert Path(DOCKER).exists(), f"{DOCKER} missing: run scripts/tools/docker.sh"
    with docker_daemon():
        image = one(render("deployment"), "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
        if not image_is_current(image):  # not built yet (this module runs alone) or older than the tree
            print(f"\nbuilding {image}: {build_image(image)}", flush=True)
        assert image_is_current(image), f"image {image} does not hold this tree's serve_config.yaml"
        yield image


def image_is_current(image: str) -> bool:
    if docker("image", "inspect", image, check=False).returncode != 0:
        return False
    baked = docker(
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "cat",
        image,
        "/app/serve_config.yaml",
        check=False,
    ).stdout
    return baked.decode() == (REPO / "serve_config.yaml").read_text()


def test_deployment_pod_serves_exports_metrics_and_stops_gracefully(image, cat_png, tmp_path):
    docs = render("deployment")
    deployment = one(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["image"] == image
    # The Secret volume as the kubelet writes it: group fsGroup, mode 0440.
    secret = one(docs, "Secret")
    token_file = tmp_path / "auth_token"
    token_file.write_text("t" * 48)
    os.chown(token_file, 0, pod["securityContext"]["fsGroup"])
    token_file.chmod(0o440)
    # The ConfigMaps as the kubelet projects them: the settings as env, the Serve config as files.
    config_maps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    [settings] = [data for name, data in config_maps.items() if name.endswith("-settings")]
    config_dirs = {}
    for name, data in config_maps.items():
        config_dirs[name] = tmp_path / name
        config_dirs[name].mkdir()
        for key, value in data.items():
            (config_dirs[name] / key).write_text(value)
        config_dirs[name].chmod(0o755)
    args = pod_run_args(
        pod,
        container,
        settings,
        {secret["metadata"]["name"]: token_file},
        network="none",
        config_dirs=config_dirs,
    )
    name = f"k8s-deployment-pod-{os.getpid()}"
    docker(
        "run",
        "-d",
        "--name",
        name,
        *args,
        "--entrypoint",
        container["command"][0],
        image,
        *container["command"][1:],
    )
    try:
        serve_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "serve")
        metrics_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "metrics")
        probe = container["readinessProbe"]["httpGet"]["path"]
        begin = time.monotonic()
        while http_get(name, f"http://127.0.0.1:{serve_port}{probe}").returncode != 0:
            state = json.loads(docker("inspect", name).stdout)[0]["State"]
            assert state["Running"], "pod exited:\n" + logs(name)
            assert time.monotonic() - begin < READY_TIMEOUT_S, "never ready:\n" + logs(name)
            time.sleep(2)
        print(f"\ndeployment-mode pod ready in {time.monotonic() - begin:.1f} s")
        predict = in_pod(
            name,
            "import sys, urllib.request as u; r = u.Request("
            f"'http://127.0.0.1:{serve_port}/predict', data=sys.stdin.buffer.read(), "
            "headers={'Content-Type': 'image/png'}); "
            "print(u.urlopen(r, timeout=30).read().decode())",
            stdin=cat_png,
        )
        assert predict.returncode == 0, predict.stderr.decode()
        assert json.loads(predict.stdout)["predictions"][0]["label"] in CAT_LABELS
        liveness = container["livenessProbe"]["httpGet"]["path"]
        assert http_get(name, f"http://127.0.0.1:{serve_port}{liveness}").returncode == 0
        # App metrics appear on the named metrics port (Ray exports them every few seconds).
        deadline, text = time.monotonic() + 60, ""
        while time.monotonic() < deadline and "ray_classifier_" not in text:
            time.sleep(3)
            text = http_get(name, f"http://127.0.0.1:{metrics_port}/metrics").stdout.decode()
        assert "ray_classifier_" in text, text[-2000:]
        # TERM (what the kubelet sends after preStop): the trap stops Ray and exits 0, within the grace.
        grace = pod["terminationGracePeriodSeconds"]
        begin = time.monotonic()
        docker("stop", "-t", str(grace), name, timeout=grace + 30)
        stopped_in = time.monotonic() - begin
        state = json.loads(docker("inspect", name).stdout)[0]["State"]
        print(f"stopped in {stopped_in:.1f} s, exit code {state['ExitCode']}")
        assert state["ExitCode"] == 0, logs(name)
        assert stopped_in < grace - 5
    finally:
        docker("rm", "-f", name, check=False)


def kuberay_command(group: dict, container: dict, head_address: str | None) -> str:
    """The container command KubeRay generates for a group: `ray start` with its rayStartParams, CPUs and
    memory from the container's limits, run through a login shell as KubeRay does."""
    params = dict(group["rayStartParams"])
    limits = container["resources"]["limits"]
    params.setdefault("num-cpus", str(limits["cpu"]))
    params.setdefault("memory", str(to_bytes(limits["memory"])))
    flags = " ".join(f"--{key}={shlex.quote(str(value))}" for key, value in params.items())
    start = "ray start --head" if head_address is None else f"ray start --address={head_address}:6379"
    return f"ulimit -n 65536; {start} {flags} --block"


def test_rayservice_pods_form_a_cluster_serve_on_workers_and_drain(image, cat_png):
    # A single worker cannot hand its replicas to another node, so its drain always runs to the timeout:
    # a short one keeps the test short (the default, 60 s, is checked against the grace period elsewhere).
    docs = [
        d
        for d in yaml.safe_load_all(
            run_helm("template", RELEASE, str(CHART), "--set", "ray.worker.drainTimeoutSeconds=10").stdout
        )
        if d
    ]
    service = one(docs, "RayService")
    settings = one(docs, "ConfigMap")["data"]
    cluster = service["spec"]["rayClusterConfig"]
    head_group, [worker_group] = cluster["headGroupSpec"], cluster["workerGroupSpecs"]
    token = secrets.token_hex(32)  # KubeRay's authOptions: a generated Secret, injected as env
    auth_env = ["-e", "RAY_AUTH_MODE=token", "-e", f"RAY_AUTH_TOKEN={token}"]
    network = f"k8s-rayservice-{os.getpid()}"
    head, worker = f"{network}-head", f"{network}-worker"
    docker("network", "create", "--driver", "bridge", network)
    try:
        pods = {}
        for name, group, address in ((head, head_group, None), (worker, worker_group, head)):
            pod = group["template"]["spec"]
            [container] = pod["containers"]
            assert container["image"] == image
            args = pod_run_args(pod, container, settings, {}, network=network)
            docker(
                "run",
                "-d",
                "--name",
                name,
                "--hostname",
                name,
                *args,
                *auth_env,
                "--entrypoint",
                "/bin/bash",
                image,
                "-lc",
                kuberay_command(group, container, address),
            )
            pods[name] = (pod, container)
        dashboard_port = next(p["containerPort"] for p in pods[head][1]["ports"] if p["name"] == "dashboard")
        dashboard = f"http://127.0.0.1:{dashboard_port}"
        begin = time.monotonic()
        while http_get(head, f"{dashboard}/api/serve/applications/", token).returncode != 0:
            for name in (head, worker):
                assert json.loads(docker("inspect", name).stdout)[0]["State"]["Running"], (
                    f"{name} exited:\n" + logs(name)
                )
            assert time.monotonic() - begin < 120, "head dashboard never answered:\n" + logs(head)
            time.sleep(2)
        # What the operator does with serveConfigV2.
        config = json.dumps(yaml.safe_load(service["spec"]["serveConfigV2"])).encode()
        put = in_pod(
            head,
            "import sys, urllib.request as u; r = u.Request("
            f"'{dashboard}/api/serve/applications/', data=sys.stdin.buffer.read(), method='PUT', "
            f"headers={{'Content-Type': 'application/json', 'Authorization': 'Bearer {token}'}}); "
            "print(u.urlopen(r, timeout=30).status)",
            stdin=config,
        )
        assert put.returncode == 0 and put.stdout.strip() == b"200", put.stderr.decode()
        while True:
            status = json.loads(http_get(head, f"{dashboard}/api/serve/applications/", token).stdout or b"{}")
            app = status.get("applications", {}).get("classifier", {})
            if app.get("status") == "RUNNING":
                break
            assert app.get("status") != "DEPLOY_FAILED", app.get("message")
            assert time.monotonic() - begin < READY_TIMEOUT_S, f"not RUNNING: {app}\n" + logs(worker)
            time.sleep(3)
        print(f"\nRayService pods: application RUNNING {time.monotonic() - begin:.1f} s after start")
        worker_ip = json.loads(docker("inspect", worker).stdout)[0]["NetworkSettings"]["Networks"][network][
            "IPAddress"
        ]
        replica_ips = {r["node_ip"] for d in app["deployments"].values() for r in d["replicas"]}
        assert replica_ips == {worker_ip}, f"replicas on {replica_ips}, worker is {worker_ip}"
        predict = in_pod(
            worker,
            "import sys, urllib.request as u; r = u.Request("
            "'http://127.0.0.1:8000/predict', data=sys.stdin.buffer.read(), "
            "headers={'Content-Type': 'image/png'}); "
            "print(u.urlopen(r, timeout=30).read().decode())",
            stdin=cat_png,
        )
        assert predict.returncode == 0, predict.stderr.decode()
        assert json.loads(predict.stdout)["predictions"][0]["label"] in CAT_LABELS
        for name, expected in ((head, "ray_"), (worker, "ray_classifier_")):
            port = next(p["containerPort"] for p in pods[name][1]["ports"] if p["name"] == "metrics")
            deadline, text = time.monotonic() + 60, ""
            while time.monotonic() < deadline and expected not in text:
                time.sleep(3)
                text = http_get(name, f"http://127.0.0.1:{port}/metrics").stdout.decode()
            assert expected in text, f"{name} :{port}/metrics lacks {expected}"
        # The worker's preStop hook (what the kubelet runs before TERM): it TERMs `ray start --block`, which
        # drains the node (here up to the 10 s set above) and exits, so the container ends by itself.
        pre_stop = pods[worker][1]["lifecycle"]["preStop"]["exec"]["command"]
        drain_s = 10
        begin = time.monotonic()
        drained = docker("exec", worker, *pre_stop, timeout=60, check=False)
        print(f"worker preStop returned in {time.monotonic() - begin:.1f} s (rc {drained.returncode})")
        assert drained.returncode == 0, (drained.stdout + drained.stderr).decode()[-2000:]
        deadline = time.monotonic() + drain_s + 20
        while json.loads(docker("inspect", worker).stdout)[0]["State"]["Running"]:
            if time.monotonic() > deadline:
                procs = docker(
                    "exec",
                    worker,
                    "sh",
                    "-c",
                    "for p in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $p; echo; done",
                    check=False,
                ).stdout.decode()
                pytest.fail(f"worker still running {drain_s + 20} s after preStop:\n{procs}")
            time.sleep(1)
        took = time.monotonic() - begin
        print(f"worker pod exited {took:.1f} s after preStop began")
        assert took < pods[worker][0]["terminationGracePeriodSeconds"]
    finally:
        docker("rm", "-f", head, worker, check=False)
        docker("network", "rm", network, check=False)
