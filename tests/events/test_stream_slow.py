"""An event stream whose reader takes nothing: dropped after the send timeout, its place
among the readers given back, counted as a limit."""

from __future__ import annotations

import asyncio
import re
import socket

from gateway.app import create_app
from gateway.events import Commit, Draft
from gateway.keys import EVENTS
from tests.events.support import watched_settings
from tests.support.api import READ_KEY, Client, ClientFactory, bearer
from tests.support.fakepop3 import FakePOP3Server
from tests.support.wait import wait_until

STREAM = "/v1/mailboxes/box/events/stream"


async def slow_readers(client: Client) -> float:
    async with client.get("/metrics") as resp:
        text = await resp.text()
    found = re.search(r'^pop3gw_limits_total\{reason="stream-slow-reader"\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


async def test_a_reader_that_takes_nothing_is_dropped(
    aiohttp_client: ClientFactory, server: FakePOP3Server
) -> None:
    settings = watched_settings(server.port, "alice", "pw", stream={"send_timeout": 0.3})
    client = await aiohttp_client(create_app(settings, watch=False))
    feed = client.app[EVENTS]
    loop = asyncio.get_running_loop()
    # a reader with a small receive buffer that never reads
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", client.port))
        auth = bearer(READ_KEY)["Authorization"]
        await loop.sock_sendall(
            sock,
            f"GET {STREAM} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth}\r\n\r\n".encode(),
        )
        await wait_until(lambda: feed.waiters == 1)
        # far more than every buffer between the two holds
        pad = "x" * 16_000
        state = await feed.log.state("box")
        drafts = tuple(Draft(f"ev-{n}", "message.new", {"pad": pad}) for n in range(800))
        await feed.log.commit(Commit("box", state.version, events=drafts))
        await wait_until(lambda: feed.waiters == 0)
        assert await slow_readers(client) == 1
        # what reached the reader ends there: the server closed the connection
        received = 0
        while chunk := await loop.sock_recv(sock, 65536):
            received += len(chunk)
        assert 0 < received < 800 * 16_000
    finally:
        sock.close()
