"""Read-ahead: a page read with a session asks for the next page's headers in the same
pipelined burst, so a client paging through finds its next page cached: no round trip to
the mail server for it. Counted on the fake server."""

from __future__ import annotations

import asyncio
import base64

from gateway.app import create_app
from gateway.keys import METRICS, SERVICE
from tests.support.api import ClientFactory, checked, settings_for
from tests.support.cache import DictHeaderCache
from tests.support.fakepop3 import Delay, FakeMailbox, FakePOP3Server, Stall
from tests.support.wait import wait_until

ALICE = {"Authorization": "Basic " + base64.b64encode(b"alice:pw").decode()}
COUNT = 30


def box() -> FakeMailbox:
    return FakeMailbox([(f"uid-{i}", b"Subject: s%d\r\n\r\nbody\r\n" % i) for i in range(COUNT)])


def tops(server: FakePOP3Server) -> list[int]:
    """The message numbers of every TOP the server received, in order."""
    return [int(line.split()[1]) for c in server.received for line in c if line.startswith(b"TOP")]


async def test_the_next_page_is_read_in_the_same_burst(aiohttp_client: ClientFactory) -> None:
    async with FakePOP3Server(box(), users={"alice": "pw"}) as server:
        api = await aiohttp_client(create_app(settings_for(server.port)))
        url = "/v1/mailboxes/me/messages?limit=10&order=asc"
        first = await checked(await api.get(url, headers=ALICE), 200)
        assert [m["subject"] for m in first["messages"]] == [f"s{i}" for i in range(10)]
        # the read-ahead ends on its own, in the background
        await wait_until(lambda: len(tops(server)) == 20)
        turns = server.turns()
        assert tops(server) == list(range(1, 21))
        assert server.most_pipelined() == 20  # one burst: page 1 and page 2
        second = await checked(
            await api.get(f"{url}&cursor={first['next_cursor']}", headers=ALICE), 200
        )
        assert [m["subject"] for m in second["messages"]] == [f"s{i}" for i in range(10, 20)]
        # Page 2 came from the cache: nothing more was asked of the server.
        assert len(tops(server)) == 20
        assert server.turns() == turns
        assert len(server.connections) == 1


async def test_what_was_read_ahead_is_served_as_parsed(aiohttp_client: ClientFactory) -> None:
    """The next page's summaries are the objects the read-ahead made: not written to the
    header cache and read back (to_json, from_json) in the same process. The header cache
    still gets them, for other replicas and for later."""
    cache = DictHeaderCache()  # (as Redis would be: a header cache behind the held summaries)
    async with FakePOP3Server(box(), users={"alice": "pw"}) as server:
        app = create_app(settings_for(server.port), cache=cache)
        api = await aiohttp_client(app)
        url = "/v1/mailboxes/me/messages?limit=10&order=asc"
        first = await checked(await api.get(url, headers=ALICE), 200)
        await wait_until(lambda: len(cache) == 20)
        asked = list(cache.asked)
        assert {f"uid-{i}" for i in range(10, 20)} <= set(asked)  # asked once, with page 1
        held = app[SERVICE].recent_summaries
        assert len(held) == 20
        second = await checked(
            await api.get(f"{url}&cursor={first['next_cursor']}", headers=ALICE), 200
        )
        assert [m["subject"] for m in second["messages"]] == [f"s{i}" for i in range(10, 20)]
        # not asked again (the cache is asked for the page after: it is read ahead)
        assert not {f"uid-{i}" for i in range(10, 20)} & set(cache.asked[len(asked) :])
        assert len(tops(server)) == 20


