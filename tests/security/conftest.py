"""Fixtures for the security tests: a scriptable POP3 server, the real app factory, a test CA,
and a Redis server of their own that requires a password. Everything is on 127.0.0.1."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.config import Settings, load_settings
from tests.support.dovecot import free_port
from tests.support.fakepop3 import FakeMailbox, FakePOP3Server

ClientFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]
Client = TestClient[web.Request, web.Application]

READ_KEY = "sec-read-" + secrets.token_hex(12)
DELETE_KEY = "sec-delete-" + secrets.token_hex(12)
OTHER_KEY = "sec-other-" + secrets.token_hex(12)
WILDCARD_KEY = "sec-wild-" + secrets.token_hex(12)
DELETE_ONLY_KEY = "sec-delonly-" + secrets.token_hex(12)
MESSAGES = [
    ("uid-1", b"Subject: one\r\nFrom: A <a@example.com>\r\n\r\nfirst\r\n"),
    ("uid-2", b"Subject: two\r\n\r\nsecond\r\n"),
    ("uid-3", b"Subject: three\r\n\r\nthird\r\n"),
]
SHORT_TIMEOUTS = {"connect": 2, "tls": 2, "command": 1, "idle": 1}


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": "Basic " + token}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + key}


def gateway_settings(port: int, **extra: Any) -> Settings:
    """Passthrough to the fake server, two configured mailboxes on it ('box' and 'other',
    both user alice) and five API keys with different grants and scopes."""
    upstream = f"pop3://127.0.0.1:{port}"
    values: dict[str, Any] = {
        "default_upstream": upstream,
        "presets": False,
        "timeouts": SHORT_TIMEOUTS,
        "pool": {"retry_budget": 0.3},
        "mailboxes": [
            {"id": "box", "upstream": upstream, "user": "alice", "password": "pw"},
            {"id": "other", "upstream": upstream, "user": "alice", "password": "pw"},
        ],
        "api_keys": [
            {"name": "reader", "sha256": sha(READ_KEY), "mailboxes": ["box"], "scopes": ["read"]},
            {
                "name": "deleter",
                "sha256": sha(DELETE_KEY),
                "mailboxes": ["box"],
                "scopes": ["read", "delete"],
            },
            {"name": "other", "sha256": sha(OTHER_KEY), "mailboxes": ["other"]},
            {"name": "wildcard", "sha256": sha(WILDCARD_KEY), "mailboxes": ["*"]},
            {
                "name": "delete-only",
                "sha256": sha(DELETE_ONLY_KEY),
                "mailboxes": ["box"],
                "scopes": ["delete"],
            },
        ],
    }
    values.update(extra)
    return load_settings(**values)


def dele_lines(server: FakePOP3Server) -> list[bytes]:
    """Every command line the server received whose verb is DELE (any case)."""
    return [
        line
        for connection in server.received
        for line in connection
        if line.lstrip().upper().startswith(b"DELE")
    ]


def smuggled(server: FakePOP3Server, marker: bytes = b"DELE") -> list[bytes]:
    """Received lines carrying ``marker`` anywhere (an injected command, or a fragment of
    one that reached the wire inside another line)."""
    return [line for connection in server.received for line in connection if marker in line]


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


def write_pem(path: Path, blob: trustme.Blob) -> Path:
    blob.write_to_path(str(path))
    return path
