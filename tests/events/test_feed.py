"""The pull feed: GET /v1/mailboxes/{m}/events, every answer checked against the contract."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway.app import create_app
from gateway.events import Commit, Cursor, CursorExpiredError, Draft, MemoryEventLog, event_id
from gateway.keys import EVENTS as FEED
from gateway.keys import WATCHER
from tests.events.support import watched_settings
from tests.support.api import OTHER_KEY, READ_KEY, Client, ClientFactory, basic, bearer, checked
from tests.support.fakepop3 import FakeMailbox, FakePOP3Server
from tests.support.wait import wait_until

EVENTS = "/v1/mailboxes/box/events"


class Wall:
    """Unix time that moves when the test says."""

    def __init__(self) -> None:
        self.now = 1_718_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def server() -> AsyncIterator[FakePOP3Server]:
    box = FakeMailbox([("uid-1", b"Subject: one\r\nFrom: A <a@example.com>\r\n\r\nx\r\n")])
    async with FakePOP3Server(box, users={"alice": "pw"}) as server:
        yield server


async def gateway(
    aiohttp_client: ClientFactory, server: FakePOP3Server, wall: Wall | None = None, **extra: object
) -> Client:
    settings = watched_settings(server.port, "alice", "pw", **extra)
    app = create_app(settings, watch=False, **({"wall": wall} if wall else {}))
    return await aiohttp_client(app)


def add(server: FakePOP3Server, uid: str, subject: str) -> None:
    server.mailbox.add(uid, f"Subject: {subject}\r\n\r\nbody\r\n".encode())


async def test_the_feed_pages_through_events_and_resumes_after_a_cursor(
    aiohttp_client: ClientFactory, server: FakePOP3Server
) -> None:
    client = await gateway(aiohttp_client, server)
    watcher = client.app[WATCHER]
    await watcher.poll("box")  # baseline
    empty = await checked(await client.get(EVENTS, headers=bearer(READ_KEY)), 200)
    assert empty == {
        "mailbox": "box",
        "events": [],
        "next_cursor": "0-0",
        "has_more": False,
        "durable": False,
    }
    for i in range(3):
        add(server, f"uid-new-{i}", f"new {i}")
    await watcher.poll("box")
    page = await checked(await client.get(EVENTS + "?limit=2", headers=bearer(READ_KEY)), 200)
    assert [e["data"]["subject"] for e in page["events"]] == ["new 0", "new 1"]
    assert page["has_more"] is True
    first = page["events"][0]
    assert first["type"] == "message.new"
    assert first["id"] == event_id("box", "message.new", "uid-new-0")
    assert first["mailbox"] == "box"
    rest = await checked(
        await client.get(EVENTS, params={"after": page["next_cursor"]}, headers=bearer(READ_KEY)),
        200,
    )
    assert [e["data"]["subject"] for e in rest["events"]] == ["new 2"]
    assert rest["has_more"] is False
    done = await checked(
        await client.get(EVENTS, params={"after": rest["next_cursor"]}, headers=bearer(READ_KEY)),
        200,
    )
    assert done["events"] == []
    assert done["next_cursor"] == rest["next_cursor"]


async def test_a_waiting_reader_is_answered_when_an_event_arrives(
    aiohttp_client: ClientFactory, server: FakePOP3Server
) -> None:
    client = await gateway(aiohttp_client, server)
    watcher = client.app[WATCHER]
    await watcher.poll("box")
    waiting = asyncio.ensure_future(
        client.get(EVENTS, params={"after": "0-0", "wait": "30"}, headers=bearer(READ_KEY))
    )
    await asyncio.sleep(0.05)
    assert not waiting.done()
    add(server, "uid-late", "late")
    await watcher.poll("box")
    page = await checked(await waiting, 200)
    assert [e["data"]["uid"] for e in page["events"]] == ["uid-late"]


async def test_a_cursor_older_than_retention_is_410(
    aiohttp_client: ClientFactory, server: FakePOP3Server
) -> None:
    wall = Wall()
    client = await gateway(aiohttp_client, server, wall, events={"retention_seconds": 3600})
    watcher = client.app[WATCHER]
    await watcher.poll("box")
    add(server, "uid-a", "a")
    add(server, "uid-b", "b")
    old = (await watcher.poll("box")).events
    wall.now += 3601
    add(server, "uid-c", "c")
    await watcher.poll("box")
    problem = await checked(
        await client.get(EVENTS, params={"after": str(old[0].cursor)}, headers=bearer(READ_KEY)),
        410,
    )
    assert problem["type"] == "/problems/cursor-expired"
    # the newest dropped event's cursor still works: nothing after it was dropped
    page = await checked(
        await client.get(EVENTS, params={"after": str(old[1].cursor)}, headers=bearer(READ_KEY)),
        200,
    )
    assert [e["data"]["uid"] for e in page["events"]] == ["uid-c"]
    fresh = await checked(await client.get(EVENTS, headers=bearer(READ_KEY)), 200)
    assert [e["data"]["uid"] for e in fresh["events"]] == ["uid-c"]


@pytest.mark.parametrize(
    "query",
    [
        {"after": "yesterday"},
        {"after": "1-2-3"},
        {"limit": "0"},
        {"limit": "501"},
        {"wait": "-1"},
        {"wait": "soon"},
        {"wait": "nan"},
    ],
)
async def test_malformed_parameters_are_400(
    aiohttp_client: ClientFactory, server: FakePOP3Server, query: dict[str, str]
) -> None:
    client = await gateway(aiohttp_client, server)
    problem = await checked(await client.get(EVENTS, params=query, headers=bearer(READ_KEY)), 400)
    assert problem["type"] == "/problems/invalid-request"


async def test_only_watched_configured_mailboxes_have_events(
    aiohttp_client: ClientFactory, server: FakePOP3Server
) -> None:
    client = await gateway(aiohttp_client, server)
    unwatched = await checked(
        await client.get("/v1/mailboxes/other/events", headers=bearer(OTHER_KEY)), 404
    )
    assert "not watched" in unwatched["detail"]
    await checked(await client.get("/v1/mailboxes/me/events", headers=basic("alice", "pw")), 404)
    await checked(await client.get(EVENTS), 401)
    await checked(await client.get(EVENTS, headers=bearer(OTHER_KEY)), 404)


async def test_the_log_keeps_at_most_max_per_mailbox_events() -> None:
    log = MemoryEventLog(max_per_mailbox=3)
    state = await log.state("m")
    drafts = tuple(Draft(f"e{i}", "message.new", {}) for i in range(5))
    appended = await log.commit(Commit("m", state.version, add=("u",), events=drafts))
    kept = await log.read("m", None, 10)
    assert [e.id for e in kept.events] == ["e2", "e3", "e4"]
    assert (await log.read("m", appended[1].cursor, 10)).events == kept.events
    for cursor in (appended[0].cursor, Cursor(0, 0)):
        with pytest.raises(CursorExpiredError):
            await log.read("m", cursor, 10)


async def test_past_max_waiters_a_reader_is_answered_at_once(
    aiohttp_client: ClientFactory, server: FakePOP3Server
) -> None:
    client = await gateway(aiohttp_client, server, events={"max_waiters": 1})
    watcher = client.app[WATCHER]
    await watcher.poll("box")
    params = {"after": "0-0", "wait": "30"}
    first = asyncio.ensure_future(client.get(EVENTS, params=params, headers=bearer(READ_KEY)))
    await wait_until(lambda: client.app[FEED].waiters == 1)
    second = await checked(await client.get(EVENTS, params=params, headers=bearer(READ_KEY)), 200)
    assert second["events"] == []
    add(server, "uid-x", "x")
    await watcher.poll("box")
    assert len((await checked(await first, 200))["events"]) == 1
    assert client.app[FEED].waiters == 0
