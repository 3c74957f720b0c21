# The two commands the README opens with: `make run` and `make test`. Both set up everything
# they need on a fresh Debian 12 machine.
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
DEV_DIR := .xks-dev
PYTHON ?= python3

.PHONY: run test check lint typecheck unit system-deps bench fuzz lock clean

$(INSTALLED): pyproject.toml constraints.txt
	bash scripts/install-system-deps.sh
	$(PYTHON) -m venv $(VENV)
	# Pinned build tools in the venv, and no isolated build env fetching the newest ones.
	$(BIN)/pip install -q -c constraints.txt setuptools wheel
	$(BIN)/pip install -q --no-build-isolation -c constraints.txt -e '.[test,bench]'
	touch $(INSTALLED)

run: $(INSTALLED)
	test -f $(DEV_DIR)/xks-proxy.toml || $(BIN)/xks-proxy init $(DEV_DIR)
	$(BIN)/xks-proxy serve --config $(DEV_DIR)/xks-proxy.toml --host 127.0.0.1 --port 8080

system-deps:
	bash scripts/install-system-deps.sh

lint: $(INSTALLED)
	$(BIN)/ruff check xks_proxy tests tools
	$(BIN)/ruff format --check xks_proxy tests tools

typecheck: $(INSTALLED)
	$(BIN)/mypy

# In parallel (pytest-xdist, README "Development"): 4 worker processes, more than CI's 2 cores
# because the tests mostly wait on the servers and commands they start; --dist loadfile keeps
# each test file on one worker, in order, so its module-scoped servers start once. Each worker
# starts its own session PostgreSQL and SoftHSM2 token in its own temporary directory.
# `make unit TEST_WORKERS=0` runs the suite in this one process instead.
TEST_WORKERS ?= 4
unit: $(INSTALLED) system-deps
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile

test: lint typecheck unit

check: test

# Writes docs/benchmarks.md and docs/latency.png (about 10 minutes; needs wrk and SoftHSM2;
# the 100,000-key store scale figures fill an SQLite file and a PostgreSQL database first).
bench: $(INSTALLED)
	bash scripts/install-system-deps.sh --bench
	$(BIN)/python -m tools.bench
	$(BIN)/python -m tools.authz_bench --append docs/benchmarks.md
	$(BIN)/python -m tools.keystore_scale --append docs/benchmarks.md
	$(BIN)/python -m tools.keystore_scale --postgresql --append docs/benchmarks.md

# The property-test targets (body parsing, SigV4 verification) at scale, for release checks:
# `make fuzz FUZZ_SECONDS=600`. Prints the number of inputs run; fails on any exception that is
# not the project's own.
FUZZ_SECONDS ?= 60
fuzz: $(INSTALLED)
	$(BIN)/python -m tools.fuzz --seconds $(FUZZ_SECONDS)

# Re-pin after changing dependencies in pyproject.toml.
lock: $(INSTALLED)
	$(BIN)/pip freeze --all --exclude-editable --exclude xks-proxy --exclude pip > constraints.txt

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
