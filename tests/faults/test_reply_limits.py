"""A mail server whose UIDL, LIST, CAPA or TOP reply never ends: the gateway stops reading
at the reply's byte cap, answers 502 with what happened, and nobody else notices."""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import AsyncIterator

import pytest

from gateway.app import create_app
from gateway.pop3.client import (
    DEFAULT_MAX_CAPA_BYTES,
    DEFAULT_MAX_LISTING_BYTES,
)
from tests.support.api import Client, ClientFactory, basic, checked, settings_for
from tests.support.fakepop3 import Endless, FakeMailbox, FakePOP3Server

ALICE = basic("alice", "pw")
BOB = basic("bob", "pw")
LISTING = "/v1/mailboxes/me/messages"
#: The largest cap below is 16 MiB: an endless reply stops there, far below this.
ENDLESS = 256 * 1024 * 1024
#: What may be held besides the capped body (read buffers, the app, the fake's writes).
SLACK = 8 * 1024 * 1024


def _box(user: str) -> FakeMailbox:
    return FakeMailbox(
        [
            (f"{user}-1", b"Subject: one\r\nFrom: A <a@example.com>\r\n\r\nfirst\r\n"),
            (f"{user}-2", b"Subject: two\r\n\r\nsecond\r\n"),
        ]
    )


@pytest.fixture
async def server() -> AsyncIterator[FakePOP3Server]:
    boxes = {"alice": _box("alice"), "bob": _box("bob")}
    async with FakePOP3Server(mailboxes=boxes, users={"alice": "pw", "bob": "pw"}) as srv:
        yield srv


@pytest.fixture
async def api(aiohttp_client: ClientFactory, server: FakePOP3Server) -> Client:
    settings = settings_for(
        server.port,
        timeouts={"connect": 2, "tls": 2, "command": 2, "idle": 2},
        pool={"retry_budget": 0.3},
    )
    return await aiohttp_client(create_app(settings))


@pytest.mark.parametrize(
    ("verb", "line", "limit"),
    [
        ("UIDL", b"1 endless-unique-id\r\n", DEFAULT_MAX_LISTING_BYTES),
        ("LIST", b"1 1024\r\n", DEFAULT_MAX_LISTING_BYTES),
        ("CAPA", b"X-ENDLESS capability\r\n", DEFAULT_MAX_CAPA_BYTES),
    ],
)
async def test_an_endless_reply_is_a_502_that_says_so(
    api: Client, server: FakePOP3Server, verb: str, line: bytes, limit: int
) -> None:
    endless = Endless(line, limit=ENDLESS)
    rule = server.script(verb, endless, times=None, user="alice")
    tracemalloc.start()
    try:
        alice, bob = await asyncio.gather(
            api.get(LISTING, headers=ALICE), api.get(LISTING, headers=BOB)
        )
        problem = await checked(alice, 502)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert problem["type"] == "/problems/upstream-error"  # the contract's slug, unchanged
    assert problem["detail"] == f"the mail server's reply to {verb} was larger than {limit} bytes"
    assert rule.fired >= 1
    assert endless.sent < ENDLESS // 4
    assert peak < limit + SLACK, f"held {peak} bytes for a {limit}-byte cap"
    # Another account on the same server is not affected, during or after.
    listing = await checked(bob, 200)
    assert sorted(item["subject"] for item in listing["messages"]) == ["one", "two"]
    # Once the server behaves, alice's next request works: no broken session was kept.
    server.rules.remove(rule)
    again = await checked(await api.get(LISTING, headers=ALICE), 200)
    assert len(again["messages"]) == 2


async def test_a_stranger_s_huge_header_section_does_not_break_the_listing(
    api: Client, server: FakePOP3Server
) -> None:
    """A message with a 20 MB header section (anyone can send one) is still listed, and so
    are the others in the same TOP burst: the reply is kept to its first MiB (what the
    summary is made of), the rest read and dropped, the session kept."""
    huge = b"Subject: big\r\nTo: " + b"x" * (20 * 1024 * 1024) + b"@example.com\r\n\r\nbody\r\n"
    server.mailboxes["alice"].add("alice-huge", huge)
    page = await checked(await api.get(LISTING, headers=ALICE), 200)
    assert page["total"] == 3
    assert [m["subject"] for m in page["messages"]] == ["big", "two", "one"]
    metrics = await (await api.get("/metrics")).text()
    assert 'pop3gw_limits_total{reason="header-truncated"} 1.0' in metrics
    # the session was kept: the next request uses it (no second connection)
    await checked(await api.get("/v1/mailboxes/me", headers=ALICE), 200)
    assert len(server.received) == 1
