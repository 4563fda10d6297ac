"""Shared fixtures: real photos, and one real Ray cluster serving the app for the whole session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import matplotlib
import pytest
import requests
import skimage

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent / "cluster"))

from ray_cluster import RayCluster, load_serve_config  # noqa: E402

SKIMAGE_DATA = Path(skimage.__file__).parent / "data"
MPL_DATA = Path(matplotlib.get_data_path()) / "sample_data"
CRDS_DIR = Path(os.environ.get("SHARED_CRDS_DIR", Path(__file__).resolve().parents[2] / "shared" / "crds"))

CAT_LABELS = {"tabby", "tiger cat", "Egyptian cat"}


@pytest.fixture(scope="session")
def cat_png() -> bytes:
    return (SKIMAGE_DATA / "chelsea.png").read_bytes()


@pytest.fixture(scope="session")
def coffee_png() -> bytes:
    return (SKIMAGE_DATA / "coffee.png").read_bytes()


@pytest.fixture(scope="session")
def hopper_jpg() -> bytes:
    return (MPL_DATA / "grace_hopper.jpg").read_bytes()


@pytest.fixture(scope="session")
def ray_cluster():
    """A real Ray head on 127.0.0.1 running the repo's serve_config.yaml, as KubeRay would."""
    with RayCluster() as cluster:
        cluster.deploy(load_serve_config())
        yield cluster


@pytest.fixture(scope="session")
def base_url(ray_cluster) -> str:
    return ray_cluster.serve_url


@pytest.fixture()
def http():
    with requests.Session() as session:
        yield session


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing cluster test reports the events, KubeRay status and operator log of its namespaces."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and item.get_closest_marker("cluster"):
        from kubetest import diagnostics

        try:
            report.sections.append(("cluster diagnostics", diagnostics()))
        except Exception as exc:  # noqa: BLE001 - the test's own failure matters more
            report.sections.append(("cluster diagnostics", f"could not be collected: {exc}"))
