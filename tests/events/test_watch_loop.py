"""The watcher's own loop (``Watcher.run``), on a clock the test moves: when polls are due,
that a poll's session does not outlive it, and the leases renewed while it runs and given
back when it stops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from gateway.accounts import Account
from gateway.app import create_app
from gateway.events import MemoryEventLog, Watcher, WatchSpec
from gateway.keys import WATCHER
from gateway.pop3 import State
from tests.events.support import watched_settings
from tests.support.api import ClientFactory
from tests.support.clock import FakeClock
from tests.support.fakepop3 import FakeMailbox, FakePOP3Server
from tests.support.wait import wait_until


@dataclass
class StubClient:
    """What a poll uses of a POP3 client; listing takes ``seconds`` on the test's clock."""

    clock: FakeClock
    seconds: float
    state: State = State.TRANSACTION
    deleted_marks: int = 0
    quits: int = 0

    async def uidl_and_list(self) -> tuple[dict[int, str], dict[int, int]]:
        self.clock.advance(self.seconds)
        return {1: "uid-1"}, {1: 10}

    async def top_each(self, numbers: Any, read: Any) -> None:
        raise AssertionError("nothing is new")

    async def quit(self) -> None:
        self.quits += 1
        self.state = State.CLOSED


@dataclass
class StubSession:
    client: StubClient


class StubSessions:
    """A session source that records when each lease (a login) began."""

    def __init__(self, clock: FakeClock, seconds: float) -> None:
        self.clock = clock
        self.seconds = seconds
        self.logins: list[float] = []
        self.clients: list[StubClient] = []

    @contextlib.asynccontextmanager
    async def lease(self, account: Account, **_: Any) -> AsyncIterator[StubSession]:
        self.logins.append(self.clock())
        client = StubClient(self.clock, self.seconds)
        self.clients.append(client)
        yield StubSession(client)

    def wanted(self, account: Account) -> bool:
        return False


class StubLeases:
    """Holds every mailbox; records renewals and releases (on the test's clock)."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.renewed: list[float] = []
        self.released = 0
        self.fail_renew = False
        self.fail_release = False

    async def hold(self, mailbox: str, interval: float) -> str | None:
        return "token"

    async def renew(self) -> None:
        self.renewed.append(self.clock())
        if self.fail_renew:
            raise RuntimeError("renewal broke")

    async def release_all(self) -> None:
        self.released += 1
        if self.fail_release:
            raise RuntimeError("release broke")


@pytest.fixture
async def spec(aiohttp_client: ClientFactory) -> WatchSpec:
    """A watched mailbox (interval 60 s) as the gateway configures it."""
    settings = watched_settings(1, "alice", "pw", box={"watch_interval": 60})
    client = await aiohttp_client(create_app(settings, watch=False))
    return client.app[WATCHER].specs["box"]


@contextlib.asynccontextmanager
async def running(watcher: Watcher) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.get_running_loop().create_task(watcher.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def moved(watcher: Watcher, clock: FakeClock, to: float) -> None:
    """The test's clock jumps; the loop looks at what is due."""
    clock.now = to
    watcher._wake.set()


async def test_the_next_poll_is_due_an_interval_after_the_last_login_not_after_the_poll(
    spec: WatchSpec,
) -> None:
    # a poll that takes 10 s (a slow server, a queue for a free slot) does not push the next
    # one back: with every poll 10 s late, a message's detection drifted past an interval
    clock = FakeClock()
    sessions = StubSessions(clock, seconds=10)
    watcher = Watcher(sessions, MemoryEventLog(), [spec], clock=clock)  # type: ignore[arg-type]
    async with running(watcher):
        await wait_until(lambda: len(sessions.logins) == 1)
        start = sessions.logins[0]
        moved(watcher, clock, start + 59.9)
        await asyncio.sleep(0.05)
        assert len(sessions.logins) == 1  # never sooner than an interval after a login
        moved(watcher, clock, start + 60)
        await wait_until(lambda: len(sessions.logins) == 2)
    assert sessions.logins == [start, start + 60]


async def test_a_poll_ends_its_session(spec: WatchSpec) -> None:
    # the next poll logs in anew: an idle session left behind holds a slot of the pool
    clock = FakeClock()
    sessions = StubSessions(clock, seconds=0)
    watcher = Watcher(sessions, MemoryEventLog(), [spec], clock=clock)  # type: ignore[arg-type]
    await watcher.poll("box")  # the baseline
    await watcher.poll("box")
    assert [c.quits for c in sessions.clients] == [1, 1]


async def test_a_poll_through_the_pool_quits_its_session(aiohttp_client: ClientFactory) -> None:
    box = FakeMailbox([("uid-1", b"Subject: one\r\n\r\nx\r\n")])
    async with FakePOP3Server(box, users={"alice": "pw"}) as server:
        settings = watched_settings(server.port, "alice", "pw")
        client = await aiohttp_client(create_app(settings, watch=False))
        watcher: Watcher = client.app[WATCHER]
        assert (await watcher.poll("box")).outcome == "ok"
        server.mailbox.add("uid-2", b"Subject: two\r\n\r\ny\r\n")
        assert (await watcher.poll("box")).outcome == "ok"
        # ended before the poll returned, not left idle in the pool
        assert [c[-1] for c in server.received] == [b"QUIT\r\n", b"QUIT\r\n"]


async def test_leases_are_renewed_while_running_and_given_back_on_close(
    spec: WatchSpec,
) -> None:
    clock = FakeClock()
    leases = StubLeases(clock)
    sessions = StubSessions(clock, seconds=0)
    watcher = Watcher(
        sessions,  # type: ignore[arg-type]
        MemoryEventLog(),
        [spec],
        leases=leases,
        clock=clock,
    )
    async with running(watcher):
        await wait_until(lambda: len(sessions.logins) == 1)
        start = clock()
        assert leases.renewed == []
        # leases live half an interval: renewed every sixth of the shortest interval
        moved(watcher, clock, start + 10)
        await wait_until(lambda: len(leases.renewed) == 1)
        moved(watcher, clock, start + 15)
        await asyncio.sleep(0.05)
        assert len(leases.renewed) == 1
        moved(watcher, clock, start + 20)
        await wait_until(lambda: len(leases.renewed) == 2)
        assert leases.renewed == [start + 10, start + 20]
        assert leases.released == 0
    await watcher.close()
    assert leases.released == 1


async def test_a_failed_renewal_or_release_does_not_stop_the_watcher(
    spec: WatchSpec, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    leases = StubLeases(clock)
    leases.fail_renew = leases.fail_release = True
    sessions = StubSessions(clock, seconds=0)
    watcher = Watcher(
        sessions,  # type: ignore[arg-type]
        MemoryEventLog(),
        [spec],
        leases=leases,
        clock=clock,
    )
    with caplog.at_level(logging.WARNING, logger="gateway.events"):
        async with running(watcher) as task:
            await wait_until(lambda: len(sessions.logins) == 1)
            start = clock()
            moved(watcher, clock, start + 10)
            await wait_until(lambda: len(leases.renewed) == 1)
            moved(watcher, clock, start + 60)
            await wait_until(lambda: len(sessions.logins) == 2)  # polls go on
            assert not task.done()
        await watcher.close()  # does not raise
    assert leases.released == 1
    assert "renewing the watch leases failed" in caplog.text
    assert "watch leases not released" in caplog.text
