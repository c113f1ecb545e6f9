# cuelog: `make run` serves, `make test` checks everything. Both set up .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8088
DATA ?= ./data
NODE_CLIENTS := tests/node/node_modules/.package-lock.json

.PHONY: run test check install lint typecheck layers pytest bench soak clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstalled on every `make test`: a strict editable install only sees files present at install time.
install: $(BIN)/python $(NODE_CLIENTS)
	$(BIN)/python -m pip install --quiet -e '.[dev]' --config-settings editable_mode=strict

# The Node clients the tests run (OpenAI Node SDK, Vercel AI SDK), as pinned by the lock file.
$(NODE_CLIENTS): tests/node/package.json tests/node/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --prefix tests/node --no-audit --no-fund --loglevel=error && touch $@; \
	else echo "npm not found: the Node client tests will be skipped"; fi

# Serving needs only the runtime dependencies; a default editable install sees new files too.
run: $(BIN)/python
	@$(BIN)/python -c "import cuelog.cli" 2>/dev/null || $(BIN)/python -m pip install --quiet -e .
	@echo "cuelog: serving http://$(HOST):$(PORT)  (data in $(DATA), model: echo)"
	@echo "try:    curl -s http://$(HOST):$(PORT)/health"
	$(BIN)/cuelog serve --host $(HOST) --port $(PORT) --data-dir $(DATA)

test: install check

check: lint typecheck layers pytest

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck:
	$(BIN)/mypy -p cuelog.runtime -p cuelog.actors -p cuelog.http -p cuelog.cli
	$(BIN)/mypy tests benchmarks

layers:
	$(BIN)/lint-imports

# Several workers (one per CPU, at most 4): most tests wait on servers, fsyncs and subprocesses.
# Tests marked `serial` compare timings they measure, so they run alone afterwards.
PYTEST_WORKERS ?= auto
pytest:
	$(BIN)/pytest -n $(PYTEST_WORKERS) --maxprocesses 4 --dist worksteal -m "not slow and not serial"
	$(BIN)/pytest -m "serial and not slow" || [ $$? -eq 5 ]

# The HTTP benchmark drives load with wrk (a C load generator): installed here when apt can.
bench: install
	@command -v wrk >/dev/null || apt-get install -y -q wrk >/dev/null 2>&1 || sudo -n apt-get install -y -q wrk >/dev/null 2>&1 \
		|| echo "bench: wrk is not installed and could not be; install it (apt-get install wrk, brew install wrk) for the HTTP figures"
	$(BIN)/python -m benchmarks

soak: install
	CUELOG_SERVER_KILLS=1000 CUELOG_CLUSTER_KILLS=200 CUELOG_CRASH_ITERATIONS=1000 CUELOG_FUZZ_EXAMPLES=20000 \
		CUELOG_MANY_SESSIONS=100000 $(BIN)/pytest -m "slow or not slow" tests/reliability
	CUELOG_SCHEMATHESIS_EXAMPLES=200 $(BIN)/pytest tests/http/test_openapi.py

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache
