# `make run` and `make test` are all a new machine needs: each builds .venv by itself.
# `make run` installs the product alone; `make test` adds the development tools on top.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check
PRODUCT := $(VENV)/.product
DEV := $(VENV)/.dev

.PHONY: run test test-fast lint typecheck pytest double bench lock clean

$(PRODUCT): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) -e .
	touch $@

$(DEV): $(PRODUCT) deploy/tools/install-helm.sh
	$(PIP) -e '.[dev]'
	PYTHON=$(BIN)/python deploy/tools/install-helm.sh $(BIN)
	touch $@

run: $(PRODUCT)
	$(BIN)/kamus dev

test: lint typecheck pytest

# Lint, types, then the unit and API tests (tests/unit, tests/api): under a minute, for the
# edit-and-test loop. `make test`, which CI runs, adds the providers, end-to-end, deployment,
# fuzz and soak tests.
test-fast: lint typecheck
	$(BIN)/pytest tests/unit tests/api

lint: $(DEV)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(DEV)
	$(BIN)/mypy

pytest: $(DEV)
	$(BIN)/pytest

# The Kubernetes API double on its own (python -m tests.k8s_double --help).
double: $(DEV)
	$(BIN)/python -m tests.k8s_double

# The benchmarks of docs/performance.md (about 5 minutes; needs wrk for real throughput numbers).
bench: $(DEV)
	$(BIN)/python -m bench

# The exact versions the images install (CPython 3.11, Linux x86_64), with their hashes, then the
# hash of pyproject's dependencies that tests/deploy/test_lock.py checks. uv keeps the pins that still
# fit: delete the lock first to move everything to the newest versions.
lock: $(DEV)
	$(BIN)/uv pip compile pyproject.toml --quiet --generate-hashes --python-version 3.11 \
		--python-platform x86_64-unknown-linux-gnu --output-file deploy/images/requirements.lock
	$(BIN)/python -m tests.deploy.test_lock >> deploy/images/requirements.lock

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
