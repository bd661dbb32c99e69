"""Benchmark: a warm 50-message listing page under load, against a bare aiohttp app.

The gateway (``python -m gateway serve``, its own process) serves ``GET
/v1/mailboxes/me/messages?limit=50`` of a 1,000-message Dovecot mailbox with HTTP Basic, to
``wrk -t2 -c16 --latency``. It is warmed first: one request (login, UIDL+LIST, 50 TOP,
headers cached), then a short wrk run. Settings are the defaults, so the steady state
includes what they cause: the listing is served from the last login's snapshot for
``snapshot_max_age`` (5 s), then a request logs in again (UIDL+LIST) and builds the page from
the header cache. The measured window reports how many logins, session leases (and their
waits) and cache hits it saw.

The baseline is a bare aiohttp app in its own process (``tests/bench/bare_app.py``) that
answers the same path with a pre-built body: the gateway's own page, re-encoded once with
orjson, so both send the same number of bytes. It is measured with the same wrk command
(same requests, Authorization header included, which it ignores) in the same run: three
rounds of one run each, alternating which of the two goes first (the machines are shared,
and a slow spell then lands on both); the medians of the rounds are compared.

The whole comparison runs twice: with the in-process header cache and with Redis
(127.0.0.1:6379). Target: the gateway's requests/s >= 50% of the bare app's; p99 latencies
are reported for both. wrk comes from Debian (``apt-get install wrk``); without it this
benchmark says so and fails.
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.bench import report
from tests.bench.http_listing import messages, prime
from tests.bench.processes import (
    Gateway,
    basic_auth,
    stop,
    wait_until_serving,
)
from tests.support.dovecot import Dovecot, free_port
from tests.support.procfs import cpu_seconds

NAME = "http_warm"
MAILBOX_SIZE = 1000
LIMIT = 50
CONNECTIONS = 16
THREADS = 2
WARMUP_SECONDS = 3
MEASURE_SECONDS = 5
ROUNDS = 3
TARGET = 0.5
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


@dataclass(frozen=True)
class WrkResult:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: int


def _ms(text: str) -> float:
    match = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"cannot read the latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(output: str) -> WrkResult:
    """Requests/sec, the 50% and 99% latencies, and the error counts of ``wrk --latency``."""
    rps = re.search(r"^Requests/sec:\s+([0-9.]+)", output, re.M)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.M)
    total = re.search(r"^\s+(\d+) requests in", output, re.M)
    if rps is None or p50 is None or p99 is None or total is None:
        raise RuntimeError(f"cannot read wrk's output:\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    return WrkResult(
        requests_per_second=float(rps.group(1)),
        p50_ms=_ms(p50.group(1)),
        p99_ms=_ms(p99.group(1)),
        requests=int(total.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(g) for g in sockets.groups()) if sockets else 0,
    )


def wrk(url: str, authorization: str | None, seconds: int) -> WrkResult:
    command = [
        "wrk",
        f"-t{THREADS}",
        f"-c{CONNECTIONS}",
        f"-d{seconds}s",
        "--latency",
        "--timeout",
        "10s",
    ]
    if authorization:
        command += ["-H", f"Authorization: {authorization}"]
    done = subprocess.run(
        [*command, url], capture_output=True, text=True, timeout=seconds + 30, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse_wrk(done.stdout)


def _get(url: str, authorization: str | None = None) -> bytes:
    request = urllib.request.Request(url)
    if authorization:
        request.add_header("Authorization", authorization)
    with urllib.request.urlopen(request, timeout=30) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{url} answered {resp.status}")
        body: bytes = resp.read()
        return body


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? ([0-9.e+-]+)$", re.M)
_WATCHED = {
    'pop3gw_pool_events_total{kind="open"}': "logins",
    "pop3gw_pool_lease_wait_seconds_count": "leases",
    "pop3gw_pool_lease_wait_seconds_sum": "lease wait s",
    'pop3gw_header_cache_events_total{kind="hit"}': "cache hits",
}


def _counters(base: str) -> dict[str, float] | None:
    """The gateway's counters this benchmark reports on (None: /metrics failed)."""
    try:
        text = _get(base + "/metrics").decode()
    except (OSError, RuntimeError):
        return None
    found = {f"{name}{labels}": float(v) for name, labels, v in _SAMPLE.findall(text)}
    return {label: found.get(key, 0.0) for key, label in _WATCHED.items()}


def _during(before: dict[str, float] | None, after: dict[str, float] | None) -> str:
    if before is None or after is None:
        return "n/a (/metrics did not answer)"
    return ", ".join(f"{label} {after[label] - before[label]:.4g}" for label in _WATCHED.values())


class BareApp:
    """``python -m tests.bench.bare_app`` serving ``body``, in its own process."""

    def __init__(self, body: bytes) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="pop3gw-bench-")
        self._body = Path(self._dir.name) / "page.json"
        self._body.write_bytes(body)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def __enter__(self) -> BareApp:
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.bench.bare_app",
                "--port",
                str(self.port),
                "--body",
                str(self._body),
            ],
            stdin=subprocess.DEVNULL,
        )
        try:
            wait_until_serving(self.base + "/healthz", self._proc, 30)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            stop(self._proc)
            self._proc = None
        self._dir.cleanup()


