"""Repeated failed logins for one mailbox are refused by the gateway before the mail server
sees enough of them to block the gateway's address (providers such as Gmail, Outlook, QQ and
163 block addresses that keep failing), without locking the mailbox's owner out.

The bound checked is five upstream attempts per mailbox (the gateway's default
``pool.max_failed_logins``), far below the providers' block thresholds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway.app import create_app
from tests.security.helpers import READ_KEY, gateway_settings
from tests.support.api import Client, ClientFactory, basic, bearer, sha
from tests.support.fakepop3 import Delay, FakeMailbox, FakePOP3Server

MAX_UPSTREAM_ATTEMPTS = 5
ATTEMPTS = 12


def upstream_logins(server: FakePOP3Server, user: str, password: str | None = None) -> int:
    """PASS commands the server received after ``USER user`` (with ``password`` if given)."""
    count = 0
    for connection in server.received:
        users = [line for line in connection if line.startswith(b"USER ")]
        if users != [f"USER {user}\r\n".encode()]:
            continue
        for line in connection:
            if line.startswith(b"PASS ") and (
                password is None or line == f"PASS {password}\r\n".encode()
            ):
                count += 1
    return count


@pytest.fixture
async def server() -> AsyncIterator[FakePOP3Server]:
    box = FakeMailbox([("uid-1", b"Subject: one\r\n\r\nbody\r\n")])
    async with FakePOP3Server(box, users={"alice": "pw", "bob": "pw-bob"}) as srv:
        yield srv


@pytest.fixture
async def api(aiohttp_client: ClientFactory, server: FakePOP3Server) -> Client:
    return await aiohttp_client(create_app(gateway_settings(server.port)))


async def wrong_passwords(api: Client, user: str = "alice", n: int = ATTEMPTS) -> list[int]:
    statuses = []
    for i in range(n):
        resp = await api.get("/v1/mailboxes/me", headers=basic(user, f"wrong-{i}"))
        await resp.read()
        if resp.status == 429:
            assert int(resp.headers["Retry-After"]) >= 1
            assert (await resp.json(content_type=None))["type"] == "/problems/login-throttled"
        statuses.append(resp.status)
    return statuses


async def test_wrong_passwords_stop_reaching_the_server(
    api: Client, server: FakePOP3Server
) -> None:
    statuses = await wrong_passwords(api)
    assert upstream_logins(server, "alice") <= MAX_UPSTREAM_ATTEMPTS
    assert set(statuses) == {401, 429}
    assert statuses[-1] == 429


async def test_wrong_passwords_after_the_owner_logged_in(
    api: Client, server: FakePOP3Server
) -> None:
    assert (await api.get("/v1/mailboxes/me", headers=basic("alice", "pw"))).status == 200
    await wrong_passwords(api)
    wrong = upstream_logins(server, "alice") - upstream_logins(server, "alice", "pw")
    assert wrong <= MAX_UPSTREAM_ATTEMPTS


async def test_the_owner_is_not_locked_out(api: Client, server: FakePOP3Server) -> None:
    assert (await api.get("/v1/mailboxes/me", headers=basic("alice", "pw"))).status == 200
    assert 429 in await wrong_passwords(api)
    resp = await api.get("/v1/mailboxes/me?fresh=true", headers=basic("alice", "pw"))
    assert resp.status == 200


async def test_other_mailboxes_are_not_throttled(api: Client, server: FakePOP3Server) -> None:
    assert 429 in await wrong_passwords(api, "alice")
    resp = await api.get("/v1/mailboxes/me", headers=basic("bob", "pw-bob"))
    assert resp.status == 200


async def test_configured_mailbox_with_a_stale_password(
    aiohttp_client: ClientFactory, server: FakePOP3Server
) -> None:
    upstream = f"pop3://127.0.0.1:{server.port}"
    settings = gateway_settings(
        server.port,
        mailboxes=[{"id": "box", "upstream": upstream, "user": "alice", "password": "stale"}],
        api_keys=[{"name": "reader", "sha256": sha(READ_KEY), "mailboxes": ["box"]}],
    )
    api = await aiohttp_client(create_app(settings))
    statuses = []
    for _ in range(ATTEMPTS):
        resp = await api.get("/v1/mailboxes/box", headers=bearer(READ_KEY))
        await resp.read()
        statuses.append(resp.status)
    assert upstream_logins(server, "alice") <= MAX_UPSTREAM_ATTEMPTS
    assert set(statuses) == {502, 429}


async def test_a_burst_of_wrong_passwords(
    aiohttp_client: ClientFactory, server: FakePOP3Server
) -> None:
    server.script("PASS", Delay(0.2), times=None)  # failures take a moment, as on real servers
    api = await aiohttp_client(
        create_app(gateway_settings(server.port, pool={"max_per_upstream": 20}))
    )

    async def one(i: int) -> int:
        resp = await api.get("/v1/mailboxes/me", headers=basic("alice", f"burst-{i}"))
        await resp.read()
        return resp.status

    statuses = await asyncio.gather(*(one(i) for i in range(20)))
    assert set(statuses) <= {401, 429}
    assert upstream_logins(server, "alice") <= MAX_UPSTREAM_ATTEMPTS
