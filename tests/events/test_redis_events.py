"""The durable log on Redis: events and seen-sets survive the gateway and a Redis restart,
replicas share them, one replica at a time polls a mailbox (a lease, taken over when its
holder dies), and a commit from a stale state or a lost lease changes nothing."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from redis.asyncio import Redis

from gateway.app import create_app
from gateway.events import Commit, CommitConflictError, Draft, RedisEventLog, Watcher
from gateway.keys import EVENTS, WATCHER
from tests.events.support import PrivateRedis, add, watched_settings
from tests.support.api import READ_KEY, Client, ClientFactory, bearer, checked
from tests.support.fakepop3 import FakeMailbox, FakePOP3Server

pytestmark = pytest.mark.redis
SHARED = "redis://127.0.0.1:6379/0"


@pytest.fixture
async def mailbox_id() -> AsyncIterator[str]:
    """A mailbox id of the test's own; its keys are removed afterwards."""
    name = "ev-" + uuid.uuid4().hex[:10]
    yield name
    admin = Redis.from_url(SHARED)
    try:
        keys = [k async for k in admin.scan_iter(match=f"pop3gw:v1:ev:{{{name}}}:*")]
        if keys:
            await admin.delete(*keys)
    finally:
        await admin.aclose()


@pytest.fixture
async def server() -> AsyncIterator[FakePOP3Server]:
    box = FakeMailbox([("uid-1", b"Subject: one\r\n\r\nx\r\n")])
    async with FakePOP3Server(box, users={"alice": "pw"}) as server:
        yield server


def app_for(
    server: FakePOP3Server,
    mailbox_id: str,
    redis_url: str = SHARED,
    timeouts: dict[str, float] | None = None,
    **box: Any,
) -> web.Application:
    settings = watched_settings(
        server.port,
        "alice",
        "pw",
        mailbox_id=mailbox_id,
        box=box,
        redis_url=redis_url,
        cache_secret="events-test-secret",
        timeouts=timeouts or {"connect": 2, "tls": 2, "command": 1, "idle": 1},
    )
    return create_app(settings, watch=False)


async def test_events_and_the_seen_set_outlive_the_gateway(
    aiohttp_client: ClientFactory, server: FakePOP3Server, mailbox_id: str
) -> None:
    one = await aiohttp_client(app_for(server, mailbox_id))
    await one.app[WATCHER].poll(mailbox_id)
    add(server, "uid-2")
    [event] = (await one.app[WATCHER].poll(mailbox_id)).events
    await one.close()  # the gateway stops; its leases are given back

    two = await aiohttp_client(app_for(server, mailbox_id))
    path = f"/v1/mailboxes/{mailbox_id}/events"
    page = await checked(await two.get(path, headers=bearer(READ_KEY)), 200)
    assert page["durable"] is True
    assert [(e["id"], e["cursor"]) for e in page["events"]] == [(event.id, str(event.cursor))]
    # the seen-set came along: no baseline again, nothing reported twice
    assert (await two.app[WATCHER].poll(mailbox_id)).events == ()
    add(server, "uid-3")
    [later] = (await two.app[WATCHER].poll(mailbox_id)).events
    assert later.cursor > event.cursor
    rest = await checked(
        await two.get(path, params={"after": page["next_cursor"]}, headers=bearer(READ_KEY)), 200
    )
    assert [e["data"]["uid"] for e in rest["events"]] == ["uid-3"]


async def test_one_replica_polls_a_mailbox_and_another_takes_over_when_it_dies(
    aiohttp_client: ClientFactory, server: FakePOP3Server, mailbox_id: str
) -> None:
    a = await aiohttp_client(app_for(server, mailbox_id, watch_interval=2))
    b = await aiohttp_client(app_for(server, mailbox_id, watch_interval=2))
    wa: Watcher = a.app[WATCHER]
    wb: Watcher = b.app[WATCHER]
    assert (await wa.poll(mailbox_id)).outcome == "ok"
    logins = len(server.connections)
    assert (await wb.poll(mailbox_id)).outcome == "elsewhere"
    assert len(server.connections) == logins  # the other replica did not log in
    # replica a dies without a word: its lease (half an interval) runs out
    wa_leases = wa._leases  # the test plays the dead replica
    assert wa_leases is not None
    wa_leases.held.clear()  # it will never renew nor release again
    add(server, "uid-2")
    outcomes: list[str] = []

    async def poll_b() -> bool:
        result = await wb.poll(mailbox_id)
        outcomes.append(result.outcome)
        return result.outcome == "ok"

    ok = False
    for _ in range(400):
        if ok := await poll_b():
            break
        await asyncio.sleep(0.01)
    assert ok
    feed = b.app[EVENTS]
    events = (await feed.log.read(mailbox_id, None, 10)).events
    assert [e.data["uid"] for e in events] == ["uid-2"]
    # the dead replica, were it to wake up, cannot commit: its lease is gone
    assert (await wa.poll(mailbox_id)).outcome == "elsewhere"


