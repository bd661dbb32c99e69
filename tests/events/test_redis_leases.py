"""The watch leases on Redis as the watcher's loop uses them: renewed all at once (a lease
lost meanwhile forgotten, one held by another replica left alone), given back on the way
out, and kept when Redis cannot be reached for a renewal."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from gateway.events import RedisWatchLeases
from gateway.events.redis_log import key
from gateway.redis import SharedRedis
from tests.support.dovecot import free_port

pytestmark = pytest.mark.redis
SHARED = "redis://127.0.0.1:6379/0"


@pytest.fixture
async def admin() -> AsyncIterator[Redis]:
    admin = Redis.from_url(SHARED)
    yield admin
    await admin.aclose()


@pytest.fixture
async def names(admin: Redis) -> AsyncIterator[list[str]]:
    """Mailbox ids of the test's own; their leases are removed afterwards."""
    tag = uuid.uuid4().hex[:10]
    names = [f"lease-{tag}-{n}" for n in range(3)]
    yield names
    await admin.delete(*(key(name, "lease") for name in names))


@pytest.fixture
async def shared() -> AsyncIterator[SharedRedis]:
    shared = SharedRedis(SHARED)
    shared.open()
    yield shared
    await shared.close()


async def test_renew_extends_what_is_held_and_forgets_what_was_lost(
    shared: SharedRedis, admin: Redis, names: list[str]
) -> None:
    leases = RedisWatchLeases(shared)
    kept, lapsed, taken = names
    tokens = [await leases.hold(name, 60) for name in names]  # TTL: half of 60 s
    assert all(tokens)
    for name in names:
        await admin.pexpire(key(name, "lease"), 500)  # time has passed
    await admin.delete(key(lapsed, "lease"))  # ran out
    await admin.set(key(taken, "lease"), "another-replica")  # then another replica took it
    await leases.renew()
    assert 29_000 <= await admin.pttl(key(kept, "lease")) <= 30_000
    assert set(leases.held) == {kept}
    assert await admin.get(key(taken, "lease")) == b"another-replica"
    assert await admin.pttl(key(taken, "lease")) == -1  # left as the other replica set it
    assert await admin.exists(key(lapsed, "lease")) == 0  # not taken again by a renewal


async def test_release_all_gives_back_only_our_own_leases(
    shared: SharedRedis, admin: Redis, names: list[str]
) -> None:
    leases = RedisWatchLeases(shared)
    ours, theirs, _ = names
    assert await leases.hold(ours, 60)
    assert await leases.hold(theirs, 60)
    await admin.set(key(theirs, "lease"), "another-replica")  # ours lapsed, theirs now
    await leases.release_all()
    assert leases.held == {}
    assert await admin.exists(key(ours, "lease")) == 0
    assert await admin.get(key(theirs, "lease")) == b"another-replica"
    # another replica takes the released mailbox at once
    other = RedisWatchLeases(shared)
    assert await other.hold(ours, 60)
    await leases.release_all()  # nothing held: nothing asked of Redis


async def test_a_renewal_without_redis_keeps_the_leases() -> None:
    gone = SharedRedis(f"redis://127.0.0.1:{free_port()}/0", timeout=0.2, connect_timeout=0.2)
    gone.open()
    try:
        leases = RedisWatchLeases(gone)
        leases.held = {"box": ("token", 30_000)}
        await leases.renew()  # does not raise: they live until their TTL
        assert leases.held == {"box": ("token", 30_000)}
    finally:
        await gone.close()


async def test_a_lease_taken_anew_during_a_renewal_is_kept(
    shared: SharedRedis, admin: Redis, names: list[str]
) -> None:
    leases = RedisWatchLeases(shared)
    name = names[0]
    assert await leases.hold(name, 60)
    await admin.delete(key(name, "lease"))  # it lapsed (Redis was away a while)
    renew_all = leases._renew_all

    async def racing(held: Any) -> list[Any]:
        results = await renew_all(held)
        # while the renewal was on its way, the mailbox's poll took the lease anew
        assert await leases.hold(name, 60)
        return results

    leases._renew_all = racing  # type: ignore[method-assign]
    await leases.renew()
    token = await admin.get(key(name, "lease"))
    assert leases.held[name][0].encode() == token
    # so the next poll holds it, rather than finding "its" lease taken until it lapses
    assert await leases.hold(name, 60) == token.decode()
