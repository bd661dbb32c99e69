"""Fixtures of the webhook tests: the test's wall clock, a webhook receiver with its own
secret, a fake POP3 server with one message, and :data:`~tests.events.support.Start`, which
starts a gateway whose watcher and deliverer the test steps."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.app import create_app
from gateway.config import Settings
from gateway.keys import DELIVERER, WATCHER
from tests.events.receiver import Receiver, WallClock, new_secret
from tests.events.support import Hooked, Start
from tests.support.api import ClientFactory
from tests.support.fakepop3 import FakeMailbox, FakePOP3Server


@pytest.fixture
def wall() -> WallClock:
    return WallClock()


@pytest.fixture
async def receiver(wall: WallClock) -> AsyncIterator[Receiver]:
    """A receiver on loopback that wants webhooks signed with ``receiver.secret``."""
    receiver = Receiver(new_secret(), wall)
    await receiver.start()
    yield receiver
    await receiver.stop()


@pytest.fixture
async def server() -> AsyncIterator[FakePOP3Server]:
    """A fake POP3 server for alice (password pw) with one message, uid-0."""
    box = FakeMailbox([("uid-0", b"Subject: zero\r\n\r\nx\r\n")])
    async with FakePOP3Server(box, users={"alice": "pw"}) as server:
        yield server


@pytest.fixture
def start(aiohttp_client: ClientFactory, wall: WallClock) -> Start:
    """Starts a gateway of the given settings on ``wall``, its loops not running."""

    async def started(settings: Settings) -> Hooked:
        client = await aiohttp_client(create_app(settings, watch=False, wall=wall))
        return Hooked(client, client.app[WATCHER], client.app[DELIVERER])

    return started
