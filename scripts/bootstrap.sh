#!/usr/bin/env bash
# Installs what the tests and the benchmarks need on a fresh Debian machine, and is cheap
# when everything is already there:
#   - Dovecot (dovecot-core, dovecot-pop3d) from Debian's packages;
#   - a Redis server answering on 127.0.0.1:6379 (installed and started when none answers);
#   - a virtualenv in .venv with the project and its test/lint dependencies.
# With --python-only, only the virtualenv (what `make demo` needs; no root required).
# With --bench, also wrk (Debian), which only the benchmarks use (orjson, their other extra,
# is in the dev lock).
set -euo pipefail
cd "$(dirname "$0")/.."
python_only=0
bench=0
[ "${1:-}" = "--python-only" ] && python_only=1
[ "${1:-}" = "--bench" ] && bench=1

log() { printf '[bootstrap] %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo "$@"; else
        log "need root to run: $*"; return 1; fi
}

apt_updated=0
apt_install() {
    if [ "$apt_updated" -eq 0 ]; then
        as_root apt-get update -qq
        apt_updated=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if [ "$python_only" -eq 0 ] && { ! [ -x /usr/sbin/dovecot ] || ! [ -x /usr/lib/dovecot/pop3 ]; }; then
    log "installing Dovecot from Debian's packages"
    apt_install dovecot-core dovecot-pop3d
fi

redis_answers() {
    python3 - <<'PY'
import socket, sys
try:
    with socket.create_connection(("127.0.0.1", 6379), timeout=2) as s:
        s.sendall(b"PING\r\n")
        sys.exit(0 if s.recv(64).startswith(b"+PONG") else 1)
except OSError:
    sys.exit(1)
PY
}

if [ "$bench" -eq 1 ] && ! command -v wrk >/dev/null 2>&1; then
    log "installing wrk from Debian's packages"
    apt_install wrk
fi

if [ "$python_only" -eq 0 ] && ! redis_answers; then
    if ! command -v redis-server >/dev/null 2>&1; then
        log "installing redis-server from Debian's packages"
        apt_install redis-server
    fi
    log "starting redis-server on 127.0.0.1:6379"
    mkdir -p /tmp/pop3gw-redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /tmp/pop3gw-redis --logfile /tmp/pop3gw-redis/redis.log
    for _ in $(seq 1 50); do redis_answers && break; sleep 0.1; done
    redis_answers || { log "redis-server did not answer on 127.0.0.1:6379"; exit 1; }
fi

# Python dependencies come only from the locks (scripts/lock.sh writes them): exact versions
# with hashes, so a release published by someone else never changes what the tests run on.
# VENV names another virtualenv (make deps-latest uses a throw-away one); with
# POP3GW_DEPS=latest the newest releases pyproject.toml allows are installed instead.
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
deps=${POP3GW_DEPS:-locked}
if ! [ -x "$VENV/bin/python" ]; then
    log "creating $VENV"
    "$PY" -m venv "$VENV"
fi
pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
if [ "$deps" = latest ]; then
    log "installing the newest releases pyproject.toml allows (not the locks)"
    "${pip[@]}" --upgrade pip setuptools wheel
    "${pip[@]}" --upgrade --upgrade-strategy eager -e '.[test,lint,bench]'
    exit 0
fi
if [ "$python_only" -eq 1 ]; then
    want=runtime
else
    want=dev
fi
# The stamp records which lock (and which version of it) the virtualenv holds; the dev lock
# holds everything the runtime lock does.
lock_digest() { cat pyproject.toml requirements/build.lock "requirements/$1.lock" | sha256sum | cut -c1-16; }
stamp="$VENV/.pop3gw-deps"
have=$(cat "$stamp" 2>/dev/null || true)
if [ "$have" != "$want $(lock_digest "$want")" ] && [ "$have" != "dev $(lock_digest dev)" ]; then
    log "installing Python dependencies from requirements/$want.lock"
    "${pip[@]}" --require-hashes -r requirements/build.lock
    "${pip[@]}" --require-hashes -r "requirements/$want.lock"
    # (setuptools warns that an editable install is editable: nothing to act on)
    PYTHONWARNINGS=ignore "${pip[@]}" --no-deps --no-build-isolation -e .
    "$VENV/bin/python" -m pip check --disable-pip-version-check >/dev/null || {
        "$VENV/bin/python" -m pip check; log "the lock does not satisfy pyproject.toml: run scripts/lock.sh"; exit 1; }
    echo "$want $(lock_digest "$want")" >"$stamp"
fi
