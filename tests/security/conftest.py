"""Fixtures for the security tests: a scriptable POP3 server, the real app factory, a test CA,
and a Redis server of their own that requires a password. Everything is on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import trustme

from tests.security.helpers import MESSAGES
from tests.support.dovecot import free_port
from tests.support.fakepop3 import FakeMailbox, FakePOP3Server


@pytest.fixture
async def fake_server() -> AsyncIterator[FakePOP3Server]:
    async with FakePOP3Server(FakeMailbox(MESSAGES), users={"alice": "pw"}) as server:
        yield server


@pytest.fixture(scope="session")
def tls_ca() -> trustme.CA:
    return trustme.CA()


# -- a Redis server with a password ---------------------------------------------------------

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


@pytest.fixture(scope="session")
def secret_redis() -> Iterator[tuple[int, str]]:
    """A throwaway redis-server on 127.0.0.1 with ``requirepass``: (port, password)."""
    if not os.access(REDIS_SERVER, os.X_OK):
        message = "redis-server is not installed (scripts/bootstrap.sh installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    password = "redis-pw-" + secrets.token_hex(12)
    port = free_port()
    proc = subprocess.Popen(
        [
            REDIS_SERVER,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--requirepass",
            password,
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.fail("the password-protected redis-server did not start")
            time.sleep(0.02)
        yield port, password
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
