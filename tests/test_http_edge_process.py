"""The HTTP edge of a real ``pop3gw serve`` process: slowloris connections are closed while
others are answered; running out of file descriptors neither floods the log nor spins a
core, and the process answers again once descriptors free up; a file-descriptor limit too
low for the configuration stops the start.

Every loop here is bounded in count and time.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.dovecot import free_port
from tests.support.procfs import cpu_seconds

PARTIAL = b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Slow: "


def _clean_env(extra: dict[str, str]) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("POP3GW_")}
    return {**clean, "POP3GW_LOG__FORMAT": "json", "POP3GW_SHUTDOWN_DELAY_SECONDS": "0", **extra}


def _limit_fds(nofile: int) -> Callable[[], None]:
    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    return preexec


def get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@contextmanager
def serve(log: Path, nofile: int, **env: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve"],
            env=_clean_env({"POP3GW_LISTEN": f"127.0.0.1:{port}", **env}),
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_limit_fds(nofile),  # setrlimit in the child only (no threads here)
        )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if get(base + "/healthz", timeout=2)[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.fail("pop3gw serve did not start:\n" + log.read_text()[-2000:])
            time.sleep(0.1)
        yield proc, base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _closed(sock: socket.socket, deadline: float) -> bool:
    """Whether the server closed ``sock`` before ``deadline`` (reading what it sent)."""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if not sock.recv(65536):
                return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
    return False


def test_slowloris_connections_are_closed_while_others_are_answered(tmp_path: Path) -> None:
    with serve(tmp_path / "log", 1024, POP3GW_HTTP__HEADER_TIMEOUT="1") as (_proc, base):
        port = int(base.rsplit(":", 1)[1])
        slow = []
        try:
            for _ in range(20):
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                sock.sendall(PARTIAL)
                slow.append(sock)
            started = time.monotonic()
            assert get(base + "/healthz")[0] == 200
            assert time.monotonic() - started < 1
            deadline = started + 6
            assert all(_closed(sock, deadline) for sock in slow)
        finally:
            for sock in slow:
                sock.close()
        status, text = get(base + "/metrics")
        assert status == 200
        assert b'pop3gw_http_timeouts_total{phase="header"} 20.0' in text


def test_running_out_of_file_descriptors(tmp_path: Path) -> None:
    log = tmp_path / "log"
    with serve(log, 400, POP3GW_POOL__MAX_TOTAL="4") as (proc, base):
        port = int(base.rsplit(":", 1)[1])
        in_use = len(os.listdir(f"/proc/{proc.pid}/fd"))
        # room for 8 more descriptors: the 9th accept fails with EMFILE
        resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, (in_use + 8, 400))
        before = log.read_text().count("\n")
        cpu = cpu_seconds(proc.pid)
        clients = []
        try:
            for _ in range(60):  # the listen backlog (128) takes them all
                clients.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            time.sleep(3)
            busy = cpu_seconds(proc.pid) - cpu
            lines = log.read_text().splitlines()[before:]
            about_accept = [line for line in lines if "accept" in line.lower()]
            # one line (then one per 10 s at most), not one per failed accept; no busy loop
            assert 1 <= len(about_accept) <= 2, lines[:5]
            assert "EMFILE" in about_accept[0]
            assert "Traceback" not in "\n".join(lines)
            assert busy < 1.0, busy
        finally:
            for sock in clients:
                sock.close()
        deadline = time.monotonic() + 15
        while True:  # the connections closed: descriptors are free again
            try:
                status, _ = get(base + "/healthz", timeout=2)
                if status == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert time.monotonic() < deadline, "the gateway did not answer again"
            time.sleep(0.2)
        status, text = get(base + "/metrics")
        assert b'pop3gw_http_accept_errors_total{errno="EMFILE"}' in text
        assert b'pop3gw_http_accept_pauses_total{reason="fd_exhausted"}' in text


@pytest.mark.parametrize(
    ("nofile", "env", "expected"),
    [
        (100, {}, "ulimit -n"),
        (1024, {"POP3GW_HTTP__MAX_CONNECTIONS": "5000"}, "http.max_connections: 5000"),
        (1024, {"POP3GW_HTTP__HEADER_TIMEOUT": "0"}, "http.header_timeout"),
    ],
)
def test_limits_that_cannot_hold_stop_the_start(
    nofile: int, env: dict[str, str], expected: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve"],
        env=_clean_env({"POP3GW_LISTEN": f"127.0.0.1:{free_port()}", **env}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        preexec_fn=_limit_fds(nofile),  # setrlimit in the child only (no threads here)
    )
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr


def test_check_config_shows_the_http_limits() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config"],
        env=_clean_env({}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    http = json.loads(result.stdout)["http"]
    assert http == {
        "header_timeout": 10.0,
        "body_timeout": 30.0,
        "keepalive_timeout": 75.0,
        "max_connections": None,
        "max_body_bytes": 1048576,
        "trusted_proxies": [],
    }
