"""Fair share of an upstream's sessions: a key that holds none goes before a key's next
lease (issue 12, item 2). Waits are on conditions; order is what is checked."""

from __future__ import annotations

import asyncio

from gateway.pop3 import SessionPool
from tests.pool.helpers import MakePool, fake_factory
from tests.pool.test_pool_fake import Holder, fake
from tests.support.clock import FakeClock
from tests.support.fakepop3 import FakePOP3Server
from tests.support.wait import wait_until

USERS = {"a": "pw", "b": "pw", "c": "pw"}


async def _lease(pool: SessionPool, server: FakePOP3Server, user: str, served: list[str]) -> None:
    async with pool.lease(user, "fake", fake_factory(server, user, "pw")):
        served.append(user)
        await asyncio.sleep(0)


async def _queue(pool: SessionPool, waiting: int) -> None:
    await wait_until(lambda: pool.stats().waiting == waiting)


async def test_a_key_holding_none_goes_before_a_second_lease(make_pool: MakePool) -> None:
    # max_per_key=1: "a" returns its session while its next lease and "b" both wait (a's
    # first). The session is not handed to "a" again: "b" is served first.
    async with fake(users=USERS) as server:
        pool = make_pool(max_per_upstream=2)
        holder_a = Holder(pool, "a", "fake", fake_factory(server, "a", "pw"))
        holder_c = Holder(pool, "c", "fake", fake_factory(server, "c", "pw"))
        await holder_a.entered.wait()
        await holder_c.entered.wait()
        served: list[str] = []
        jobs = [asyncio.create_task(_lease(pool, server, "a", served))]
        await _queue(pool, 1)
        jobs.append(asyncio.create_task(_lease(pool, server, "b", served)))
        await _queue(pool, 2)
        await holder_a.finish()
        await wait_until(lambda: bool(served))
        assert served[0] == "b"
        await holder_c.finish()
        await asyncio.gather(*jobs)
        assert served == ["b", "a"]
        assert pool.stats().open <= 2


async def test_no_second_session_while_another_key_waits_with_none(make_pool: MakePool) -> None:
    # max_per_key=2: "a" holds one, "c" the other slot; a's second lease queues before "b".
    # When "c" is done, the slot goes to "b", never to a's second session.
    async with fake(users=USERS) as server:
        pool = make_pool(max_per_key=2, max_per_upstream=2)
        holder_a = Holder(pool, "a", "fake", fake_factory(server, "a", "pw"))
        holder_c = Holder(pool, "c", "fake", fake_factory(server, "c", "pw"))
        await holder_a.entered.wait()
        await holder_c.entered.wait()
        served: list[str] = []
        jobs = [asyncio.create_task(_lease(pool, server, "a", served))]
        await _queue(pool, 1)
        jobs.append(asyncio.create_task(_lease(pool, server, "b", served)))
        await _queue(pool, 2)
        await holder_c.finish()
        await wait_until(lambda: bool(served))
        assert served[0] == "b"
        await holder_a.finish()
        await asyncio.gather(*jobs)
        assert served == ["b", "a"]


async def test_with_room_for_everyone_a_key_keeps_its_idle_session(make_pool: MakePool) -> None:
    # Fair share bites only at the cap: below it, a key's idle session serves its next lease.
    async with fake(users=USERS) as server:
        pool = make_pool(max_per_upstream=3)
        factory = fake_factory(server, "a", "pw")
        async with pool.lease("a", "fake", factory):
            pass
        served: list[str] = []
        await asyncio.gather(
            _lease(pool, server, "b", served),
            _lease(pool, server, "a", served),
        )
        assert sorted(served) == ["a", "b"]
        assert len(server.connections) == 2  # a's session was reused


async def test_the_pool_says_when_a_session_is_wanted_elsewhere(make_pool: MakePool) -> None:
    # Optional work with a session (a listing's read-ahead) asks first: a lease waiting for
    # the same key, or for room on the same upstream at its cap, wants the session.
    async with fake(users=USERS) as server:
        pool = make_pool(max_per_upstream=2)
        holder_a = Holder(pool, "a", "fake", fake_factory(server, "a", "pw"))
        await holder_a.entered.wait()
        assert not pool.wanted("a", "fake")
        holder_b = Holder(pool, "b", "fake", fake_factory(server, "b", "pw"))
        await holder_b.entered.wait()
        assert not pool.wanted("a", "fake")  # at its cap, but nobody waits
        served: list[str] = []
        job = asyncio.create_task(_lease(pool, server, "c", served))
        await _queue(pool, 1)
        assert pool.wanted("a", "fake")  # "c" waits for room on the upstream
        assert not pool.wanted("a", "other")
        await holder_b.finish()
        await job
        assert served == ["c"]
        assert not pool.wanted("a", "fake")
        again = asyncio.create_task(_lease(pool, server, "a", served))
        await _queue(pool, 1)
        assert pool.wanted("a", "fake")  # a second lease of the key itself
        await holder_a.finish()
        await again


async def test_a_key_keeps_its_session_for_its_next_lease_within_the_grace(
    make_pool: MakePool, clock: FakeClock
) -> None:
    # A client lists, then reads a message: its second lease comes a moment after the
    # first. Within reuse_grace the session waits for it, even while another key waits
    # with none, so the mailbox logs in once; then the other key is served.
    async with fake(users=USERS) as server:
        pool = make_pool(max_per_upstream=1, reuse_grace=0.05)
        factory_a = fake_factory(server, "a", "pw")
        async with pool.lease("a", "fake", factory_a):
            pass
        served: list[str] = []
        job = asyncio.create_task(_lease(pool, server, "b", served))
        await _queue(pool, 1)
        await asyncio.sleep(0.1)  # past the grace in real time: the pool's clock decides
        assert served == []
        async with pool.lease("a", "fake", factory_a):
            served.append("a")
        assert factory_a.calls == 1  # one login for both of a's leases
        clock.advance(1.0)  # the grace ends: a's idle session is closed for b
        await asyncio.wait_for(job, 5)
        assert served == ["a", "b"]


async def test_without_grace_a_waiting_key_gets_the_session_first(
    make_pool: MakePool,
) -> None:
    async with fake(users=USERS) as server:
        pool = make_pool(max_per_upstream=1)
        factory_a = fake_factory(server, "a", "pw")
        async with pool.lease("a", "fake", factory_a):
            pass
        served: list[str] = []
        job = asyncio.create_task(_lease(pool, server, "b", served))
        await asyncio.wait_for(job, 5)
        async with pool.lease("a", "fake", factory_a):
            pass
        assert factory_a.calls == 2
