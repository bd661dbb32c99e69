#!/usr/bin/env bash
# Regenerates the pinned, hashed requirement files: one resolution, three views of it.
#
#   scripts/lock.sh          (or: make lock)
#
#   requirements/dev.lock      runtime + test + lint + bench: what `make test` installs
#                              (the test command never resolves anything itself)
#   requirements/runtime.lock  runtime only: what `make demo` and the container image
#                              install; resolved with dev.lock as constraints, so it pins
#                              the very same versions
#   requirements/build.lock    pip, setuptools and wheel: the virtualenv's build tools and
#                              the image's build stage
#
# The resolution is universal (every Python 3.11+ release and platform, with markers where a
# dependency is conditional, e.g. async-timeout before Python 3.11.3) and takes every file
# PyPI holds for each pinned version, so the hashes hold on any machine. Only PyPI is asked:
# local pip or uv configuration is ignored. Run it after changing dependencies in
# pyproject.toml, or on purpose to take newer releases (look at `make deps-latest` first),
# and commit the three files together.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.9  # the resolver itself is pinned too: its output format is part of the lock
INDEX=https://pypi.org/simple
tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT

python3 -m venv "$tools/venv"
"$tools/venv/bin/python" -m pip install -q --isolated --disable-pip-version-check --index-url "$INDEX" "uv==$UV_VERSION"
uv=("$tools/venv/bin/uv" pip compile --no-config --index-url "$INDEX" --universal
    --python-version 3.11 --generate-hashes --quiet)
upgrade=()
[ "${1:-}" = "--upgrade" ] && upgrade=(--upgrade)

mkdir -p requirements
export UV_CUSTOM_COMPILE_COMMAND="scripts/lock.sh"
"${uv[@]}" "${upgrade[@]}" pyproject.toml --extra test --extra lint --extra bench \
    -o requirements/dev.lock
"${uv[@]}" pyproject.toml -c requirements/dev.lock -o requirements/runtime.lock
printf 'pip\nsetuptools>=77\nwheel\n' >"$tools/build.in"
"${uv[@]}" "${upgrade[@]}" "$tools/build.in" -o requirements/build.lock
sed -i "s|$tools/build.in|build tools: pip, setuptools>=77, wheel|" requirements/build.lock
for f in requirements/*.lock; do
    printf '%s: %s packages\n' "$f" "$(grep -cE '^[A-Za-z0-9]' "$f")"
done
