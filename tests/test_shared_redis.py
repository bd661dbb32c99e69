"""The process's one Redis client: lifecycle, the shared backoff seen by two users, and
listeners that cannot break a call."""

from __future__ import annotations

import pytest

from gateway.cache import RedisHeaderCache
from gateway.redis import RedisFailedError, RedisSkippedError, SharedRedis
from gateway.replicas import RedisSessionGate
from tests.cache.servers import StallServer
from tests.support.dovecot import free_port

pytestmark = pytest.mark.redis
REDIS = "redis://127.0.0.1:6379/0"


async def test_calls_need_an_open_client() -> None:
    shared = SharedRedis(REDIS)
    assert "not open" in repr(shared)
    with pytest.raises(RedisSkippedError):
        await shared.call("PING", lambda: shared.client.ping())
    assert not await shared.ping()
    shared.open()
    shared.open()  # idempotent
    assert "up" in repr(shared)
    assert await shared.call("PING", shared.client.ping) is True
    await shared.close()
    await shared.close()
    assert "closed" in repr(shared)
    shared.open()  # a closed client stays closed
    with pytest.raises(RedisSkippedError):
        _ = shared.client


async def test_one_backoff_for_every_user_of_the_client() -> None:
    """The cache and the gate share one client: the gate's failure spares the cache a
    round trip, and one success brings both back."""
    now = [0.0]
    async with StallServer() as black_hole:
        shared = SharedRedis.connect(
            black_hole.url(), timeout=0.1, connect_timeout=0.1, clock=lambda: now[0]
        )
        seen: list[str] = []
        cache_events: list[str] = []
        gate_events: list[str] = []
        shared.listeners.append(seen.append)
        cache = RedisHeaderCache(shared, seal_key=b"k" * 32, on_event=cache_events.append)
        gate = RedisSessionGate(shared, on_event=gate_events.append)
        assert await gate.acquire("mailbox", 1) is None  # the round trip times out
        assert black_hole.accepted == 1
        assert await cache.get_many("ns", ["a"]) == {}  # backing off: not asked
        await cache.set_many("ns", {"a": {"subject": "x"}})
        assert black_hole.accepted == 1
        assert seen == ["error"]
        assert gate_events == ["error"]
        assert cache_events == ["miss"]
        assert "backing off" in repr(cache)
        await cache.close()
        await gate.close()  # neither owns the client
        assert "backing off" in repr(shared)
        await shared.close()


async def test_a_broken_listener_does_not_break_the_call() -> None:
    shared = SharedRedis.connect(f"redis://127.0.0.1:{free_port()}/0", timeout=0.1)

    def broken(kind: str) -> None:
        raise RuntimeError(kind)

    shared.listeners.append(broken)
    with pytest.raises(RedisFailedError):
        await shared.call("PING", shared.client.ping)
    await shared.close()


def test_bad_settings() -> None:
    for options, message in (
        ({"timeout": 0}, "timeouts"),
        ({"max_connections": 0}, "max_connections"),
        ({"backoff_initial": 2.0, "backoff_max": 1.0}, "backoff"),
    ):
        with pytest.raises(ValueError, match=message):
            SharedRedis(REDIS, **options)  # type: ignore[arg-type]


async def test_background_calls_are_made_while_backing_off() -> None:
    """Periodic work off the request path (renewing replica locks) is not held back by
    another caller's failure, and its success ends the backoff for everyone."""
    now = [0.0]
    shared = SharedRedis.connect(REDIS, clock=lambda: now[0])
    shared.failed("MGET", TimeoutError())  # someone's call failed
    with pytest.raises(RedisSkippedError):
        await shared.call("GET", shared.client.get, "pop3gw:test:absent")
    assert await shared.call("PING", shared.client.ping, background=True) is True
    assert not shared.backing_off
    assert await shared.call("GET", shared.client.get, "pop3gw:test:absent") is None
    await shared.close()
