"""POST /check is no way around the limits: it goes through the session pool and the login
throttle like every route."""

from __future__ import annotations

import asyncio

from gateway.app import create_app
from tests.support.api import ClientFactory, basic, checked, settings_for
from tests.support.fakepop3 import FakeMailbox, FakePOP3Server

CHECK = "/v1/mailboxes/me/check"


def logins(server: FakePOP3Server) -> int:
    return sum(any(line.upper().startswith(b"PASS") for line in lines) for lines in server.received)


async def test_password_guessing_through_check_is_throttled(
    aiohttp_client: ClientFactory, fake_server: FakePOP3Server
) -> None:
    api = await aiohttp_client(
        create_app(settings_for(fake_server.port, pool={"max_failed_logins": 3}))
    )
    owner = await checked(await api.post(CHECK, headers=basic("alice", "pw")), 200)
    assert owner["ok"] is True
    for i in range(3):
        guess = await checked(await api.post(CHECK, headers=basic("alice", f"guess-{i}")), 401)
        assert guess["check"]["ok"] is False
        assert guess["check"]["steps"][-1]["name"] == "auth"
    asked = logins(fake_server)
    resp = await api.post(CHECK, headers=basic("alice", "guess-4"))
    body = await checked(resp, 429)
    assert body["type"] == "/problems/login-throttled"
    assert logins(fake_server) == asked  # the server was not asked again
    # The same throttle holds on the other routes, and the owner still gets in.
    await checked(await api.get("/v1/mailboxes/me", headers=basic("alice", "guess-5")), 429)
    report = await checked(await api.post(CHECK, headers=basic("alice", "pw")), 200)
    assert report["ok"] is False or report["ok"] is True  # answered, not refused
    assert [s["name"] for s in report["steps"]] == [
        "connect",
        "tls",
        "greeting",
        "auth",
        "capa",
        "stat",
    ]


async def test_parallel_checks_share_the_mailbox_s_one_session(
    aiohttp_client: ClientFactory,
) -> None:
    """A server that refuses a second session to a maildrop ([IN-USE]) sees one at a time:
    checks queue for the mailbox's session like every request (before, 30 parallel checks
    were 30 connections)."""
    box = FakeMailbox([("u1", b"Subject: one\r\n\r\nx\r\n")])
    async with FakePOP3Server(box, users={"alice": "pw"}, lock=True) as server:
        api = await aiohttp_client(create_app(settings_for(server.port, pool={"retry_budget": 0})))
        answers = await asyncio.gather(
            *(api.post(CHECK, headers=basic("alice", "pw")) for _ in range(10))
        )
        reports = [await checked(resp, 200) for resp in answers]
        assert all(report["ok"] for report in reports), [r["steps"] for r in reports]
        assert all(report["messages"] == 1 for report in reports)
        # The checked session went back to the pool: the next request needs no login.
        before = logins(server)
        await checked(await api.get("/v1/mailboxes/me/messages", headers=basic("alice", "pw")), 200)
        assert logins(server) == before
