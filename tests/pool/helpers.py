"""Helpers for the session pool tests: an injected clock, an event log and session factories
for the fake server and Dovecot."""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Callable

from gateway.pop3 import POP3Client, SessionPool, TLSMode
from tests.support.dovecot import Dovecot, DovecotUser
from tests.support.fakepop3 import FakePOP3Server


class Events:
    """What the pool reported through ``on_event``."""

    def __init__(self) -> None:
        self.kinds: list[str] = []

    def __call__(self, kind: str) -> None:
        self.kinds.append(kind)

    @property
    def counts(self) -> collections.Counter[str]:
        return collections.Counter(self.kinds)


class Factory:
    """A session factory that counts its calls (each call is one login)."""

    def __init__(self, open_client: Callable[[], Awaitable[POP3Client]]) -> None:
        self._open = open_client
        self.calls = 0
        self.clients: list[POP3Client] = []

    async def __call__(self) -> POP3Client:
        self.calls += 1
        client = await self._open()
        self.clients.append(client)
        return client


async def login(client: POP3Client, user: str, password: str) -> POP3Client:
    try:
        await client.login(user, password)
    except BaseException:
        client.abort()
        raise
    return client


#: The fake server's default account.
FAKE_USER, FAKE_PASSWORD = "user", "password"


def fake_factory(
    server: FakePOP3Server, user: str = FAKE_USER, password: str = FAKE_PASSWORD
) -> Factory:
    async def open_client() -> POP3Client:
        client = await POP3Client.connect(server.host, server.port, tls=TLSMode.PLAIN)
        return await login(client, user, password)

    return Factory(open_client)


def dovecot_factory(dovecot: Dovecot, user: DovecotUser) -> Factory:
    async def open_client() -> POP3Client:
        client = await POP3Client.connect(dovecot.host, dovecot.port, tls=TLSMode.PLAIN)
        return await login(client, user.name, user.password)

    return Factory(open_client)


def open_at(server: FakePOP3Server) -> int:
    """Connections the fake server has open now."""
    return sum(1 for record in server.connections if not record.closed)


MakePool = Callable[..., SessionPool]
