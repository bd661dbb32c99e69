"""Fixtures for the cache tests: the shared Redis on 127.0.0.1:6379, a key prefix per test."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
from redis.asyncio import Redis

from tests.support.clock import FakeClock

REDIS_URL = "redis://127.0.0.1:6379/0"


def _redis_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The shared test Redis; skips without it (fails under CI=true)."""
    if not _redis_up():
        message = "no Redis on 127.0.0.1:6379 (scripts/bootstrap.sh installs one)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return REDIS_URL


@pytest.fixture
async def admin(redis_url: str) -> AsyncIterator[Redis]:
    """A plain client for looking behind the cache's back."""
    client = Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards (never FLUSHALL:
    other runs share the server). Synchronous, so that async fixtures can ask for it."""
    value = f"pop3gw:test:{uuid.uuid4().hex}:"
    yield value
    with redis.Redis.from_url(redis_url) as client:
        keys = list(client.scan_iter(match=f"{value}*", count=1000))
        if keys:
            client.delete(*keys)


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound (so nobody else takes it), not listening."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]
    finally:
        sock.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
