# The index of what one can do with pop3gw.
.PHONY: help install test lint bench run demo clean

VENV := .venv/bin

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

install:  ## install Dovecot, Redis and the Python deps (idempotent)
	scripts/bootstrap.sh

test:  ## everything CI runs: install, ruff, mypy, import contracts, pytest + coverage
	scripts/test.sh

lint: install  ## ruff, mypy and the import contracts only
	$(VENV)/ruff check gateway tests
	$(VENV)/ruff format --check gateway tests
	$(VENV)/mypy
	$(VENV)/lint-imports

bench: install  ## benchmarks: ratios against baselines measured in the same run
	$(VENV)/python -m tests.bench

clean:  ## remove caches and the virtualenv
	rm -rf .venv .mypy_cache .ruff_cache .pytest_cache .coverage htmlcov

demo:  ## run the gateway with a built-in demo mailbox on http://127.0.0.1:8080
	scripts/bootstrap.sh --python-only
	$(VENV)/pop3gw demo

run:  ## run the gateway from POP3GW_* settings (see README)
	scripts/bootstrap.sh --python-only
	$(VENV)/pop3gw serve