async def test_a_commit_from_a_stale_state_or_a_lost_lease_changes_nothing(
    aiohttp_client: ClientFactory, server: FakePOP3Server, mailbox_id: str
) -> None:
    client = await aiohttp_client(app_for(server, mailbox_id))
    log = client.app[EVENTS].log
    assert isinstance(log, RedisEventLog)
    state = await log.state(mailbox_id)
    draft = (Draft("evt_x", "message.new", {"uid": "u"}),)
    await log.commit(Commit(mailbox_id, state.version, add=("u",), events=draft))
    with pytest.raises(CommitConflictError):  # worked out from the state before
        await log.commit(Commit(mailbox_id, state.version, add=("v",), events=draft))
    now = await log.state(mailbox_id)
    with pytest.raises(CommitConflictError):  # a lease that is not held
        await log.commit(Commit(mailbox_id, now.version, add=("v",)), fence="not-the-token")
    after = await log.state(mailbox_id)
    assert after.version == now.version
    assert after.seen == {"u"}
    assert len((await log.read(mailbox_id, None, 10)).events) == 1


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    redis = PrivateRedis(tmp_path)
    redis.start()
    try:
        yield redis
    finally:
        redis.stop()


async def test_a_redis_restart_loses_nothing(
    aiohttp_client: ClientFactory, server: FakePOP3Server, private_redis: PrivateRedis
) -> None:
    client: Client = await aiohttp_client(app_for(server, "box", private_redis.url))
    watcher = client.app[WATCHER]
    await watcher.poll("box")
    add(server, "uid-2")
    [before] = (await watcher.poll("box")).events

    private_redis.stop()
    add(server, "uid-3")  # mail arrives while Redis is down
    assert (await watcher.poll("box")).outcome == "unavailable"
    problem = await checked(
        await client.get("/v1/mailboxes/box/events", headers=bearer(READ_KEY)), 503
    )
    assert problem["type"] == "/problems/events-unavailable"

    private_redis.start()
    result = await watcher.poll("box")
    assert result.outcome == "ok"
    assert [e.data["uid"] for e in result.events] == ["uid-3"]

    async def all_uids() -> list[str]:
        page = await client.app[EVENTS].read("box", None, 10)
        return [e.data["uid"] for e in page.events]

    # the watcher's successful calls ended the client's backoff: readers are served again
    assert await all_uids() == ["uid-2", "uid-3"]
    assert before.cursor < result.events[0].cursor


def _arguments(command: bytes) -> int:
    """How many arguments a SLOWLOG entry's command had (Redis keeps 32 and counts the
    rest)."""
    found = re.search(rb"\.\.\. \((\d+) more arguments\)$", command)
    return 31 + int(found.group(1)) if found else len(command.split())


async def test_a_first_poll_of_a_large_mailbox_is_committed_in_chunks(
    aiohttp_client: ClientFactory, private_redis: PrivateRedis
) -> None:
    """100,000 unique-ids in one script call could outlast the shared client's deadline:
    no command carries more than a chunk of them; the script applies the staged chunks
    with the state at once."""
    admin = Redis.from_url(private_redis.url)
    await admin.config_set("slowlog-log-slower-than", 0)  # every command, with its size
    await admin.config_set("slowlog-max-len", 100_000)
    uids = [f"uid-{n:06d}" for n in range(100_000)]
    box = FakeMailbox([(uid, b"Subject: s\r\n\r\nx\r\n") for uid in uids])
    try:
        async with FakePOP3Server(box, users={"alice": "pw"}) as server:
            # a 100,000-line UIDL takes a while on a busy machine: no POP3 timeout here
            slow = {"connect": 10, "tls": 10, "command": 60, "idle": 60}
            client = await aiohttp_client(app_for(server, "box", private_redis.url, slow))
            watcher = client.app[WATCHER]
            await admin.slowlog_reset()
            assert (await watcher.poll("box")).outcome == "ok"
            largest = max(_arguments(e["command"]) for e in await admin.slowlog_get(100_000))
            assert 2000 <= largest <= 2000 + 10
            log = client.app[EVENTS].log
            assert isinstance(log, RedisEventLog)
            state = await log.state("box")
            assert state.baseline
            assert len(state.seen) == 100_000
            assert await admin.scard("pop3gw:v1:ev:{box}:seen") == 100_000
            assert [k async for k in admin.scan_iter(match="pop3gw:v1:ev:{box}:stage*")] == []
            add(server, "uid-new")
            [event] = (await watcher.poll("box")).events
            assert event.data["uid"] == "uid-new"
    finally:
        await admin.aclose()
