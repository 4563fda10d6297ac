# Entry points; README.md documents them.
.PHONY: setup tools run test

setup:            ## venv, pinned dependencies, offline pretrained weights
	bash scripts/setup-python.sh

tools:            ## non-Python tools used by the tests (helm, promtool, ...)
	bash scripts/install-tools.sh

run: setup        ## serve the classifier locally on http://127.0.0.1:8000
	set -a && . ./serve.env && set +a && .venv/bin/serve run serve_config.yaml

test: setup tools ## the whole test suite against a real Ray Serve
	.venv/bin/python -m pytest
