"""checkov on the rendered manifests of every chart case (and on the Dockerfile once it exists), with the
documented skip list in kuberay/checkov.yaml: any other failed check fails the test."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from harness.charts import CASES, REPO, by_kind, render
from harness.tools import tool_path

CHECKOV_CONFIG = REPO / "kuberay" / "checkov.yaml"
RAY_PODS_CONFIG = REPO / "kuberay" / "checkov-ray-pods.yaml"
DOCKERFILE = REPO / "Dockerfile"


def checkov_path() -> str:
    return tool_path("checkov")


def run_checkov(*args: str, config: Path = CHECKOV_CONFIG) -> list[dict]:
    result = subprocess.run(
        [checkov_path(), "--config-file", str(config), "-o", "json", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode in (0, 1), f"checkov crashed ({result.returncode}):\n{result.stderr[-3000:]}"
    reports = json.loads(result.stdout)
    return reports if isinstance(reports, list) else [reports]


def failed(reports: list[dict]) -> list[str]:
    return [
        f"{f['check_id']} {f['check_name']}: {f['resource']} ({f['file_path']})"
        for r in reports
        for f in r.get("results", {}).get("failed_checks", [])
    ]


def ray_pods(docs: list[dict]) -> list[dict]:
    """The RayService's head/worker pod templates as Pods, so checkov's pod checks cover them too."""
    pods = []
    for service in by_kind(docs, "RayService"):
        cluster = service["spec"]["rayClusterConfig"]
        groups = [("head", cluster["headGroupSpec"])] + [
            (g["groupName"], g) for g in cluster["workerGroupSpecs"]
        ]
        for name, group in groups:
            pods.append(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {
                        "name": f"{service['metadata']['name']}-{name}",
                        **group["template"].get("metadata", {}),
                    },
                    "spec": group["template"]["spec"],
                }
            )
    return pods


@pytest.fixture(scope="module")
def rendered_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rendered")
    for case in CASES:
        (out / f"{case}.yaml").write_text(yaml.safe_dump_all(render(case), sort_keys=False))
    return out


@pytest.fixture(scope="module")
def ray_pods_dir(tmp_path_factory) -> Path:
    """Each case's Ray pods beside its NetworkPolicies (checkov's graph check pairs them)."""
    out = tmp_path_factory.mktemp("ray-pods")
    for case in CASES:
        docs = render(case)
        pods = ray_pods(docs)
        if pods:
            (out / f"{case}.yaml").write_text(
                yaml.safe_dump_all(pods + by_kind(docs, "NetworkPolicy"), sort_keys=False)
            )
    return out


def test_checkov_passes_on_rendered_manifests(rendered_dir):
    reports = run_checkov("-d", str(rendered_dir), "--framework", "kubernetes")
    passed = sum(r["summary"]["passed"] for r in reports)
    assert passed > 100, f"checkov checked too little ({passed} passed checks)"
    assert not failed(reports), "\n".join(failed(reports))


def test_checkov_passes_on_the_ray_pod_templates(ray_pods_dir):
    reports = run_checkov("-d", str(ray_pods_dir), "--framework", "kubernetes", config=RAY_PODS_CONFIG)
    passed = sum(r["summary"]["passed"] for r in reports)
    assert passed > 100, f"checkov checked too little ({passed} passed checks)"
    assert not failed(reports), "\n".join(failed(reports))


def test_checkov_config_skips_are_all_justified():
    for config in (CHECKOV_CONFIG, RAY_PODS_CONFIG):
        lines = config.read_text().splitlines()
        skips = [i for i, line in enumerate(lines) if line.strip().startswith("- CKV_")]
        assert skips
        for i in skips:
            j = i  # a run of skips may share the comment above it
            while j > 0 and lines[j].strip().startswith("- CKV_") and "#" not in lines[j]:
                j -= 1
            assert "#" in lines[j], f"{config.name}: {lines[i]} is not justified"


def test_checkov_covers_the_ray_pods(tmp_path):
    """The check is not vacuous: a Ray worker pod running privileged as root is reported."""
    docs = render("default")
    [_, worker] = ray_pods(docs)
    ctx = worker["spec"]["containers"][0]["securityContext"]
    ctx.update(privileged=True, allowPrivilegeEscalation=True, runAsUser=0, runAsNonRoot=False)
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(worker))
    ids = {
        line.split()[0]
        for line in failed(
            run_checkov("-d", str(tmp_path), "--framework", "kubernetes", config=RAY_PODS_CONFIG)
        )
    }
    assert {"CKV_K8S_16", "CKV_K8S_20"} <= ids, ids


def test_checkov_passes_on_the_dockerfile():
    if not DOCKERFILE.exists():
        pytest.skip("no Dockerfile yet (built by the image part of the project)")
    reports = run_checkov("-f", str(DOCKERFILE), "--framework", "dockerfile")
    assert not failed(reports), "\n".join(failed(reports))
