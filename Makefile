# The README's two commands are `make run` and `make test`; .ci/run calls `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip --quiet --disable-pip-version-check
# Every install comes from a lock file with hashes, never from pyproject.toml's ranges, so what a
# fresh clone runs and tests does not depend on what the package index released today:
#   deploy/requirements.lock       the runtime: what the production image installs
#   deploy/requirements-dev.lock   the runtime + `make run`'s dev tools (embedded Valkey, honcho)
#   deploy/requirements-test.lock  the above + the test tools
# The dev and test locks are resolved with the runtime lock as a constraint, so the tests run on
# exactly the versions the image ships. `make lock` moves them, deliberately, in a reviewed diff.
RUN_LOCK  := deploy/requirements-dev.lock
TEST_LOCK := deploy/requirements-test.lock
RUN_STAMP  := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test
STAMP := $(TEST_STAMP)

.PHONY: run test lint bench demo soak schema lock screenshots clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python >= 3.11 is required")'
	$(PYTHON) -m venv $(VENV)

# The project itself goes in editable, without resolving anything (--no-deps) and built by the
# locked setuptools (--no-build-isolation: no unpinned build backend fetched from the index).
$(RUN_STAMP): pyproject.toml $(RUN_LOCK) | $(BIN)/python
	$(PIP) install --require-hashes -r $(RUN_LOCK)
	$(PIP) install --no-deps --no-build-isolation -e .
	@touch $@

$(TEST_STAMP): pyproject.toml $(TEST_LOCK) | $(BIN)/python
	$(PIP) install --require-hashes -r $(TEST_LOCK)
	$(PIP) install --no-deps --no-build-isolation -e .
	@touch $@ $(RUN_STAMP)

run: $(RUN_STAMP)
	@$(BIN)/codat-webhooks dev || { status=$$?; [ $$status -eq 130 ] || exit $$status; }

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

demo: $(RUN_STAMP)
	$(BIN)/codat-webhooks demo

# Every benchmark in one run, each figure beside bench/baseline.json (~8 min), the replicated
# variant (REDIS_MIN_REPLICAS=1, one replica on loopback) included, each table with Redis
# commands, round trips and Valkey CPU per event (bench/README.md); BENCH_ARGS picks parts, e.g.
# BENCH_ARGS='--parts drain,codat'. python -m bench.ingest is the ingest table alone.
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

# The chaos soak (tests/soak): ~10,000 deliveries per seed against web, 2 workers, Valkey and a failing Codat.
soak: $(STAMP)
	$(BIN)/python -m tests.soak --connections 1500 --seeds 1,2,3

# Failover with a live Sentinel setup (tests/failover): primary killed, primary cut off from the
# sentinels, replicas behind, each with REDIS_MIN_REPLICAS 0 and 1, several rounds (~4 min);
# FAILOVER_ARGS e.g. '--rounds 1 --scenarios cut_off'. `make test` runs one round of each.
.PHONY: failover
failover: $(STAMP)
	$(BIN)/python -m tests.failover --rounds 3 $(FAILOVER_ARGS)

# Schemathesis on the sandbox's implemented operations, longer than the bounded run in `make test`.
schema: $(STAMP)
	$(BIN)/python -m tests.sandbox_schema --examples 500

# The screenshots of the ops console (docs/, shown in docs/operator/console.md), taken by its browser test against the
# sandbox: needs a chromium (apt-get install chromium).
screenshots: $(STAMP)
	CONSOLE_SCREENSHOTS=docs CONSOLE_BROWSER_REQUIRED=1 $(BIN)/pytest tests/test_console_browser.py -q

# The three lock files (see the top of this file), from pyproject.toml: run it after changing a
# dependency or to move to newer releases, and review the diff. uv runs from its own venv, pinned,
# so that the lock tool is not part of what the tests run on. It keeps the versions already
# locked where they still fit; `make lock LOCK_UPGRADE=--upgrade` moves everything to the newest.
UV_VERSION := 0.13.9
LOCK_VENV  := .venv-lock
LOCK_ARGS  := $(LOCK_UPGRADE) --generate-hashes --python-version 3.11 --python-platform linux --custom-compile-command "make lock" --quiet
lock:
	test -x $(LOCK_VENV)/bin/uv || ($(PYTHON) -m venv $(LOCK_VENV) && $(LOCK_VENV)/bin/pip install --quiet uv==$(UV_VERSION))
	$(LOCK_VENV)/bin/uv pip compile pyproject.toml $(LOCK_ARGS) -o deploy/requirements.lock
	echo 'setuptools>=68' | $(LOCK_VENV)/bin/uv pip compile pyproject.toml - --extra dev \
		-c deploy/requirements.lock $(LOCK_ARGS) -o $(RUN_LOCK)
	echo 'setuptools>=68' | $(LOCK_VENV)/bin/uv pip compile pyproject.toml - --extra dev --extra test \
		-c deploy/requirements.lock -c $(RUN_LOCK) $(LOCK_ARGS) -o $(TEST_LOCK)

clean:
	rm -rf $(VENV) $(LOCK_VENV) .data
