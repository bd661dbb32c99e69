"""Without Redis there is no header cache: the summaries the process holds as objects are the
in-process cache. Each summary is held once, as it was parsed (no ``to_json``, no second
store), sized by the cache settings, kept for the cache TTL, and its lookups are counted as
the header cache's were (``pop3gw_header_cache_events_total``). Counted on the fake server."""

from __future__ import annotations

import re
from typing import Any

import pytest
from aiohttp import web

from gateway.app import create_app
from gateway.keys import METRICS, SERVICE
from gateway.mail import HeaderSummary
from tests.support.api import ClientFactory, basic, checked, settings_for
from tests.support.clock import FakeClock
from tests.support.fakepop3 import FakeMailbox, FakePOP3Server

ALICE = basic("alice", "pw")
URL = "/v1/mailboxes/me/messages?limit=30&order=asc"


def box(count: int = 30) -> FakeMailbox:
    return FakeMailbox([(f"uid-{i}", b"Subject: s%d\r\n\r\nbody\r\n" % i) for i in range(count)])


def tops(server: FakePOP3Server) -> list[int]:
    """The message numbers of every TOP the server received, in order."""
    return [int(line.split()[1]) for c in server.received for line in c if line.startswith(b"TOP")]


def cache_events(app: web.Application, kind: str) -> float:
    text = app[METRICS].exposition()[0].decode()
    found = re.search(
        rf'^pop3gw_header_cache_events_total{{kind="{kind}"}} ([0-9.e+]+)$', text, re.M
    )
    return float(found.group(1)) if found else 0.0


@pytest.fixture
def to_json_calls(monkeypatch: pytest.MonkeyPatch) -> list[HeaderSummary]:
    """Every summary ``to_json`` is called on from now on."""
    calls: list[HeaderSummary] = []
    original = HeaderSummary.to_json

    def counted(self: HeaderSummary) -> dict[str, Any]:
        calls.append(self)
        return original(self)

    monkeypatch.setattr(HeaderSummary, "to_json", counted)
    return calls


async def test_a_cold_listing_holds_each_summary_once(
    aiohttp_client: ClientFactory, to_json_calls: list[HeaderSummary]
) -> None:
    """30 messages listed cold: 30 summaries held, none turned into JSON for a cache, 30
    misses counted; after the snapshot expired, the next listing (a new login) is served
    from them without a TOP, and counted as 30 hits."""
    clock = FakeClock()
    async with FakePOP3Server(box(), users={"alice": "pw"}) as server:
        app = create_app(settings_for(server.port), clock=clock)
        api = await aiohttp_client(app)
        first = await checked(await api.get(URL, headers=ALICE), 200)
        assert [m["subject"] for m in first["messages"]] == [f"s{i}" for i in range(30)]
        held = app[SERVICE].recent_summaries
        assert (len(held), len(tops(server))) == (30, 30)
        assert to_json_calls == []
        assert (cache_events(app, "miss"), cache_events(app, "hit")) == (30, 0)
        ready = await checked(await api.get("/readyz"), 200)
        assert ready["checks"]["header_cache"]["ok"] is True  # in-process: nothing to ping

        clock.advance(6)  # past snapshot_max_age (5 s): a new login, a new snapshot
        again = await checked(await api.get(URL, headers=ALICE), 200)
        assert again["messages"] == first["messages"]
        assert len(server.connections) == 2
        assert len(tops(server)) == 30  # nothing read again
        assert (cache_events(app, "miss"), cache_events(app, "hit")) == (30, 30)
        assert len(held) == 30
        assert to_json_calls == []


async def test_the_cache_settings_bound_the_one_store(aiohttp_client: ClientFactory) -> None:
    """With POP3GW_CACHE_MAX_ENTRIES=5 the process holds 5 summaries, no more anywhere: the
    next listing reads the other 25 again."""
    clock = FakeClock()
    async with FakePOP3Server(box(), users={"alice": "pw"}) as server:
        app = create_app(settings_for(server.port, cache_max_entries=5), clock=clock)
        api = await aiohttp_client(app)
        await checked(await api.get(URL, headers=ALICE), 200)
        assert len(app[SERVICE].recent_summaries) == 5
        clock.advance(6)
        await checked(await api.get(URL, headers=ALICE), 200)
        assert tops(server)[30:] == list(range(1, 26))  # the last 5 were held
        assert (cache_events(app, "miss"), cache_events(app, "hit")) == (55, 5)


async def test_summaries_past_the_cache_ttl_are_read_again(aiohttp_client: ClientFactory) -> None:
    clock = FakeClock()
    async with FakePOP3Server(box(3), users={"alice": "pw"}) as server:
        app = create_app(settings_for(server.port, cache_ttl_seconds=60), clock=clock)
        api = await aiohttp_client(app)
        await checked(await api.get(URL, headers=ALICE), 200)
        clock.advance(55)  # a new login, summaries still held
        await checked(await api.get(URL, headers=ALICE), 200)
        assert len(tops(server)) == 3
        clock.advance(6)  # a new login, 61 s after they were read
        await checked(await api.get(URL, headers=ALICE), 200)
        assert len(server.connections) == 3
        assert len(tops(server)) == 6
        assert (cache_events(app, "miss"), cache_events(app, "hit")) == (6, 3)
