"""The setup scripts, the Makefile fragment and the Kubernetes docs: shellcheck-clean, consistent pins,
and every repo path the docs name exists (the docs stay true to what is in the repo)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = (
    sorted((REPO / "scripts").glob("*.sh"))
    + sorted((REPO / "scripts" / "k8s").glob("*.sh"))
    + [REPO / "scripts" / "tools" / name for name in ("helm.sh", "checkov.sh", "shellcheck.sh")]
)
DOCS = [
    REPO / "docs" / name for name in ("SETUP.md", "OPERATIONS.md", "TROUBLESHOOTING.md", "ARCHITECTURE.md")
]


def test_scripts_are_shellcheck_clean():
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck missing: run scripts/tools/shellcheck.sh"
    result = subprocess.run(
        [shellcheck, "-x", "--source-path=SCRIPTDIR", *map(str, SCRIPTS)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_makefile_steps_run_existing_scripts():
    out = subprocess.run(
        [
            "make",
            "-n",
            "-f",
            "kuberay/Makefile",
            "cluster",
            "operators",
            "image",
            "app",
            "predict",
            "render",
            "down",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    scripts = re.findall(r"bash (scripts/k8s/\S+\.sh)", out.stdout)
    assert len(scripts) == 7
    for script in scripts:
        assert (REPO / script).is_file(), script


def test_top_makefile_targets_are_defined_once_and_run_what_readme_says():
    """`make test` is what .ci/run runs: lint and the formatter's check, the first tier, then the cluster tier around a cluster of its own;
    `make test-unit` only the unit tier; a recipe defined twice (make keeps the last one) is an error."""

    def dry(target: str) -> list[str]:
        # Under .ci/run this test runs inside `make test`: a sub-make would print "Entering directory".
        env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
        out = subprocess.run(
            ["make", "-n", "--no-print-directory", target],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0 and "warning" not in out.stderr, out.stderr
        return out.stdout.splitlines()

    test = dry("test")
    assert test[-4:] == [
        ".venv/bin/ruff check .",
        ".venv/bin/ruff format --check .",
        ".venv/bin/python -m pytest",
        "bash scripts/with-cluster.sh .venv/bin/python -m pytest -m cluster",
    ], test
    assert dry("test-unit")[-1] == ".venv/bin/python -m pytest -m unit tests/unit"
    assert dry("cluster-test")[-1] == ".venv/bin/python -m pytest -m cluster"
    assert dry("status") == ["bash scripts/status.sh"]


def versions() -> dict[str, str]:
    pins = {}
    for line in (REPO / "scripts" / "k8s" / "versions.env").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            pins[key] = value
    return pins


def test_operator_pins_agree():
    pins = versions()
    chart = yaml.safe_load((REPO / "kuberay" / "chart" / "Chart.yaml").read_text())
    operator = yaml.safe_load((REPO / "helm-values" / "kuberay-operator.yaml").read_text())
    assert pins["KUBERAY_CHART_VERSION"] == chart["annotations"]["kuberay.io/operator-version"] == "1.6.2"
    assert operator["image"]["tag"] == "v" + pins["KUBERAY_CHART_VERSION"]
    gates = {g["name"]: g["enabled"] for g in operator["featureGates"]}
    assert gates["RayServiceIncrementalUpgrade"] is True
    # The Gateway API CRDs installed match the HTTPRoute CRD the chart is validated against.
    crd = REPO.parent / "shared" / "crds" / "gateway.networking.k8s.io_httproutes.yaml"
    if crd.exists():
        assert f"bundle-version: {pins['GATEWAY_API_VERSION']}" in crd.read_text()


def test_test_cluster_operator_runs_with_the_helm_values_flags_and_resources():
    """The test cluster installs the operator from upstream's kustomize config, not the chart; its patch
    gives it the chart values' feature gates, metrics flag and resources."""
    operator = yaml.safe_load((REPO / "helm-values" / "kuberay-operator.yaml").read_text())
    kustomization = yaml.safe_load(
        (REPO / "cluster" / "manifests" / "kuberay-operator" / "kustomization.yaml").read_text()
    )
    [patch] = [p for p in kustomization["patches"] if p["target"]["kind"] == "Deployment"]
    ops = {op["path"].rsplit("/", 1)[1]: op["value"] for op in yaml.safe_load(patch["patch"])}
    gates = ",".join(f"{g['name']}={str(g['enabled']).lower()}" for g in operator["featureGates"])
    expected = [f"--feature-gates={gates}"] + (["--enable-metrics"] if operator["metrics"]["enabled"] else [])
    assert ops["args"] == expected
    assert ops["resources"] == operator["resources"]


def test_install_scripts_use_files_that_exist():
    for script in SCRIPTS:
        for path in re.findall(
            r"(?:helm-values|monitoring|kuberay|scripts)/[\w./-]+\.(?:ya?ml|sh|env)", script.read_text()
        ):
            assert (REPO / path).exists(), f"{script.name} uses missing {path}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_docs_name_only_paths_that_exist(doc):
    text = doc.read_text()
    paths = set(re.findall(r"`((?:docs|kuberay|helm-values|scripts|tests|monitoring)/[\w./*-]+)`", text))
    paths |= set(re.findall(r"\]\(((?!https?:)[\w./-]+\.md)", text))
    assert paths
    for path in paths:
        base = REPO / "docs" if path.endswith(".md") and "/" not in path else REPO
        if "*" in path:
            assert list(base.glob(path)), f"{doc.name}: nothing matches {path}"
        else:
            assert (base / path).exists(), f"{doc.name} names {path}, which does not exist"


def test_operations_keeps_the_alert_runbooks_section_last():
    headings = re.findall(r"^## (.+)$", (REPO / "docs" / "OPERATIONS.md").read_text(), flags=re.M)
    assert headings[-1] == "Alert runbooks"


def test_image_defaults_are_the_charts_default_image():
    """What the build scripts tag, what the k8s scripts load and what the chart runs are one reference."""
    chart = yaml.safe_load((REPO / "kuberay" / "chart" / "Chart.yaml").read_text())
    values = yaml.safe_load((REPO / "kuberay" / "chart" / "values.yaml").read_text())
    image = f"{values['image']['repository']}:{chart['appVersion']}"
    assert image.startswith("localhost/")
    assert versions()["IMAGE"] == "${IMAGE:-" + image + "}"
    assert f"IMAGE=${{IMAGE:-{image}}}" in (REPO / "scripts" / "image" / "build.sh").read_text()
    assert f'"IMAGE", "{image}"' in (REPO / "tests" / "deploy" / "test_image_container.py").read_text()
