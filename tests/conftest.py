"""Shared fixtures: real photos, and one real Ray cluster serving the app for the whole session.

The tests sit in one folder per tier, and each test carries its folder's marker (``pytest -m unit``):
unit (pure logic, no Ray, no Docker, no torch), model (torch and the real weights), serving (a real Ray
Serve), deploy (the chart with real Helm, the image in Docker), monitoring (real Prometheus and
promtool), cluster (the real Kubernetes + KubeRay of ``make cluster``), smoke (your own cluster).
The helpers they share with the benches and scripts are the ``harness`` package.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from harness.images import CAT_PHOTO, COFFEE_PHOTO, HOPPER_PHOTO
from harness.ray_cluster import RayCluster, load_serve_config


@pytest.fixture(scope="session")
def cat_png() -> bytes:
    return CAT_PHOTO.read_bytes()


@pytest.fixture(scope="session")
def coffee_png() -> bytes:
    return COFFEE_PHOTO.read_bytes()


@pytest.fixture(scope="session")
def hopper_jpg() -> bytes:
    return HOPPER_PHOTO.read_bytes()


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


TIERS = ("unit", "model", "serving", "deploy", "monitoring", "cluster", "smoke")
TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    """Mark every test with its tier, the folder it sits in; a test outside the tier folders is an error."""
    for item in items:
        parts = Path(str(item.path)).resolve().relative_to(TESTS).parts
        if len(parts) < 2 or parts[0] not in TIERS:
            raise pytest.UsageError(
                f"{item.nodeid}: tests live in one of the tier folders tests/{{{','.join(TIERS)}}}/"
            )
        item.add_marker(parts[0])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing cluster test reports the events, KubeRay status and operator log of its namespaces."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and item.get_closest_marker("cluster"):
        from harness.kubetest import diagnostics

        try:
            report.sections.append(("cluster diagnostics", diagnostics()))
        except Exception as exc:  # noqa: BLE001 - the test's own failure matters more
            report.sections.append(("cluster diagnostics", f"could not be collected: {exc}"))
