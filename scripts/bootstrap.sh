#!/usr/bin/env bash
# Installs what the tests and the benchmarks need on a fresh Debian machine, and is cheap
# when everything is already there:
#   - Dovecot (dovecot-core, dovecot-pop3d) from Debian's packages;
#   - a Redis server answering on 127.0.0.1:6379 (installed and started when none answers);
#   - a virtualenv in .venv with the project and its test/lint dependencies.
# With --python-only, only the virtualenv (what `make demo` needs; no root required).
# With --bench, also what only the benchmarks use: wrk (Debian) and orjson (the bare-app
# baseline of tests/bench/http_warm.py).
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

PY=${PYTHON:-python3}
if ! [ -x .venv/bin/python ]; then
    log "creating .venv"
    "$PY" -m venv .venv
fi
stamp=.venv/.pop3gw-deps
if ! [ -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    log "installing Python dependencies"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[test,lint]'
    touch "$stamp"
fi
if [ "$bench" -eq 1 ] && ! .venv/bin/python -c 'import orjson' 2>/dev/null; then
    log "installing orjson (benchmark baseline only)"
    .venv/bin/python -m pip install -q orjson
fi
