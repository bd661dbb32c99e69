"""Server-sent events: resumable with Last-Event-ID, live events, heartbeats, bounded readers."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import ClientResponse

from gateway.app import create_app
from gateway.keys import EVENTS, WATCHER
from tests.events.support import add, watched_settings
from tests.support.api import (
    OTHER_KEY,
    READ_KEY,
    Client,
    ClientFactory,
    bearer,
    checked,
    validator,
)
from tests.support.fakepop3 import FakePOP3Server
from tests.support.wait import wait_until

STREAM = "/v1/mailboxes/box/events/stream"


async def gateway(aiohttp_client: ClientFactory, server: FakePOP3Server, **events: Any) -> Client:
    settings = watched_settings(server.port, "alice", "pw", events=events)
    return await aiohttp_client(create_app(settings, watch=False))


def parse(text: str) -> list[dict[str, str]]:
    """The SSE frames of ``text``: one dict of fields per frame (comments under ':')."""
    frames = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        frame: dict[str, str] = {}
        for line in block.split("\n"):
            name, _, value = line.partition(":")
            frame[name or ":"] = value.strip()
        frames.append(frame)
    return frames


async def frames_until(resp: ClientResponse, enough: int) -> list[dict[str, str]]:
    text = ""
    while len([f for f in parse(text) if "id" in f]) < enough:
        chunk = await resp.content.readany()
        assert chunk, "the stream ended early"
        text += chunk.decode()
    return parse(text)


async def test_a_stream_resumes_after_last_event_id_and_ends_after_its_time(
    aiohttp_client: ClientFactory, server: FakePOP3Server
) -> None:
    client = await gateway(aiohttp_client, server, stream_max_seconds=1)
    watcher = client.app[WATCHER]
    await watcher.poll("box")
    for uid in ("uid-1", "uid-2", "uid-3"):
        add(server, uid)
    events = (await watcher.poll("box")).events
    resp = await client.get(
        STREAM, headers={**bearer(READ_KEY), "Last-Event-ID": str(events[0].cursor)}
    )
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    body = (await resp.read()).decode()  # the stream ends after stream_max_seconds
    assert resp.status == 200
    await validator().check(resp)  # every frame against the contract
    frames = [f for f in parse(body) if "id" in f]
    assert [f["id"] for f in frames] == [str(e.cursor) for e in events[1:]]
    assert [f["event"] for f in frames] == ["message.new", "message.new"]
    data = [json.loads(f["data"]) for f in frames]
    assert [d["data"]["uid"] for d in data] == ["uid-2", "uid-3"]
    assert [d["id"] for d in data] == [e.id for e in events[1:]]
    assert client.app[EVENTS].waiters == 0


async def test_a_stream_without_cursor_sends_new_events_and_heartbeats(
    aiohttp_client: ClientFactory, server: FakePOP3Server
) -> None:
    client = await gateway(aiohttp_client, server, stream_heartbeat=0.1)
    watcher = client.app[WATCHER]
    await watcher.poll("box")
    add(server, "uid-old")
    await watcher.poll("box")
    async with client.get(STREAM, headers=bearer(READ_KEY)) as resp:
        assert resp.status == 200
        text = ""
        while ": heartbeat" not in text:
            text += (await resp.content.readany()).decode()
        add(server, "uid-live")
        await watcher.poll("box")
        frames = await frames_until(resp, 1)
    [frame] = [f for f in frames if "id" in f]
    # the event recorded before the stream began is not sent (no cursor: from now on)
    assert json.loads(frame["data"])["data"]["uid"] == "uid-live"
    await wait_until(lambda: client.app[EVENTS].waiters == 0)


async def test_bad_or_expired_cursors_and_too_many_readers_are_problems(
    aiohttp_client: ClientFactory, server: FakePOP3Server
) -> None:
    client = await gateway(aiohttp_client, server, max_waiters=1, max_per_mailbox=100)
    watcher = client.app[WATCHER]
    await watcher.poll("box")
    problem = await checked(
        await client.get(STREAM, headers={**bearer(READ_KEY), "Last-Event-ID": "x"}), 400
    )
    assert "Last-Event-ID" in problem["detail"]
    for i in range(101):
        add(server, f"new-{i}")
    await watcher.poll("box")  # 101 events: the oldest is dropped (max_per_mailbox)
    expired = await checked(
        await client.get(STREAM, params={"after": "0-0"}, headers=bearer(READ_KEY)),
        410,
    )
    assert expired["type"] == "/problems/cursor-expired"
    async with client.get(STREAM, headers=bearer(READ_KEY)) as resp:
        assert resp.status == 200
        await wait_until(lambda: client.app[EVENTS].waiters == 1)
        busy = await checked(await client.get(STREAM, headers=bearer(READ_KEY)), 503)
        assert busy["type"] == "/problems/event-readers-busy"
    await wait_until(lambda: client.app[EVENTS].waiters == 0)
    await asyncio.sleep(0)


async def test_the_readers_of_one_mailbox_leave_places_for_the_others(
    aiohttp_client: ClientFactory, server: FakePOP3Server
) -> None:
    # ten places in all: one mailbox's readers hold a tenth of them at most
    settings = watched_settings(server.port, "alice", "pw", events={"max_waiters": 10})
    settings.mailboxes[1].watch = True  # "other", read with OTHER_KEY
    client = await aiohttp_client(create_app(settings, watch=False))
    for mailbox in ("box", "other"):
        await client.app[WATCHER].poll(mailbox)
    async with client.get(STREAM, headers=bearer(READ_KEY)) as held:
        assert held.status == 200
        await wait_until(lambda: client.app[EVENTS].waiters == 1)
        # a second reader of "box" (however many it opens) finds no place of its own
        async with client.get(STREAM, headers=bearer(READ_KEY)) as second:
            assert second.status == 503  # before reading: a stream would never end
            busy = await checked(second, 503)
        assert busy["type"] == "/problems/event-readers-busy"
        long_poll = await checked(
            await client.get(
                "/v1/mailboxes/box/events",
                params={"after": "0-0", "wait": "30"},
                headers=bearer(READ_KEY),
            ),
            200,
        )
        assert long_poll["events"] == []  # answered at once, without a place
        # a reader of another mailbox is served
        other = "/v1/mailboxes/other/events/stream"
        async with client.get(other, headers=bearer(OTHER_KEY)) as resp:
            assert resp.status == 200
            await wait_until(lambda: client.app[EVENTS].waiters == 2)
    await wait_until(lambda: client.app[EVENTS].waiters == 0)
