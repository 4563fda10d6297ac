"""The shared harness of the tests, the benchmarks and the scripts (not part of the served app).

One importable package, so nothing edits the import path: ``pip install -e .`` installs it beside
``serve_app`` (pyproject.toml), so ``from harness.ray_cluster import RayCluster`` works from the tests,
``python -m bench.*`` and the scripts run by path alike.

- ``ray_cluster``: a real single-node Ray cluster started the way KubeRay starts a head pod
- ``images``: the real test photos and the labels that count as "a cat" (from ``loadtest.images``)
- ``serving``: helpers for talking to the served application over HTTP
- ``tools``: where the real command-line tools are (``make tools``), the image build, the CRDs
- ``charts``: the Helm chart rendered with real ``helm template``; ``kuberay_rules``: what the KubeRay
  operator refuses beyond its CRD schema; ``netpol``: NetworkPolicy ingress semantics
- ``kubetest``: the real test cluster (``make cluster``) through kubectl, helm and port-forwards
- ``promstack``: a throwaway Prometheus and the dashboard's and rules' PromQL;
  ``cluster_prometheus``: Prometheus scraping the test cluster's pods as the PodMonitors select
  (``python -m harness.cluster_prometheus``); ``render_overview``: the overview dashboard drawn to a
  PNG from real Prometheus data (``python -m harness.render_overview``)

The test fixtures stay in tests/conftest.py.
"""