async def test_a_page_served_from_the_cache_reads_the_next_one_ahead(
    aiohttp_client: ClientFactory,
) -> None:
    """Paging through, every page comes from the cache: the one read ahead with page 1 is
    served without a session and has its own next page read ahead by the idle session of
    the same login (no new login)."""
    async with FakePOP3Server(box(), users={"alice": "pw"}) as server:
        api = await aiohttp_client(create_app(settings_for(server.port)))
        url = "/v1/mailboxes/me/messages?limit=10&order=asc"
        first = await checked(await api.get(url, headers=ALICE), 200)
        await wait_until(lambda: len(tops(server)) == 20)
        second = await checked(
            await api.get(f"{url}&cursor={first['next_cursor']}", headers=ALICE), 200
        )
        await wait_until(lambda: len(tops(server)) == 30)
        assert tops(server) == list(range(1, 31))
        turns = server.turns()
        third = await checked(
            await api.get(f"{url}&cursor={second['next_cursor']}", headers=ALICE), 200
        )
        assert [m["subject"] for m in third["messages"]] == [f"s{i}" for i in range(20, 30)]
        # a page from the cache whose next page is held already reads nothing more
        await checked(await api.get(url.replace("limit=10", "limit=20"), headers=ALICE), 200)
        await asyncio.sleep(0.05)
        assert server.turns() == turns  # from the cache
        assert len(server.connections) == 1  # one login for all of it


async def test_a_page_from_the_cache_reads_ahead_only_with_an_idle_session(
    aiohttp_client: ClientFactory,
) -> None:
    """The read-ahead of a page served from the cache never logs in and never waits: while
    the session is busy (a message being read), the next page is read when asked for."""
    async with FakePOP3Server(box(), users={"alice": "pw"}) as server:
        server.script("RETR", Delay(0.3))
        api = await aiohttp_client(create_app(settings_for(server.port)))
        url = "/v1/mailboxes/me/messages?limit=10&order=asc"
        first = await checked(await api.get(url, headers=ALICE), 200)
        await wait_until(lambda: len(tops(server)) == 20)
        reading = asyncio.create_task(
            api.get(f"/v1/mailboxes/me/messages/{first['messages'][0]['id']}", headers=ALICE)
        )
        await wait_until(
            lambda: any(line.startswith(b"RETR") for c in server.received for line in c)
        )
        await checked(await api.get(f"{url}&cursor={first['next_cursor']}", headers=ALICE), 200)
        await checked(await reading, 200)
        await asyncio.sleep(0.05)
        assert len(tops(server)) == 20
        assert len(server.connections) == 1


async def test_a_page_from_the_cache_reads_nothing_ahead_while_a_lease_waits(
    aiohttp_client: ClientFactory,
) -> None:
    async with FakePOP3Server(box(), users={"alice": "pw"}) as server:
        server.script("RETR", Delay(0.3), times=2)
        api = await aiohttp_client(create_app(settings_for(server.port)))
        url = "/v1/mailboxes/me/messages?limit=10&order=asc"
        first = await checked(await api.get(url, headers=ALICE), 200)
        await wait_until(lambda: len(tops(server)) == 20)
        message = f"/v1/mailboxes/me/messages/{first['messages'][0]['id']}"
        reading = [asyncio.create_task(api.get(message, headers=ALICE)) for _ in range(2)]
        metrics = api.app[METRICS]
        # the second read waits for the session
        await wait_until(lambda: b"\npop3gw_pool_waiting 1.0" in metrics.exposition()[0])
        await checked(await api.get(f"{url}&cursor={first['next_cursor']}", headers=ALICE), 200)
        for read in reading:
            await checked(await read, 200)
        await asyncio.sleep(0.05)
        assert len(tops(server)) == 20
        assert len(server.connections) == 1


async def test_the_last_page_reads_nothing_ahead(aiohttp_client: ClientFactory) -> None:
    async with FakePOP3Server(box(), users={"alice": "pw"}) as server:
        api = await aiohttp_client(create_app(settings_for(server.port)))
        await checked(await api.get("/v1/mailboxes/me/messages?limit=30", headers=ALICE), 200)
        await asyncio.sleep(0.05)
        assert sorted(tops(server)) == list(range(1, 31))


async def test_a_stalled_read_ahead_does_not_hold_the_page(
    aiohttp_client: ClientFactory,
) -> None:
    async with FakePOP3Server(box(), users={"alice": "pw"}) as server:
        # The server never answers the read-ahead (TOP 11 is the first of page 2).
        server.script("TOP", Stall(), arg="11 0")
        api = await aiohttp_client(create_app(settings_for(server.port)))
        url = "/v1/mailboxes/me/messages?limit=10&order=asc"
        first = await checked(await api.get(url, headers=ALICE), 200)
        assert len(first["messages"]) == 10
        assert all(m["subject"] is not None for m in first["messages"])
