"""The chart's NetworkPolicies enforced, not just accepted: the test cluster's node runs
kube-network-policies (cluster/netpol.sh, built from its Go module) while the chart is installed in
mode rayservice with `networkPolicy.enabled=true`, and real connections are tried from pods in other
namespaces.

- From a namespace the chart does not name, nothing of the Ray cluster answers: the head's GCS (6379),
  dashboard (8265), client and agent ports, the workers' ports, the serve and metrics ports. With the
  enforcer stopped the same connections succeed, so the drops are the policies, not closed ports.
- The allowed paths work under enforcement: the operator (kuberay-system) reconciles the RayService to
  Ready through the dashboard, head and worker reach each other, the pods resolve names (DNS), a pod in
  `monitoring` scrapes the metrics ports, and a gateway in `gateway-system` serves predictions through
  the serve Service. Egress is enforced too: DNS is the pods' only way out of the release.
- Every observed verdict on a declared port agrees with the NetworkPolicy ingress semantics of
  harness/netpol.py applied to the live policies.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import textwrap
import uuid

import pytest
import yaml

from harness.kubetest import (
    CHART,
    REPO,
    active_cluster,
    chart_default_image,
    classify_cat,
    cluster,  # noqa: F401 - fixture
    create_namespace,
    delete_namespace,
    gateway,
    get,
    helm,
    helm_install,
    is_ready,
    kubectl,
    ready_endpoints,
    serve_applications,
    wait_for,
    wait_rayservice_ready,
)
from harness.netpol import Peer, admits

pytestmark = pytest.mark.cluster

RELEASE = "np"
NAME = "np-ray-serve-image-classifier"  # the chart's fullname for this release
NETPOL = REPO / "cluster" / "netpol.sh"
# Ray ports that no container port declares: they must be closed to outsiders as well.
HEAD_EXTRA_PORTS = (6379, 8265, 10001, 52365)
WORKER_EXTRA_PORTS = (52365,)
CONNECT_TIMEOUT_S = 3
KUBERNETES_SERVICE_IP = "10.96.0.1"  # cluster/cluster.env

PROBE = textwrap.dedent("""
    import json, os, socket, urllib.request
    out = {}
    for host, port in json.loads(os.environ["TARGETS"]):
        s = socket.socket()
        s.settimeout(float(os.environ["TIMEOUT"]))
        try:
            s.connect((host, port))
            out[f"{host}:{port}"] = "open"
        except socket.timeout:
            out[f"{host}:{port}"] = "timeout"
        except OSError as e:
            out[f"{host}:{port}"] = type(e).__name__
        finally:
            s.close()
    fetched = {}
    for url in json.loads(os.environ.get("FETCH", "[]")):
        try:
            fetched[url] = urllib.request.urlopen(url, timeout=10).read().decode()[:20000]
        except Exception as e:
            fetched[url] = "ERROR " + repr(e)
    print(json.dumps({"connect": out, "fetch": fetched}))
""")


def netpol(action: str) -> None:
    result = subprocess.run(["bash", str(NETPOL), action], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"cluster/netpol.sh {action}: {result.stdout}\n{result.stderr}"


@contextlib.contextmanager
def enforcement_paused():
    netpol("stop")
    try:
        yield
    finally:
        netpol("start")


@pytest.fixture(scope="module")
def enforced(cluster):  # noqa: F811
    netpol("start")
    try:
        yield
    finally:
        netpol("stop")


@pytest.fixture(scope="module")
def release(enforced):
    """The chart with its NetworkPolicies, installed while they are enforced: that the RayService turns
    Ready at all shows the operator -> dashboard and head <-> worker paths are open."""
    ns = create_namespace("netpol")
    try:
        helm_install(RELEASE, ns, "helm-values/app-dev.yaml", sets=("networkPolicy.enabled=true",))
        wait_rayservice_ready(ns, NAME, timeout_s=900)
        yield ns
    finally:
        delete_namespace(ns)


@pytest.fixture(scope="module")
def outsider():
    ns = create_namespace("outsider", pss=None)
    try:
        yield ns
    finally:
        delete_namespace(ns)


@contextlib.contextmanager
def fixed_namespace(name: str):
    """A namespace the chart's policies name (`monitoring`, `gateway-system`): made if missing, and
    removed afterwards only if this test made it."""
    made = get("namespace", name, missing_ok=True) is None
    if made:
        kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        if made:
            delete_namespace(name)


def ray_pods(ns: str) -> dict[str, dict]:
    """The active Ray cluster's pods by node type (one head, one worker in app-dev.yaml)."""
    pods = get("pods", namespace=ns, selector=f"ray.io/cluster={active_cluster(ns, NAME)}")
    by_type = {
        p["metadata"]["labels"]["ray.io/node-type"]: p
        for p in pods
        if not p["metadata"].get("deletionTimestamp")
    }
    assert set(by_type) == {"head", "worker"}, sorted(by_type)
    return by_type


def declared_ports(pod: dict) -> dict[str, int]:
    return {
        p["name"]: p["containerPort"]
        for c in pod["spec"]["containers"]
        for p in c.get("ports", [])
        if "name" in p
    }


