# The README's two commands are `make run` and `make test`; .ci/run calls `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint bench demo soak schema lock screenshots clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python >= 3.11 is required")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev,test]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/codat-webhooks dev

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

demo: $(STAMP)
	$(BIN)/codat-webhooks demo

# Every benchmark in one run, each figure beside bench/baseline.json (~6 min); BENCH_ARGS picks
# parts, e.g. BENCH_ARGS='--parts drain,codat'. python -m bench.ingest is the ingest table alone.
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

# The chaos soak (tests/soak): ~10,000 deliveries per seed against web, 2 workers, Valkey and a failing Codat.
soak: $(STAMP)
	$(BIN)/python -m tests.soak --connections 1500 --seeds 1,2,3

# Schemathesis on the sandbox's implemented operations, longer than the bounded run in `make test`.
schema: $(STAMP)
	$(BIN)/python -m tests.sandbox_schema --examples 500

# The README's screenshots of the ops console (docs/), taken by its browser test against the
# sandbox: needs a chromium (apt-get install chromium).
screenshots: $(STAMP)
	CONSOLE_SCREENSHOTS=docs CONSOLE_BROWSER_REQUIRED=1 $(BIN)/pytest tests/test_console_browser.py -q

# deploy/requirements.lock, which the production image installs (hashes checked): pyproject.toml's
# runtime dependencies, resolved for the image's Python and platform. Run it after changing them.
lock: $(STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check uv
	$(BIN)/uv pip compile pyproject.toml --generate-hashes --python-version 3.11 --python-platform linux \
		--custom-compile-command "make lock" --quiet -o deploy/requirements.lock

clean:
	rm -rf $(VENV) .data