def _compare(dovecot: Dovecot, *, redis: bool) -> bool:
    mode = "Redis header cache" if redis else "in-process header cache"
    user = dovecot.new_user("warm")
    user.deliver_many(messages(MAILBOX_SIZE))
    prime(dovecot.port, user)
    auth = basic_auth(user.name, user.password)
    path = f"/v1/mailboxes/me/messages?limit={LIMIT}"
    with Gateway(dovecot.port, redis=redis) as gateway:
        body = _get(gateway.base + path, auth)  # login, UIDL+LIST, 50 TOP, cached
        page = json.loads(body)
        if len(page["messages"]) != LIMIT or any(m["subject"] is None for m in page["messages"]):
            raise RuntimeError("the warm-up page is not 50 messages with headers")
        with BareApp(body) as bare:
            bare_size = len(_get(bare.base + path))
            wrk(bare.base + path, auth, WARMUP_SECONDS)
            wrk(gateway.base + path, auth, WARMUP_SECONDS)
            counted = _counters(gateway.base)
            runs: dict[str, list[WrkResult]] = {"bare app": [], "gateway": []}
            cpu = {"bare app": 0.0, "gateway": 0.0}
            servers = {"bare app": (bare.base, bare.pid), "gateway": (gateway.base, gateway.pid)}
            for round_ in range(ROUNDS):
                # Alternate which goes first: a slow spell of the machine lands on both.
                order = ["bare app", "gateway"] if round_ % 2 == 0 else ["gateway", "bare app"]
                for name in order:
                    base, pid = servers[name]
                    before = cpu_seconds(pid)
                    runs[name].append(wrk(base + path, auth, MEASURE_SECONDS))
                    cpu[name] += cpu_seconds(pid) - before
            during = _during(counted, _counters(gateway.base))
        if not gateway.alive():
            raise RuntimeError("the gateway died during the benchmark")
    print(
        f"\nwarm listing, limit={LIMIT} of {MAILBOX_SIZE} messages, {mode}: "
        f"wrk -t{THREADS} -c{CONNECTIONS} -d{MEASURE_SECONDS}s, {ROUNDS} rounds, alternating"
    )
    print(f"  body: gateway {len(body)} octets, bare app {bare_size} octets (orjson)")
    print(
        f"  {'server':<16} {'requests/s':>10} {'p50 ms':>7} {'p99 ms':>7} {'requests':>9}  errors"
    )
    for round_ in range(ROUNDS):
        for name in ("bare app", "gateway"):
            r = runs[name][round_]
            print(
                f"  {name:<16} {r.requests_per_second:10.0f} {r.p50_ms:7.2f} {r.p99_ms:7.2f}"
                f" {r.requests:9d}  {r.non_2xx} non-2xx, {r.socket_errors} socket"
            )
    medians = {
        name: statistics.median(r.requests_per_second for r in results)
        for name, results in runs.items()
    }
    print(
        f"  medians of the {ROUNDS} rounds: gateway {medians['gateway']:.0f}, bare app "
        f"{medians['bare app']:.0f} requests/s"
    )
    per_request = {name: cpu[name] / sum(r.requests for r in runs[name]) * 1e6 for name in runs}
    print(
        f"  CPU per request: gateway {per_request['gateway']:.0f} us, bare app "
        f"{per_request['bare app']:.0f} us"
    )
    print(f"  the gateway's counters over its runs (/metrics): {during}")
    if any(r.non_2xx or r.socket_errors for results in runs.values() for r in results):
        return report.failed(NAME, f"{mode}: errors under load (see above)")
    ratio = medians["gateway"] / medians["bare app"]
    report.info(
        NAME,
        f"{mode}: p99 latency, gateway vs bare app (the worst of their rounds)",
        f"{max(r.p99_ms for r in runs['gateway']):.2f} vs "
        f"{max(r.p99_ms for r in runs['bare app']):.2f} ms",
    )
    return report.target(
        NAME,
        f"{mode}: gateway requests/s >= {TARGET:.0%} of the bare app's (medians)",
        f"{ratio:.0%}",
        ratio >= TARGET,
    )


def run() -> bool:
    if shutil.which("wrk") is None:
        print(
            "\nhttp_warm: wrk is not installed; install it from Debian's packages "
            "(apt-get install wrk) and run again"
        )
        return report.failed(NAME, "wrk is not installed (apt-get install wrk)")
    try:
        import orjson  # noqa: F401
    except ImportError:
        print("\nhttp_warm: orjson is missing: .venv/bin/python -m pip install orjson")
        return report.failed(NAME, "orjson is not installed (pip install orjson)")
    with Dovecot() as dovecot:
        ok = _compare(dovecot, redis=False)
        ok = _compare(dovecot, redis=True) and ok
    return ok


if __name__ == "__main__":
    sys.exit(0 if run() else 1)
