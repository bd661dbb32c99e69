#!/usr/bin/env bash
# Drift, looked at on purpose: the whole suite (ruff, mypy, import contracts, pytest) in a
# throw-away virtualenv holding the newest releases pyproject.toml allows, instead of the
# pinned ones of requirements/dev.lock. Prints what is newer than the lock and which steps
# broke; exits non-zero if any did. Nothing in the work tree changes: to take the new
# releases, run scripts/lock.sh --upgrade, then make test, and commit the locks.
set -uo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export VENV="$work/venv" POP3GW_DEPS=latest
scripts/bootstrap.sh || { echo "deps-latest: installing the newest releases failed" >&2; exit 1; }
bin="$VENV/bin"

echo "== newer than requirements/dev.lock"
"$bin/python" - <<'PY'
import re
from importlib.metadata import distributions
from pathlib import Path

from packaging.utils import canonicalize_name

locked = {
    canonicalize_name(m[1]): m[2]
    for m in re.finditer(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)", Path("requirements/dev.lock").read_text(), re.M)
}
newer = []
for dist in distributions():
    name = canonicalize_name(dist.metadata["Name"])
    if name in locked and locked[name] != dist.version:
        newer.append(f"  {name}: {locked[name]} -> {dist.version}")
print("\n".join(sorted(newer)) or "  nothing: the lock is current")
PY

failed=()
step() {
    local name=$1
    shift
    echo "== $name"
    "$@" || failed+=("$name")
}
step "ruff" "$bin/ruff" check gateway tests
step "ruff format" "$bin/ruff" format --check gateway tests
step "mypy" "$bin/mypy"
step "import contracts" "$bin/lint-imports"
step "pytest" env PATH="$bin:$PATH" "$bin/pytest" -p no:cacheprovider -q "$@"

if [ "${#failed[@]}" -eq 0 ]; then
    echo "deps-latest: everything passes with the newest releases"
else
    echo "deps-latest: broken with the newest releases: ${failed[*]}" >&2
    exit 1
fi
