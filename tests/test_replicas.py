"""Coordination of replicas through Redis: the gate itself, two pools sharing it, and three
real gateway processes in front of a Dovecot that locks its maildrops."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis as sync_redis

from gateway.pop3 import (
    PoolLimits,
    PoolTimeoutError,
    POP3Client,
    POP3LoginDelayError,
    SessionPool,
    TLSMode,
)
from gateway.redis import SharedRedis
from gateway.replicas import PREFIX, RedisSessionGate
from tests.support.corpus import simple_message
from tests.support.dovecot import Dovecot, free_port
from tests.support.fakepop3 import Err, FakeMailbox, FakePOP3Server

pytestmark = pytest.mark.redis
REDIS = "redis://127.0.0.1:6379/0"


@pytest.fixture
async def gate() -> AsyncIterator[RedisSessionGate]:
    g = RedisSessionGate.from_url(REDIS, lock_ttl=5, login_delay=3, poll_max=0.05)
    yield g
    await g.close()


@pytest.fixture
def lock() -> Iterator[str]:
    name = "test-" + uuid.uuid4().hex
    yield name
    client = sync_redis.Redis.from_url(REDIS)
    try:
        client.delete(*(PREFIX + kind + name for kind in ("lock:", "want:", "delay:")))
    finally:
        client.close()


async def test_one_holder_at_a_time(gate: RedisSessionGate, lock: str) -> None:
    token = await gate.acquire(lock, 1)
    assert token is not None
    with pytest.raises(PoolTimeoutError):
        await gate.acquire(lock, 0.2)
    # The waiter left a "wanted" mark for the holder.
    assert await gate.wanted([lock, lock + "-other"]) == {lock}
    # Only the holder's token releases it.
    await gate.release(lock, "not-the-token")
    with pytest.raises(PoolTimeoutError):
        await gate.acquire(lock, 0.1)
    await gate.release(lock, token)
    again = await gate.acquire(lock, 1)
    assert again is not None
    await gate.release(lock, again)


async def test_a_waiter_gets_the_lock_when_it_is_released(
    gate: RedisSessionGate, lock: str
) -> None:
    token = await gate.acquire(lock, 1)
    waiter = asyncio.create_task(gate.acquire(lock, 5))
    await asyncio.sleep(0.2)
    assert not waiter.done()
    await gate.release(lock, token)  # type: ignore[arg-type]
    second = await asyncio.wait_for(waiter, 5)
    assert second is not None
    assert await gate.wanted([lock]) == set()  # the waiter cleared its mark
    await gate.release(lock, second)


async def test_renew_keeps_the_lock_alive(gate: RedisSessionGate, lock: str) -> None:
    client = sync_redis.Redis.from_url(REDIS)
    try:
        token = await gate.acquire(lock, 1)
        client.pexpire(PREFIX + "lock:" + lock, 300)
        await gate.renew([(lock, token)])
        assert client.pttl(PREFIX + "lock:" + lock) > 1000
        await gate.renew([(lock, "someone-else")])  # a foreign token changes nothing
        assert client.get(PREFIX + "lock:" + lock) == str(token).encode()
    finally:
        client.close()


async def test_an_expired_holder_frees_the_lock(lock: str) -> None:
    short = RedisSessionGate.from_url(REDIS, lock_ttl=0.2, poll_max=0.05)
    try:
        assert await short.acquire(lock, 1) is not None
        # The holder "crashed": no renew, no release. The TTL frees the maildrop.
        assert await short.acquire(lock, 3) is not None
    finally:
        await short.close()


async def test_login_delay_is_shared(gate: RedisSessionGate, lock: str) -> None:
    await gate.check_login_delay(lock)
    await gate.note_login_delay(lock)
    other = RedisSessionGate.from_url(REDIS)  # another replica
    try:
        with pytest.raises(POP3LoginDelayError):
            await other.check_login_delay(lock)
    finally:
        await other.close()


async def test_unreachable_redis_opens_the_gate(lock: str) -> None:
    events: list[str] = []
    dead = RedisSessionGate.from_url(
        f"redis://:s3cret@127.0.0.1:{free_port()}/0", timeout=0.2, on_event=events.append
    )
    try:
        assert await dead.acquire(lock, 1) is None
        await dead.release(lock, "t")
        await dead.renew([(lock, "t")])
        assert await dead.wanted([lock]) == set()
        await dead.check_login_delay(lock)
        await dead.note_login_delay(lock)
        assert not await dead.ping()
        # One failed round trip, then the shared client backs off: the rest open the gate
        # without asking Redis, except the lock renewal, background work that keeps trying
        # (another user's failure must not let held locks lapse).
        assert events == ["error", "skipped", "error", "skipped", "skipped", "skipped"]
        assert "s3cret" not in repr(dead)
    finally:
        await dead.close()


async def test_a_won_lock_is_never_orphaned(lock: str) -> None:
    """SET NX won the lock; then another user of the shared client fails (a header-cache
    MGET timing out) before the gate clears its 'wanted' mark. The lock is still returned,
    never left in Redis under a token nobody knows (which would block the maildrop on every
    replica until the TTL ran out)."""
    shared = SharedRedis.connect(REDIS)
    gate = RedisSessionGate(shared, poll_max=0.05)
    other = RedisSessionGate.from_url(REDIS)
    held = await other.acquire(lock, 1)
    assert held is not None
    real_call = gate._call

    async def failing_elsewhere_first(what: str, operation: Any, *args: Any, **kw: Any) -> Any:
        if operation == gate._delete:
            shared.failed("MGET", TimeoutError())  # the cache's call failed meanwhile
        return await real_call(what, operation, *args, **kw)

    gate._call = failing_elsewhere_first  # type: ignore[method-assign]
    client = sync_redis.Redis.from_url(REDIS)
    try:
        release = asyncio.get_running_loop().call_later(
            0.1, lambda: asyncio.ensure_future(other.release(lock, held))
        )
        token = await gate.acquire(lock, 5)
        release.cancel()
        assert token is not None
        assert client.get(PREFIX + "lock:" + lock) == str(token).encode()
    finally:
        client.close()
        await shared.close()
        await other.close()


# -- two pools, as two replicas ---------------------------------------------------------------
@pytest.fixture
async def locking_server() -> AsyncIterator[FakePOP3Server]:
    box = FakeMailbox([("u1", b"Subject: one\r\n\r\nx\r\n")])
    async with FakePOP3Server(box, users={"alice": "pw"}, lock=True) as srv:
        yield srv


def pool_with(gate: RedisSessionGate) -> SessionPool:
    # Sessions stay idle for a long time, so only the gate's "wanted" mark frees them early;
    # no retry budget, so any [IN-USE] would fail the lease.
    limits = PoolLimits(snapshot_max_age=60, retry_budget=0, reap_interval=0.05, acquire_timeout=10)
    return SessionPool(limits, gate=gate)


async def test_two_pools_share_one_maildrop(locking_server: FakePOP3Server, lock: str) -> None:
    async def factory() -> POP3Client:
        client = await POP3Client.connect(
            locking_server.host, locking_server.port, tls=TLSMode.PLAIN
        )
        await client.login("alice", "pw")
        return client

    gates = [RedisSessionGate.from_url(REDIS, poll_max=0.05) for _ in range(2)]
    pools = [pool_with(g) for g in gates]
    try:
        for round_ in range(3):
            for pool in pools:
                async with pool.lease("alice-key", "fake", factory, lock=lock) as session:
                    assert (await session.client.stat())[0] == 1, round_
        # Each hand-over ended the other replica's idle session first: no [IN-USE].
        assert len(locking_server.connections) == 6
    finally:
        for pool in pools:
            await pool.close()
        for g in gates:
            await g.close()


async def test_login_delay_stops_every_replica(locking_server: FakePOP3Server, lock: str) -> None:
    locking_server.script("PASS", Err("LOGIN-DELAY", "wait"), times=1)

    async def factory() -> POP3Client:
        client = await POP3Client.connect(
            locking_server.host, locking_server.port, tls=TLSMode.PLAIN
        )
        try:
            await client.login("alice", "pw")
        except BaseException:
            client.abort()
            raise
        return client

    gates = [RedisSessionGate.from_url(REDIS, login_delay=30) for _ in range(2)]
    pools = [pool_with(g) for g in gates]
    try:
        with pytest.raises(POP3LoginDelayError):
            async with pools[0].lease("k", "fake", factory, lock=lock):
                pass
        before = len(locking_server.connections)
        with pytest.raises(POP3LoginDelayError):
            async with pools[1].lease("k", "fake", factory, lock=lock):
                pass
        # The second replica did not even connect.
        assert len(locking_server.connections) == before
    finally:
        for pool in pools:
            await pool.close()
        for g in gates:
            await g.close()


# -- three real gateway processes -------------------------------------------------------------
@pytest.fixture
def locking_dovecot() -> Iterator[Dovecot]:
    with Dovecot(pop3_lock_session=True) as server:
        yield server


def _start_gateways(
    dovecot: Dovecot, count: int
) -> tuple[list[subprocess.Popen[bytes]], list[str]]:
    secret = uuid.uuid4().hex
    procs, bases = [], []
    for _ in range(count):
        port = free_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("POP3GW_")},
            "POP3GW_LISTEN": f"127.0.0.1:{port}",
            "POP3GW_DEFAULT_UPSTREAM": f"pop3://127.0.0.1:{dovecot.port}",
            "POP3GW_PRESETS": "false",
            "POP3GW_REDIS_URL": REDIS,
            "POP3GW_CACHE_SECRET": secret,
            # Long-lived idle sessions and no login retries: without coordination a second
            # replica's login would wait for Dovecot's lock and fail with [IN-USE].
            "POP3GW_POOL": json.dumps(
                {"snapshot_max_age": 60, "retry_budget": 0, "acquire_timeout": 30}
            ),
            "POP3GW_LOG__LEVEL": "WARNING",
        }
        procs.append(subprocess.Popen([sys.executable, "-m", "gateway", "serve"], env=env))
        bases.append(f"http://127.0.0.1:{port}")
    return procs, bases


def _get(url: str, auth: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": "Basic " + auth})
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.mark.dovecot
async def test_three_replicas_one_locking_maildrop(locking_dovecot: Dovecot) -> None:
    user = locking_dovecot.new_user("replica")
    user.deliver_many([simple_message(i) for i in range(3)])
    auth = base64.b64encode(f"{user.name}:{user.password}".encode()).decode()
    procs, bases = _start_gateways(locking_dovecot, 3)
    try:
        deadline = time.monotonic() + 30
        for base in bases:
            while True:
                try:
                    if _get(base + "/healthz", auth)[0] == 200:
                        break
                except (urllib.error.URLError, ConnectionError):
                    pass
                assert time.monotonic() < deadline, "a gateway did not start"
                await asyncio.sleep(0.1)
        urls = [f"{base}/v1/mailboxes/me?fresh=true" for base in bases for _ in range(3)]
        answers = await asyncio.gather(*(asyncio.to_thread(_get, url, auth) for url in urls))
        for status, body in answers:
            assert status == 200, body[:300]
            assert json.loads(body)["messages"] == 3
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
    assert [p.returncode for p in procs] == [0, 0, 0]


async def test_closing_a_pool_frees_its_maildrops(
    locking_server: FakePOP3Server, lock: str
) -> None:
    async def factory() -> POP3Client:
        client = await POP3Client.connect(
            locking_server.host, locking_server.port, tls=TLSMode.PLAIN
        )
        await client.login("alice", "pw")
        return client

    holder_gate = RedisSessionGate.from_url(REDIS, lock_ttl=60)
    pool = pool_with(holder_gate)
    try:
        async with pool.lease("k", "fake", factory, lock=lock):
            pass  # the session stays idle, holding the lock
        await pool.close()
    finally:
        await holder_gate.close()
    other = RedisSessionGate.from_url(REDIS)
    try:
        token = await other.acquire(lock, 0.5)  # not the 60 s TTL: released on close
        assert token is not None
        await other.release(lock, token)
    finally:
        await other.close()
