# The two commands: `make demo` runs the main job, `make test` runs the whole suite.
# Both create the virtualenv and install everything on first use; both are idempotent.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PROTO_ROOT := contracts/proto
GEN := contracts/gen

.PHONY: demo test lint typecheck protolint unit proto schema bench clean install

demo: $(STAMP)
	$(BIN)/jetledger demo

test: $(STAMP) lint typecheck protolint
	$(BIN)/pytest

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

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

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
