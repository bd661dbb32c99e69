"""One person counts once: case spellings of one login (bob, Bob, BOB: one mailbox on
Dovecot, Gmail and Outlook) share every limit, and never share data."""

from __future__ import annotations

import asyncio

from gateway.app import create_app
from gateway.service import encode_id
from tests.support.api import READ_KEY, ClientFactory, basic, bearer, checked, settings_for
from tests.support.fakepop3 import FakeMailbox, FakePOP3Server

SPELLINGS = ["bob", "Bob", "BOB", "bOb"]


def box() -> FakeMailbox:
    return FakeMailbox([("u1", b"Subject: one\r\n\r\nx\r\n"), ("u2", b"Subject: two\r\n\r\ny\r\n")])


async def test_spellings_share_the_mailbox_s_one_session(aiohttp_client: ClientFactory) -> None:
    """A server that locks the maildrop ([IN-USE] for a second session) sees one session
    at a time however the login is spelt: before, each spelling had a session slot of its
    own, and their concurrent logins collided."""
    async with FakePOP3Server(box(), users={name: "pw" for name in SPELLINGS}, lock=True) as server:
        api = await aiohttp_client(create_app(settings_for(server.port, pool={"retry_budget": 0})))
        answers = await asyncio.gather(
            *(
                api.get("/v1/mailboxes/me/messages", headers=basic(name, "pw"))
                for name in SPELLINGS * 3
            )
        )
        for resp in answers:
            page = await checked(resp, 200)
            assert page["total"] == 2


async def test_wrong_passwords_in_any_spelling_count_once(
    aiohttp_client: ClientFactory,
) -> None:
    async with FakePOP3Server(box(), users={name: "pw" for name in SPELLINGS}) as server:
        api = await aiohttp_client(
            create_app(settings_for(server.port, pool={"max_failed_logins": 3}))
        )
        await checked(await api.get("/v1/mailboxes/me", headers=basic("bob", "pw")), 200)
        for i, name in enumerate(SPELLINGS[:3]):
            await checked(await api.get("/v1/mailboxes/me", headers=basic(name, f"x{i}")), 401)
        asked = len(server.connections)
        for name in SPELLINGS:
            resp = await api.get("/v1/mailboxes/me", headers=basic(name, "guess"))
            body = await checked(resp, 429)
            assert body["type"] == "/problems/login-throttled"
        assert len(server.connections) == asked
        # The owner's known-good login still gets through.
        await checked(await api.get("/v1/mailboxes/me?fresh=true", headers=basic("bob", "pw")), 200)


async def test_a_case_sensitive_server_keeps_its_mailboxes_apart(
    aiohttp_client: ClientFactory,
) -> None:
    """Where the server keeps bob and BOB apart, so does the gateway: each sees its own
    messages, never the other's from a shared session or cache."""
    boxes = {
        "bob": FakeMailbox([("lower-1", b"Subject: for bob\r\n\r\nx\r\n")]),
        "BOB": FakeMailbox([("upper-1", b"Subject: for BOB\r\n\r\ny\r\n")]),
    }
    async with FakePOP3Server(mailboxes=boxes, users={"bob": "pw", "BOB": "pw"}) as server:
        api = await aiohttp_client(create_app(settings_for(server.port)))
        for _ in range(2):
            for name, subject in (("bob", "for bob"), ("BOB", "for BOB")):
                page = await checked(
                    await api.get("/v1/mailboxes/me/messages", headers=basic(name, "pw")), 200
                )
                assert [m["subject"] for m in page["messages"]] == [subject]


async def test_one_person_under_two_upstream_names_keeps_the_pool_s_books(
    aiohttp_client: ClientFactory,
) -> None:
    """A configured mailbox (upstream 'mailbox-box') and passthrough (upstream 'default')
    on the same server and login are one person: the pool counts their sessions under one
    server, and a failure in one of them is a clean 404, never a 500 from counts that do
    not add up (slots leaked that way would end in pool-exhausted for everyone)."""
    box = FakeMailbox([("m1", b"Subject: x\r\n\r\nhi\r\n")])
    async with FakePOP3Server(mailboxes={"alice": box}, users={"alice": "pw"}) as server:
        app = create_app(settings_for(server.port, user="alice", password="pw"))
        api = await aiohttp_client(app)
        for _ in range(3):
            await checked(await api.get("/v1/mailboxes/box", headers=bearer(READ_KEY)), 200)
            await checked(await api.get("/v1/mailboxes/me", headers=basic("alice", "pw")), 200)
            missing = f"/v1/mailboxes/me/messages/{encode_id('nope')}/raw"
            await checked(await api.get(missing, headers=basic("alice", "pw")), 404)
        scrape = await (await api.get("/metrics")).text()
        held = [line for line in scrape.splitlines() if line.startswith("pop3gw_pool_sessions")]
        opened = sum(float(line.rsplit(" ", 1)[1]) for line in held if 'state="open"' in line)
        assert opened <= 1, held
