# Entry points; README.md documents them.
.PHONY: setup tools run status lint test test-unit cluster cluster-down cluster-clean cluster-test demo

setup:            ## venv, pinned dependencies, offline pretrained weights
	bash scripts/setup-python.sh

tools:            ## non-Python tools used by the tests (helm, promtool, ...)
	bash scripts/install-tools.sh

run: setup        ## serve the classifier locally on http://127.0.0.1:8000
	set -a && . ./serve.env && set +a && .venv/bin/serve run serve_config.yaml

status:           ## from a second shell: serve status, serve config and the dashboard token of make run
	bash scripts/status.sh

lint: setup       ## ruff: the rules pyproject.toml names, and the formatter's check (ruff format . fixes it)
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

test-unit: setup   ## the unit tier only: pure logic, no Ray, Docker, torch or tools (tests/unit, seconds)
	.venv/bin/python -m pytest -m unit tests/unit

test: setup tools ## lint, then the whole test suite: real Ray Serve, then the real cluster (started and stopped here)
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/python -m pytest
	bash scripts/with-cluster.sh .venv/bin/python -m pytest -m cluster

cluster:          ## a real single-node Kubernetes + KubeRay operator here (kubeconfig: .cluster/kubeconfig)
	bash cluster/install-deps.sh
	bash cluster/up.sh

cluster-down:     ## stop the cluster by pid and remove its state (logs stay in .cluster/logs)
	bash cluster/down.sh

cluster-clean: cluster-down ## also drop the cached binaries and the node's image store
	bash cluster/clean.sh

cluster-test: setup tools ## the tests on the running cluster (pytest -m cluster; after make cluster)
	.venv/bin/python -m pytest -m cluster

demo: setup tools    ## the chart on the test cluster under load: spike + HPA, rolling update, pod loss, pictures (artifacts/demo/)
	bash scripts/with-cluster.sh .venv/bin/python -m bench.cluster_demo
