# `make run` and `make test` are all a new machine needs: each builds .venv by itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck pytest double bench clean

$(STAMP): pyproject.toml deploy/tools/install-helm.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	PYTHON=$(BIN)/python deploy/tools/install-helm.sh $(BIN)
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/kamus dev

test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest

# The Kubernetes API double on its own (see tests/k8s_double/README.md).
double: $(STAMP)
	$(BIN)/python -m tests.k8s_double

# The benchmarks of docs/performance.md (about 5 minutes; needs wrk for real throughput numbers).
bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