def targets(pods: dict[str, dict]) -> list[tuple[str, int]]:
    found = []
    for kind, pod in pods.items():
        extra = HEAD_EXTRA_PORTS if kind == "head" else WORKER_EXTRA_PORTS
        for port in sorted({*declared_ports(pod).values(), *extra}):
            found.append((pod["status"]["podIP"], port))
    return found


def probe(
    ns: str, targets: list[tuple[str, int]], labels: dict[str, str] | None = None, fetch: list[str] = ()
) -> dict:
    """TCP connects (and HTTP GETs) from a new pod in ``ns``: {"connect": {"ip:port": "open" |
    "timeout" | error}, "fetch": {url: body}}. A connection the enforcer drops times out."""
    name = f"probe-{uuid.uuid4().hex[:5]}"
    security = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels or {"app": "probe"}},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "containers": [
                {
                    "name": "probe",
                    "image": chart_default_image(),
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["python", "-c", PROBE],
                    "env": [
                        {"name": "TARGETS", "value": json.dumps(targets)},
                        {"name": "FETCH", "value": json.dumps(list(fetch))},
                        {"name": "TIMEOUT", "value": str(CONNECT_TIMEOUT_S)},
                    ],
                    "resources": {
                        "requests": {"cpu": "50m", "memory": "64Mi"},
                        "limits": {"memory": "256Mi"},
                    },
                    "securityContext": security,
                }
            ],
        },
    }
    kubectl("apply", "-f", "-", input=json.dumps(pod))
    try:
        done = wait_for(
            lambda: (lambda p: p if p["status"].get("phase") in ("Succeeded", "Failed") else None)(
                get("pod", name, ns)
            ),
            180,
            f"probe pod {ns}/{name} finished",
            poll_s=1,
        )
        logs = kubectl("logs", "-n", ns, name).stdout
        assert done["status"]["phase"] == "Succeeded", logs
        return json.loads(logs.strip().splitlines()[-1])
    finally:
        kubectl(
            "delete", "pod", name, "-n", ns, "--grace-period=0", "--force", "--ignore-not-found", check=False
        )


def exec_python(ns: str, pod: dict, code: str) -> str:
    return kubectl(
        "exec",
        "-n",
        ns,
        pod["metadata"]["name"],
        "-c",
        pod["spec"]["containers"][0]["name"],
        "--",
        "python",
        "-c",
        code,
        timeout=60,
    ).stdout.strip()


def model_verdicts(ns: str, pods: dict[str, dict], peer: Peer) -> dict[str, bool]:
    """What harness/netpol.py says of every declared port for this peer, under the live policies."""
    policies = get("networkpolicy", namespace=ns)
    verdicts = {}
    for pod in pods.values():
        ports = declared_ports(pod)
        for port_name, number in ports.items():
            verdicts[f"{pod['status']['podIP']}:{number}"] = admits(
                policies, pod["metadata"]["labels"], ports, port_name, peer, namespace=ns
            )
    return verdicts


def model_user_config(ns: str) -> dict:
    return serve_applications(ns, NAME)["classifier"]["deployments"]["ImageClassifier"]["deployment_config"][
        "user_config"
    ]


def enforcer_log() -> str:
    return kubectl(
        "logs", "-n", "kube-system", "-l", "k8s-app=kube-network-policies", "--tail=-1", timeout=60
    ).stdout


def test_the_release_has_its_policies(release):
    names = {p["metadata"]["name"] for p in get("networkpolicy", namespace=release)}
    assert {f"{NAME}-default-deny", f"{NAME}-serve", f"{NAME}-ray-internal", f"{NAME}-ray-head"} <= names, (
        names
    )


def test_outsiders_reach_nothing_of_the_ray_cluster_until_enforcement_stops(release, outsider):
    pods = ray_pods(release)
    wanted = targets(pods)
    enforced = probe(outsider, wanted)["connect"]
    print(f"\nfrom {outsider} with enforcement: {enforced}")
    assert set(enforced.values()) == {"timeout"}, enforced
    # kube-network-policies itself judged them (its log, read at once: it rotates at 20 MiB).
    head = f"{release}/{pods['head']['metadata']['name']}"
    judged = [
        line
        for line in enforcer_log().splitlines()
        if "Evaluating packet" in line and f'dstPod="{head}"' in line and f'srcPod="{release}/' not in line
    ]
    assert judged, f"no verdict on {outsider} -> {head} in the enforcer's log"
    head_ip = pods["head"]["status"]["podIP"]
    assert {f"{head_ip}:6379", f"{head_ip}:8265"} <= set(enforced)
    with enforcement_paused():
        open_ = probe(outsider, wanted)["connect"]
    print(f"from {outsider} without enforcement: {open_}")
    # The same ports answer when nothing enforces the policies: the timeouts above were drops.
    for port in (6379, 8265, 52365):
        assert open_[f"{head_ip}:{port}"] == "open", open_
    worker_ip = pods["worker"]["status"]["podIP"]
    assert open_[f"{worker_ip}:52365"] == "open", open_
    observed = {t: v == "open" for t, v in enforced.items()}
    model = model_verdicts(release, pods, Peer(namespace=outsider, labels={"app": "probe"}))
    assert {t: observed[t] for t in model} == model


