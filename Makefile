# The index of what one can do with pop3gw.
.PHONY: help install test lint bench run demo clean lock deps-latest

VENV := .venv/bin

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

install:  ## install Dovecot, Redis and the Python deps from requirements/dev.lock (idempotent)
	scripts/bootstrap.sh

test:  ## everything CI runs: install, ruff, mypy, import contracts, pytest + coverage
	scripts/test.sh

lint: install  ## ruff, mypy and the import contracts only
	$(VENV)/ruff check gateway tests
	$(VENV)/ruff format --check gateway tests
	$(VENV)/mypy
	$(VENV)/lint-imports

bench:  ## benchmarks: ratios against baselines measured in the same run
	scripts/bootstrap.sh --bench
	$(VENV)/python -m tests.bench $(BENCH)

lock:  ## re-resolve requirements/*.lock after a change to pyproject.toml (asks PyPI)
	scripts/lock.sh

deps-latest:  ## the suite in a throw-away venv with the newest releases: what would break
	scripts/deps-latest.sh

clean:  ## remove caches and the virtualenv
	rm -rf .venv .mypy_cache .ruff_cache .pytest_cache .coverage htmlcov

demo:  ## the gateway with a built-in demo mailbox on http://127.0.0.1:8080 (make demo LISTEN=127.0.0.1:9090)
	scripts/bootstrap.sh --python-only
	$(VENV)/pop3gw demo $(if $(LISTEN),--listen $(LISTEN))

run:  ## run the gateway from POP3GW_* settings (see README)
	scripts/bootstrap.sh --python-only
	$(VENV)/pop3gw serve

.PHONY: deploy-check
deploy-check:  ## container image + Kubernetes manifests: lint, validate, build, run (root)
	bash deploy/check.sh

.PHONY: compat
compat:  ## POP3 client vs Mailutils, Courier, Cyrus from Debian packages (root; manual, not CI)
	scripts/bootstrap.sh --python-only
	$(VENV)/python -m tests.compat.run --prepare $(SERVERS)

.PHONY: fuzz soak abuse
fuzz: install  ## fuzzing: >= 100,000 generated inputs, then schemathesis >= 1,000 live cases
	@rc=0; \
	POP3GW_FUZZ=long $(VENV)/pytest tests/fuzz -p no:cacheprovider --timeout=7200 -q -rxX || rc=1; \
	$(VENV)/python -m tests.fuzz.live_schemathesis --examples $(or $(FUZZ_EXAMPLES),150) \
		--min-cases 1000 || rc=1; \
	exit $$rc

abuse: install  ## isolation scenarios against real gateway processes, each figure beside its goal
	$(VENV)/python -m tests.abuse.run $(SCENARIOS)

soak: install  ## soak: gateway + Dovecot + Redis under mixed load (SOAK_SECONDS, default 600)
	$(VENV)/python -m tests.soak.run
