"""The session pool against the scriptable fake server: caps, queueing, timeouts, faults,
cancellation, NOOP, the reaper, login retries and shutdown.

Ages come from an injected clock; waits are on conditions, never on elapsed time.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from gateway.pop3 import (
    PoolClosedError,
    PooledSession,
    PoolLimits,
    PoolTimeoutError,
    POP3AuthError,
    POP3Client,
    POP3ConnectionError,
    POP3Error,
    POP3InUseError,
    POP3StateError,
    SessionPool,
    State,
    TLSMode,
)
from tests.pool.helpers import (
    Events,
    Factory,
    MakePool,
    fake_factory,
    login,
    open_at,
)
from tests.support.clock import FakeClock
from tests.support.fakepop3 import Drop, Err, FakeMailbox, FakePOP3Server, Stall
from tests.support.wait import wait_until

MESSAGES = [
    ("uid-1", b"Subject: one\r\n\r\nfirst\r\n"),
    ("uid-2", b"Subject: two\r\n\r\nsecond\r\n"),
]
#: Backoff fast enough for tests; the budget is set per test.
QUICK = {"backoff_initial": 0.01, "backoff_max": 0.02}


def fake(box: FakeMailbox | None = None, **options: object) -> FakePOP3Server:
    return FakePOP3Server(box if box is not None else FakeMailbox(MESSAGES), **options)  # type: ignore[arg-type]


class Holder:
    """A task that holds a lease until ``release`` is set (or it is cancelled)."""

    def __init__(
        self, pool: SessionPool, key: str, upstream: str, factory: Factory, **kw: bool
    ) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.session: PooledSession | None = None
        self.task = asyncio.create_task(self._run(pool, key, upstream, factory, kw))

    async def _run(
        self, pool: SessionPool, key: str, upstream: str, factory: Factory, kw: dict[str, bool]
    ) -> None:
        async with pool.lease(key, upstream, factory, **kw) as session:
            self.session = session
            self.entered.set()
            await self.release.wait()

    async def finish(self) -> None:
        self.release.set()
        await self.task


def saw(server: FakePOP3Server, verb: bytes) -> list[int]:
    """Indexes of the connections that received ``verb``."""
    return [
        i
        for i, lines in enumerate(server.received)
        if any(line.upper().startswith(verb) for line in lines)
    ]


# -- limits ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"max_per_key": 0},
        {"max_per_upstream": 0},
        {"max_total": 0},
        {"reap_batch": 0},
        {"acquire_timeout": 0},
        {"idle_timeout": -1},
        {"max_session_age": float("nan")},
        {"backoff_initial": 0},
        {"quit_timeout": 0},
        {"reap_interval": 0},
        {"snapshot_max_age": -1},
        {"noop_after": -0.5},
        {"retry_budget": -1},
        {"backoff_initial": 1.0, "backoff_max": 0.5},
    ],
)
def test_limits_are_checked(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must"):
        PoolLimits(**bad)  # type: ignore[arg-type]


async def test_default_limits() -> None:
    pool = SessionPool()
    assert pool.limits == PoolLimits()
    assert pool.limits.max_per_key == 1
    assert pool.stats().open == 0
    assert not pool.closed
    await pool.close()
    assert pool.closed


# -- reuse, one session per key ----------------------------------------------------------------


async def test_concurrent_leases_on_one_key_share_one_session(
    make_pool: MakePool, events: Events
) -> None:
    async with fake(lock=True) as server:
        factory = fake_factory(server)
        pool = make_pool(retry_budget=0.0)  # a second login would fail: [IN-USE]
        inside = most = most_at_server = 0

        async def one() -> list[str]:
            nonlocal inside, most, most_at_server
            async with pool.lease("k", "fake", factory) as session:
                inside += 1
                most = max(most, inside)
                most_at_server = max(most_at_server, open_at(server))
                uids = await session.client.uidl()
                await asyncio.sleep(0)
                inside -= 1
                return list(uids.values())

        results = await asyncio.gather(*(one() for _ in range(10)))
        assert results == [["uid-1", "uid-2"]] * 10
        assert most == 1
        assert most_at_server == 1
        assert len(server.connections) == 1
        assert factory.calls == 1
        assert events.counts == {"open": 1, "reuse": 9}
        stats = pool.stats()
        assert (stats.open, stats.idle, stats.leased, stats.waiting) == (1, 1, 0, 0)
        await pool.close()
        assert server.connections[0].updated  # QUIT


async def test_concurrent_fresh_leases_replace_the_session_one_at_a_time(
    make_pool: MakePool,
) -> None:
    async with fake(lock=True) as server:
        factory = fake_factory(server)
        pool = make_pool(retry_budget=0.0)
        most_at_server = 0

        async def one() -> None:
            nonlocal most_at_server
            async with pool.lease("k", "fake", factory, fresh=True) as session:
                most_at_server = max(most_at_server, open_at(server))
                await session.client.stat()

        await asyncio.gather(*(one() for _ in range(5)))
        assert most_at_server == 1
        assert factory.calls == 5
        # Each replaced session was QUIT before the next login (no [IN-USE], no abort).
        assert [c.updated for c in server.connections] == [True] * 4 + [False]
        await pool.close()


async def test_a_stale_session_is_replaced(
    make_pool: MakePool, clock: FakeClock, events: Events
) -> None:
    async with fake() as server:
        factory = fake_factory(server)
        pool = make_pool(snapshot_max_age=5.0)
        async with pool.lease("k", "fake", factory) as first:
            pass
        clock.advance(5.0)
        async with pool.lease("k", "fake", factory) as again:
            assert again is first  # exactly snapshot_max_age old: still served
        clock.advance(0.5)
        async with pool.lease("k", "fake", factory) as second:
            assert second is not first
            assert second.opened_at == clock.now
        assert first.client.state is State.CLOSED
        assert server.connections[0].updated
        assert events.kinds == ["open", "reuse", "close", "open"]


async def test_an_idle_session_is_lent_for_optional_work(
    make_pool: MakePool, clock: FakeClock, events: Events
) -> None:
    """lease_idle: the session of one login, when it is idle now; never a new login, never a
    wait (read-ahead uses it)."""
    async with fake() as server:
        factory = fake_factory(server)
        pool = make_pool(snapshot_max_age=5.0, noop_after=2.0)
        async with (
            pool.lease("k", "fake", factory, identity="me") as first,
            pool.lease_idle("k", "fake", serial=first.serial, identity="me") as busy,
        ):
            assert busy is None  # leased: not idle
        async with pool.lease_idle("k", "fake", serial=first.serial, identity="me") as idle:
            assert idle is first
            assert pool.stats().leased == 1
            assert pool.stats().idle == 0
            await idle.client.stat()
        assert pool.stats().idle == 1
        for serial, identity in ((first.serial + 1, "me"), (first.serial, "you")):
            async with pool.lease_idle("k", "fake", serial=serial, identity=identity) as other:
                assert other is None  # another login, or another identity
        async with pool.lease_idle("j", "fake", serial=first.serial, identity="me") as none:
            assert none is None  # another key
        clock.advance(2.5)  # idle longer than noop_after: it would need a NOOP first
        async with pool.lease_idle("k", "fake", serial=first.serial, identity="me") as stale:
            assert stale is None
        async with pool.lease("k", "fake", factory, identity="me") as again:
            assert again is first
        clock.advance(3.0)  # older than snapshot_max_age
        async with pool.lease_idle("k", "fake", serial=first.serial, identity="me") as old:
            assert old is None
        assert factory.calls == 1
        assert events.counts["reuse"] == 2
        await pool.close()
        async with pool.lease_idle("k", "fake", serial=first.serial, identity="me") as closed:
            assert closed is None


async def test_an_idle_session_is_not_lent_while_a_lease_waits_for_it(
    make_pool: MakePool,
) -> None:
    async with fake() as server:
        factory = fake_factory(server)
        pool = make_pool(max_total=1, reuse_grace=10.0)
        async with pool.lease("k", "fake", factory) as first:
            pass
        # Another key waits for room the idle session takes (kept for its grace).
        waiting = asyncio.create_task(_lease_once(pool, "j", factory))
        await wait_until(lambda: pool.stats().waiting == 1)
        async with pool.lease_idle("k", "fake", serial=first.serial) as lent:
            assert lent is None
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting


async def _lease_once(pool: SessionPool, key: str, factory: Factory) -> None:
    async with pool.lease(key, "fake", factory):
        pass


async def test_an_exception_while_lent_idle_drops_the_session(make_pool: MakePool) -> None:
    async with fake() as server:
        factory = fake_factory(server)
        pool = make_pool()
        async with pool.lease("k", "fake", factory) as first:
            pass
        lent: list[PooledSession | None] = []

        async def fail() -> None:
            async with pool.lease_idle("k", "fake", serial=first.serial) as session:
                lent.append(session)
                raise RuntimeError("the optional work failed")

        with pytest.raises(RuntimeError):
            await fail()
        assert lent == [first]
        assert first.client.state is State.CLOSED
        assert pool.stats().open == 0


async def test_max_session_age_bounds_reuse_too(make_pool: MakePool, clock: FakeClock) -> None:
    async with fake() as server:
        factory = fake_factory(server)
        pool = make_pool(snapshot_max_age=1000.0, max_session_age=60.0, noop_after=1000.0)
        async with pool.lease("k", "fake", factory) as first:
            pass
        clock.advance(61)
        async with pool.lease("k", "fake", factory) as second:
            assert second is not first


async def test_several_sessions_per_key_when_allowed(make_pool: MakePool) -> None:
    async with fake() as server:
        factory = fake_factory(server)
        pool = make_pool(max_per_key=2)
        first = Holder(pool, "k", "fake", factory)
        second = Holder(pool, "k", "fake", factory)
        await first.entered.wait()
        await second.entered.wait()
        assert first.session is not second.session
        await first.finish()
        await second.finish()
        assert pool.stats().idle == 2
        # fresh: an idle session of the key is ended first, then a new one opened.
        async with pool.lease("k", "fake", factory, fresh=True):
            assert pool.stats().open == 2
        assert factory.calls == 3


# -- caps and eviction -------------------------------------------------------------------------


async def test_per_upstream_and_global_caps_hold_at_the_servers(make_pool: MakePool) -> None:
    users = {f"u{i}": "pw" for i in range(6)}
    async with fake(users=users) as alpha, fake(users=users) as beta:
        servers = {"alpha": alpha, "beta": beta}
        most = {"alpha": 0, "beta": 0, "total": 0}

        def sample() -> None:
            counts = {name: open_at(server) for name, server in servers.items()}
            for name, count in counts.items():
                most[name] = max(most[name], count)
            most["total"] = max(most["total"], sum(counts.values()))

        def factory_for(name: str, user: str) -> Factory:
            server = servers[name]

            async def open_client() -> POP3Client:
                client = await POP3Client.connect(server.host, server.port, tls=TLSMode.PLAIN)
                sample()
                return await login(client, user, "pw")

            return Factory(open_client)

        pool = make_pool(max_per_upstream=2, max_total=3)

        async def one(name: str, user: str) -> int:
            async with pool.lease(f"{name}/{user}", name, factory_for(name, user)) as session:
                sample()
                assert pool.stats().open <= 3
                await asyncio.sleep(0)
                return (await session.client.stat())[0]

        jobs = [one(name, user) for user in users for name in servers]
        assert await asyncio.gather(*jobs) == [2] * 12
        assert most["alpha"] <= 2
        assert most["beta"] <= 2
        assert most["total"] <= 3
        # Twelve keys, three slots: idle sessions of other keys were QUIT to make room.
        connections = alpha.connections + beta.connections
        assert len(connections) == 12
        assert sum(c.updated for c in connections) >= 9
        await pool.close()
        assert all(c.updated for c in connections)


async def test_global_cap_evicts_the_least_recently_used_idle_session(
    make_pool: MakePool, clock: FakeClock, events: Events
) -> None:
    async with fake(users={"a": "pw", "b": "pw", "c": "pw"}) as server:
        pool = make_pool(max_total=2)
        for user in ("a", "b"):
            async with pool.lease(user, "fake", fake_factory(server, user, "pw")):
                clock.advance(1)
        async with pool.lease("a", "fake", fake_factory(server, "a", "pw")):
            clock.advance(1)  # "a" is now the most recently used
        async with pool.lease("c", "fake", fake_factory(server, "c", "pw")) as session:
            assert session.client.state is State.TRANSACTION
        b_record = server.connections[1]
        assert b_record.user == "b"
        assert b_record.updated  # QUIT: it was the LRU idle session
        assert not server.connections[0].closed
        assert pool.stats().open == 2
        assert events.counts["close"] == 1


async def test_per_upstream_cap_evicts_only_within_the_upstream(make_pool: MakePool) -> None:
    async with fake(users={"a1": "pw", "a2": "pw"}) as alpha, fake(users={"b1": "pw"}) as beta:
        pool = make_pool(max_per_upstream=1, max_total=10)
        async with pool.lease("a1", "alpha", fake_factory(alpha, "a1", "pw")):
            pass
        async with pool.lease("b1", "beta", fake_factory(beta, "b1", "pw")):
            pass
        assert pool.stats().idle == 2
        async with pool.lease("a2", "alpha", fake_factory(alpha, "a2", "pw")):
            pass
        assert alpha.connections[0].updated
        assert not beta.connections[0].closed
        assert pool.stats().idle == 2


async def test_one_eviction_per_key_wanted(make_pool: MakePool, clock: FakeClock) -> None:
    async with fake(users={"x": "pw", "y": "pw", "k": "pw"}) as server:
        pool = make_pool(max_total=2)
        for user in ("x", "y"):
            async with pool.lease(user, "fake", fake_factory(server, user, "pw")):
                clock.advance(1)
        factory = fake_factory(server, "k", "pw")

        async def one() -> None:
            async with pool.lease("k", "fake", factory):
                await asyncio.sleep(0)

        await asyncio.gather(one(), one(), one())
        # Three leases on "k" need one slot: only "x" (the LRU) was closed for them.
        assert factory.calls == 1
        assert [c.user for c in server.connections if c.closed] == ["x"]
        assert pool.stats().idle == 2


async def test_a_key_at_its_cap_does_not_evict_other_keys(make_pool: MakePool) -> None:
    async with fake(users={"k": "pw", "other": "pw"}) as server:
        pool = make_pool(acquire_timeout=0.05)
        async with pool.lease("other", "fake", fake_factory(server, "other", "pw")):
            pass
        factory = fake_factory(server, "k", "pw")
        holder = Holder(pool, "k", "fake", factory)
        await holder.entered.wait()
        with pytest.raises(PoolTimeoutError):
            async with pool.lease("k", "fake", factory):
                pass  # pragma: no cover
        assert not server.connections[0].closed  # "other" stayed idle
        await holder.finish()


# -- waiting ---------------------------------------------------------------------------------


async def test_acquire_timeout_raises_and_leaks_nothing(
    make_pool: MakePool, events: Events
) -> None:
    async with fake() as server:
        factory = fake_factory(server)
        pool = make_pool(acquire_timeout=0.05)
        holder = Holder(pool, "k", "fake", factory)
        await holder.entered.wait()
        with pytest.raises(PoolTimeoutError) as caught:
            async with pool.lease("k", "fake", factory):
                pass  # pragma: no cover
        assert isinstance(caught.value, POP3Error)
        assert isinstance(caught.value, TimeoutError)
        assert "timeout" in events.kinds
        assert pool.stats().waiting == 0
        await holder.finish()
        async with pool.lease("k", "fake", factory) as session:
            assert session is holder.session
        assert factory.calls == 1


async def test_acquire_timeout_when_every_slot_is_leased(make_pool: MakePool) -> None:
    async with fake(users={"a": "pw", "b": "pw"}) as server:
        pool = make_pool(max_total=1, acquire_timeout=0.05)
        holder = Holder(pool, "a", "fake", fake_factory(server, "a", "pw"))
        await holder.entered.wait()
        with pytest.raises(PoolTimeoutError):
            async with pool.lease("b", "fake", fake_factory(server, "b", "pw")):
                pass  # pragma: no cover
        await holder.finish()
        async with pool.lease("b", "fake", fake_factory(server, "b", "pw")):
            assert pool.stats().open == 1


async def test_waiters_are_served_in_order(make_pool: MakePool) -> None:
    async with fake() as server:
        factory = fake_factory(server)
        pool = make_pool()
        holder = Holder(pool, "k", "fake", factory)
        await holder.entered.wait()
        order: list[int] = []

        async def one(i: int) -> None:
            async with pool.lease("k", "fake", factory):
                order.append(i)

        tasks = []
        for i in range(5):
            tasks.append(asyncio.create_task(one(i)))
            await asyncio.sleep(0)  # queue them in this order
        assert pool.stats().waiting == 5
        await holder.finish()
        await asyncio.gather(*tasks)
        assert order == [0, 1, 2, 3, 4]


# -- returning sessions ------------------------------------------------------------------------


async def test_dele_marks_are_not_returned_to_the_pool(make_pool: MakePool) -> None:
    box = FakeMailbox(MESSAGES)
    async with fake(box) as server:
        factory = fake_factory(server)
        pool = make_pool()
        async with pool.lease("k", "fake", factory) as session:
            await session.client.dele(1)
        assert session.client.state is State.CLOSED
        assert pool.stats().open == 0
        async with pool.lease("k", "fake", factory) as session:
            assert (await session.client.stat())[0] == 2
        assert box.uids() == ["uid-1", "uid-2"]
        assert not server.connections[0].updated  # dropped, never QUIT


async def test_an_exception_in_the_block_drops_the_session(make_pool: MakePool) -> None:
    box = FakeMailbox(MESSAGES)
    async with fake(box) as server:
        factory = fake_factory(server)
        pool = make_pool()
        leased: list[PooledSession] = []

        async def fail() -> None:
            async with pool.lease("k", "fake", factory) as session:
                leased.append(session)
                await session.client.dele(2)
                raise LookupError("the caller failed")

        with pytest.raises(LookupError):
            await fail()
        session = leased[0]
        assert session.client.state is State.CLOSED
        assert pool.stats().open == 0
        await server.wait_idle()
        assert box.uids() == ["uid-1", "uid-2"]
        assert saw(server, b"QUIT") == []


async def test_a_broken_session_is_closed_not_returned(make_pool: MakePool) -> None:
    async with fake() as server:
        factory = fake_factory(server)
        pool = make_pool()
        server.script("STAT", Drop())
        async with pool.lease("k", "fake", factory) as session:
            with pytest.raises(POP3ConnectionError):
                await session.client.stat()
        assert pool.stats().open == 0
        async with pool.lease("k", "fake", factory) as session:
            assert (await session.client.stat())[0] == 2
        assert factory.calls == 2


async def test_a_discarded_session_is_not_returned(make_pool: MakePool) -> None:
    async with fake() as server:
        factory = fake_factory(server)
        pool = make_pool()
        async with pool.lease("k", "fake", factory) as session:
            session.discard()
            assert session.discarded
        assert session.client.state is State.CLOSED
        assert pool.stats().open == 0


async def test_a_session_too_old_at_return_is_quit(make_pool: MakePool, clock: FakeClock) -> None:
    async with fake() as server:
        pool = make_pool(snapshot_max_age=5.0)
        async with pool.lease("k", "fake", fake_factory(server)) as session:
            clock.advance(6)
        await wait_until(lambda: pool.stats().open == 0)
        assert session.client.state is State.CLOSED
        assert server.connections[0].updated


async def test_repr_hides_the_key(make_pool: MakePool) -> None:
    async with fake() as server:
        pool = make_pool()
        async with pool.lease("secret-digest", "fake", fake_factory(server)) as session:
            shown = repr(session)
        assert "secret-digest" not in shown
        assert "'fake'" in shown


# -- cancellation ----------------------------------------------------------------------------


async def test_cancelling_the_holder_mid_lease_frees_the_slot(make_pool: MakePool) -> None:
    box = FakeMailbox(MESSAGES)
    async with fake(box) as server:
        factory = fake_factory(server)
        pool = make_pool(acquire_timeout=2.0)
        holder = Holder(pool, "k", "fake", factory)
        await holder.entered.wait()
        assert holder.session is not None
        await holder.session.client.dele(1)
        holder.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await holder.task
        stats = pool.stats()
        assert (stats.open, stats.leased, stats.idle) == (0, 0, 0)
        assert holder.session.client.state is State.CLOSED
        async with pool.lease("k", "fake", factory) as session:
            assert session.client.deleted_marks == 0
            assert (await session.client.stat())[0] == 2
        assert box.uids() == ["uid-1", "uid-2"]


async def test_cancelling_a_command_mid_flight_then_the_next_lease_is_clean(
    make_pool: MakePool,
) -> None:
    async with fake() as server:
        factory = fake_factory(server)
        pool = make_pool()
        server.script("UIDL", Stall())
        entered = asyncio.Event()

        async def stuck() -> None:
            async with pool.lease("k", "fake", factory) as session:
                entered.set()
                await session.client.uidl()

        task = asyncio.create_task(stuck())
        await entered.wait()
        await wait_until(lambda: saw(server, b"UIDL") == [0])
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with pool.lease("k", "fake", factory) as session:
            assert await session.client.uidl() == {1: "uid-1", 2: "uid-2"}
        assert factory.calls == 2


async def test_cancelling_a_queued_lease_leaks_nothing(make_pool: MakePool) -> None:
    async with fake() as server:
        factory = fake_factory(server)
        pool = make_pool()
        holder = Holder(pool, "k", "fake", factory)
        await holder.entered.wait()
        waiting = Holder(pool, "k", "fake", factory).task
        await wait_until(lambda: pool.stats().waiting == 1)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert pool.stats().waiting == 0
        await holder.finish()
        assert pool.stats().idle == 1


async def test_cancelled_while_logging_in_releases_the_slot(make_pool: MakePool) -> None:
    async with fake() as server:
        factory = fake_factory(server)
        pool = make_pool(acquire_timeout=1.0)
        server.script("PASS", Stall())
        holder = Holder(pool, "k", "fake", factory)
        await wait_until(lambda: saw(server, b"PASS") == [0])
        assert pool.stats().leased == 1
        holder.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await holder.task
        assert pool.stats().open == 0
        async with pool.lease("k", "fake", factory) as session:
            assert session.client.state is State.TRANSACTION


async def test_a_session_handed_to_a_cancelled_waiter_goes_back_idle(
    make_pool: MakePool,
) -> None:
    async with fake() as server:
        factory = fake_factory(server)
        pool = make_pool()
        entered = asyncio.Event()
        leave = asyncio.Event()
        waiter: Holder | None = None

        async def hold() -> PooledSession:
            async with pool.lease("k", "fake", factory) as session:
                entered.set()
                await leave.wait()
            # The lease ended synchronously and handed the session to the waiter, which is
            # cancelled before it could run.
            assert waiter is not None
            waiter.task.cancel()
            return session

        holder = asyncio.create_task(hold())
        await entered.wait()
        waiter = Holder(pool, "k", "fake", factory)
        await wait_until(lambda: pool.stats().waiting == 1)
        leave.set()
        first = await holder
        with pytest.raises(asyncio.CancelledError):
            await waiter.task
        assert waiter.session is None
        stats = pool.stats()
        assert (stats.open, stats.idle, stats.waiting) == (1, 1, 0)
        async with pool.lease("k", "fake", factory) as session:
            assert session is first
        assert factory.calls == 1


async def test_a_slot_handed_to_a_cancelled_waiter_is_released(make_pool: MakePool) -> None:
    async with fake(users={"a": "pw", "b": "pw"}) as server:
        pool = make_pool(max_total=1)
        entered = asyncio.Event()
        leave = asyncio.Event()
        waiter: Holder | None = None

        async def hold_and_discard() -> None:
            async with pool.lease("a", "fake", fake_factory(server, "a", "pw")) as session:
                entered.set()
                await leave.wait()
                session.discard()
            assert waiter is not None
            waiter.task.cancel()  # the freed slot was just reserved for it

        holder = asyncio.create_task(hold_and_discard())
        await entered.wait()
        waiter = Holder(pool, "b", "fake", fake_factory(server, "b", "pw"))
        await wait_until(lambda: pool.stats().waiting == 1)
        leave.set()
        await holder
        with pytest.raises(asyncio.CancelledError):
            await waiter.task
        assert pool.stats().open == 0
        async with pool.lease("b", "fake", fake_factory(server, "b", "pw")):
            assert pool.stats().open == 1


async def test_a_waiter_cancelled_before_the_session_returns_is_skipped(
    make_pool: MakePool,
) -> None:
    async with fake() as server:
        factory = fake_factory(server)
        pool = make_pool()
        entered = asyncio.Event()
        leave = asyncio.Event()
        waiter: Holder | None = None

        async def hold() -> None:
            async with pool.lease("k", "fake", factory):
                entered.set()
                await leave.wait()
                assert waiter is not None
                waiter.task.cancel()  # cancelled, not yet run, when the session comes back

        holder = asyncio.create_task(hold())
        await entered.wait()
        waiter = Holder(pool, "k", "fake", factory)
        await wait_until(lambda: pool.stats().waiting == 1)
        leave.set()
        await holder
        with pytest.raises(asyncio.CancelledError):
            await waiter.task
        stats = pool.stats()
        assert (stats.open, stats.idle, stats.waiting) == (1, 1, 0)


# -- NOOP ------------------------------------------------------------------------------------

NOOP_LIMITS = {"snapshot_max_age": 1000.0, "max_session_age": 1000.0, "noop_after": 10.0}


async def test_noop_only_after_idle(make_pool: MakePool, clock: FakeClock, events: Events) -> None:
    async with fake() as server:
        factory = fake_factory(server)
        pool = make_pool(**NOOP_LIMITS)
        async with pool.lease("k", "fake", factory):
            pass
        clock.advance(10)
        async with pool.lease("k", "fake", factory):
            pass
        assert saw(server, b"NOOP") == []
        clock.advance(10.5)
        async with pool.lease("k", "fake", factory) as session:
            assert session.client.state is State.TRANSACTION
        assert saw(server, b"NOOP") == [0]
        assert factory.calls == 1
        assert events.counts == {"open": 1, "reuse": 2}


@pytest.mark.parametrize("fault", [Err(None, "gone"), Drop()])
async def test_a_failed_noop_opens_a_new_session_transparently(
    make_pool: MakePool, clock: FakeClock, events: Events, fault: Err | Drop
) -> None:
    async with fake() as server:
        factory = fake_factory(server)
        pool = make_pool(**NOOP_LIMITS)
        async with pool.lease("k", "fake", factory) as first:
            pass
        server.script("NOOP", fault)
        clock.advance(11)
        async with pool.lease("k", "fake", factory) as second:
            assert second is not first
            assert (await second.client.stat())[0] == 2
        assert first.client.state is State.CLOSED
        assert events.kinds == ["open", "noop_failed", "close", "open"]


async def test_cancelled_during_noop_frees_the_slot(make_pool: MakePool, clock: FakeClock) -> None:
    async with fake() as server:
        factory = fake_factory(server)
        pool = make_pool(**NOOP_LIMITS)
        async with pool.lease("k", "fake", factory) as first:
            pass
        server.script("NOOP", Stall())
        clock.advance(11)
        task = Holder(pool, "k", "fake", factory).task
        await wait_until(lambda: saw(server, b"NOOP") == [0])
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert first.client.state is State.CLOSED
        assert pool.stats().open == 0


# -- reaper ----------------------------------------------------------------------------------


async def test_the_reaper_quits_idle_sessions(make_pool: MakePool, clock: FakeClock) -> None:
    async with fake() as server:
        pool = make_pool(
            idle_timeout=10.0, snapshot_max_age=1000.0, max_session_age=1000.0, reap_interval=0.01
        )
        async with pool.lease("k", "fake", fake_factory(server)) as session:
            pass
        clock.advance(5)
        await asyncio.sleep(0.05)  # a few ticks: nothing is due yet
        assert pool.stats().idle == 1
        clock.advance(5.5)
        await wait_until(lambda: pool.stats().open == 0)
        assert session.client.state is State.CLOSED
        assert server.connections[0].updated


async def test_the_reaper_ends_sessions_too_old_to_be_reused(
    make_pool: MakePool, clock: FakeClock
) -> None:
    async with fake() as server:
        pool = make_pool(snapshot_max_age=5.0, reap_interval=0.01)
        async with pool.lease("k", "fake", fake_factory(server)):
            pass
        clock.advance(6)
        await wait_until(lambda: pool.stats().open == 0)
        assert server.connections[0].updated


async def test_the_reaper_forgets_disconnected_sessions(make_pool: MakePool) -> None:
    async with fake() as server:
        pool = make_pool(reap_interval=0.01)
        async with pool.lease("k", "fake", fake_factory(server)) as session:
            pass
        session.client.abort()  # as if the server had logged it out
        await wait_until(lambda: pool.stats().open == 0)
        assert not server.connections[0].updated


async def test_the_reaper_works_in_bounded_batches(
    make_pool: MakePool, clock: FakeClock, events: Events
) -> None:
    users = {f"u{i}": "pw" for i in range(3)}
    async with fake(users=users) as server:
        pool = make_pool(reap_interval=1000.0, reap_batch=2, idle_timeout=10.0)
        for user in users:
            async with pool.lease(user, "fake", fake_factory(server, user, "pw")):
                clock.advance(1)
        clock.advance(11)
        await pool._reap_once()
        await wait_until(lambda: pool.stats().open == 1)
        assert [c.user for c in server.connections if not c.closed] == ["u2"]  # newest kept
        await pool._reap_once()
        await wait_until(lambda: pool.stats().open == 0)
        assert events.counts["close"] == 3


# -- login retries -----------------------------------------------------------------------------


async def test_in_use_is_retried_until_the_lock_frees(make_pool: MakePool, events: Events) -> None:
    async with fake(lock=True) as server:
        other = await login(
            await POP3Client.connect(server.host, server.port, tls=TLSMode.PLAIN),
            "user",
            "password",
        )
        pool = make_pool(retry_budget=30.0, **QUICK)
        holder = Holder(pool, "k", "fake", fake_factory(server))
        await wait_until(lambda: "retry" in events.kinds)
        await other.quit()
        await holder.entered.wait()
        assert holder.session is not None
        assert holder.session.client.state is State.TRANSACTION
        await holder.finish()
        assert events.counts["open"] == 1


async def test_login_delay_is_retried(make_pool: MakePool, events: Events) -> None:
    async with fake() as server:
        server.script("PASS", Err("LOGIN-DELAY", "too soon"), times=2)
        pool = make_pool(retry_budget=30.0, **QUICK)
        async with pool.lease("k", "fake", fake_factory(server)) as session:
            assert session.client.state is State.TRANSACTION
        assert events.counts["retry"] == 2


async def test_retry_budget_exhausted_reraises(make_pool: MakePool) -> None:
    async with fake(lock=True) as server:
        other = await login(
            await POP3Client.connect(server.host, server.port, tls=TLSMode.PLAIN),
            "user",
            "password",
        )
        pool = make_pool(retry_budget=0.1, **QUICK)
        with pytest.raises(POP3InUseError):
            async with pool.lease("k", "fake", fake_factory(server)):
                pass  # pragma: no cover
        assert pool.stats().open == 0
        await other.quit()


async def test_without_a_budget_nothing_is_retried(make_pool: MakePool, events: Events) -> None:
    async with fake() as server:
        server.script("PASS", Err("IN-USE", "locked"))
        pool = make_pool(retry_budget=0.0)
        with pytest.raises(POP3InUseError):
            async with pool.lease("k", "fake", fake_factory(server)):
                pass  # pragma: no cover
        assert "retry" not in events.kinds
        async with pool.lease("k", "fake", fake_factory(server)):
            pass


async def test_other_login_errors_are_not_retried(make_pool: MakePool, events: Events) -> None:
    async with fake() as server:
        pool = make_pool(**QUICK)
        with pytest.raises(POP3AuthError):
            async with pool.lease("k", "fake", fake_factory(server, "user", "wrong")):
                pass  # pragma: no cover
        assert events.kinds == []
        assert pool.stats().open == 0


async def test_a_factory_must_log_in(make_pool: MakePool) -> None:
    async with fake() as server:
        clients: list[POP3Client] = []

        async def not_logged_in() -> POP3Client:
            client = await POP3Client.connect(server.host, server.port, tls=TLSMode.PLAIN)
            clients.append(client)
            return client

        pool = make_pool()
        with pytest.raises(POP3StateError):
            async with pool.lease("k", "fake", not_logged_in):
                pass  # pragma: no cover
        assert clients[0].state is State.CLOSED
        assert pool.stats().open == 0


# -- events ----------------------------------------------------------------------------------


async def test_a_failing_event_observer_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def observer(kind: str) -> None:
        raise RuntimeError(kind)

    async with fake() as server:
        pool = SessionPool(on_event=observer)
        with caplog.at_level(logging.ERROR, logger="gateway.pop3.pool"):
            async with pool.lease("k", "fake", fake_factory(server)):
                pass
        await pool.close()
    assert any("observer failed" in r.getMessage() for r in caplog.records)


async def test_without_an_observer(make_pool: MakePool) -> None:
    async with fake() as server:
        pool = SessionPool()
        async with pool.lease("k", "fake", fake_factory(server)):
            pass
        await pool.close()
        assert server.connections[0].updated


# -- close -----------------------------------------------------------------------------------


async def test_close_quits_idle_sessions(make_pool: MakePool, events: Events) -> None:
    async with fake(users={"a": "pw", "b": "pw"}) as server:
        pool = make_pool()
        for user in ("a", "b"):
            async with pool.lease(user, "fake", fake_factory(server, user, "pw")):
                pass
        await pool.close()
        assert [c.updated for c in server.connections] == [True, True]
        assert pool.stats().open == 0
        assert events.counts["close"] == 2
        with pytest.raises(PoolClosedError):
            async with pool.lease("a", "fake", fake_factory(server, "a", "pw")):
                pass  # pragma: no cover
        await pool.close()  # idempotent


async def test_close_without_quit_where_asked(make_pool: MakePool) -> None:
    async with fake() as server:
        pool = make_pool()
        async with pool.lease("k", "fake", fake_factory(server), quit_on_close=False):
            pass
        await pool.close()
        await server.wait_idle()
        assert saw(server, b"QUIT") == []


async def test_close_fails_waiters_and_waits_for_leases(make_pool: MakePool) -> None:
    async with fake() as server:
        factory = fake_factory(server)
        pool = make_pool()
        holder = Holder(pool, "k", "fake", factory)
        await holder.entered.wait()
        waiter = Holder(pool, "k", "fake", factory)
        await wait_until(lambda: pool.stats().waiting == 1)
        closing = asyncio.create_task(pool.close(timeout=30))
        with pytest.raises(PoolClosedError):
            await waiter.task
        assert not closing.done()
        await holder.finish()  # a clean session returned while closing is QUIT
        await closing
        assert server.connections[0].updated
        assert pool.stats().open == 0


async def test_close_skips_a_waiter_already_cancelled(make_pool: MakePool) -> None:
    async with fake() as server:
        factory = fake_factory(server)
        pool = make_pool()
        holder = Holder(pool, "k", "fake", factory)
        await holder.entered.wait()
        waiter = Holder(pool, "k", "fake", factory)
        await wait_until(lambda: pool.stats().waiting == 1)

        async def cancel_then_close() -> None:
            waiter.task.cancel()  # not yet run when close() empties the queue
            await pool.close(timeout=30)

        closing = asyncio.create_task(cancel_then_close())
        with pytest.raises(asyncio.CancelledError):
            await waiter.task
        await holder.finish()
        await closing
        assert pool.stats().open == 0


async def test_close_drops_leases_that_outlive_its_timeout(make_pool: MakePool) -> None:
    async with fake() as server:
        pool = make_pool()
        holder = Holder(pool, "k", "fake", fake_factory(server))
        await holder.entered.wait()
        await pool.close(timeout=0.01)
        assert holder.session is not None
        assert holder.session.client.state is State.CLOSED
        await holder.finish()
        assert pool.stats().open == 0
        assert not server.connections[0].updated


async def test_close_gives_up_on_a_stalled_quit(make_pool: MakePool) -> None:
    async with fake() as server:
        pool = make_pool(quit_timeout=60.0)
        async with pool.lease("k", "fake", fake_factory(server)) as session:
            pass
        server.script("QUIT", Stall())
        await pool.close(timeout=0.05)
        assert session.client.state is State.CLOSED
        assert pool.stats().open == 0


async def test_a_quit_that_fails_is_bounded(make_pool: MakePool) -> None:
    async with fake() as server:
        pool = make_pool(quit_timeout=0.05)
        async with pool.lease("k", "fake", fake_factory(server)) as session:
            pass
        server.script("QUIT", Stall())
        await pool.close(timeout=30)
        assert session.client.state is State.CLOSED


async def test_close_while_a_session_is_opening(make_pool: MakePool, events: Events) -> None:
    async with fake() as server:
        gate = asyncio.Event()
        entered = asyncio.Event()
        opened: list[POP3Client] = []

        async def slow() -> POP3Client:
            client = await fake_factory(server)()
            opened.append(client)
            entered.set()
            await gate.wait()
            return client

        pool = make_pool()
        lease = Holder(pool, "k", "fake", Factory(slow)).task
        await entered.wait()
        closing = asyncio.create_task(pool.close(timeout=30))
        await wait_until(lambda: pool.closed)
        assert not closing.done()
        gate.set()
        with pytest.raises(PoolClosedError):
            await lease
        await closing
        assert opened[0].state is State.CLOSED
        assert events.counts["open"] == events.counts["close"] == 1


async def test_a_session_is_not_reused_once_its_credential_expires(
    make_pool: MakePool, clock: FakeClock
) -> None:
    """An OAuth login sets ``valid_for`` (its token's time left): the session ends then,
    however young its snapshot (Gmail ends the session when the token expires)."""
    async with fake() as server:
        inner = fake_factory(server)

        async def expiring() -> POP3Client:
            client = await inner()
            client.valid_for = 10.0
            return client

        pool = make_pool(snapshot_max_age=1000.0, max_session_age=1000.0, noop_after=1000.0)
        async with pool.lease("k", "fake", expiring) as first:
            assert first.expires_at == clock.now + 10.0
        clock.advance(9.5)
        async with pool.lease("k", "fake", expiring) as again:
            assert again is first
        clock.advance(0.5)
        async with pool.lease("k", "fake", expiring) as second:
            assert second is not first
        assert first.client.state is State.CLOSED
        assert inner.calls == 2


async def test_the_reaper_ends_an_idle_session_whose_credential_expired(
    make_pool: MakePool, clock: FakeClock
) -> None:
    async with fake() as server:
        inner = fake_factory(server)

        async def expiring() -> POP3Client:
            client = await inner()
            client.valid_for = 10.0
            return client

        pool = make_pool(snapshot_max_age=1000.0, max_session_age=1000.0, reap_interval=0.01)
        async with pool.lease("k", "fake", expiring) as first:
            pass
        clock.advance(10.0)
        await wait_until(lambda: pool.stats().open == 0)
        assert first.client.state is State.CLOSED