def test_monitoring_scrapes_the_metrics_ports_and_nothing_else(release):
    pods = ray_pods(release)
    with fixed_namespace("monitoring") as ns:
        metrics_urls = [
            f"http://{p['status']['podIP']}:{declared_ports(p)['metrics']}/metrics" for p in pods.values()
        ]
        result = probe(ns, targets(pods), fetch=metrics_urls)
    for url, body in result["fetch"].items():
        assert "ray_" in body, f"{url}: {body[:300]}"
    connect = result["connect"]
    head_ip = pods["head"]["status"]["podIP"]
    assert connect[f"{head_ip}:6379"] == connect[f"{head_ip}:8265"] == "timeout", connect
    observed = {t: v == "open" for t, v in connect.items()}
    model = model_verdicts(release, pods, Peer(namespace="monitoring", labels={"app": "probe"}))
    assert {t: observed[t] for t in model} == model
    assert any(model.values()) and not all(model.values()), model


def test_the_gateway_namespace_serves_predictions_and_reaches_only_the_serve_port(release, cat_png):
    pods = ray_pods(release)
    with fixed_namespace("gateway-system") as ns:
        connect = probe(ns, targets(pods))["connect"]
        with gateway(f"{NAME}-serve-svc.{release}.svc.cluster.local:8000", chart_default_image()) as port:
            classify_cat(port, cat_png)  # REST and OIP v2 both name the cat
    serve = {
        f"{p['status']['podIP']}:{declared_ports(p)['serve']}"
        for p in pods.values()
        if "serve" in declared_ports(p)
    }
    assert serve and all(connect[t] == "open" for t in serve), connect
    assert all(v == "timeout" for t, v in connect.items() if t not in serve), connect


def test_the_operator_puts_the_head_in_the_serve_service_through_the_policies(release):
    """KubeRay labels the head ray.io/serve=true only when its GET of the head's Serve proxy
    (:8000/-/healthz, from kuberay-system) answers: the head is then a ready endpoint of the serve
    Service, the one an upgrade can count on when it moves the Service to a cluster whose workers'
    probes have not passed yet. Under the policies that GET needs the ray-head policy's serve port."""
    head = ray_pods(release)["head"]
    model = model_verdicts(release, {"head": head}, Peer(namespace="kuberay-system", labels={}))
    assert model[f"{head['status']['podIP']}:{declared_ports(head)['serve']}"], model

    wait_for(
        lambda: head["metadata"]["name"] in ready_endpoints(release, f"{NAME}-serve-svc"),
        120,
        "the head as a ready endpoint of the serve Service",
        poll_s=5,
    )


def test_egress_pods_resolve_names_and_reach_nothing_else_outside_the_release(release):
    """DNS (CoreDNS port 53) is the release pods' only way out of the release: the same CoreDNS pod's
    metrics port is dropped, and reachable once enforcement stops."""
    worker = ray_pods(release)["worker"]
    resolved = exec_python(
        release,
        worker,
        "import socket; print(socket.getaddrinfo('kubernetes.default.svc.cluster.local', 443)[0][4][0])",
    )
    assert resolved == KUBERNETES_SERVICE_IP, resolved
    [dns] = [p for p in get("pods", namespace="kube-system", selector="k8s-app=kube-dns") if is_ready(p)][:1]
    code = textwrap.dedent(f"""
        import socket
        for port in (53, 9153):
            s = socket.socket(); s.settimeout({CONNECT_TIMEOUT_S})
            try:
                s.connect(({dns["status"]["podIP"]!r}, port)); print(port, "open")
            except socket.timeout:
                print(port, "timeout")
    """)
    assert exec_python(release, worker, code).splitlines() == ["53 open", "9153 timeout"]
    with enforcement_paused():
        assert exec_python(release, worker, code).splitlines() == ["53 open", "9153 open"]


def test_the_operator_applies_a_changed_user_config_through_the_dashboard(release, tmp_path):
    """An in-place update: the operator PUTs the new Serve config to the head's dashboard (port 8265,
    open to kuberay-system only) and the model deployment runs with it."""
    values = tmp_path / "batch8.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "serveConfig": {
                    "deploymentOverrides": [
                        {"name": "ImageClassifier", "set": {"user_config": {"max_batch_size": 8}}}
                    ]
                }
            }
        )
    )
    before = active_cluster(release, NAME)
    helm(
        "upgrade",
        RELEASE,
        str(CHART),
        "-n",
        release,
        "-f",
        str(REPO / "helm-values" / "app-dev.yaml"),
        "-f",
        str(values),
        "--set",
        "networkPolicy.enabled=true",
    )
    wait_for(
        lambda: model_user_config(release).get("max_batch_size") == 8,
        300,
        "the new user_config applied by the operator",
        poll_s=5,
    )
    assert active_cluster(release, NAME) == before  # in place: same Ray cluster
