# The two commands: `make demo` runs the main job, `make test` runs the whole suite.
# Both create the virtualenv and install everything on first use; both are idempotent.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PROTO_ROOT := contracts/proto
GEN := contracts/gen
BUILD_IN := requirements/build.in
RUNTIME_LOCK := requirements/runtime.txt
DEV_LOCK := requirements/dev.txt

.PHONY: demo test lint typecheck protolint unit proto schema bench soak faults clean install lock upgrade

demo: $(STAMP)
	$(BIN)/jetledger demo

test: $(STAMP) lint typecheck protolint
	$(BIN)/pytest

install: $(STAMP)

# Installs come only from the lock (requirements/dev.txt: exact versions, every file's hash), then
# the project itself without dependencies and without fetching a build backend (hatchling is locked).
$(STAMP): pyproject.toml $(DEV_LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r $(DEV_LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# `make lock` re-resolves after pyproject.toml changed, keeping every pin it can; `make upgrade`
# moves every pin to the newest release pyproject.toml allows. Commit the lock files with a
# message that says what moved (git diff requirements/ shows it).
LOCK_FLAGS := --quiet --universal --python-version 3.11 --generate-hashes --custom-compile-command 'make lock'

lock: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml $(BUILD_IN) $(LOCK_FLAGS) $(UPGRADE) -o $(RUNTIME_LOCK)
	$(BIN)/uv pip compile pyproject.toml $(BUILD_IN) --extra dev -c $(RUNTIME_LOCK) $(LOCK_FLAGS) $(UPGRADE) -o $(DEV_LOCK)

upgrade:
	$(MAKE) lock UPGRADE=--upgrade

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/vulture

typecheck: $(STAMP)
	$(BIN)/mypy contracts eventstore commands projections services bench tests

protolint: $(STAMP)
	cd $(PROTO_ROOT) && ../../$(BIN)/buf lint

# Regenerate the checked-in protobuf/gRPC stubs (tests/unit/test_generated_code.py fails on drift).
proto: $(STAMP)
	$(BIN)/python -m contracts.codegen

# Re-export the event JSON Schema (a test fails when contracts/schema/events.schema.json drifts).
schema: $(STAMP)
	$(BIN)/python -m contracts.events_schema > contracts/schema/events.schema.json

bench: $(STAMP)
	$(BIN)/python -m bench.eventstore_bench

# The fault campaign's long profile (docs/faults.md): >= 20 faults of each kind over >= 50,000
# commands, on one node and on a 3-node NATS cluster; prints the table, fails on any finding.
# `make test` runs the short profile (tests/faults/test_campaign.py).
faults: $(STAMP)
	$(BIN)/python -m tests.faults.campaign --profile long

# The long soak of issue 16 (docs/soak.md): 1,000,000 commands over 1,000 cards, then over 100,000
# cards, on the real system; each prints a table per 100k commands and one JSON line at the end.
soak: $(STAMP)
	$(BIN)/python -m bench.soak_bench --profile long --json | tee soak-long.json
	$(BIN)/python -m bench.soak_bench --profile wide --json | tee soak-wide.json

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
