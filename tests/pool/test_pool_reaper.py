"""The reaper against leases that come and go while it waits on the replica gate, and its
supervision: a failed tick never stops idle cleanup or lock renewal for good."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence

import pytest

from gateway.pop3 import PooledSession, PoolLimits, SessionPool, State
from tests.pool.helpers import Events, fake_factory
from tests.pool.test_pool_fake import fake
from tests.support.clock import FakeClock
from tests.support.wait import wait_until


class SlowGate:
    """A replica gate whose lock renewal takes as long as the test wants (a slow Redis)."""

    def __init__(self) -> None:
        self.renewing = asyncio.Event()  #: set when a renewal starts
        self.proceed = asyncio.Event()  #: the renewal ends when this is set
        self.renewals = 0
        self.fail_next: BaseException | None = None

    async def acquire(self, lock: str, timeout: float) -> object | None:
        return "token"

    async def release(self, lock: str, token: object) -> None:
        return None

    async def renew(self, held: Sequence[tuple[str, object]]) -> None:
        self.renewals += 1
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        self.renewing.set()
        await self.proceed.wait()

    async def wanted(self, locks: Sequence[str]) -> set[str]:
        return set()

    async def check_login_delay(self, lock: str) -> None:
        return None

    async def note_login_delay(self, lock: str) -> None:
        return None


@pytest.fixture
async def gated() -> AsyncIterator[tuple[SessionPool, SlowGate, FakeClock, Events]]:
    clock, events, gate = FakeClock(), Events(), SlowGate()
    limits = PoolLimits(
        idle_timeout=1.0, snapshot_max_age=100.0, max_session_age=100.0, reap_interval=0.01
    )
    pool = SessionPool(limits, clock=clock, on_event=events, gate=gate)
    yield pool, gate, clock, events
    gate.proceed.set()
    await pool.close(timeout=2.0)


async def test_a_session_leased_while_the_reaper_renews_locks_stays_with_its_lease(
    gated: tuple[SessionPool, SlowGate, FakeClock, Events],
) -> None:
    pool, gate, clock, _ = gated
    async with fake() as server:
        factory = fake_factory(server)
        async with pool.lease("k", "fake", factory):
            pass
        clock.advance(2)  # idle longer than idle_timeout: due for the reaper
        await asyncio.wait_for(gate.renewing.wait(), 5)
        # The reaper waits on the gate; meanwhile a request leases the idle session.
        async with pool.lease("k", "fake", factory) as session:
            gate.proceed.set()
            renewals = gate.renewals
            await wait_until(lambda: gate.renewals >= renewals + 2)  # more ticks ran
            assert session.client.state is State.TRANSACTION  # not QUIT under the lease
            assert factory.calls == 1
        assert pool.stats().idle == 1
        clock.advance(2)
        await wait_until(lambda: pool.stats().open == 0)  # the reaper still works
        assert session.client.state is State.CLOSED
        assert server.connections[0].updated  # ended with QUIT


async def test_a_failed_reaper_tick_is_logged_and_the_reaper_goes_on(
    gated: tuple[SessionPool, SlowGate, FakeClock, Events],
    caplog: pytest.LogCaptureFixture,
) -> None:
    pool, gate, clock, events = gated
    gate.proceed.set()
    gate.fail_next = RuntimeError("a gate that breaks its promise not to raise")
    async with fake() as server:
        with caplog.at_level(logging.ERROR, logger="gateway.pop3.pool"):
            async with pool.lease("k", "fake", fake_factory(server)):
                pass
            await wait_until(lambda: events.counts["reaper_error"] == 1)
            clock.advance(2)
            await wait_until(lambda: pool.stats().open == 0)
        assert "tending the replica gate failed; reaping idle sessions anyway" in caplog.text
        assert "RuntimeError" in caplog.text


async def test_a_tick_that_fails_anywhere_does_not_end_the_reaper(
    gated: tuple[SessionPool, SlowGate, FakeClock, Events],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pool, gate, clock, events = gated
    gate.proceed.set()
    real = pool._take_idle
    calls = [0]

    def take_idle_failing_once(session: PooledSession) -> None:
        calls[0] += 1
        if calls[0] == 1:
            raise ValueError("list.remove(x): x not in list")  # what the old race raised
        real(session)

    monkeypatch.setattr(pool, "_take_idle", take_idle_failing_once)
    async with fake() as server:
        with caplog.at_level(logging.ERROR, logger="gateway.pop3.pool"):
            async with pool.lease("k", "fake", fake_factory(server)):
                pass
            clock.advance(2)
            await wait_until(lambda: pool.stats().open == 0)  # a later tick reaped it
        assert events.counts["reaper_error"] == 1
        assert "reaper failed; it goes on" in caplog.text
