# unbroken: `make help` lists the targets.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help demo test lint typecheck unit integration bench chaos clean pgbouncer

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP) ## run the main job on the embedded database
	$(BIN)/unbroken demo $(DEMO_ARGS)

PG15 := /usr/lib/postgresql/15/bin

test: $(STAMP) lint typecheck pgbouncer ## lint, type-check, unit and integration tests (and again on PG 15)
	$(BIN)/pytest -q
	@if [ -x $(PG15)/postgres ]; then \
	  echo "== the connection layer and migrations again, on PostgreSQL 15 =="; \
	  UNBROKEN_TEST_PG_BIN=$(PG15) $(BIN)/pytest -q tests/integration/test_pool.py \
	    tests/integration/test_classify.py tests/integration/test_migrations.py; \
	fi

# tests/integration/test_pgbouncer.py runs a real PgBouncer: installed here as root with apt
# (CI), else its tests skip with the reason.
pgbouncer: ## install PgBouncer for its tests (as root, with apt; else they skip)
	@command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ] || [ "$$(id -u)" != 0 ] \
	  || ! command -v apt-get >/dev/null || { export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q pgbouncer >/dev/null 2>&1 \
	  || { apt-get update -q >/dev/null && apt-get install -y -q pgbouncer >/dev/null; } \
	  || echo "pgbouncer could not be installed: its tests will skip"; }

lint: $(STAMP) ## ruff check and format check
	$(BIN)/ruff check src tests bench examples scripts
	$(BIN)/ruff format --check src tests bench examples scripts

typecheck: $(STAMP) ## mypy (strict) on the package
	$(BIN)/mypy

unit: $(STAMP) ## unit tests only (no database)
	$(BIN)/pytest -q tests/unit

bench: $(STAMP) ## benchmarks (figures, not pass/fail)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

chaos: $(STAMP) ## soak under chaos: MINUTES=10 make chaos
	$(BIN)/python -m bench.chaos --minutes $${MINUTES:-10}

clean: ## remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
