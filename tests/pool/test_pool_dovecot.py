"""The session pool against a real Dovecot: reuse, freshness, DELE safety, the maildrop lock."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from gateway.pop3 import PoolLimits, SessionPool, State
from tests.pool.helpers import Events, MakePool, dovecot_factory
from tests.support.clock import FakeClock
from tests.support.corpus import simple_message
from tests.support.dovecot import Dovecot, DovecotUser, require_dovecot

pytestmark = pytest.mark.dovecot


async def test_reuse_within_snapshot_age_logs_in_once(
    dovecot: Dovecot, dovecot_user: DovecotUser, make_pool: MakePool, events: Events
) -> None:
    dovecot_user.deliver_many([simple_message(i) for i in range(2)])
    factory = dovecot_factory(dovecot, dovecot_user)
    pool = make_pool()
    seen = []
    for _ in range(3):
        async with pool.lease("k", "dovecot", factory) as session:
            assert await session.client.stat() == (2, sum(len(m) for m in dovecot_user.messages()))
            seen.append(session.client)
    assert factory.calls == 1
    assert seen[0] is seen[1] is seen[2]
    assert events.counts == {"open": 1, "reuse": 2}
    assert pool.stats().idle == 1
    await pool.close()
    assert seen[0].state is State.CLOSED
    log = dovecot.wait_for_log(lambda text: f"{dovecot_user.name}" in text and "Logged out" in text)
    assert log.count(f"Login: user=<{dovecot_user.name}>") == 1


async def test_fresh_opens_a_new_session_and_sees_new_mail(
    dovecot: Dovecot, dovecot_user: DovecotUser, make_pool: MakePool, events: Events
) -> None:
    dovecot_user.deliver(simple_message(0))
    factory = dovecot_factory(dovecot, dovecot_user)
    pool = make_pool()
    async with pool.lease("k", "dovecot", factory) as first:
        assert (await first.client.stat())[0] == 1
    dovecot_user.deliver(simple_message(1))
    async with pool.lease("k", "dovecot", factory) as cached:
        assert cached is first
        assert cached.opened_at == first.opened_at
        assert (await cached.client.stat())[0] == 1  # the snapshot of the first login
    async with pool.lease("k", "dovecot", factory, fresh=True) as fresh:
        assert fresh is not first
        assert fresh.opened_at_wall >= first.opened_at_wall
        assert (await fresh.client.stat())[0] == 2
    assert first.client.state is State.CLOSED  # QUIT before the new login: one per maildrop
    assert factory.calls == 2
    assert events.counts["open"] == 2
    assert events.counts["close"] == 1


async def test_dele_marks_are_never_carried_to_the_next_lease(
    dovecot: Dovecot, dovecot_user: DovecotUser, make_pool: MakePool
) -> None:
    dovecot_user.deliver_many([simple_message(i) for i in range(3)])
    factory = dovecot_factory(dovecot, dovecot_user)
    pool = make_pool()
    async with pool.lease("k", "dovecot", factory) as session:
        await session.client.dele(1)
        marked = session.client
    assert marked.state is State.CLOSED  # dropped without QUIT: Dovecot rolls back
    async with pool.lease("k", "dovecot", factory) as session:
        assert session.client is not marked
        assert session.client.deleted_marks == 0
        assert (await session.client.stat())[0] == 3
    assert len(dovecot_user.messages()) == 3


async def test_a_session_the_caller_quit_is_forgotten(
    dovecot: Dovecot, dovecot_user: DovecotUser, make_pool: MakePool
) -> None:
    dovecot_user.deliver_many([simple_message(i) for i in range(3)])
    factory = dovecot_factory(dovecot, dovecot_user)
    pool = make_pool()
    async with pool.lease("k", "dovecot", factory, fresh=True) as session:
        await session.client.dele(2)
        result = await session.client.quit()
        assert result.deleted_marks == 1
    assert pool.stats().open == 0
    async with pool.lease("k", "dovecot", factory) as session:
        assert (await session.client.stat())[0] == 2
    assert len(dovecot_user.messages()) == 2
    assert factory.calls == 2


@pytest.fixture(scope="module")
def locking_dovecot() -> Iterator[Dovecot]:
    """Dovecot with ``pop3_lock_session = yes``: a second login on a maildrop in use waits
    about 10 s, then fails with [IN-USE]."""
    require_dovecot()
    with Dovecot(pop3_lock_session=True) as server:
        yield server


async def test_concurrent_leases_on_one_maildrop_never_contend_for_its_lock(
    locking_dovecot: Dovecot, clock: FakeClock
) -> None:
    user = locking_dovecot.new_user()
    user.deliver(simple_message(0))
    factory = dovecot_factory(locking_dovecot, user)
    events = Events()
    # No retries: a second login while a session holds the lock would fail the lease.
    pool = SessionPool(
        PoolLimits(retry_budget=0.0, acquire_timeout=60.0), clock=clock, on_event=events
    )
    inside = 0
    most = 0

    async def one(i: int) -> int:
        nonlocal inside, most
        async with pool.lease(user.name, "dovecot", factory, fresh=i % 2 == 0) as session:
            inside += 1
            most = max(most, inside)
            count, _ = await session.client.stat()
            await asyncio.sleep(0)
            inside -= 1
            return count

    try:
        async with asyncio.timeout(30):  # contention would cost ~10 s per login
            counts = await asyncio.gather(*(one(i) for i in range(6)))
    finally:
        await pool.close()
    assert counts == [1] * 6
    assert most == 1
    assert "retry" not in events.kinds
    assert factory.calls == 3  # the three fresh leases; the others reused a session
