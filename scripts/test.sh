#!/usr/bin/env bash
# The one command that passes all tests on a fresh machine: installs what is missing
# (scripts/bootstrap.sh: Debian packages, Redis, the Python dependencies from
# requirements/dev.lock), then lint, types, import contracts and the test suite with coverage.
# Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
VENV=${VENV:-.venv}
PATH="$(cd "$VENV/bin" && pwd):$PATH"
export PATH

echo "== ruff"
ruff check gateway tests
ruff format --check gateway tests
echo "== mypy (strict on gateway/)"
mypy
echo "== import contracts"
lint-imports
echo "== pytest"
rm -f .coverage .coverage.*
set +e
coverage run -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests: failing" >&2
    exit 1
fi
[ "$rc" -eq 0 ] || exit "$rc"
echo "== coverage"
coverage report --fail-under=90
coverage report --include='gateway/pop3/*' --fail-under=95
bash deploy/check.sh  # the container image and the Kubernetes manifests (deploy/README.md)
