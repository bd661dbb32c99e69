"""Processes the HTTP benchmarks start: the gateway (``python -m gateway serve``) and helpers.

Every process is started by a context manager that ends it on the way out, failure or not:
SIGTERM, a bounded wait, then SIGKILL.

Profiling the gateways started here (environment variables of the benchmarks only):

- ``BENCH_PROFILE_DIR=<directory>``: they run under cProfile (``tests/bench/profiled.py``)
  and write ``<directory>/gateway-<pid>.prof`` when they stop; read it with
  ``python -m pstats <file>`` (``sort cumulative``, ``stats 40``). cProfile inflates the
  cost of small calls.
- ``BENCH_PYSPY_DIR=<directory>``: py-spy (``pip install py-spy``) samples each of them
  from start to stop, without pausing it, into ``<directory>/gateway-<pid>.txt`` (raw
  collapsed stacks); ``python -m tests.bench.profile_summary <file>`` prints where the
  time went.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.support.dovecot import free_port

REDIS_URL = "redis://127.0.0.1:6379/0"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


def basic_auth(user: str, password: str) -> str:
    """The value of an ``Authorization`` header for HTTP Basic."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def stop(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL (idempotent)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)


def wait_until_serving(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Poll ``url`` until it answers 200; RuntimeError if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with status {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {timeout:g} s")
        time.sleep(0.05)


def gateway_env(upstream_port: int, port: int, *, redis: bool, **extra: str) -> dict[str, str]:
    """The environment of a benchmarked gateway: loopback only, quiet logs, presets off."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("POP3GW_")}
    env.update(
        POP3GW_LISTEN=f"127.0.0.1:{port}",
        POP3GW_DEFAULT_UPSTREAM=f"pop3://127.0.0.1:{upstream_port}",
        POP3GW_PRESETS="false",
        POP3GW_LOG__LEVEL="WARNING",
        POP3GW_SHUTDOWN_GRACE_SECONDS="2",
        POP3GW_SHUTDOWN_DELAY_SECONDS="0",
    )
    if redis:
        # A new secret per process: its cache keys are new, so its Redis cache starts empty.
        env.update(POP3GW_REDIS_URL=REDIS_URL, POP3GW_CACHE_SECRET=secrets.token_hex(16))
    env.update(extra)
    return env


class Gateway:
    """``python -m gateway serve`` in front of ``pop3://127.0.0.1:<upstream_port>``.

    ``extra`` adds ``POP3GW_*`` settings (``{"POP3GW_POOL__MAX_TOTAL": "64"}``...).
    """

    def __init__(
        self,
        upstream_port: int,
        *,
        redis: bool = False,
        extra: dict[str, str] | None = None,
        log: Path | None = None,
    ) -> None:
        self.log = log  #: where its output goes (else: inherited)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.redis = redis
        self._env = gateway_env(upstream_port, self.port, redis=redis, **(extra or {}))
        self._proc: subprocess.Popen[bytes] | None = None
        self._spy: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def __enter__(self) -> Self:
        module = "tests.bench.profiled" if self._env.get("BENCH_PROFILE_DIR") else "gateway"
        output = None if self.log is None else self.log.open("ab")
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", module, "serve"],
                env=self._env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                cwd=Path(__file__).resolve().parents[2],
            )
        finally:
            if output is not None:
                output.close()  # the child holds its own copy
        try:
            wait_until_serving(self.base + "/healthz", self._proc, START_TIMEOUT)
            self._start_py_spy()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start_py_spy(self) -> None:
        out = os.environ.get("BENCH_PYSPY_DIR")
        if not out:
            return
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        Path(out).mkdir(parents=True, exist_ok=True)
        output = Path(out) / f"gateway-{self.pid}.txt"
        self._spy = subprocess.Popen(
            [
                *(spy, "record", "--pid", str(self.pid), "--rate", "500", "--nonblocking"),
                *("--format", "raw", "--output", str(output)),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        time.sleep(1.0)  # py-spy attaches

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._spy is not None:
            if self._spy.poll() is None:
                self._spy.send_signal(signal.SIGINT)  # py-spy writes its output and exits
                try:
                    self._spy.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    stop(self._spy)
            self._spy = None
        if self._proc is not None:
            stop(self._proc)
            self._proc = None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None


def proc_status(pid: int) -> dict[str, int]:
    """The ``Vm*`` lines of ``/proc/<pid>/status``, in kB."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Vm"):
            name, _, value = line.partition(":")
            out[name] = int(value.split()[0])
    return out


def reset_peak_rss(pid: int) -> None:
    """Reset ``VmHWM`` of ``pid`` to its current RSS (``clear_refs`` value 5, Linux 4.0+)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
